//! Scoring on remote servers: toprl's native endpoint or an OpenAI-compatible server (vLLM; SGLang's OpenAI
//! API untested) with the exact TOPReward prompt.
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
//! - The video's placeholder ([`CHAT_TEMPLATE`], sent as the request's `chat_template`): the bare
//!   `<|video_pad|>`. The Qwen3-VL Instruct template writes `<|vision_start|><|video_pad|><|vision_end|>`;
//!   transformers 4.57's processor replaced all three by the per-frame expansion
//!   (`<t seconds><|vision_start|>pads<|vision_end|>` per frame pair), transformers >= 5 (and vLLM on it)
//!   replaces only the pad, so the prompt's own markers stay around the expansion: 2 more tokens and
//!   log-probs off by up to 1.1 nats on the tiny fixture. Both read the bare pad as 4.57 read the triple.
//!   vLLM refuses a request's template unless started with `--trust-request-chat-template`; when an
//!   endpoint refuses it, toprl sends that endpoint's requests without it and the server's own template
//!   renders the video (right when vLLM was started with `--chat-template` set to this file).
//! - The prompt check ([`TokenCheck`]): toprl counts the prompt tokens itself (its tokenizer and video
//!   processor, as exact local scoring) and compares them with the server's `usage.prompt_tokens`, and the
//!   token ids with `prompt_token_ids` when the server returns them (`return_token_ids: true`). A difference
//!   means the model saw another prompt than toprl's exact scoring: an error by default.
//!
//! Episodes are spread round-robin over the endpoints; a request that fails with a transport error, 429 or
//! a 5xx is retried with exponential backoff, and an episode whose server keeps failing moves to the next.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::RgbImage;
use serde_json::{Value, json};

use super::{CHAT_PATH, SCORE_PATH, ScoreRequest, WireFrame, encode_png};
use crate::metrics;
use crate::multimodal::{DEFAULT_IMAGE_SIZE, Message, MultimodalEncoder, Part, TemplateOptions};
use crate::qwen3_vl::processor::{VideoMetadata, VideoProcessor};
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
    /// OpenAI chat completions with log-probs (vLLM, toprl; SGLang's OpenAI API untested).
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

/// The chat template toprl sends with each OpenAI request: Qwen3-VL Instruct's for the parts TOPReward
/// sends, with a video as the bare `<|video_pad|>` (see the module docs). Also the file to start vLLM with
/// (`--chat-template`) when it does not trust request templates.
pub const CHAT_TEMPLATE: &str = include_str!("qwen3vl_bare_video.jinja");

/// `<|vision_start|>`.
const VISION_START_TOKEN_ID: u32 = 151652;

/// What to do when the prompt an OpenAI server reports differs from toprl's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenCheck {
    /// Fail the episode with an error saying what differs (default).
    #[default]
    Error,
    /// Log a warning per differing prefix and keep the server's scores.
    Warn,
    /// Do not compare (no tokenizer needed).
    Off,
}

impl std::str::FromStr for TokenCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown token check {other:?}: expected error, warn or off"
            )),
        }
    }
}

impl std::fmt::Display for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Off => "off",
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
    /// OpenAI only: compare the server's prompt tokens with toprl's own count.
    pub token_check: TokenCheck,
    /// OpenAI only: a folder with the served checkpoint's processor files (`video_preprocessor_config.json`
    /// or `preprocessor_config.json`, `tokenizer.json`) for toprl's own count; default: the Qwen3-VL video
    /// processor's class defaults and the Qwen3 tokenizer of `scripts/setup.sh`.
    pub processor: Option<PathBuf>,
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
            token_check: TokenCheck::Error,
            processor: None,
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
    #[error("{url}: the model saw another prompt than toprl's exact scoring: {reason}")]
    PromptMismatch { url: String, reason: String },
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
    /// toprl's own tokenizer and processors, for the prompt check (OpenAI, unless the check is off).
    counter: Option<Box<MultimodalEncoder>>,
    /// Per endpoint: it refused the request's chat template (vLLM without `--trust-request-chat-template`).
    template_refused: Vec<AtomicBool>,
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
        let counter = if config.api == Api::OpenAi && config.token_check != TokenCheck::Off {
            Some(Box::new(prompt_counter(config.processor.as_deref())?))
        } else {
            None
        };
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        let models = vec![config.model.clone(); config.endpoints.len()];
        let template_refused = config.endpoints.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Self {
            config,
            agent,
            models,
            next: 0,
            counter,
            template_refused,
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

    /// GVL (the paper's baseline) on one episode through an OpenAI chat endpoint, toprl's server or vLLM:
    /// the GVL prompt with the frames shown as images in the episode's shuffled order, greedy decoding
    /// (`temperature` 0) of up to `config.answer_tokens(n)` tokens, and the answer parsed, un-shuffled and
    /// scored as local GVL does ([`crate::gvl::evaluate_answer`]). Episodes go round-robin over the
    /// endpoints.
    pub fn gvl(
        &mut self,
        frames: &[RgbImage],
        fps: f64,
        instruction: &str,
        config: &crate::gvl::GvlConfig,
    ) -> Result<crate::gvl::GvlScore, RemoteError> {
        if self.config.api != Api::OpenAi {
            return Err(RemoteError::Config(
                "GVL generates text through the chat endpoint: use --api openai (toprl's server has one too)"
                    .into(),
            ));
        }
        crate::gvl::check_episode(frames, instruction).map_err(|e| RemoteError::Config(e.to_string()))?;
        let at = self.next % self.config.endpoints.len();
        self.next += 1;
        let url = format!("{}{CHAT_PATH}", self.config.endpoints[at]);
        let order = crate::gvl::episode_order(frames, fps, instruction, config.seed);
        let messages = crate::gvl::prompt_messages(frames, &order, instruction);
        let mut body = gvl_request(&messages, config.answer_tokens(frames.len()));
        if let Some(m) = self.models[at].clone().or_else(|| self.config.model.clone()) {
            body["model"] = json!(m);
        }
        let v = self.post(&url, &body)?;
        let bad = |reason: &str| RemoteError::Answer {
            url: url.clone(),
            reason: reason.to_string(),
        };
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| bad("no choices[0].message.content"))?;
        let prompt_tokens = v["usage"]["prompt_tokens"]
            .as_u64()
            .ok_or_else(|| bad("no usage.prompt_tokens"))? as usize;
        Ok(crate::gvl::evaluate_answer(text, order, prompt_tokens))
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
        let request = |k: usize, with_template: bool| -> Value {
            let mut body = openai_request(&pngs, k, fps, &text, with_template);
            if let Some(m) = &model {
                body["model"] = json!(m);
            }
            body
        };
        // The request with toprl's chat template; once the endpoint refuses it, without.
        let send = |k: usize| -> Result<Value, RemoteError> {
            let refused = &self.template_refused[at];
            if !refused.load(Ordering::SeqCst) {
                match self.post(&url, &request(k, true)) {
                    Err(RemoteError::Status {
                        status: 400, message, ..
                    }) if refuses_chat_template(&message) => {
                        if !refused.swap(true, Ordering::SeqCst) {
                            tracing::warn!(
                                "{url} refused toprl's chat template ({message}); sending the requests without \
                                 it, so the server's own template renders the video (start vLLM with \
                                 --trust-request-chat-template to let toprl send it)"
                            );
                        }
                    }
                    other => return other,
                }
            }
            self.post(&url, &request(k, false))
        };
        let parse = |v: &Value| -> Result<ChatScore, RemoteError> {
            let bad = |reason: String| RemoteError::Answer {
                url: url.clone(),
                reason,
            };
            let entry = &v["choices"][0]["logprobs"]["content"][0];
            let token = entry["token"].as_str().unwrap_or("");
            if token != " True" && token != format!("token_id:{TRUE_TOKEN_ID}") {
                return Err(bad(format!("the scored token is {token:?}, expected \" True\"")));
            }
            let log_prob = entry["logprob"]
                .as_f64()
                .ok_or_else(|| bad("no logprob in choices[0].logprobs.content[0]".into()))?;
            let prompt_tokens = v["usage"]["prompt_tokens"]
                .as_u64()
                .ok_or_else(|| bad("no usage.prompt_tokens".into()))?
                as usize;
            let prompt_ids = match v.get("prompt_token_ids") {
                None | Some(Value::Null) => None,
                Some(ids) => Some(
                    serde_json::from_value::<Vec<u32>>(ids.clone())
                        .map_err(|e| bad(format!("prompt_token_ids: {e}")))?,
                ),
            };
            Ok(ChatScore {
                log_prob,
                prompt_tokens,
                prompt_ids,
            })
        };
        let mut results: Vec<Option<Result<ChatScore, RemoteError>>> =
            (0..lengths.len()).map(|_| None).collect();
        let (send_ref, parse_ref) = (&send, &parse);
        for chunk in (0..lengths.len())
            .collect::<Vec<_>>()
            .chunks(self.config.concurrency)
        {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|&i| {
                        let k = lengths[i];
                        (i, s.spawn(move || send_ref(k).and_then(|v| parse_ref(&v))))
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
        for (r, &k) in results.into_iter().flatten().zip(&lengths) {
            let chat = r?;
            if let Some(counter) = &self.counter {
                let ours = toprl_prompt_ids(counter, frames, k, fps, &text)?;
                if let Some(reason) = prompt_difference(counter, &ours, &chat, k) {
                    let hint = if self.template_refused[at].load(Ordering::SeqCst) {
                        "it refused toprl's chat template and rendered the video with its own"
                    } else {
                        "it did not apply the chat template toprl sent"
                    };
                    let reason = format!("{reason}; {}", mismatch_hint(&ours, &chat, hint));
                    match self.config.token_check {
                        TokenCheck::Warn => tracing::warn!("{url}: the model saw another prompt: {reason}"),
                        _ => {
                            return Err(RemoteError::PromptMismatch {
                                url: url.clone(),
                                reason,
                            });
                        }
                    }
                }
            }
            log_probs.push(chat.log_prob);
            num_tokens.push(chat.prompt_tokens + 1);
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

/// What an OpenAI server answered for one prefix.
#[derive(Debug, Clone)]
struct ChatScore {
    log_prob: f64,
    /// `usage.prompt_tokens`.
    prompt_tokens: usize,
    /// `prompt_token_ids` (vLLM with `return_token_ids: true`).
    prompt_ids: Option<Vec<u32>>,
}

/// The chat request for the prefix of the first `k` frames (`pngs`: base64 PNG of every frame): the user
/// turn left open with the video (padded to an even count by repeating the last frame, as the reference)
/// and the prompt text, asking for log p(" True"); with toprl's chat template when `with_template`.
pub fn openai_request(pngs: &[String], k: usize, fps: f64, text: &str, with_template: bool) -> Value {
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
        "return_token_ids": true,
        "media_io_kwargs": {"video": {"fps": fps, "frames_indices": idx, "total_num_frames": idx.len()}},
    });
    if with_template {
        body["chat_template"] = json!(CHAT_TEMPLATE);
    }
    body
}

/// The OpenAI chat request of a GVL prompt: text parts as text, images as PNG `data:` URLs, answered by
/// greedy decoding of at most `max_tokens` tokens after the assistant turn opens.
pub fn gvl_request(messages: &[Message], max_tokens: usize) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            let content: Vec<Value> = m
                .content
                .iter()
                .map(|part| match part {
                    Part::Text(text) => json!({"type": "text", "text": text}),
                    Part::Image(image) => json!({"type": "image_url", "image_url": {
                        "url": format!("data:image/png;base64,{}", BASE64.encode(encode_png(image)))
                    }}),
                    Part::Video { frames, .. } => json!({"type": "video_url", "video_url": {
                        "url": format!("data:video/jpeg;base64,{}", frames
                            .iter()
                            .map(|f| BASE64.encode(encode_png(f)))
                            .collect::<Vec<_>>()
                            .join(","))
                    }}),
                })
                .collect();
            json!({"role": m.role, "content": content})
        })
        .collect();
    json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0.0})
}

/// vLLM's 400 for a request template it does not trust.
fn refuses_chat_template(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("chat template") || m.contains("chat_template")
}

/// toprl's tokenizer and processors for the prompt check.
fn prompt_counter(processor: Option<&std::path::Path>) -> Result<MultimodalEncoder, RemoteError> {
    let fix = "pass --processor DIR with the served checkpoint's tokenizer.json, run scripts/setup.sh for \
               the Qwen3 tokenizer, or turn the check off with --token-check off";
    let tokenizer = match processor
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file())
    {
        Some(path) => path,
        None => crate::assets::qwen3_tokenizer_json()
            .map_err(|e| RemoteError::Config(format!("the prompt check needs a tokenizer: {e}; {fix}")))?,
    };
    let counter = match processor {
        Some(dir) => MultimodalEncoder::from_checkpoint(dir, &tokenizer),
        None => tokenizers::Tokenizer::from_file(&tokenizer)
            .map(|t| MultimodalEncoder::new(VideoProcessor::default(), DEFAULT_IMAGE_SIZE, t))
            .map_err(|e| crate::multimodal::MultimodalError::Tokenizer {
                path: tokenizer.display().to_string(),
                reason: e.to_string(),
            }),
    };
    counter.map_err(|e| RemoteError::Config(format!("the prompt check: {e}")))
}

/// The prompt token ids toprl's exact scoring gives the prefix of `k` frames (without the answer token).
fn toprl_prompt_ids(
    counter: &MultimodalEncoder,
    frames: &[RgbImage],
    k: usize,
    fps: f64,
    text: &str,
) -> Result<Vec<u32>, RemoteError> {
    let idx = prefix_frame_indices(k);
    let message = Message {
        role: "user".into(),
        content: vec![
            Part::Video {
                frames: idx.iter().map(|&i| frames[i].clone()).collect(),
                metadata: VideoMetadata {
                    fps,
                    frame_indices: Some(idx.clone()),
                },
            },
            Part::Text(text.into()),
        ],
    };
    let options = TemplateOptions {
        add_generation_prompt: false,
        continue_final_message: true,
    };
    counter
        .prompt_ids(&[message], options)
        .map_err(|e| RemoteError::Config(format!("the prompt check: {e}")))
}

/// How the server's prompt differs from toprl's, if it does: the token ids when the server returned them,
/// else the count.
fn prompt_difference(
    counter: &MultimodalEncoder,
    ours: &[u32],
    server: &ChatScore,
    k: usize,
) -> Option<String> {
    let at = format!("prefix of {k} frame(s)");
    match &server.prompt_ids {
        Some(ids) if ids.as_slice() != ours => {
            let i = ids.iter().zip(ours).take_while(|(a, b)| a == b).count();
            let show =
                |t: Option<&u32>| t.map_or("(end)".to_string(), |&t| format!("{:?}", counter.token_text(t)));
            Some(format!(
                "{at}: the server's prompt has {} tokens, toprl's {}; the first difference is token {i}: \
                 {} on the server, {} in toprl",
                ids.len(),
                ours.len(),
                show(ids.get(i)),
                show(ours.get(i)),
            ))
        }
        Some(_) => None,
        None if server.prompt_tokens != ours.len() => Some(format!(
            "{at}: the server counted {} prompt tokens, toprl counts {}",
            server.prompt_tokens,
            ours.len()
        )),
        None => None,
    }
}

/// Why the prompts differ, as far as it can be told: 2 more tokens, one more `<|vision_start|>` than the
/// video has frame pairs, is the chat template's own markers left around the expansion.
fn mismatch_hint(ours: &[u32], server: &ChatScore, why_markers: &str) -> String {
    let starts = |ids: &[u32]| ids.iter().filter(|&&t| t == VISION_START_TOKEN_ID).count();
    let doubled = match &server.prompt_ids {
        Some(ids) => ids.len() == ours.len() + 2 && starts(ids) == starts(ours) + 1,
        None => server.prompt_tokens == ours.len() + 2,
    };
    if doubled {
        format!(
            "the server kept the chat template's <|vision_start|>..<|vision_end|> around the video's per-frame \
             expansion (transformers >= 5 Qwen3VLProcessor) because {why_markers}: start vLLM with \
             --trust-request-chat-template (toprl then sends its template with each request), or with \
             --chat-template set to toprl's rewards/src/remote/qwen3vl_bare_video.jinja"
        )
    } else {
        "the server's video processor (pixel budget), tokenizer or chat template differ from toprl's: pass \
         --processor with the served checkpoint's folder, or --token-check warn to keep the server's scores"
            .into()
    }
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
    use std::sync::{Arc, Mutex};

    #[test]
    fn openai_request_leaves_the_user_turn_open_with_the_bare_video_pad_template() {
        let pngs: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let body = openai_request(&pngs, 3, 4.0, "Q: done? The answer is:", true);
        let content = &body["messages"][0]["content"];
        assert_eq!(body["messages"][0]["role"], "user");
        // 3 frames: the last repeated to an even count, with its source index, as the reference.
        assert_eq!(content[0]["video_url"]["url"], "data:video/jpeg;base64,a,b,c,c");
        assert_eq!(
            content[1],
            json!({"type": "text", "text": "Q: done? The answer is:"})
        );
        assert_eq!(
            body["media_io_kwargs"]["video"],
            json!({"fps": 4.0, "frames_indices": [0, 1, 2, 2], "total_num_frames": 4})
        );
        assert_eq!(body["add_generation_prompt"], false);
        assert_eq!(body["continue_final_message"], true);
        assert_eq!(body["allowed_token_ids"], json!([TRUE_TOKEN_ID]));
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["return_token_ids"], true);
        assert_eq!(body["chat_template"], CHAT_TEMPLATE);
        // The template's video is the bare pad; images keep their markers (the processors expand only
        // the image pad, in 4.57 and 5).
        assert!(CHAT_TEMPLATE.contains("{{- '<|video_pad|>' -}}"));
        assert!(!CHAT_TEMPLATE.contains("<|vision_start|><|video_pad|>"));
        assert!(CHAT_TEMPLATE.contains("'<|vision_start|><|image_pad|><|vision_end|>'"));
        let plain = openai_request(&pngs, 2, 2.0, "x", false);
        assert!(plain.get("chat_template").is_none());
        assert_eq!(plain["media_io_kwargs"]["video"]["frames_indices"], json!([0, 1]));
    }

    /// What a scripted OpenAI server does with a chat request.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Behaviour {
        /// Answers with the given prompt (ids and count).
        Answer,
        /// Refuses a request template with vLLM's 400, then answers.
        RefuseTemplate,
    }

    /// A real HTTP server on 127.0.0.1 that records each request body and answers log p(" True") = -1.0
    /// with the prompt `prompt(body)` returns (its ids, or only their count when `ids` is false).
    fn scripted_server(
        behaviour: Behaviour,
        ids: bool,
        prompt: impl Fn(&Value) -> Vec<u32> + Send + 'static,
    ) -> (String, Arc<Mutex<Vec<Value>>>) {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut text = String::new();
                let _ = request.as_reader().read_to_string(&mut text);
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                record.lock().expect("lock").push(body.clone());
                let (status, answer) = if behaviour == Behaviour::RefuseTemplate
                    && body.get("chat_template").is_some()
                {
                    let message = "Chat template is passed with request, but --trust-request-chat-template is not \
                                   set. Refused request with untrusted chat template.";
                    (
                        400,
                        json!({"error": {"message": message, "type": "BadRequestError", "code": 400}}),
                    )
                } else {
                    let p = prompt(&body);
                    let mut a = json!({
                        "choices": [{"index": 0, "logprobs": {"content": [{"token": " True", "logprob": -1.0}]}}],
                        "usage": {"prompt_tokens": p.len(), "completion_tokens": 1},
                    });
                    if ids {
                        a["prompt_token_ids"] = json!(p);
                    }
                    (200, a)
                };
                let _ = request
                    .respond(tiny_http::Response::from_string(answer.to_string()).with_status_code(status));
            }
        });
        (url, seen)
    }

    fn tokenizer() -> tokenizers::Tokenizer {
        let path = crate::assets::qwen3_tokenizer_json().expect("the Qwen3 tokenizer: run scripts/setup.sh");
        tokenizers::Tokenizer::from_file(path).expect("tokenizer")
    }

    /// The prompt of one frame pair of 64x64 at 2 fps written out by hand, for the request `body`: the
    /// Qwen3-VL video processor's class defaults upscale the clip to 256x256 (16x16 patches, 64 tokens
    /// after the 2x2 merge); frames [0, 0] are at 0.0 s, frames [0, 1] at 0.25 s, written "0.2" (Python's
    /// round half to even). `markers` adds the template's own markers around it, as transformers 5 leaves
    /// them.
    fn two_frame_prompt(tok: &tokenizers::Tokenizer, text: &str, markers: bool, body: &Value) -> Vec<u32> {
        let seconds = if body["media_io_kwargs"]["video"]["frames_indices"] == json!([0, 0]) {
            "0.0"
        } else {
            "0.2"
        };
        let video = format!(
            "<{seconds} seconds><|vision_start|>{}<|vision_end|>",
            "<|video_pad|>".repeat(64)
        );
        let video = if markers {
            format!("<|vision_start|>{video}<|vision_end|>")
        } else {
            video
        };
        let prompt = format!("<|im_start|>user\n{video}{text}");
        tok.encode(prompt.as_str(), true)
            .expect("encode")
            .get_ids()
            .to_vec()
    }

    fn score_two_frames(url: &str, token_check: TokenCheck) -> Result<EpisodeScore, RemoteError> {
        let mut s = RemoteScorer::new(RemoteConfig {
            endpoints: vec![url.to_string()],
            api: Api::OpenAi,
            retries: 0,
            concurrency: 1,
            token_check,
            ..Default::default()
        })
        .expect("scorer");
        s.score_episode(&vec![RgbImage::new(64, 64); 2], 2.0, "push the cube")
    }

    #[test]
    fn the_prompt_check_accepts_toprls_prompt_and_names_doubled_markers() {
        let tok = Arc::new(tokenizer());
        let text = openai_text(&PromptConfig::default(), "push the cube").unwrap();
        let prompt = |markers: bool| {
            let (tok, text) = (tok.clone(), text.clone());
            move |body: &Value| two_frame_prompt(&tok, &text, markers, body)
        };
        let good_len = prompt(false)(&json!({})).len();

        // A server that sees toprl's prompt (ids returned): accepted; num_tokens counts the answer token.
        // prefix_lengths(2) = [1, 2]: frames [0, 0] and [0, 1].
        let (url, seen) = scripted_server(Behaviour::Answer, true, prompt(false));
        let score = score_two_frames(&url, TokenCheck::Error).expect("toprl's prompt passes");
        assert_eq!(score.num_tokens, vec![good_len + 1; 2]);
        let bodies = seen.lock().unwrap().clone();
        assert_eq!(bodies.len(), 2);
        assert!(bodies.iter().all(|b| b["chat_template"] == CHAT_TEMPLATE));

        // transformers >= 5 leaves the template's markers: 2 more tokens. Ids or only the count: an error
        // that says so, or with `warn` the server's scores.
        for ids in [true, false] {
            let (url, _) = scripted_server(Behaviour::Answer, ids, prompt(true));
            let err = score_two_frames(&url, TokenCheck::Error).unwrap_err().to_string();
            assert!(err.contains("another prompt than toprl's exact scoring"), "{err}");
            assert!(err.contains("--trust-request-chat-template"), "{err}");
            assert!(
                err.contains("did not apply the chat template toprl sent"),
                "{err}"
            );
            if ids {
                // <|im_start|> user \n, then <|vision_start|> where toprl has the timestamp's "<".
                assert!(
                    err.contains(
                        "first difference is token 3: \"<|vision_start|>\" on the server, \"<\" in toprl"
                    ),
                    "{err}"
                );
            } else {
                let want = format!("counted {} prompt tokens, toprl counts {good_len}", good_len + 2);
                assert!(err.contains(&want), "{err}");
            }
            let kept = score_two_frames(&url, TokenCheck::Warn).expect("warn keeps the scores");
            assert_eq!(kept.num_tokens, vec![good_len + 3; 2]);
        }

        // Another difference (here 16 more tokens, as from another resolution) is not called a marker problem.
        let (url, _) = scripted_server(Behaviour::Answer, false, move |_| vec![0; good_len + 16]);
        let err = score_two_frames(&url, TokenCheck::Error).unwrap_err().to_string();
        assert!(
            err.contains("--processor") && !err.contains("--trust-request"),
            "{err}"
        );
        assert!(score_two_frames(&url, TokenCheck::Off).is_ok());
    }

    #[test]
    fn a_server_that_refuses_the_template_gets_the_requests_without_it_and_is_checked() {
        let tok = Arc::new(tokenizer());
        let text = openai_text(&PromptConfig::default(), "push the cube").unwrap();
        let prompt = |markers: bool| {
            let (tok, text) = (tok.clone(), text.clone());
            move |body: &Value| two_frame_prompt(&tok, &text, markers, body)
        };
        // Its own template gives toprl's prompt (e.g. vLLM started with --chat-template of toprl's file).
        let (url, seen) = scripted_server(Behaviour::RefuseTemplate, true, prompt(false));
        score_two_frames(&url, TokenCheck::Error).expect("scored without the template");
        let bodies = seen.lock().unwrap().clone();
        // One refused request, then every prefix without the template (the refusal is remembered).
        assert_eq!(
            bodies.iter().filter(|b| b.get("chat_template").is_some()).count(),
            1
        );
        assert_eq!(
            bodies.iter().filter(|b| b.get("chat_template").is_none()).count(),
            2
        );

        // Its own template is Qwen3-VL Instruct's on transformers 5: the error says how to start it.
        let (url, _) = scripted_server(Behaviour::RefuseTemplate, true, prompt(true));
        let err = score_two_frames(&url, TokenCheck::Error).unwrap_err().to_string();
        assert!(
            err.contains("refused toprl's chat template") && err.contains("--trust-request-chat-template"),
            "{err}"
        );
    }

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
