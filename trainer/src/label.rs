//! Reward labelling of a LeRobotDataset: score every episode with a progress model, spread the per-prefix
//! progress to every frame, and store progress and the reward-aligned BC weights in a parquet file beside
//! the dataset. The weights are the trainer's (see [`crate::weighting`]): progress deltas over an action
//! chunk (LeRobot's RA-BC; or between scored prefixes, or between frames) turned into weights by paper
//! Eq. 3 or LeRobot's RA-BC formula.
//!
//! The file is rewritten atomically after each episode with every finished episode, so an interrupted run
//! resumes where it stopped: episodes already in the file are kept and not scored again. Both weightings
//! normalise by dataset-wide delta statistics, so the weight column is recomputed over all finished
//! episodes at each write; when the run completes it is the weight over the whole dataset.

use std::collections::BTreeMap;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use toprl_envs::dataset::{DatasetError, LeRobotDataset, ProgressTable, read_progress, write_progress};
use toprl_rewards::metrics::{WeightParams, interpolate_to_frames};
use toprl_rewards::score::{EpisodeScore, ProgressModel};
use toprl_rewards::topreward::EpisodeRequest;

use crate::weighting::{DeltaKind, Weighting, WeightingParams, deltas, weights_from_deltas};

/// Default file name, beside the dataset's `meta/` folder.
pub const PROGRESS_FILE: &str = "topreward_progress.parquet";

/// How to label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelOptions {
    /// Camera whose frames the model sees, e.g. `observation.images.front`.
    pub camera: String,
    /// Output parquet path (resumed when it exists).
    pub out: PathBuf,
    /// Eq. 3 parameters.
    pub weights: WeightParams,
    /// The progress difference each frame is credited with (chunk, prefix or frame deltas).
    pub delta: DeltaKind,
    /// Action chunk H of `delta = chunk`: s(t + H) - s(t).
    pub chunk: usize,
    /// Eq. 3 or LeRobot's RA-BC.
    pub weighting: Weighting,
    /// RA-BC's threshold above which a delta weighs 1.
    pub kappa: f64,
    /// Which frames the model sees.
    pub sampling: Sampling,
    /// Name of the model and its settings, stored in the file so a resumed run never mixes models.
    pub model_id: String,
}

/// Which frames of an episode the reward model sees, and at what frame rate its timestamps run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Every frame, at the dataset's frame rate.
    All,
    /// The paper's: `fps` frames per second over the whole episode; when that gives more than
    /// `max_frames`, `max_frames` spread uniformly from the first frame to the last instead (the default).
    Paper { fps: f64, max_frames: usize },
    /// LeRobot's port (`fps = 2`, `max_frames = 16`): sampled at `fps`, only the last `max_frames` kept,
    /// so a long episode's beginning is never seen. Timestamps count from the first kept frame.
    Last { fps: f64, max_frames: usize },
}

impl Sampling {
    /// The dataset frames the model sees and the frame rate to pass with them, for an episode of `n`
    /// frames recorded at `source_fps`. The passed rate makes the model's timestamps `i / fps` equal to
    /// the sampled frames' own times (from the first sampled frame) within half a source frame.
    pub fn positions(&self, n: usize, source_fps: f64) -> (Vec<usize>, f64) {
        let at_rate = |fps: f64| -> (Vec<usize>, f64) {
            if fps >= source_fps || n < 2 {
                return ((0..n).collect(), source_fps);
            }
            let stride = source_fps / fps;
            let count = ((n - 1) as f64 / stride).floor() as usize + 1;
            (
                (0..count).map(|k| (k as f64 * stride).round() as usize).collect(),
                fps,
            )
        };
        match *self {
            Sampling::All => ((0..n).collect(), source_fps),
            Sampling::Paper { fps, max_frames } => {
                let (positions, rate) = at_rate(fps);
                if positions.len() <= max_frames {
                    return (positions, rate);
                }
                // Spread max_frames over the episode: sample i sits at i (n-1)/(m-1) source frames.
                let m = max_frames;
                let step = (n - 1) as f64 / (m - 1) as f64;
                let positions = (0..m).map(|i| (i as f64 * step).round() as usize).collect();
                (positions, source_fps / step)
            }
            Sampling::Last { fps, max_frames } => {
                let (positions, rate) = at_rate(fps);
                let skip = positions.len().saturating_sub(max_frames);
                (positions[skip..].to_vec(), rate)
            }
        }
    }

    /// Provenance text stored in the output file.
    fn describe(&self) -> String {
        match self {
            Sampling::All => "all".into(),
            Sampling::Paper { fps, max_frames } => format!("paper fps={fps} max_frames={max_frames}"),
            Sampling::Last { fps, max_frames } => format!("last fps={fps} max_frames={max_frames}"),
        }
    }
}

/// What a labelling run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSummary {
    pub path: PathBuf,
    /// Episodes scored in this run.
    pub scored: usize,
    /// Episodes found finished in an existing file and kept.
    pub kept: usize,
    /// Rows in the file.
    pub frames: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("episode {episode}: the progress model failed: {source}")]
    Model {
        episode: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("episode {episode}: the model returned {reason}")]
    BadScore { episode: usize, reason: String },
    #[error(
        "{path}: was labelled with {key} = {found:?}, this run uses {expected:?}; use another output path"
    )]
    Mismatch {
        path: PathBuf,
        key: String,
        found: String,
        expected: String,
    },
    #[error("{path}: episode {episode} has {found} rows, the dataset has {expected} frames")]
    StaleEpisode {
        path: PathBuf,
        episode: usize,
        found: usize,
        expected: usize,
    },
    #[error("max_frames must be at least 2, got {0}")]
    BadMaxFrames(usize),
    #[error("the sampling frame rate must be positive, got {0}")]
    BadFps(f64),
    #[error("Eq. 3 weights: {0}")]
    Weights(#[from] toprl_rewards::metrics::WeightParamsError),
    #[error("--chunk must be at least 1 frame, got 0")]
    BadChunk,
    #[error("--kappa must be finite and >= 0, got {0}")]
    BadKappa(f64),
    #[error("camera {camera:?}: {reason}")]
    FrameSize { camera: String, reason: String },
}

/// Smallest frame side the Qwen3-VL video processor accepts (patch 16 x spatial merge 2).
const MIN_FRAME_SIDE: usize = 32;

/// Every check of the inputs that needs no model, run before a model is loaded (minutes for an 8B
/// checkpoint) and again by [`label_dataset`]: Eq. 3 parameters, `max_frames`, the camera and its frame size.
pub fn check_inputs(ds: &LeRobotDataset, opts: &LabelOptions) -> Result<(), LabelError> {
    opts.weights.validate()?;
    if opts.chunk == 0 {
        return Err(LabelError::BadChunk);
    }
    if !(opts.kappa.is_finite() && opts.kappa >= 0.0) {
        return Err(LabelError::BadKappa(opts.kappa));
    }
    match opts.sampling {
        Sampling::Paper { max_frames, .. } | Sampling::Last { max_frames, .. } if max_frames < 2 => {
            return Err(LabelError::BadMaxFrames(max_frames));
        }
        Sampling::Paper { fps, .. } | Sampling::Last { fps, .. } if !(fps.is_finite() && fps > 0.0) => {
            return Err(LabelError::BadFps(fps));
        }
        _ => {}
    }
    if !ds.camera_keys().contains(&opts.camera) {
        return Err(DatasetError::UnknownCamera {
            camera: opts.camera.clone(),
            available: ds.camera_keys().join(", "),
        }
        .into());
    }
    let size = |reason: String| LabelError::FrameSize {
        camera: opts.camera.clone(),
        reason,
    };
    let (height, width) = ds
        .info()
        .features
        .get(&opts.camera)
        .and_then(|f| f.resolution())
        .ok_or_else(|| size("meta/info.json gives no frame size".into()))?;
    if height < MIN_FRAME_SIDE || width < MIN_FRAME_SIDE {
        return Err(size(format!(
            "frames are {width}x{height}; Qwen3-VL needs at least {MIN_FRAME_SIDE} pixels on each side"
        )));
    }
    if height.max(width) > 200 * height.min(width) {
        return Err(size(format!(
            "frames are {width}x{height}; the aspect ratio must be at most 200"
        )));
    }
    Ok(())
}

fn provenance(opts: &LabelOptions) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("toprl.model".into(), opts.model_id.clone());
    m.insert("toprl.camera".into(), opts.camera.clone());
    m.insert(
        "toprl.weights".into(),
        format!(
            "delta={:?} chunk={} weighting={:?} tau={} delta_max={} min_weight={} kappa={}",
            opts.delta,
            opts.chunk,
            opts.weighting,
            opts.weights.tau,
            opts.weights.delta_max,
            opts.weights.min_weight,
            opts.kappa
        )
        .to_lowercase(),
    );
    m.insert("toprl.sampling".into(), opts.sampling.describe());
    m
}

/// The frames of one episode the model sees.
struct Sampled {
    episode: usize,
    frames: Vec<image::RgbImage>,
    positions: Vec<usize>,
    /// Frames in the episode.
    n: usize,
    fps: f64,
    instruction: String,
}

fn sample_episode(ds: &LeRobotDataset, opts: &LabelOptions, episode: usize) -> Result<Sampled, LabelError> {
    // Only the sampled frames are decoded to RGB and kept (a long episode at 30 fps is scored at 2).
    let rows = ds.episode_rows(episode)?;
    let n = rows.timestamp.len();
    let (positions, fps) = opts.sampling.positions(n, ds.fps());
    let frames = ds.camera_frames_at(episode, &rows, &opts.camera, &positions)?;
    Ok(Sampled {
        episode,
        frames,
        positions,
        n,
        fps,
        instruction: ds.instruction_of(episode, &rows)?,
    })
}

/// Per-frame progress of one episode from the model's per-prefix progress.
fn spread_to_frames<E: std::error::Error + Send + Sync + 'static>(
    s: &Sampled,
    score: Result<EpisodeScore, E>,
) -> Result<Vec<f64>, LabelError> {
    let (episode, sampled, positions, n) = (s.episode, &s.frames, &s.positions, s.n);
    let score = score.map_err(|e| LabelError::Model {
        episode,
        source: Box::new(e),
    })?;
    let bad = |reason: String| LabelError::BadScore { episode, reason };
    if score.prefix_lengths.len() != score.progress.len() || score.progress.is_empty() {
        return Err(bad(format!(
            "{} prefix lengths and {} progress values",
            score.prefix_lengths.len(),
            score.progress.len()
        )));
    }
    let mut at = Vec::with_capacity(score.prefix_lengths.len());
    for (i, &len) in score.prefix_lengths.iter().enumerate() {
        if len == 0 || len > sampled.len() || (i > 0 && len <= score.prefix_lengths[i - 1]) {
            return Err(bad(format!(
                "prefix lengths {:?} for {} frames",
                score.prefix_lengths,
                sampled.len()
            )));
        }
        // A prefix of `len` sampled frames ends at the episode frame of its last sample.
        at.push(positions[len - 1] as f64);
    }
    // A non-finite raw score makes min-max progress meaningless (a NaN range maps every prefix to 1.0):
    // both the raw scores and the progress must be finite.
    if let Some(p) = score.log_probs.iter().find(|p| !p.is_finite()) {
        return Err(bad(format!("a non-finite score {p}")));
    }
    if let Some(p) = score.progress.iter().find(|p| !p.is_finite()) {
        return Err(bad(format!("a non-finite progress value {p}")));
    }
    Ok(interpolate_to_frames(&at, &score.progress, n))
}

/// Label every episode of `ds` with `model` into `opts.out`, resuming from an existing file.
pub fn label_dataset<M: ProgressModel>(
    ds: &LeRobotDataset,
    model: &mut M,
    opts: &LabelOptions,
) -> Result<LabelSummary, LabelError> {
    check_inputs(ds, opts)?;
    let meta = provenance(opts);
    // Finished episodes: progress per frame, by episode index.
    let mut done: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    if opts.out.exists() {
        let old = read_progress(&opts.out)?;
        for (k, v) in &meta {
            let found = old.metadata.get(k).cloned().unwrap_or_default();
            if &found != v {
                return Err(LabelError::Mismatch {
                    path: opts.out.clone(),
                    key: k.clone(),
                    found,
                    expected: v.clone(),
                });
            }
        }
        let mut by_ep: BTreeMap<usize, Vec<(i64, f64)>> = BTreeMap::new();
        for i in 0..old.len() {
            by_ep
                .entry(old.episode_index[i] as usize)
                .or_default()
                .push((old.frame_index[i], old.progress[i]));
        }
        for (e, mut rows) in by_ep {
            let expected = ds.episode_meta(e)?.length;
            rows.sort_by_key(|r| r.0);
            let complete = rows.len() == expected && rows.iter().enumerate().all(|(i, r)| r.0 == i as i64);
            if !complete {
                return Err(LabelError::StaleEpisode {
                    path: opts.out.clone(),
                    episode: e,
                    found: rows.len(),
                    expected,
                });
            }
            done.insert(e, rows.into_iter().map(|r| r.1).collect());
        }
    }
    let kept = done.len();
    let todo: Vec<usize> = (0..ds.num_episodes()).filter(|e| !done.contains_key(e)).collect();
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("labelling {bar:30} {pos}/{len} episodes {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut scored = 0;
    // As many episodes at once as the model scores in parallel (remote servers); each is written as soon
    // as its batch is back, in episode order.
    for batch in todo.chunks(model.parallelism().max(1)) {
        let sampled = batch
            .iter()
            .map(|&e| sample_episode(ds, opts, e))
            .collect::<Result<Vec<_>, _>>()?;
        let requests: Vec<EpisodeRequest<'_>> = sampled
            .iter()
            .map(|s| EpisodeRequest {
                frames: &s.frames,
                fps: s.fps,
                instruction: &s.instruction,
            })
            .collect();
        let scores = model.score_episodes(&requests);
        for (s, score) in sampled.iter().zip(scores) {
            let progress = spread_to_frames(s, score)?;
            done.insert(s.episode, progress);
            write_table(ds, &done, opts, &meta)?;
            scored += 1;
            bar.inc(1);
            tracing::debug!(episode = s.episode, "labelled");
        }
    }
    bar.finish_and_clear();
    if scored == 0 && !opts.out.exists() {
        write_table(ds, &done, opts, &meta)?;
    }
    let frames = done.values().map(Vec::len).sum();
    Ok(LabelSummary {
        path: opts.out.clone(),
        scored,
        kept,
        frames,
    })
}

fn write_table(
    ds: &LeRobotDataset,
    done: &BTreeMap<usize, Vec<f64>>,
    opts: &LabelOptions,
    meta: &BTreeMap<String, String>,
) -> Result<(), LabelError> {
    let episodes: Vec<usize> = done.keys().copied().collect();
    let progress: Vec<Vec<f64>> = done.values().cloned().collect();
    let weights = label_weights(&progress, opts, ds.fps());
    let mut t = ProgressTable {
        metadata: meta.clone(),
        ..Default::default()
    };
    for ((e, p), w) in episodes.iter().zip(&progress).zip(&weights) {
        let start = ds.episode_meta(*e)?.dataset_from_index as i64;
        for (f, (pv, wv)) in p.iter().zip(w).enumerate() {
            t.index.push(start + f as i64);
            t.episode_index.push(*e as i64);
            t.frame_index.push(f as i64);
            t.progress.push(*pv);
            t.weight.push(*wv);
        }
    }
    write_progress(&opts.out, &t)?;
    Ok(())
}

/// Per-frame weights of every finished episode, as the trainer computes them (`delta = prefix` reads the
/// frames the model really scored, which the sampling fixes from the episode's length).
fn label_weights(progress: &[Vec<f64>], opts: &LabelOptions, fps: f64) -> Vec<Vec<f64>> {
    let per_episode: Vec<Vec<f64>> = progress
        .iter()
        .map(|p| {
            let (scored_frames, _) = opts.sampling.positions(p.len(), fps);
            deltas(p, opts.delta, opts.chunk, &scored_frames)
        })
        .collect();
    weights_from_deltas(
        &per_episode,
        &WeightingParams {
            weighting: opts.weighting,
            eq3: opts.weights,
            kappa: opts.kappa,
        },
    )
}

/// The default output path for a dataset: `<root>/topreward_progress.parquet`.
pub fn default_progress_path(ds: &LeRobotDataset) -> PathBuf {
    ds.root().join(PROGRESS_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;
    use toprl_envs::dataset::{DatasetSpec, DatasetWriter};
    use toprl_envs::episode::Episode;
    use toprl_rewards::metrics::{min_max_progress, voc};
    use toprl_rewards::score::EpisodeScore;

    const CAM: &str = "observation.images.front";

    /// A real, deterministic progress model for testing the plumbing: the score of a prefix is the log
    /// of the mean brightness of its last frame (brighter = further along).
    struct Brightness {
        calls: usize,
    }

    impl ProgressModel for Brightness {
        type Error = std::io::Error;
        fn score_episode(
            &mut self,
            frames: &[RgbImage],
            _fps: f64,
            _i: &str,
        ) -> Result<EpisodeScore, Self::Error> {
            self.calls += 1;
            let log_probs: Vec<f64> = frames
                .iter()
                .map(|f| {
                    let m = f.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() / f.as_raw().len() as f64;
                    (m / 255.0 + 1e-3).ln()
                })
                .collect();
            let progress = min_max_progress(&log_probs);
            Ok(EpisodeScore {
                prefix_lengths: (1..=frames.len()).collect(),
                voc: voc(&progress),
                num_tokens: vec![0; frames.len()],
                log_probs,
                progress,
            })
        }
    }

    fn dataset(dir: &std::path::Path) -> LeRobotDataset {
        let path = dir.join("ds");
        let mut w = DatasetWriter::create(&path, DatasetSpec::so101(30, &[(CAM, 64, 48)])).unwrap();
        for (e, n) in [8usize, 5, 10].into_iter().enumerate() {
            // Brightness ramps up over the episode (down for episode 1: a failure).
            let level = |f: usize| {
                let x = 30.0 + 180.0 * f as f64 / (n - 1) as f64;
                (if e == 1 { 240.0 - x } else { x }) as u8
            };
            let frames: Vec<RgbImage> = (0..n)
                .map(|f| RgbImage::from_pixel(64, 48, image::Rgb([level(f); 3])))
                .collect();
            w.add_episode(&Episode {
                index: e,
                instruction: "brighten".into(),
                fps: 30.0,
                states: vec![vec![0.0; 6]; n],
                actions: vec![vec![0.0; 6]; n],
                cameras: [(CAM.to_string(), frames)].into_iter().collect(),
                success: None,
                true_progress: None,
                environment_states: Vec::new(),
            })
            .unwrap();
        }
        w.finish().unwrap();
        LeRobotDataset::open(&path).unwrap()
    }

    fn opts(out: PathBuf) -> LabelOptions {
        LabelOptions {
            camera: CAM.into(),
            out,
            weights: WeightParams::default(),
            delta: DeltaKind::Chunk,
            chunk: 3,
            weighting: Weighting::Eq3,
            kappa: 0.01,
            sampling: Sampling::All,
            model_id: "brightness".into(),
        }
    }

    #[test]
    fn labels_every_frame_with_progress_and_eq3_weights_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset(tmp.path());
        let o = opts(tmp.path().join(PROGRESS_FILE));
        let mut model = Brightness { calls: 0 };
        let s = label_dataset(&ds, &mut model, &o).unwrap();
        assert_eq!((s.scored, s.kept, s.frames, model.calls), (3, 0, 23, 3));
        let t = read_progress(&o.out).unwrap();
        assert_eq!(t.index, (0..23).collect::<Vec<i64>>());
        let per_ep: Vec<Vec<f64>> = (0..3)
            .map(|e| {
                (0..t.len())
                    .filter(|&i| t.episode_index[i] == e)
                    .map(|i| t.progress[i])
                    .collect()
            })
            .collect();
        // Success episodes rise from 0 to 1, the failure falls.
        assert!(per_ep[0].windows(2).all(|w| w[1] > w[0]) && per_ep[0][0] == 0.0 && per_ep[0][7] == 1.0);
        assert!(per_ep[1].windows(2).all(|w| w[1] < w[0]));
        // Chunk deltas s(min(t + 3, n - 1)) - s(t), then Eq. 3 with the dataset-wide mean delta.
        let d: Vec<Vec<f64>> = per_ep
            .iter()
            .map(|p| (0..p.len()).map(|i| p[(i + 3).min(p.len() - 1)] - p[i]).collect())
            .collect();
        let mean = d.iter().flatten().sum::<f64>() / 23.0;
        let want: Vec<f64> = d
            .iter()
            .flatten()
            .map(|x| (2.0 * (x - mean).exp()).clamp(0.0, 2.0))
            .collect();
        for (got, want) in t.weight.iter().zip(&want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert!(t.metadata["toprl.weights"].starts_with("delta=chunk chunk=3 weighting=eq3"));
        assert_eq!(t.metadata["toprl.camera"], CAM);

        // Crash after episode 0: only its rows are in the file; a rerun scores episodes 1 and 2 only.
        let mut partial = t.clone();
        let keep = 8;
        for col in [
            &mut partial.index,
            &mut partial.episode_index,
            &mut partial.frame_index,
        ] {
            col.truncate(keep);
        }
        partial.progress.truncate(keep);
        partial.weight.truncate(keep);
        write_progress(&o.out, &partial).unwrap();
        let mut model = Brightness { calls: 0 };
        let s = label_dataset(&ds, &mut model, &o).unwrap();
        assert_eq!((s.scored, s.kept, model.calls), (2, 1, 2));
        assert_eq!(read_progress(&o.out).unwrap(), t);

        lerobot_rabc_reads(&o.out, &t);

        // Complete file: nothing to do.
        let s = label_dataset(&ds, &mut model, &o).unwrap();
        assert_eq!((s.scored, s.kept, model.calls), (0, 3, 2));

        // A different model or camera never mixes into the same file.
        let mut other = opts(o.out.clone());
        other.model_id = "another".into();
        assert!(matches!(
            label_dataset(&ds, &mut model, &other),
            Err(LabelError::Mismatch { .. })
        ));
        let mut other = opts(o.out.clone());
        other.camera = "observation.images.wrist".into();
        assert!(matches!(
            label_dataset(&ds, &mut model, &other),
            Err(LabelError::Dataset(_))
        ));
    }

    /// LeRobot's RA-BC loader (`lerobot.utils.rabc.RABCWeights`, head_mode "sparse") must read the file
    /// and see our progress for every frame. Without a LeRobot Python the test fails and says how to
    /// install it: a check that cannot run is not a check that passed.
    fn lerobot_rabc_reads(path: &std::path::Path, t: &ProgressTable) {
        let python = std::env::var_os("TOPRL_LEROBOT_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-lerobot/bin/python")
            });
        assert!(
            python.exists(),
            "no LeRobot Python at {}: run scripts/setup.sh (it installs .venv-lerobot) or set TOPRL_LEROBOT_PYTHON",
            python.display()
        );
        let code = "import sys, json\nfrom lerobot.utils.rabc import RABCWeights\n\
                    w = RABCWeights(sys.argv[1], chunk_size=2, device='cpu')\n\
                    print(json.dumps([w.progress_lookup[i] for i in sorted(w.progress_lookup)]))";
        let out = std::process::Command::new(&python)
            .args(["-c", code])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let seen: Vec<f64> = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(seen, t.progress);
    }

    /// A model whose outputs are NaN (NaN weights): what min-max makes of them (progress 1.0) must not
    /// become labels; the error names the episode and nothing is written.
    struct NanModel;

    impl ProgressModel for NanModel {
        type Error = std::io::Error;
        fn score_episode(
            &mut self,
            frames: &[RgbImage],
            _: f64,
            _: &str,
        ) -> Result<EpisodeScore, Self::Error> {
            let log_probs = vec![f64::NAN; frames.len()];
            let progress = min_max_progress(&log_probs);
            Ok(EpisodeScore {
                prefix_lengths: (1..=frames.len()).collect(),
                voc: voc(&progress),
                num_tokens: vec![0; frames.len()],
                log_probs,
                progress,
            })
        }
    }

    #[test]
    fn non_finite_model_scores_are_an_error_naming_the_episode() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset(tmp.path());
        let o = opts(tmp.path().join("nan.parquet"));
        let err = label_dataset(&ds, &mut NanModel, &o).unwrap_err();
        assert!(
            matches!(&err, LabelError::BadScore { episode: 0, reason } if reason.contains("non-finite")),
            "{err}"
        );
        assert!(!o.out.exists());
    }

    #[test]
    fn bad_eq3_parameters_camera_and_frame_size_are_refused_before_scoring() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset(tmp.path());
        let mut model = Brightness { calls: 0 };
        let mut o = opts(tmp.path().join("x.parquet"));
        o.weights.min_weight = 5.0;
        o.weights.delta_max = 1.0;
        assert!(matches!(
            label_dataset(&ds, &mut model, &o),
            Err(LabelError::Weights(_))
        ));
        let mut o = opts(tmp.path().join("x.parquet"));
        o.weights.tau = f64::NAN;
        assert!(matches!(check_inputs(&ds, &o), Err(LabelError::Weights(_))));
        let mut o = opts(tmp.path().join("x.parquet"));
        o.chunk = 0;
        assert!(matches!(check_inputs(&ds, &o), Err(LabelError::BadChunk)));
        let mut o = opts(tmp.path().join("x.parquet"));
        o.kappa = -1.0;
        assert!(matches!(check_inputs(&ds, &o), Err(LabelError::BadKappa(_))));
        // 16x16 frames are below Qwen3-VL's 32-pixel minimum.
        let path = tmp.path().join("small");
        let mut w = DatasetWriter::create(&path, DatasetSpec::so101(30, &[(CAM, 16, 16)])).unwrap();
        w.add_episode(&Episode {
            index: 0,
            instruction: "x".into(),
            fps: 30.0,
            states: vec![vec![0.0; 6]; 2],
            actions: vec![vec![0.0; 6]; 2],
            cameras: [(CAM.to_string(), vec![RgbImage::new(16, 16); 2])]
                .into_iter()
                .collect(),
            success: None,
            true_progress: None,
            environment_states: Vec::new(),
        })
        .unwrap();
        w.finish().unwrap();
        let small = LeRobotDataset::open(&path).unwrap();
        let err = check_inputs(&small, &opts(tmp.path().join("y.parquet"))).unwrap_err();
        assert!(matches!(err, LabelError::FrameSize { .. }), "{err}");
        assert_eq!(model.calls, 0);
    }

    #[test]
    fn weight_column_follows_the_trainers_delta_and_weighting() {
        // The label file's weights are the trainer's own for the same progress and settings.
        let progress = vec![vec![0.0, 0.1, 0.1, 0.5, 0.9, 1.0], vec![0.0, 0.2, 0.1, 0.0, 0.0]];
        for (delta, weighting) in [
            (DeltaKind::Chunk, Weighting::Rabc),
            (DeltaKind::Prefix, Weighting::Eq3),
            (DeltaKind::Frame, Weighting::Eq3),
        ] {
            let mut o = opts(PathBuf::from("unused"));
            o.delta = delta;
            o.weighting = weighting;
            o.sampling = Sampling::Paper {
                fps: 10.0,
                max_frames: 3,
            };
            let got = label_weights(&progress, &o, 30.0);
            let params = WeightingParams {
                weighting,
                eq3: o.weights,
                kappa: o.kappa,
            };
            let d: Vec<Vec<f64>> = progress
                .iter()
                .map(|p| deltas(p, delta, 3, &o.sampling.positions(p.len(), 30.0).0))
                .collect();
            assert_eq!(got, weights_from_deltas(&d, &params), "{delta:?} {weighting:?}");
        }
        // Frame deltas with Eq. 3 are the rewards crate's Eq. 3 (the paper's per-frame reading).
        let mut o = opts(PathBuf::from("unused"));
        o.delta = DeltaKind::Frame;
        let paper = toprl_rewards::metrics::reward_aligned_weights(&progress, &o.weights);
        for (a, b) in label_weights(&progress, &o, 30.0)
            .iter()
            .flatten()
            .zip(paper.iter().flatten())
        {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn subsampled_scores_are_spread_back_to_every_frame() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = dataset(tmp.path());
        let mut o = opts(tmp.path().join("sub.parquet"));
        o.sampling = Sampling::Paper {
            fps: 30.0,
            max_frames: 4,
        };
        let mut model = Brightness { calls: 0 };
        label_dataset(&ds, &mut model, &o).unwrap();
        let t = read_progress(&o.out).unwrap();
        let ep2: Vec<f64> = (0..t.len())
            .filter(|&i| t.episode_index[i] == 2)
            .map(|i| t.progress[i])
            .collect();
        // 10 frames sampled at 0, 3, 6, 9; brightness is linear in time, so is the interpolation.
        assert_eq!(ep2.len(), 10);
        assert_eq!((ep2[0], ep2[9]), (0.0, 1.0));
        assert!(ep2.windows(2).all(|w| w[1] >= w[0]));
        let paper = |fps, max_frames| Sampling::Paper { fps, max_frames };
        assert_eq!(paper(30.0, 4).positions(10, 30.0), (vec![0, 3, 6, 9], 10.0));
        assert_eq!(paper(30.0, 4).positions(3, 30.0), (vec![0, 1, 2], 30.0));
    }

    /// The model's timestamps `i / fps` are the sampled frames' own times, `position / source fps`,
    /// counted from the first sampled frame, within half a source frame.
    fn timestamps_match(sampling: Sampling, n: usize, source_fps: f64) -> (Vec<usize>, f64) {
        let (positions, fps) = sampling.positions(n, source_fps);
        for (i, &p) in positions.iter().enumerate() {
            let model_t = i as f64 / fps;
            let frame_t = (p - positions[0]) as f64 / source_fps;
            assert!(
                (model_t - frame_t).abs() <= 0.5 / source_fps + 1e-9,
                "{sampling:?}: sample {i} at frame {p}: {model_t} s vs {frame_t} s"
            );
        }
        (positions, fps)
    }

    #[test]
    fn paper_sampling_is_2_fps_over_the_whole_episode_with_matching_timestamps() {
        let paper = Sampling::Paper {
            fps: 2.0,
            max_frames: 16,
        };
        // 5 s at 30 fps: 2 fps gives frames 0, 15, ..., 135, 10 of them, at 2 fps.
        let (p, fps) = timestamps_match(paper, 150, 30.0);
        assert_eq!((p.len(), p[1], p[9], fps), (10, 15, 135, 2.0));
        // 20 s: 40 frames at 2 fps, more than 16: 16 spread from the first frame to the last; the old
        // rate 30 * 16 / 600 = 0.8 fps would have shrunk time by 6%.
        let (p, fps) = timestamps_match(paper, 600, 30.0);
        assert_eq!((p.len(), p[0], p[15]), (16, 0, 599));
        assert!((fps - 30.0 * 15.0 / 599.0).abs() < 1e-12);
        // A non-integer stride (2 fps of 25 fps) stays within half a frame.
        timestamps_match(paper, 200, 25.0);
        timestamps_match(paper, 7, 30.0);
    }

    #[test]
    fn lerobot_port_sampling_keeps_the_last_frames() {
        let last = Sampling::Last {
            fps: 2.0,
            max_frames: 16,
        };
        let (p, fps) = timestamps_match(last, 600, 30.0);
        assert_eq!((p.len(), p[0], p[15], fps), (16, 24 * 15, 39 * 15, 2.0));
        let (p, _) = timestamps_match(last, 150, 30.0);
        assert_eq!(p.len(), 10, "a short episode is seen whole");
    }
}
