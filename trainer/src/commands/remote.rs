//! Flags shared by the commands that can score on remote servers (`--endpoint`, repeatable).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use toprl_rewards::remote::client::{Api, RemoteConfig, RemoteScorer, TokenCheck};
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
    /// (chat completions with log-probs: vLLM or `topreward serve`; SGLang untested).
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
    /// openai: compare each prompt the server reports (`usage.prompt_tokens`, and `prompt_token_ids` where
    /// returned) with toprl's own: error (default), warn, or off. A vLLM on transformers >= 5 that does not
    /// use toprl's chat template keeps the template's vision markers around the video: 2 more tokens and
    /// other scores.
    #[arg(long, default_value_t = TokenCheck::Error)]
    pub token_check: TokenCheck,
    /// openai: a folder with the served checkpoint's processor files (video_preprocessor_config.json or
    /// preprocessor_config.json) and tokenizer.json, for toprl's own prompt count. Default: the files of
    /// --model when it is a local checkpoint folder or a hub id (fetched, a few MB), else the Qwen3-VL video
    /// processor's class defaults and the Qwen3 tokenizer of scripts/setup.sh.
    #[arg(long)]
    pub processor: Option<PathBuf>,
}

impl RemoteArgs {
    /// Without --processor, the prompt check counts tokens with the served model's own tokenizer and
    /// processor configs when `model` names them: a local checkpoint folder, or a hub id whose small
    /// files are fetched (users online). Else the class defaults, said aloud.
    fn served_processor(&self, model: Option<&str>) -> Option<std::path::PathBuf> {
        if self.api != Api::OpenAi || self.token_check == TokenCheck::Off {
            return None;
        }
        let model = model?;
        match toprl_rewards::checkpoint::resolve_processor_files(model) {
            Ok(Some(dir)) => {
                tracing::info!(model, dir = %dir.display(), "prompt check uses the served model's processor files");
                Some(dir)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    model,
                    "prompt check: the model's processor files are unavailable ({e}); using the Qwen3-VL \
                     defaults (pass --processor DIR to use the served checkpoint's)"
                );
                None
            }
        }
    }

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
            token_check: self.token_check,
            processor: self.processor.clone().or_else(|| self.served_processor(model)),
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
            token_check: rm.token_check.parse().map_err(anyhow::Error::msg)?,
            processor: rm.processor.clone(),
        };
        let model = (api == Api::OpenAi).then_some(rm.model.as_str());
        let mut scorer = remote
            .scorer(model, Some(mode), rm.prompt())?
            .context("no endpoints")?;
        if rm.kind == "gvl" {
            let gvl = toprl_rewards::gvl::GvlConfig::default();
            return Ok(Box::new(move |frames, fps, instruction| {
                Ok(scorer.gvl(frames, fps, instruction, &gvl)?.to_episode_score())
            }));
        }
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
