//! Scoring on remote servers: toprl's native endpoint or an OpenAI-compatible server (vLLM, SGLang's
//! OpenAI API) with the exact TOPReward prompt.
//!
//! - Native ([`Api::Toprl`]): one request per episode with lossless PNG frames; the server runs the same
//!   scorer as local scoring.
//! - OpenAI ([`Api::OpenAi`]): one chat request per prefix, all prefixes of an episode on the same server
//!   (prefix caching), at most `concurrency` at once: the user turn holds the video (frames of the prefix,
//!   padded to an even count by repeating the last, as the reference; PNG bytes in vLLM's
//!   `data:video/jpeg;base64,<f1>,<f2>,...` form, whose decoder reads the format from the bytes) with
//!   `media_io_kwargs.video = {fps, frames_indices}` for the timestamps, then the prompt text without the
//!   final " True"; `add_generation_prompt: false, continue_final_message: true` leave the user turn open,
//!   and `max_tokens: 1, logprobs: true, allowed_token_ids: [3007]` return log p(" True") over the full
//!   vocabulary. `num_tokens` is the prompt tokens plus the answer token, as local scoring counts them.
//!
//! Episodes are spread round-robin over the endpoints; a request that fails with a transport error, 429 or
//! a 5xx is retried with exponential backoff, and an episode whose server keeps failing moves to the next.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::RgbImage;
use serde_json::{Value, json};

use super::{CHAT_PATH, SCORE_PATH, ScoreRequest, WireFrame, encode_png};
use crate::metrics;
use crate::score::{EpisodeScore, ProgressModel};
use crate::topreward::prompt::PromptConfig;
use crate::topreward::{EpisodeRequest, Mode, TRUE_TOKEN_ID, prefix_frame_indices, prefix_lengths};

/// Which protocol the endpoints speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// toprl's `POST /v1/topreward/score`.
    #[default]
    Toprl,
    /// OpenAI chat completions with log-probs (vLLM, SGLang, toprl).
    OpenAi,
}

impl std::str::FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "toprl" => Ok(Self::Toprl),
            "openai" => Ok(Self::OpenAi),
            other => Err(format!("unknown api {other:?}: expected toprl or openai")),
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Toprl => "toprl",
            Self::OpenAi => "openai",
        })
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URLs, e.g. `http://gpu1:8000`.
    pub endpoints: Vec<String>,
    pub api: Api,
    /// Model name sent to OpenAI servers (default: the first of the server's `/v1/models`).
    pub model: Option<String>,
    /// Mode asked of toprl servers (default: the server's).
    pub mode: Option<Mode>,
    /// Requests in flight per endpoint (OpenAI: prefixes of one episode).
    pub concurrency: usize,
    /// Retries of a failed request before the episode moves to another endpoint.
    pub retries: u32,
    /// First backoff; doubles with each retry.
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The TOPReward prompt (OpenAI only; toprl servers use their own).
    pub prompt: PromptConfig,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            api: Api::Toprl,
            model: None,
            mode: None,
            concurrency: 4,
            retries: 4,
            backoff: Duration::from_millis(250),
            timeout: Duration::from_secs(600),
            prompt: PromptConfig::default(),
        }
    }
}

/// Errors of remote scoring; each names the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("{0}")]
    Config(String),
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: unexpected answer: {reason}")]
    Answer { url: String, reason: String },
    #[error("the episode has no frames")]
    EmptyEpisode,
    #[error("every endpoint failed; last error: {0}")]
    AllFailed(Box<RemoteError>),
}

impl RemoteError {
    fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A [`ProgressModel`] whose episodes are scored by remote servers.
#[derive(Debug)]
pub struct RemoteScorer {
    config: RemoteConfig,
    agent: ureq::Agent,
    /// OpenAI model name per endpoint (resolved lazily).
    models: Vec<Option<String>>,
    /// Round-robin cursor over endpoints.
    next: usize,
}

impl RemoteScorer {
    pub fn new(mut config: RemoteConfig) -> Result<Self, RemoteError> {
        if config.endpoints.is_empty() {
            return Err(RemoteError::NoEndpoints);
        }
        for e in &mut config.endpoints {
            *e = e.trim_end_matches('/').to_string();
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(RemoteError::Config(format!(
                    "endpoint {e:?} must start with http:// or https://"
                )));
            }
        }
        config.concurrency = config.concurrency.max(1);
        if config.api == Api::OpenAi {
            openai_text(&config.prompt, "x")?;
        } else if config.prompt != PromptConfig::default() {
            return Err(RemoteError::Config(
                "a toprl server scores with its own prompt; a custom prompt needs --api openai".into(),
            ));
        }
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        let models = vec![config.model.clone(); config.endpoints.len()];
        Ok(Self {
            config,
            agent,
            models,
            next: 0,
        })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// The model each endpoint serves (`/health` of toprl servers, `/v1/models` of OpenAI ones); they must
    /// all agree. Also resolves the OpenAI model name when none was given.
    pub fn served_model(&mut self) -> Result<String, RemoteError> {
        let mut names = Vec::new();
        for (i, e) in self.config.endpoints.iter().enumerate() {
            let name = match self.config.api {
                Api::Toprl => {
                    let url = format!("{e}/health");
                    let v = self.get(&url)?;
                    v.get("model")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| RemoteError::Answer {
                            url,
                            reason: "no model in /health".into(),
                        })?
                }
                Api::OpenAi => match &self.config.model {
                    Some(m) => m.clone(),
                    None => {
                        let url = format!("{e}/v1/models");
                        let v = self.get(&url)?;
                        v["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| {
                            RemoteError::Answer {
                                url,
                                reason: "no model in /v1/models".into(),
                            }
                        })?
                    }
                },
            };
            self.models[i] = Some(name.clone());
            names.push(name);
        }
        if let Some(other) = names.iter().find(|n| **n != names[0]) {
            return Err(RemoteError::Config(format!(
                "the endpoints serve different models ({:?} and {other:?}); scores would mix models",
                names[0]
            )));
        }
        Ok(names[0].clone())
    }

    fn get(&self, url: &str) -> Result<Value, RemoteError> {
        self.with_retries(url, || self.agent.get(url).call().map_err(Box::new))
    }

    fn post(&self, url: &str, body: &Value) -> Result<Value, RemoteError> {
        let text = body.to_string();
        self.with_retries(url, || {
            self.agent
                .post(url)
                .set("Content-Type", "application/json")
                .send_string(&text)
                .map_err(Box::new)
        })
    }

    fn with_retries(
        &self,
        url: &str,
        call: impl Fn() -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<Value, RemoteError> {
        let mut attempt = 0;
        loop {
            let result = match call().map_err(|e| *e) {
                Ok(r) => r.into_string().map_err(|e| RemoteError::Transport {
                    url: url.into(),
                    reason: e.to_string(),
                }),
                Err(ureq::Error::Status(status, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or(body);
                    Err(RemoteError::Status {
                        url: url.into(),
                        status,
                        message,
                    })
                }
                Err(e) => Err(RemoteError::Transport {
                    url: url.into(),
                    reason: e.to_string(),
                }),
            };
            match result {
                Ok(text) => {
                    return serde_json::from_str(&text).map_err(|e| RemoteError::Answer {
                        url: url.into(),
                        reason: format!("not JSON: {e}"),
                    });
                }
                Err(e) if e.retryable() && attempt < self.config.retries => {
                    let wait = self.config.backoff * 2u32.pow(attempt);
                    tracing::warn!("{e}; retrying in {wait:?}");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Score one episode on endpoint `at` (no failover).
    pub fn score_on(
        &self,
        at: usize,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, RemoteError> {
        if frames.is_empty() {
            return Err(RemoteError::EmptyEpisode);
        }
        let base = &self.config.endpoints[at];
        match self.config.api {
            Api::Toprl => {
                let url = format!("{base}{SCORE_PATH}");
                let request = ScoreRequest {
                    instruction: instruction.into(),
                    fps,
                    mode: self.config.mode,
                    frames: frames.iter().map(WireFrame::png).collect(),
                    success_threshold: None,
                    static_check: false,
                };
                let v = self.post(&url, &serde_json::to_value(&request).unwrap_or_default())?;
                let score: EpisodeScore = serde_json::from_value(v).map_err(|e| RemoteError::Answer {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                let n = prefix_lengths(frames.len()).len();
                if score.log_probs.len() != n || score.progress.len() != n {
                    return Err(RemoteError::Answer {
                        url,
                        reason: format!("{} scores for {n} prefixes", score.log_probs.len()),
                    });
                }
                Ok(score)
            }
            Api::OpenAi => self.score_openai(at, frames, fps, instruction),
        }
    }

    fn score_openai(
        &self,
        at: usize,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, RemoteError> {
        let url = format!("{}{CHAT_PATH}", self.config.endpoints[at]);
        let model = self.models[at].clone().or_else(|| self.config.model.clone());
        let text = openai_text(&self.config.prompt, instruction)?;
        let pngs: Vec<String> = frames.iter().map(|f| BASE64.encode(encode_png(f))).collect();
        let lengths = prefix_lengths(frames.len());
        let request = |k: usize| -> Value {
            let idx = prefix_frame_indices(k);
            let video: Vec<&str> = idx.iter().map(|&i| pngs[i].as_str()).collect();
            let mut body = json!({
                "messages": [{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": format!("data:video/jpeg;base64,{}", video.join(","))}},
                    {"type": "text", "text": text},
                ]}],
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": true,
                "top_logprobs": 1,
                "allowed_token_ids": [TRUE_TOKEN_ID],
                "add_generation_prompt": false,
                "continue_final_message": true,
                "media_io_kwargs": {"video": {"fps": fps, "frames_indices": idx, "total_num_frames": idx.len()}},
            });
            if let Some(m) = &model {
                body["model"] = json!(m);
            }
            body
        };
        let parse = |v: &Value| -> Result<(f64, usize), RemoteError> {
            let bad = |reason: String| RemoteError::Answer {
                url: url.clone(),
                reason,
            };
            let entry = &v["choices"][0]["logprobs"]["content"][0];
            let token = entry["token"].as_str().unwrap_or("");
            if token != " True" && token != format!("token_id:{TRUE_TOKEN_ID}") {
                return Err(bad(format!("the scored token is {token:?}, expected \" True\"")));
            }
            let lp = entry["logprob"]
                .as_f64()
                .ok_or_else(|| bad("no logprob in choices[0].logprobs.content[0]".into()))?;
            let tokens = v["usage"]["prompt_tokens"]
                .as_u64()
                .ok_or_else(|| bad("no usage.prompt_tokens".into()))?;
            Ok((lp, tokens as usize + 1))
        };
        let mut results: Vec<Option<Result<(f64, usize), RemoteError>>> =
            (0..lengths.len()).map(|_| None).collect();
        let (url_ref, parse_ref) = (&url, &parse);
        for chunk in (0..lengths.len())
            .collect::<Vec<_>>()
            .chunks(self.config.concurrency)
        {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let body = request(lengths[i]);
                        (
                            i,
                            s.spawn(move || self.post(url_ref, &body).and_then(|v| parse_ref(&v))),
                        )
                    })
                    .collect();
                for (i, h) in handles {
                    results[i] = Some(h.join().unwrap_or_else(|_| {
                        Err(RemoteError::Transport {
                            url: url.clone(),
                            reason: "request thread panicked".into(),
                        })
                    }));
                }
            });
        }
        let mut log_probs = Vec::with_capacity(lengths.len());
        let mut num_tokens = Vec::with_capacity(lengths.len());
        for r in results.into_iter().flatten() {
            let (lp, n) = r?;
            log_probs.push(lp);
            num_tokens.push(n);
        }
        let progress = metrics::min_max_progress(&log_probs);
        let voc = metrics::voc(&progress);
        Ok(EpisodeScore {
            prefix_lengths: lengths,
            log_probs,
            progress,
            num_tokens,
            voc,
        })
    }

    /// Score one episode starting at endpoint `first`, moving on to the others when it keeps failing.
    fn score_with_failover(
        &self,
        first: usize,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, RemoteError> {
        let n = self.config.endpoints.len();
        let mut last = None;
        for k in 0..n {
            match self.score_on((first + k) % n, frames, fps, instruction) {
                Ok(s) => return Ok(s),
                Err(e) if e.retryable() => {
                    tracing::warn!("{e}; trying the next endpoint");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(RemoteError::AllFailed(Box::new(
            last.unwrap_or(RemoteError::NoEndpoints),
        )))
    }

    /// Score several episodes at once: episode i goes to endpoint (cursor + i) mod n; each endpoint scores
    /// its episodes one after another, all endpoints in parallel.
    pub fn score_many(&mut self, episodes: &[EpisodeRequest<'_>]) -> Vec<Result<EpisodeScore, RemoteError>> {
        let n = self.config.endpoints.len();
        let start = self.next;
        self.next = (self.next + episodes.len()) % n;
        let mut out: Vec<Option<Result<EpisodeScore, RemoteError>>> =
            (0..episodes.len()).map(|_| None).collect();
        let this = &*self;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n.min(episodes.len()))
                .map(|lane| {
                    s.spawn(move || {
                        (0..episodes.len())
                            .filter(|i| i % n == lane)
                            .map(|i| {
                                let e = &episodes[i];
                                (
                                    i,
                                    this.score_with_failover(
                                        (start + lane) % n,
                                        e.frames,
                                        e.fps,
                                        e.instruction,
                                    ),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                if let Ok(done) = h.join() {
                    for (i, r) in done {
                        out[i] = Some(r);
                    }
                }
            }
        });
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RemoteError::Transport {
                        url: String::new(),
                        reason: "scoring thread panicked".into(),
                    })
                })
            })
            .collect()
    }
}

/// The user-turn text after the video, as the reference writes it, without the final answer " True"
/// (the server reads the log-prob of the next token). Needs the paper's layout: no chat template and a
/// suffix ending in " True".
pub fn openai_text(prompt: &PromptConfig, instruction: &str) -> Result<String, RemoteError> {
    prompt
        .validate()
        .map_err(|e| RemoteError::Config(e.to_string()))?;
    if prompt.chat_template || !prompt.answer_in_input {
        return Err(RemoteError::Config(
            "OpenAI scoring supports the paper's prompt without the chat template".into(),
        ));
    }
    let suffix = prompt.suffix_template.replace("{instruction}", instruction);
    let question = suffix.strip_suffix(" True").ok_or_else(|| {
        RemoteError::Config(format!(
            "OpenAI scoring reads log p(\" True\"): the suffix must end in \" True\", got {suffix:?}"
        ))
    })?;
    Ok(format!("{}{question}", prompt.prefix))
}

impl ProgressModel for RemoteScorer {
    type Error = RemoteError;

    fn score_episode(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
    ) -> Result<EpisodeScore, Self::Error> {
        let first = self.next;
        self.next = (self.next + 1) % self.config.endpoints.len();
        self.score_with_failover(first, frames, fps, instruction)
    }

    fn parallelism(&self) -> usize {
        self.config.endpoints.len()
    }

    fn score_episodes(&mut self, episodes: &[EpisodeRequest<'_>]) -> Vec<Result<EpisodeScore, Self::Error>> {
        self.score_many(episodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_text_is_the_paper_prompt_without_the_answer() {
        let t = openai_text(&PromptConfig::default(), "pick the cube").unwrap();
        assert_eq!(
            t,
            "The above video shows a robot manipulation trajectory that completes the following task: \
             pick the cube Decide whether the above statement is True or not. The answer is:"
        );
        let chat = PromptConfig::paper_with(true, None, None);
        assert!(openai_text(&chat, "x").is_err());
        let no_true = PromptConfig::paper_with(false, None, Some("{instruction} Done? Answer: Yes"));
        assert!(
            openai_text(&no_true, "x")
                .unwrap_err()
                .to_string()
                .contains("must end in")
        );
    }

    #[test]
    fn config_errors_are_clear() {
        let bad = RemoteConfig {
            endpoints: vec!["gpu1:8000".into()],
            ..Default::default()
        };
        assert!(
            RemoteScorer::new(bad)
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        assert!(matches!(
            RemoteScorer::new(RemoteConfig::default()),
            Err(RemoteError::NoEndpoints)
        ));
    }

    #[test]
    fn unreachable_endpoint_fails_after_retries() {
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RemoteScorer::new(RemoteConfig {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            retries: 2,
            backoff: Duration::from_millis(1),
            ..Default::default()
        })
        .unwrap();
        let frames = vec![RgbImage::new(32, 32); 2];
        let err = s.score_episode(&frames, 2.0, "x").unwrap_err().to_string();
        assert!(err.contains("every endpoint failed"), "{err}");
    }
}
