//! `topreward serve`: an HTTP reward server for robots and trainers on other machines (see
//! `toprl_rewards::remote::server` for the endpoints).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use toprl_rewards::multimodal::MultimodalEncoder;
use toprl_rewards::qwen3_vl::{DType, Device, Qwen3VL};
use toprl_rewards::remote::server::{Engine, RewardServer, ServerConfig};
use toprl_rewards::topreward::prompt::PromptConfig;
use toprl_rewards::topreward::{Mode, QwenPrefixEncoder, ScorerConfig, TopReward, TopRewardModel};

/// Serve TOPReward over HTTP: GET /health, POST /v1/topreward/score (frames + instruction in, the JSON of
/// `topreward score --json` out) and POST /v1/chat/completions (the OpenAI subset vLLM users call for
/// log-probs).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Qwen3-VL checkpoint: a local directory or a hub id such as Qwen/Qwen3-VL-8B-Instruct.
    #[arg(long)]
    pub model: String,
    /// Hub revision (commit, tag or branch) of a hub model; cached scores are keyed by the resolved commit.
    #[arg(long)]
    pub revision: Option<String>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the chosen address is printed on the first line of stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Mode of native requests that name none.
    #[arg(long, default_value_t = Mode::Exact)]
    pub mode: Mode,
    /// Name reported by /health and /v1/models and expected in chat requests (default: --model).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest request body in MiB (larger: 413).
    #[arg(long, default_value_t = 64)]
    pub max_body_mib: usize,
    /// Requests that may wait for the model (more: 503, clients retry).
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// HTTP threads that read and decode requests.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Refuse inputs longer than this many tokens (default: the model's max_position_embeddings).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Largest max_tokens of a chat request.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Most waiting chat requests whose prompts are prefilled together in one packed pass.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Milliseconds the model waits for more requests once one arrived, to fill a batch (0: take only
    /// those already waiting).
    #[arg(long, default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Most prompt tokens in one packed prefill pass (bounds the memory of a batch).
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// tokenizer.json (default: the checkpoint's, else the Qwen3 tokenizer of scripts/setup.sh).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Directory of cached episode scores for the native endpoint.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_body_mib == 0
        || args.queue == 0
        || args.threads == 0
        || args.max_batch == 0
        || args.batch_tokens == 0
    {
        bail!("--max-body-mib, --queue, --threads, --max-batch and --batch-tokens must be at least 1");
    }
    let files = toprl_rewards::checkpoint::resolve_checkpoint(&args.model, args.revision.as_deref())
        .with_context(|| format!("resolving model {}", args.model))?;
    let identity = toprl_rewards::checkpoint::checkpoint_identity(&files)
        .with_context(|| format!("identifying the weights of {}", args.model))?;
    let tokenizer = match (&args.tokenizer, &files.tokenizer) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            toprl_rewards::assets::qwen3_tokenizer_json().context("locating the Qwen3 tokenizer")?
        }
    };
    let encoder = QwenPrefixEncoder::from_checkpoint(&files, Some(&tokenizer), PromptConfig::default())
        .context("building the video processor and prompt")?;
    let chat =
        MultimodalEncoder::from_checkpoint(&files.dir, &tokenizer).context("building the chat encoder")?;
    let qwen =
        Qwen3VL::load(&files, &Device::Cpu, DType::F32).with_context(|| format!("loading {}", args.model))?;
    let mut reward_model = TopRewardModel::new(qwen.clone());
    if let Some(limit) = args.max_tokens {
        reward_model = reward_model.with_max_tokens(limit);
    }
    let max_tokens = reward_model.max_tokens();
    let scorer = |mode| {
        let config = ScorerConfig {
            mode,
            cache_dir: args.cache_dir.clone(),
        };
        TopReward::new(
            reward_model.clone(),
            encoder.clone(),
            config,
            format!("{}@{identity}", args.model),
        )
    };
    let engine = Engine {
        exact: scorer(Mode::Exact)?,
        incremental: scorer(Mode::Incremental)?,
        model: qwen,
        chat,
        max_tokens,
    };
    let server = RewardServer::bind(ServerConfig {
        addr: format!("{}:{}", args.host, args.port),
        max_body_bytes: args.max_body_mib << 20,
        queue: args.queue,
        threads: args.threads,
        served_model_name: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| args.model.clone()),
        default_mode: args.mode,
        max_new_tokens: args.max_new_tokens,
        max_batch: args.max_batch,
        batch_wait: std::time::Duration::from_millis(args.batch_wait_ms),
        batch_tokens: args.batch_tokens,
    })?;
    let addr = server.local_addr().context("the server has no IP address")?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    server.run(engine);
    Ok(())
}
