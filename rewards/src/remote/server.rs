//! toprl's reward server: a threaded HTTP/1.1 server (tiny_http) in front of one model worker.
//!
//! - `GET /health`: `{"status": "ok", "model": ..., "queued": n}`.
//! - `GET /v1/models`: the OpenAI model list (one model, `--served-model-name`).
//! - `POST /v1/topreward/score`: [`super::ScoreRequest`] in, `topreward score --json` out.
//! - `POST /v1/chat/completions`: the subset of the OpenAI chat API vLLM users call for log-probs:
//!   `messages` with text, `image_url` and `video_url` parts given as `data:` URLs (a video as
//!   `data:video/jpeg;base64,<frame 1>,<frame 2>,...` like vLLM, each frame PNG or JPEG: the format is read
//!   from the bytes), `media_io_kwargs.video.{fps, frames_indices}` for frame timing (default 2 fps,
//!   indices 0..n), `max_tokens` (greedy decoding; `temperature` and other sampling fields are ignored),
//!   `logprobs`, `top_logprobs` (at most 20), `allowed_token_ids` (restricts the choice; log-probs stay the
//!   full-vocabulary log-softmax, as vLLM), `add_generation_prompt` (default true), `continue_final_message`
//!   (default false), `return_token_ids` (adds `prompt_token_ids`, as vLLM). `stream` and `n > 1` are
//!   refused; a request's `chat_template` is ignored: the server renders the Qwen3-VL template itself, with
//!   each video expanded as transformers 4.57 expands it (see [`crate::multimodal`]).
//!
//! Handler threads parse and validate requests (bodies over `max_body_bytes` get 413) and hand them to a
//! bounded queue (full: 503, the client retries); one worker runs the model. It takes the requests waiting
//! in the queue together, up to `max_batch` (after waiting up to `batch_wait` for more to arrive, like
//! Triton's dynamic batcher): their chat prompts are prefilled in shared packed passes of up to
//! `batch_tokens` tokens ([`Session::prefill_many`]: one vision batch, one decoder pass, one language-model
//! head product), then each decodes on alone.
//! Native score requests are whole episodes, already batched inside ([`crate::topreward::tree`]), and run one
//! after another. `/health` counts the requests that shared a pass (`batched`). As with vLLM, a prompt's
//! log-probs then depend on what else was waiting by float rounding (about 1e-6), not more.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::RgbImage;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use super::{CHAT_PATH, SCORE_PATH, ScoreRequest, episode_json};
use crate::multimodal::{
    ENDOFTEXT_TOKEN_ID, IM_END_TOKEN_ID, Message, MultimodalEncoder, MultimodalError, MultimodalInput, Part,
    Session, StepLogProbs, TemplateOptions,
};
use crate::qwen3_vl::Qwen3VL;
use crate::qwen3_vl::processor::VideoMetadata;
use crate::topreward::{Mode, QwenPrefixEncoder, TopReward, TopRewardError};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to bind (port 0: any free port).
    pub addr: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests waiting for the model beyond the one running; more get 503.
    pub queue: usize,
    /// HTTP handler threads (parsing, decoding).
    pub threads: usize,
    /// Model name reported by `/health` and `/v1/models`, and accepted in chat requests.
    pub served_model_name: String,
    /// Mode of native requests that name none.
    pub default_mode: Mode,
    /// Largest `max_tokens` of a chat request.
    pub max_new_tokens: usize,
    /// Most requests the worker takes at once.
    pub max_batch: usize,
    /// How long the worker waits for more requests once one arrived, when fewer than `max_batch` wait.
    pub batch_wait: std::time::Duration,
    /// Most prompt tokens prefilled in one packed pass.
    pub batch_tokens: usize,
}

/// The model side: TOPReward scorers in both modes over one set of weights, and the chat engine.
pub struct Engine {
    pub exact: TopReward<QwenPrefixEncoder>,
    pub incremental: TopReward<QwenPrefixEncoder>,
    pub model: Qwen3VL,
    pub chat: MultimodalEncoder,
    /// Longest input accepted (tokens).
    pub max_tokens: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// An HTTP error: status and message.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A decoded chat request.
#[derive(Debug, Clone)]
pub struct ChatJob {
    pub model: String,
    pub messages: Vec<Message>,
    pub options: TemplateOptions,
    pub max_tokens: usize,
    pub logprobs: bool,
    pub top_logprobs: usize,
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Answer the prompt's token ids too (`prompt_token_ids`).
    pub return_token_ids: bool,
}

enum Work {
    Score {
        frames: Vec<RgbImage>,
        request: ScoreRequest,
    },
    Chat(Box<ChatJob>),
}

struct Job {
    work: Work,
    reply: mpsc::Sender<Result<Value, HttpError>>,
}

/// A bound server, not yet serving.
pub struct RewardServer {
    http: Arc<tiny_http::Server>,
    config: ServerConfig,
}

impl std::fmt::Debug for RewardServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardServer")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
}

impl RewardServer {
    pub fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        let http = tiny_http::Server::http(&config.addr).map_err(|e| ServerError::Bind {
            addr: config.addr.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            http: Arc::new(http),
            config,
        })
    }

    /// The address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    /// Serve until the process ends: handler threads feed the model worker (this thread).
    pub fn run(self, mut engine: Engine) {
        let (tx, rx) = mpsc::sync_channel::<Job>(self.config.queue.max(1));
        let stats = Arc::new(Stats::default());
        let config = Arc::new(self.config.clone());
        for _ in 0..self.config.threads.max(1) {
            let (http, tx, stats, config) = (self.http.clone(), tx.clone(), stats.clone(), config.clone());
            std::thread::spawn(move || {
                while let Ok(request) = http.recv() {
                    handle(request, &tx, &stats, &config);
                }
            });
        }
        drop(tx);
        while let Some(batch) = next_batch(&rx, &self.config) {
            stats.queued.fetch_sub(batch.len(), Ordering::SeqCst);
            run_batch(&mut engine, batch, &self.config, &stats);
        }
    }
}

/// What `/health` reports besides the model: requests waiting, and requests that shared a pass with others.
#[derive(Debug, Default)]
struct Stats {
    queued: AtomicUsize,
    batched: AtomicUsize,
}

/// Block for the next request, then take those waiting (waiting up to `batch_wait` for more) up to
/// `max_batch`. `None` once every handler has gone.
fn next_batch(rx: &mpsc::Receiver<Job>, config: &ServerConfig) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    let deadline = std::time::Instant::now() + config.batch_wait;
    while batch.len() < config.max_batch.max(1) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let next = if left.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(left).ok()
        };
        match next {
            Some(job) => batch.push(job),
            None => break,
        }
    }
    Some(batch)
}

/// Run a batch: chat prompts prefilled together, score requests in turn; every job gets its reply.
fn run_batch(engine: &mut Engine, batch: Vec<Job>, config: &ServerConfig, stats: &Stats) {
    let mut chats = Vec::new();
    for job in batch {
        match job.work {
            Work::Score { frames, request } => {
                let _ = job.reply.send(run_score(engine, &frames, &request, config));
            }
            Work::Chat(chat) => chats.push((chat, job.reply)),
        }
    }
    let jobs: Vec<&ChatJob> = chats.iter().map(|(c, _)| c.as_ref()).collect();
    let (answers, shared) = run_chats(engine, &jobs, config.batch_tokens);
    stats.batched.fetch_add(shared, Ordering::SeqCst);
    for ((_, reply), answer) in chats.iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut r = Response::from_string(body.to_string()).with_status_code(status);
    if let Ok(h) = header {
        r.add_header(h);
    }
    r
}

fn error_body(e: &HttpError) -> Value {
    json!({"error": {"message": e.message, "type": "invalid_request_error", "code": e.status}})
}

fn handle(mut request: Request, tx: &mpsc::SyncSender<Job>, stats: &Stats, config: &ServerConfig) {
    let url = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    let result: Result<Value, HttpError> = match (&method, url.as_str()) {
        (Method::Get, "/health") => Ok(json!({
            "status": "ok",
            "model": config.served_model_name,
            "queued": stats.queued.load(Ordering::SeqCst),
            "batched": stats.batched.load(Ordering::SeqCst),
            "max_batch": config.max_batch,
        })),
        (Method::Get, "/v1/models") => Ok(json!({
            "object": "list",
            "data": [{"id": config.served_model_name, "object": "model", "owned_by": "toprl"}],
        })),
        (Method::Post, SCORE_PATH) | (Method::Post, CHAT_PATH) => {
            read_body(&mut request, config.max_body_bytes)
                .and_then(|body| {
                    if url == SCORE_PATH {
                        parse_score(&body)
                    } else {
                        parse_chat(&body, config).map(|c| Work::Chat(Box::new(c)))
                    }
                })
                .and_then(|work| submit(work, tx, &stats.queued))
        }
        (_, "/health" | "/v1/models" | SCORE_PATH | CHAT_PATH) => {
            Err(HttpError::new(405, format!("{method} is not allowed on {url}")))
        }
        _ => Err(HttpError::new(404, format!("no endpoint {url}"))),
    };
    let response = match &result {
        Ok(v) => json_response(200, v),
        Err(e) => json_response(e.status, &error_body(e)),
    };
    let _ = request.respond(response);
}

fn submit(work: Work, tx: &mpsc::SyncSender<Job>, queued: &AtomicUsize) -> Result<Value, HttpError> {
    let (reply, answer) = mpsc::channel();
    queued.fetch_add(1, Ordering::SeqCst);
    match tx.try_send(Job { work, reply }) {
        Ok(()) => {}
        Err(mpsc::TrySendError::Full(_)) => {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(HttpError::new(503, "the request queue is full; retry later"));
        }
        Err(mpsc::TrySendError::Disconnected(_)) => {
            queued.fetch_sub(1, Ordering::SeqCst);
            return Err(HttpError::new(503, "the model worker has stopped"));
        }
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err(HttpError::new(500, "the model worker dropped the request")))
}

fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, HttpError> {
    let too_big = || {
        HttpError::new(
            413,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    if request.body_length().is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| HttpError::new(400, format!("cannot read the request body: {e}")))?;
    if body.len() > limit {
        return Err(too_big());
    }
    Ok(body)
}

fn parse_score(body: &[u8]) -> Result<Work, HttpError> {
    let request: ScoreRequest = serde_json::from_slice(body)
        .map_err(|e| HttpError::new(400, format!("invalid score request: {e}")))?;
    let frames = request
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| f.decode(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpError::new(400, e.to_string()))?;
    if let Some(t) = request.success_threshold
        && !t.is_finite()
    {
        return Err(HttpError::new(400, "success_threshold must be finite"));
    }
    Ok(Work::Score { frames, request })
}

fn score_error(e: TopRewardError) -> HttpError {
    match e {
        TopRewardError::Model(_) | TopRewardError::Candle(_) | TopRewardError::Cache { .. } => {
            HttpError::new(500, e.to_string())
        }
        other => HttpError::new(422, other.to_string()),
    }
}

fn run_score(
    engine: &mut Engine,
    frames: &[RgbImage],
    request: &ScoreRequest,
    config: &ServerConfig,
) -> Result<Value, HttpError> {
    let scorer = match request.mode.unwrap_or(config.default_mode) {
        Mode::Exact => &mut engine.exact,
        Mode::Incremental => &mut engine.incremental,
    };
    let score = scorer
        .score_frames(frames, request.fps, &request.instruction)
        .map_err(score_error)?;
    let static_voc = if request.static_check {
        let still = vec![frames[0].clone(); frames.len()];
        Some(
            scorer
                .score_frames(&still, request.fps, &request.instruction)
                .map_err(score_error)?
                .voc,
        )
    } else {
        None
    };
    Ok(episode_json(&score, request.success_threshold, static_voc))
}

/// `data:<mime>;base64,<payload>` to (mime, payload).
fn data_url(url: &str) -> Result<(&str, &str), HttpError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        HttpError::new(
            400,
            "only data: URLs are accepted (the server fetches nothing); send data:<mime>;base64,<bytes>",
        )
    })?;
    let (head, payload) = rest
        .split_once(',')
        .ok_or_else(|| HttpError::new(400, "data URL without a comma"))?;
    let mime = head
        .strip_suffix(";base64")
        .ok_or_else(|| HttpError::new(400, "data URL must be base64 (data:<mime>;base64,...)"))?;
    Ok((mime, payload))
}

fn decode_b64_image(b64: &str, what: &str) -> Result<RgbImage, HttpError> {
    let bytes = BASE64
        .decode(b64.trim())
        .map_err(|e| HttpError::new(400, format!("{what}: not base64: {e}")))?;
    super::decode_image(&bytes).map_err(|e| HttpError::new(400, format!("{what}: {e}")))
}

fn url_of<'a>(part: &'a Value, key: &str) -> Option<&'a str> {
    match part.get(key)? {
        Value::String(s) => Some(s),
        v => v.get("url")?.as_str(),
    }
}

/// Parse the OpenAI chat request into a job (frames decoded here, off the model thread).
pub fn parse_chat(body: &[u8], config: &ServerConfig) -> Result<ChatJob, HttpError> {
    let bad = |m: String| HttpError::new(400, m);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if v.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad("stream is not supported".into()));
    }
    if v.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported".into()));
    }
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&config.served_model_name)
        .to_string();
    if model != config.served_model_name {
        return Err(HttpError::new(
            404,
            format!(
                "model {model:?} is not served here; this server serves {:?}",
                config.served_model_name
            ),
        ));
    }
    let video_kwargs = v.get("media_io_kwargs").and_then(|m| m.get("video"));
    let fps = match video_kwargs.and_then(|k| k.get("fps")) {
        None => 2.0,
        Some(f) => f.as_f64().filter(|f| f.is_finite() && *f > 0.0).ok_or_else(|| {
            bad(format!(
                "media_io_kwargs.video.fps must be a positive number, got {f}"
            ))
        })?,
    };
    let frame_indices: Option<Vec<usize>> = match video_kwargs.and_then(|k| k.get("frames_indices")) {
        None => None,
        Some(a) => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| bad(format!("media_io_kwargs.video.frames_indices: {e}")))?,
        ),
    };
    let raw = v
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("messages must be a non-empty array".into()))?;
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}].role is missing")))?
            .to_string();
        let content = match m.get("content") {
            Some(Value::String(s)) => vec![Part::Text(s.clone())],
            Some(Value::Array(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                    out.push(match kind {
                        "text" => Part::Text(
                            p.get("text")
                                .and_then(Value::as_str)
                                .ok_or_else(|| bad(format!("{at}.text is missing")))?
                                .to_string(),
                        ),
                        "image_url" => {
                            let url = url_of(p, "image_url")
                                .ok_or_else(|| bad(format!("{at}.image_url.url is missing")))?;
                            let (_, payload) = data_url(url)?;
                            Part::Image(decode_b64_image(payload, &at)?)
                        }
                        "video_url" => {
                            let url = url_of(p, "video_url")
                                .ok_or_else(|| bad(format!("{at}.video_url.url is missing")))?;
                            let (mime, payload) = data_url(url)?;
                            if !(mime.starts_with("video/jpeg")
                                || mime.starts_with("video/png")
                                || mime.starts_with("image/"))
                            {
                                return Err(bad(format!(
                                    "{at}: video as {mime} is not supported; send frames as \
                                     data:video/jpeg;base64,<frame 1>,<frame 2>,..."
                                )));
                            }
                            let frames = payload
                                .split(',')
                                .enumerate()
                                .map(|(k, f)| decode_b64_image(f, &format!("{at} frame {k}")))
                                .collect::<Result<Vec<_>, _>>()?;
                            if let Some(idx) = &frame_indices
                                && idx.len() != frames.len()
                            {
                                return Err(bad(format!(
                                    "media_io_kwargs.video.frames_indices has {} entries for {} frames",
                                    idx.len(),
                                    frames.len()
                                )));
                            }
                            Part::Video {
                                frames,
                                metadata: VideoMetadata {
                                    fps,
                                    frame_indices: frame_indices.clone(),
                                },
                            }
                        }
                        other => return Err(bad(format!("{at}: unsupported content type {other:?}"))),
                    });
                }
                out
            }
            _ => return Err(bad(format!("messages[{i}].content must be a string or an array"))),
        };
        messages.push(Message { role, content });
    }
    let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    let options = TemplateOptions {
        add_generation_prompt: flag("add_generation_prompt", true),
        continue_final_message: flag("continue_final_message", false),
    };
    if options.add_generation_prompt && options.continue_final_message {
        return Err(bad(
            "add_generation_prompt and continue_final_message cannot both be true".into(),
        ));
    }
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .map(|m| {
            m.as_u64()
                .ok_or_else(|| bad("max_tokens must be a positive integer".into()))
        })
        .transpose()?
        .unwrap_or(16) as usize;
    if max_tokens == 0 || max_tokens > config.max_new_tokens {
        return Err(bad(format!(
            "max_tokens must be in 1..={}, got {max_tokens}",
            config.max_new_tokens
        )));
    }
    let top_logprobs = v.get("top_logprobs").and_then(Value::as_u64).unwrap_or(0) as usize;
    if top_logprobs > 20 {
        return Err(bad("top_logprobs must be at most 20".into()));
    }
    let allowed_token_ids: Option<Vec<u32>> = match v.get("allowed_token_ids") {
        None | Some(Value::Null) => None,
        Some(a) => {
            Some(serde_json::from_value(a.clone()).map_err(|e| bad(format!("allowed_token_ids: {e}")))?)
        }
    };
    if allowed_token_ids.as_ref().is_some_and(Vec::is_empty) {
        return Err(bad("allowed_token_ids must not be empty".into()));
    }
    Ok(ChatJob {
        model,
        messages,
        options,
        max_tokens,
        logprobs: flag("logprobs", false),
        top_logprobs,
        allowed_token_ids,
        return_token_ids: flag("return_token_ids", false),
    })
}

fn token_entry(engine: &Engine, id: u32, logprob: f32) -> Value {
    let text = engine.chat.token_text(id);
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
}

/// Run one chat job: prefill, then greedy tokens with their log-probs.
pub fn run_chat(engine: &Engine, job: &ChatJob) -> Result<Value, HttpError> {
    let (mut answers, _) = run_chats(engine, &[job], usize::MAX);
    answers
        .pop()
        .unwrap_or_else(|| Err(HttpError::new(500, "no answer")))
}

/// Run chat jobs: their prompts prefilled in shared packed passes of up to `batch_tokens` tokens, then each
/// decoded greedily. Returns the answers in order and how many prompts shared a pass with another (a job whose
/// request is bad fails alone).
pub fn run_chats(
    engine: &Engine,
    jobs: &[&ChatJob],
    batch_tokens: usize,
) -> (Vec<Result<Value, HttpError>>, usize) {
    let inputs: Vec<Result<MultimodalInput, HttpError>> =
        jobs.iter().map(|job| chat_input(engine, job)).collect();
    let ready: Vec<&MultimodalInput> = inputs.iter().filter_map(|i| i.as_ref().ok()).collect();
    let packed = Session::prefill_many(&engine.model, &ready, engine.max_tokens, batch_tokens);
    let mut prefills = packed.results.into_iter();
    let answers = jobs
        .iter()
        .zip(&inputs)
        .map(|(job, input)| {
            let input = input.as_ref().map_err(Clone::clone)?;
            let (session, lp) = prefills
                .next()
                .unwrap_or_else(|| Err(MultimodalError::Encode("no prefill for a prompt".into())))
                .map_err(chat_error)?;
            decode_chat(engine, job, input, session, lp)
        })
        .collect();
    (answers, packed.shared)
}

fn chat_error(e: MultimodalError) -> HttpError {
    match e {
        MultimodalError::Model(_) | MultimodalError::Candle(_) => HttpError::new(500, e.to_string()),
        other => HttpError::new(400, other.to_string()),
    }
}

/// Check a chat job against the model and build its prompt.
fn chat_input(engine: &Engine, job: &ChatJob) -> Result<MultimodalInput, HttpError> {
    let vocab = engine.model.config().text_config.vocab_size;
    if let Some(bad) = job
        .allowed_token_ids
        .as_ref()
        .and_then(|ids| ids.iter().find(|&&t| t as usize >= vocab))
    {
        return Err(HttpError::new(
            400,
            format!("allowed_token_ids: {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    engine.chat.encode(&job.messages, job.options).map_err(chat_error)
}

/// Greedy tokens with their log-probs after a prefill, and the OpenAI answer.
fn decode_chat(
    engine: &Engine,
    job: &ChatJob,
    input: &MultimodalInput,
    mut session: Session<'_>,
    mut lp: StepLogProbs,
) -> Result<Value, HttpError> {
    let mut tokens = Vec::new();
    let mut entries = Vec::new();
    let mut finish = "length";
    loop {
        let id = lp.argmax(job.allowed_token_ids.as_deref());
        if job.logprobs {
            let mut e = token_entry(engine, id, lp.get(id).unwrap_or(f32::NEG_INFINITY));
            e["top_logprobs"] = Value::Array(
                lp.top(job.top_logprobs)
                    .into_iter()
                    .map(|(t, l)| token_entry(engine, t, l))
                    .collect(),
            );
            entries.push(e);
        }
        tokens.push(id);
        if id == IM_END_TOKEN_ID || id == ENDOFTEXT_TOKEN_ID {
            finish = "stop";
            break;
        }
        if tokens.len() >= job.max_tokens || session.len + 1 > engine.max_tokens {
            break;
        }
        lp = session.step(id).map_err(chat_error)?;
    }
    let text = engine.chat.decode(&tokens).map_err(chat_error)?;
    let prompt_tokens = input.input_ids.len();
    let mut answer = json!({
        "id": format!("chatcmpl-toprl-{prompt_tokens}-{}", tokens.len()),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "model": job.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": if job.logprobs { json!({"content": entries}) } else { Value::Null },
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens.len(),
            "total_tokens": prompt_tokens + tokens.len(),
        },
    });
    if job.return_token_ids {
        answer["prompt_token_ids"] = json!(input.input_ids);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            addr: "127.0.0.1:0".into(),
            max_body_bytes: 1 << 20,
            queue: 4,
            threads: 1,
            served_model_name: "tiny".into(),
            default_mode: Mode::Exact,
            max_new_tokens: 8,
            max_batch: 4,
            batch_wait: std::time::Duration::ZERO,
            batch_tokens: 4096,
        }
    }

    fn png_b64() -> String {
        BASE64.encode(super::super::encode_png(&RgbImage::from_pixel(
            4,
            4,
            image::Rgb([9, 8, 7]),
        )))
    }

    #[test]
    fn a_full_queue_answers_503_and_counts_nothing() {
        let (tx, _rx) = mpsc::sync_channel::<Job>(1);
        let request = || ScoreRequest {
            instruction: "x".into(),
            fps: 2.0,
            mode: None,
            frames: Vec::new(),
            success_threshold: None,
            static_check: false,
        };
        let (reply, _answer) = mpsc::channel();
        let waiting = Job {
            work: Work::Score {
                frames: Vec::new(),
                request: request(),
            },
            reply,
        };
        assert!(tx.try_send(waiting).is_ok());
        let queued = AtomicUsize::new(1);
        let work = Work::Score {
            frames: Vec::new(),
            request: request(),
        };
        let err = submit(work, &tx, &queued).unwrap_err();
        assert_eq!(err.status, 503);
        assert!(err.message.contains("queue is full"));
        assert_eq!(queued.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn chat_requests_parse_like_vllm_and_bad_ones_say_why() {
        let f = png_b64();
        let body = json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": format!("data:video/jpeg;base64,{f},{f},{f}")}},
                {"type": "text", "text": "The answer is:"}]}],
            "max_tokens": 1, "logprobs": true, "top_logprobs": 2, "allowed_token_ids": [3007],
            "add_generation_prompt": false, "continue_final_message": true, "temperature": 0.0,
            "media_io_kwargs": {"video": {"fps": 4.0, "frames_indices": [0, 1, 1]}},
        });
        let job = parse_chat(body.to_string().as_bytes(), &config()).unwrap();
        assert_eq!(job.allowed_token_ids, Some(vec![3007]));
        assert!(job.options.continue_final_message && !job.options.add_generation_prompt);
        assert!(!job.return_token_ids);
        match &job.messages[0].content[0] {
            Part::Video { frames, metadata } => {
                assert_eq!(frames.len(), 3);
                assert_eq!(metadata.fps, 4.0);
                assert_eq!(metadata.frame_indices, Some(vec![0, 1, 1]));
            }
            other => panic!("expected a video, got {other:?}"),
        }
        let refuse = |patch: Value, want: &str| {
            let mut b = body.clone();
            for (k, v) in patch.as_object().unwrap() {
                b[k] = v.clone();
            }
            let e = parse_chat(b.to_string().as_bytes(), &config()).unwrap_err();
            assert!(e.message.contains(want), "{} does not contain {want}", e.message);
        };
        refuse(json!({"stream": true}), "stream");
        refuse(json!({"model": "other"}), "not served");
        refuse(json!({"max_tokens": 100}), "max_tokens must be in 1..=8");
        refuse(json!({"add_generation_prompt": true}), "cannot both be true");
        refuse(
            json!({"media_io_kwargs": {"video": {"frames_indices": [0]}}}),
            "1 entries for 3 frames",
        );
        refuse(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            "only data: URLs",
        );
        refuse(
            json!({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]}]}),
            "video/mp4 is not supported",
        );
    }
}
