//! `topreward calibrate DATASET`: pick the success-detection threshold from episodes with known outcomes.
//!
//! Labels: a JSON file mapping episode index to success, `{"0": true, "1": false}` (`--success-labels`,
//! default `<dataset>/success_labels.json`); only labelled episodes are scored. Each gets the paper's success
//! score (mean log p(" True") of the last 3 prefixes); the ROC-AUC and the threshold (Youden's J or best F1,
//! `score >= threshold` is a success) are written to a JSON file (default
//! `<dataset>/topreward_calibration.json`) that `topreward score --success-threshold auto --calibration FILE`
//! reads. Resumable: scores are kept in `<out>.state.json` until the run completes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use toprl_rewards::calibration::{Criterion, ThresholdChoice, choose_threshold};
use toprl_rewards::topreward::Mode;

use crate::commands::dataset::open_dataset;
use crate::commands::eval::{EvalJob, EvalState, Method, evaluate, read_success_labels, success_labels_path};
use crate::commands::remote::RemoteArgs;
use crate::commands::score::{ScorerOptions, load_scorer};

/// Choose the TOPReward success threshold on episodes with known success (ROC-AUC, Youden or best F1).
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Dataset folder, or hf://OWNER/NAME[@REVISION].
    pub dataset: String,
    /// Qwen3-VL checkpoint (local directory or hub id); with --endpoint, optional.
    #[arg(long, required_unless_present = "endpoints")]
    pub model: Option<String>,
    /// Hub revision of a hub model.
    #[arg(long)]
    pub revision: Option<String>,
    /// JSON file mapping episode index to success, e.g. {"0": true, "1": false}. Default:
    /// <dataset>/success_labels.json.
    #[arg(long)]
    pub success_labels: Option<PathBuf>,
    /// youden (max TPR - FPR) or f1 (max F1 of the success class).
    #[arg(long, default_value_t = Criterion::Youden)]
    pub criterion: Criterion,
    /// Camera the model sees.
    #[arg(long, default_value = "observation.images.front")]
    pub camera: String,
    /// Subsample each episode evenly to at most this many frames.
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
    /// TOPReward mode.
    #[arg(long, default_value_t = Mode::Incremental)]
    pub mode: Mode,
    /// Output JSON. Default: <dataset>/topreward_calibration.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// One calibration episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationEpisode {
    pub episode: usize,
    pub success: bool,
    pub success_score: f64,
}

/// The calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Model (path or hub id, or the served model with endpoints) the scores came from.
    pub model: String,
    pub revision: Option<String>,
    pub mode: Mode,
    pub camera: String,
    pub max_frames: usize,
    pub dataset: String,
    #[serde(flatten)]
    pub choice: ThresholdChoice,
    pub episodes: Vec<CalibrationEpisode>,
}

/// `--success-threshold`: a log-probability or `auto` (from a calibration file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Value(f64),
    Auto,
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Self::Value(v)),
            _ => Err(format!("expected a finite log-probability or auto, got {s:?}")),
        }
    }
}

/// Read a calibration file, checking it was made with `model` when one is given.
pub fn read_calibration(path: &Path, model: Option<&str>) -> Result<Calibration> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading calibration {} (make one with `topreward calibrate DATASET --out {}`)",
            path.display(),
            path.display()
        )
    })?;
    let c: Calibration = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a calibration file", path.display()))?;
    if let Some(m) = model
        && m != c.model
    {
        bail!(
            "{} was calibrated on model {:?}, this run scores with {m:?}; calibrate this model",
            path.display(),
            c.model
        );
    }
    Ok(c)
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    let ds = open_dataset(&args.dataset)?;
    if !ds.camera_keys().contains(&args.camera) {
        bail!(
            "camera {} is not in the dataset (cameras: {})",
            args.camera,
            ds.camera_keys().join(", ")
        );
    }
    let labels_path = success_labels_path(&ds, args.success_labels.as_deref()).with_context(|| {
        format!(
            "calibration needs success labels: pass --success-labels FILE or write {}",
            ds.root().join("success_labels.json").display()
        )
    })?;
    let labels = read_success_labels(&labels_path)?;
    if let Some(e) = labels.keys().find(|&&e| e >= ds.num_episodes()) {
        bail!(
            "{}: episode {e} is not in the dataset ({} episodes)",
            labels_path.display(),
            ds.num_episodes()
        );
    }
    if !(labels.values().any(|&s| s) && labels.values().any(|&s| !s)) {
        bail!(
            "{}: calibration needs both successful and failed episodes",
            labels_path.display()
        );
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ds.root().join("topreward_calibration.json"));
    let mut remote = args
        .remote
        .scorer(args.model.as_deref(), Some(args.mode), Default::default())?;
    let model_name = match &mut remote {
        Some(r) => r
            .served_model()
            .context("asking the endpoints which model they serve")?,
        None => args
            .model
            .clone()
            .context("--model is required without --endpoint")?,
    };
    let mut settings = BTreeMap::new();
    settings.insert("model".to_string(), model_name.clone());
    settings.insert("revision".to_string(), args.revision.clone().unwrap_or_default());
    settings.insert("camera".to_string(), args.camera.clone());
    settings.insert("max_frames".to_string(), args.max_frames.to_string());
    settings.insert("mode".to_string(), args.mode.to_string());
    let state_path = PathBuf::from(format!("{}.state.json", out.display()));
    let mut state = EvalState::open(&state_path, settings)?;
    let job = EvalJob {
        method: Method::Topreward,
        camera: &args.camera,
        max_frames: args.max_frames,
        labels: &labels,
        with_static: false,
        episodes: labels.keys().copied().collect(),
    };
    if job.episodes.iter().any(|&e| !state.has(Method::Topreward, e)) {
        match remote {
            Some(mut r) => evaluate(&ds, &mut r, &job, &mut state, &state_path)?,
            None => {
                let options = ScorerOptions {
                    revision: args.revision.clone(),
                    ..Default::default()
                };
                let mut scorer = load_scorer(&model_name, args.mode, &options)?;
                evaluate(&ds, &mut scorer, &job, &mut state, &state_path)?
            }
        };
    }
    let mut episodes = Vec::new();
    for (&e, &success) in &labels {
        let r = state
            .results
            .iter()
            .find(|r| r.episode == e)
            .with_context(|| format!("episode {e} was not scored"))?;
        let score = r
            .success_score
            .with_context(|| format!("episode {e} has no success score (no prefixes)"))?;
        episodes.push(CalibrationEpisode {
            episode: e,
            success,
            success_score: score,
        });
    }
    let scores: Vec<f64> = episodes.iter().map(|e| e.success_score).collect();
    let outcome: Vec<bool> = episodes.iter().map(|e| e.success).collect();
    let choice = choose_threshold(&scores, &outcome, args.criterion)
        .context("no threshold: the success scores are not finite")?;
    let calibration = Calibration {
        model: model_name,
        revision: args.revision.clone(),
        mode: args.mode,
        camera: args.camera.clone(),
        max_frames: args.max_frames,
        dataset: args.dataset.clone(),
        choice,
        episodes,
    };
    crate::atomic::write_atomic(&out, serde_json::to_string_pretty(&calibration)?.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    let _ = std::fs::remove_file(&state_path);
    let c = &calibration.choice;
    println!(
        "{}: threshold {:.4} ({}; TPR {:.3}, FPR {:.3}, F1 {:.3}), ROC-AUC {:.3} over {} successes and {} failures",
        out.display(),
        c.threshold,
        c.criterion,
        c.tpr,
        c.fpr,
        c.f1,
        c.roc_auc,
        c.n_success,
        c.n_failure
    );
    Ok(())
}
