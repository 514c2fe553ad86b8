//! Flags shared by the commands that can score on remote servers (`--endpoint`, repeatable).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use toprl_rewards::remote::client::{Api, RemoteConfig, RemoteScorer};
use toprl_rewards::score::{EpisodeScore, ProgressModel};
use toprl_rewards::topreward::Mode;
use toprl_rewards::topreward::prompt::PromptConfig;

use crate::commands::score::{ScorerOptions, load_scorer};
use crate::config::RewardModelConfig;

/// Remote scoring: episodes go to these servers instead of a model loaded here.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Score on this server instead of loading the model here (repeatable: episodes are spread over the
    /// servers, all prefixes of one episode on the same one), e.g. http://gpu1:8000.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// What the endpoints speak: toprl (`topreward serve`'s native endpoint, lossless frames) or openai
    /// (chat completions with log-probs: vLLM, SGLang, or `topreward serve`).
    #[arg(long, default_value_t = Api::Toprl)]
    pub api: Api,
    /// Requests in flight per endpoint (openai: prefixes of one episode).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Retries of a failed request (transport error, 429, 5xx), with exponential backoff from 250 ms,
    /// before the episode moves to the next endpoint.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

impl RemoteArgs {
    /// A remote scorer when endpoints were given. `model` is the name sent to OpenAI servers.
    pub fn scorer(
        &self,
        model: Option<&str>,
        mode: Option<Mode>,
        prompt: PromptConfig,
    ) -> Result<Option<RemoteScorer>> {
        if self.endpoints.is_empty() {
            return Ok(None);
        }
        let config = RemoteConfig {
            endpoints: self.endpoints.clone(),
            api: self.api,
            model: model.map(str::to_string),
            mode,
            concurrency: self.concurrency,
            retries: self.retries,
            timeout: Duration::from_secs(self.timeout_secs),
            prompt,
            ..Default::default()
        };
        Ok(Some(RemoteScorer::new(config)?))
    }
}

/// Scores one episode: frames sampled at `fps`, instruction; whatever model `[reward_model]` describes.
pub type ScoreFn = Box<dyn FnMut(&[image::RgbImage], f64, &str) -> Result<EpisodeScore>>;

/// The scorer `[reward_model]` describes: remote servers when `endpoints` are given, else the model loaded
/// here (TOPReward, or GVL for `kind = "gvl"`), with its scores cached in `cache_dir`.
pub fn reward_model_scorer(rm: &RewardModelConfig, cache_dir: Option<std::path::PathBuf>) -> Result<ScoreFn> {
    let mode: Mode = rm.mode.parse().map_err(anyhow::Error::msg)?;
    if !rm.endpoints.is_empty() {
        let api: Api = rm.api.parse().map_err(anyhow::Error::msg)?;
        let remote = RemoteArgs {
            endpoints: rm.endpoints.clone(),
            api,
            concurrency: 4,
            retries: 4,
            timeout_secs: 600,
        };
        let model = (api == Api::OpenAi).then_some(rm.model.as_str());
        let mut scorer = remote
            .scorer(model, Some(mode), rm.prompt())?
            .context("no endpoints")?;
        return Ok(Box::new(move |frames, fps, instruction| {
            Ok(scorer.score_episode(frames, fps, instruction)?)
        }));
    }
    let options = ScorerOptions {
        cache_dir,
        prompt: rm.prompt(),
        revision: rm.revision.clone(),
        device: rm.device,
        dtype: rm.dtype,
        ..Default::default()
    };
    if rm.kind == "gvl" {
        let mut gvl = crate::commands::gvl::load_gvl(&rm.model, &options, Default::default())?;
        return Ok(Box::new(move |frames, fps, instruction| {
            Ok(gvl.score_episode(frames, fps, instruction)?)
        }));
    }
    let mut scorer = load_scorer(&rm.model, mode, &options)?;
    Ok(Box::new(move |frames, fps, instruction| {
        Ok(scorer.score_frames(frames, fps, instruction)?)
    }))
}
