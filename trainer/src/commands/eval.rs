//! `topreward eval DATASET`: the paper's evaluation on the user's own LeRobotDataset. Per episode and method:
//! VOC of the real episode and of a static video (its first frame repeated; progress found there is a
//! time bias), and the success score; then the mean VOC per task and overall, and the success-detection
//! ROC-AUC over the episodes that carry a success label. Written as `eval.md`, `eval.json` and `eval.png`.
//!
//! Resumable: every finished (method, episode) is saved atomically in `eval_state.json` in the output folder
//! with the settings; a rerun with the same settings scores only what is missing, with other settings it
//! stops and asks for another folder.
//!
//! Success labels (optional here, required by `calibrate`) come from a JSON file mapping episode index to
//! outcome, `{"0": true, "1": false, ...}` (`--success-labels`; default `<dataset>/success_labels.json`
//! when it exists). Success scores: TOPReward, the mean log p(" True") of the last 3 prefixes (paper v1);
//! GVL, its predicted completion of the last frame (percent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use toprl_envs::dataset::LeRobotDataset;
use toprl_rewards::metrics;
use toprl_rewards::score::{EpisodeScore, ProgressModel};
use toprl_rewards::topreward::Mode;

use crate::commands::dataset::open_dataset;
use crate::commands::gvl::{load_gvl, spread};
use crate::commands::remote::RemoteArgs;
use crate::commands::score::{ScorerOptions, load_scorer};
use crate::plot::{Bar, save_bars};

/// Which reward model(s) to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Topreward,
    Gvl,
    Both,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Topreward => "topreward",
            Self::Gvl => "gvl",
            Self::Both => "both",
        })
    }
}

/// Evaluate TOPReward and/or GVL on a LeRobotDataset as the paper does (VOC, static-video VOC, success ROC-AUC).
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Dataset folder, or hf://OWNER/NAME[@REVISION].
    pub dataset: String,
    /// Qwen3-VL checkpoint (local directory or hub id); with --endpoint (TOPReward only), optional.
    #[arg(long, required_unless_present = "endpoints")]
    pub model: Option<String>,
    /// Hub revision of a hub model.
    #[arg(long)]
    pub revision: Option<String>,
    /// topreward, gvl or both.
    #[arg(long, value_enum, default_value_t = Method::Both)]
    pub method: Method,
    /// Camera the model sees.
    #[arg(long, default_value = "observation.images.front")]
    pub camera: String,
    /// Subsample each episode evenly to at most this many frames (LeRobot's port: 16).
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
    /// TOPReward mode.
    #[arg(long, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// Seed of GVL's frame shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generated tokens allowed per frame (GVL).
    #[arg(long, default_value_t = 40)]
    pub tokens_per_frame: usize,
    /// JSON file mapping episode index to success, e.g. {"0": true, "1": false}. Default:
    /// <dataset>/success_labels.json when present.
    #[arg(long)]
    pub success_labels: Option<PathBuf>,
    /// Output folder. Default: <dataset>/topreward_eval.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// One evaluated (method, episode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeEval {
    pub method: Method,
    pub episode: usize,
    pub task: String,
    pub frames_scored: usize,
    pub voc: Option<f64>,
    pub static_voc: Option<f64>,
    pub success_score: Option<f64>,
    pub success: Option<bool>,
}

/// What is on disk between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalState {
    pub settings: BTreeMap<String, String>,
    pub results: Vec<EpisodeEval>,
}

impl EvalState {
    /// Load `path` if it exists (refusing other settings), else start empty.
    pub fn open(path: &Path, settings: BTreeMap<String, String>) -> Result<Self> {
        if !path.exists() {
            return Ok(Self {
                settings,
                results: Vec::new(),
            });
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let state: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an evaluation state", path.display()))?;
        for (k, v) in &settings {
            let found = state.settings.get(k).map_or("<missing>", String::as_str);
            if found != v {
                bail!(
                    "{}: was made with {k} = {found:?}, this run uses {v:?}; use another --out",
                    path.display()
                );
            }
        }
        Ok(state)
    }

    pub fn has(&self, method: Method, episode: usize) -> bool {
        self.results
            .iter()
            .any(|r| r.method == method && r.episode == episode)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::atomic::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Episode index to success, from a JSON object `{"<index>": bool}`.
pub fn read_success_labels(path: &Path) -> Result<BTreeMap<usize, bool>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading success labels {}", path.display()))?;
    let raw: BTreeMap<String, bool> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON object mapping episode index to true/false, e.g. {{\"0\": true}}",
            path.display()
        )
    })?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<usize>()
                .map(|e| (e, v))
                .with_context(|| format!("{}: key {k:?} is not an episode index", path.display()))
        })
        .collect()
}

/// The labels file to use: the one given, else `<dataset>/success_labels.json` when it exists.
pub fn success_labels_path(ds: &LeRobotDataset, given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| Some(ds.root().join("success_labels.json")).filter(|p| p.is_file()))
}

/// Sampled frames of one episode, its frame rate after sampling and its task.
pub fn sample_episode(
    ds: &LeRobotDataset,
    camera: &str,
    max_frames: usize,
    episode: usize,
) -> Result<(Vec<image::RgbImage>, f64, String)> {
    let ep = ds
        .episode_with_cameras(episode, &[camera.to_string()])
        .with_context(|| format!("reading episode {episode}"))?;
    let frames = ep
        .cameras
        .get(camera)
        .with_context(|| format!("episode {episode} has no camera {camera}"))?;
    let keep = spread(frames.len(), Some(max_frames));
    let fps = ep.fps * keep.len() as f64 / frames.len().max(1) as f64;
    Ok((
        keep.iter().map(|&i| frames[i].clone()).collect(),
        fps,
        ep.instruction.clone(),
    ))
}

/// The success score of a method's episode score.
pub fn success_score_of(method: Method, score: &EpisodeScore) -> Option<f64> {
    match method {
        Method::Gvl => score.log_probs.last().copied(),
        _ => metrics::success_score(&score.log_probs, toprl_rewards::remote::SUCCESS_PREFIXES),
    }
}

/// What to evaluate and where it goes.
#[derive(Debug, Clone)]
pub struct EvalJob<'a> {
    pub method: Method,
    pub camera: &'a str,
    pub max_frames: usize,
    pub labels: &'a BTreeMap<usize, bool>,
    /// Also score the static video of each episode.
    pub with_static: bool,
    /// Episodes to evaluate (those already in the state are skipped).
    pub episodes: Vec<usize>,
}

/// Evaluate every episode of the job not yet in `state` with `model`, saving the state after each.
pub fn evaluate<M: ProgressModel>(
    ds: &LeRobotDataset,
    model: &mut M,
    job: &EvalJob<'_>,
    state: &mut EvalState,
    state_path: &Path,
) -> Result<usize> {
    let EvalJob {
        method,
        camera,
        max_frames,
        labels,
        with_static,
        ..
    } = *job;
    let todo: Vec<usize> = job
        .episodes
        .iter()
        .copied()
        .filter(|&e| !state.has(method, e))
        .collect();
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} episodes {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("evaluating {method}"));
    for &e in &todo {
        let (frames, fps, task) = sample_episode(ds, camera, max_frames, e)?;
        let score = model
            .score_episode(&frames, fps, &task)
            .with_context(|| format!("episode {e}: {method} failed"))?;
        let static_voc = if with_static {
            let still = vec![frames[0].clone(); frames.len()];
            model
                .score_episode(&still, fps, &task)
                .with_context(|| format!("episode {e}: {method} on the static video failed"))?
                .voc
        } else {
            None
        };
        state.results.push(EpisodeEval {
            method,
            episode: e,
            task,
            frames_scored: frames.len(),
            voc: score.voc,
            static_voc,
            success_score: success_score_of(method, &score),
            success: labels.get(&e).copied(),
        });
        state.save(state_path)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(todo.len())
}

/// Mean and sample standard deviation of the defined values, and how many were undefined.
fn mean_std(values: impl Iterator<Item = Option<f64>>) -> (Option<f64>, f64, usize, usize) {
    let all: Vec<Option<f64>> = values.collect();
    let v: Vec<f64> = all.iter().flatten().copied().collect();
    let undefined = all.len() - v.len();
    if v.is_empty() {
        return (None, 0.0, 0, undefined);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    (Some(m), s, v.len(), undefined)
}

/// Summary rows of one method: per task and overall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub method: Method,
    /// A task, or "all".
    pub task: String,
    pub episodes: usize,
    pub mean_voc: Option<f64>,
    pub std_voc: f64,
    /// Episodes whose VOC is undefined (constant progress) and left out of the mean.
    pub undefined_voc: usize,
    pub mean_static_voc: Option<f64>,
    /// Success-detection ROC-AUC over labelled episodes (both outcomes needed).
    pub roc_auc: Option<f64>,
    pub labelled: usize,
}

pub fn summarize(results: &[EpisodeEval]) -> Vec<SummaryRow> {
    let mut methods: Vec<Method> = results.iter().map(|r| r.method).collect();
    methods.sort();
    methods.dedup();
    let mut rows = Vec::new();
    for m in methods {
        let of: Vec<&EpisodeEval> = results.iter().filter(|r| r.method == m).collect();
        let mut tasks: Vec<String> = of.iter().map(|r| r.task.clone()).collect();
        tasks.sort();
        tasks.dedup();
        let row = |task: &str, set: &[&EpisodeEval]| {
            let (mean_voc, std_voc, _, undefined_voc) = mean_std(set.iter().map(|r| r.voc));
            let (mean_static_voc, ..) = mean_std(set.iter().map(|r| r.static_voc));
            let labelled: Vec<(f64, bool)> = set
                .iter()
                .filter_map(|r| Some((r.success_score?, r.success?)))
                .collect();
            let (scores, labels): (Vec<f64>, Vec<bool>) = labelled.iter().copied().unzip();
            SummaryRow {
                method: m,
                task: task.to_string(),
                episodes: set.len(),
                mean_voc,
                std_voc,
                undefined_voc,
                mean_static_voc,
                roc_auc: metrics::roc_auc(&scores, &labels),
                labelled: labelled.len(),
            }
        };
        for t in &tasks {
            let set: Vec<&EpisodeEval> = of.iter().copied().filter(|r| &r.task == t).collect();
            rows.push(row(t, &set));
        }
        rows.push(row("all", &of));
    }
    rows
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

/// `eval.md`: the summary table, then every episode.
pub fn markdown(rows: &[SummaryRow], results: &[EpisodeEval]) -> String {
    let mut s = String::from(
        "# TOPReward evaluation\n\n| method | task | episodes | VOC (mean ± std) | static-video VOC | success ROC-AUC (labelled) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} ± {:.3}{} | {} | {} ({}) |\n",
            r.method,
            r.task,
            r.episodes,
            fmt(r.mean_voc),
            r.std_voc,
            if r.undefined_voc > 0 {
                format!(" ({} undefined)", r.undefined_voc)
            } else {
                String::new()
            },
            fmt(r.mean_static_voc),
            fmt(r.roc_auc),
            r.labelled
        ));
    }
    s.push_str(
        "\nVOC: Spearman correlation of the predicted progress with time (GVL: 0 when its answer does not \
         parse). Static-video VOC: the same on the episode's first frame repeated; high values mean the model \
         finds progress where nothing happens. Success score: TOPReward mean log p(\" True\") of the last 3 \
         prefixes; GVL predicted completion of the last frame.\n\n## Episodes\n\n\
         | method | episode | task | frames | VOC | static VOC | success score | success |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.method,
            r.episode,
            r.task,
            r.frames_scored,
            fmt(r.voc),
            fmt(r.static_voc),
            fmt(r.success_score),
            r.success.map_or("unlabelled".into(), |b| b.to_string())
        ));
    }
    s
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.max_frames < 2 {
        bail!("--max-frames must be at least 2");
    }
    let ds = open_dataset(&args.dataset)?;
    if !ds.camera_keys().contains(&args.camera) {
        bail!(
            "camera {} is not in the dataset (cameras: {})",
            args.camera,
            ds.camera_keys().join(", ")
        );
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ds.root().join("topreward_eval"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let labels = match success_labels_path(&ds, args.success_labels.as_deref()) {
        Some(p) => read_success_labels(&p)?,
        None => BTreeMap::new(),
    };
    let methods: Vec<Method> = match args.method {
        Method::Both => vec![Method::Topreward, Method::Gvl],
        m => vec![m],
    };
    if methods.contains(&Method::Gvl) && args.model.is_none() {
        bail!("GVL runs in-process: give --model");
    }
    let mut settings = BTreeMap::new();
    settings.insert("model".to_string(), args.model.clone().unwrap_or_default());
    settings.insert("revision".to_string(), args.revision.clone().unwrap_or_default());
    settings.insert("endpoints".to_string(), args.remote.endpoints.join(","));
    settings.insert("camera".to_string(), args.camera.clone());
    settings.insert("max_frames".to_string(), args.max_frames.to_string());
    settings.insert("mode".to_string(), args.mode.to_string());
    settings.insert(
        "gvl".to_string(),
        format!("seed={} tokens_per_frame={}", args.seed, args.tokens_per_frame),
    );
    let state_path = out.join("eval_state.json");
    let mut state = EvalState::open(&state_path, settings)?;
    // Labels may be added between runs: results carry the current ones.
    for r in &mut state.results {
        r.success = labels.get(&r.episode).copied();
    }
    let mut scored = 0;
    let all: Vec<usize> = (0..ds.num_episodes()).collect();
    for &method in &methods {
        if all.iter().all(|&e| state.has(method, e)) {
            continue;
        }
        let job = EvalJob {
            method,
            camera: &args.camera,
            max_frames: args.max_frames,
            labels: &labels,
            with_static: true,
            episodes: all.clone(),
        };
        let options = ScorerOptions {
            revision: args.revision.clone(),
            ..Default::default()
        };
        scored += match method {
            Method::Gvl => {
                let model = args.model.as_deref().context("--model")?;
                let config = toprl_rewards::gvl::GvlConfig {
                    seed: args.seed,
                    tokens_per_frame: args.tokens_per_frame,
                };
                let mut gvl = load_gvl(model, &options, config)?;
                evaluate(&ds, &mut gvl, &job, &mut state, &state_path)?
            }
            _ => match args
                .remote
                .scorer(args.model.as_deref(), Some(args.mode), Default::default())?
            {
                Some(mut remote) => evaluate(&ds, &mut remote, &job, &mut state, &state_path)?,
                None => {
                    let model = args.model.as_deref().context("--model")?;
                    let mut scorer = load_scorer(model, args.mode, &options)?;
                    evaluate(&ds, &mut scorer, &job, &mut state, &state_path)?
                }
            },
        };
    }
    state.save(&state_path)?;
    state.results.sort_by_key(|r| (r.method, r.episode));
    let rows = summarize(&state.results);
    let md = markdown(&rows, &state.results);
    crate::atomic::write_atomic(&out.join("eval.md"), md.as_bytes())?;
    let json = serde_json::json!({"settings": state.settings, "summary": rows, "episodes": state.results});
    crate::atomic::write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let bars: Vec<Bar> = rows
        .iter()
        .filter(|r| r.task == "all")
        .flat_map(|r| {
            [
                Bar {
                    label: format!("{} VOC", r.method),
                    value: r.mean_voc.unwrap_or(0.0),
                    error: r.std_voc,
                },
                Bar {
                    label: format!("{} static", r.method),
                    value: r.mean_static_voc.unwrap_or(0.0),
                    error: 0.0,
                },
            ]
        })
        .collect();
    save_bars(
        &out.join("eval.png"),
        "VOC per method (mean ± std over episodes)",
        "VOC",
        &bars,
        (-1.0, 1.0),
    )
    .context("writing eval.png")?;
    print!("{}", md.split("\n## Episodes").next().unwrap_or(&md));
    println!(
        "{} (method, episode) pairs evaluated in this run, {} kept; report in {}",
        scored,
        state.results.len() - scored,
        out.join("eval.md").display()
    );
    Ok(())
}
