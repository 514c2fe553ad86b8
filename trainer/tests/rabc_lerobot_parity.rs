//! toprl's `weighting = "rabc"`, `delta = "chunk"` against LeRobot 0.4.4's own RA-BC code
//! (`lerobot/utils/rabc.py`, `RABCWeights`, and the weighted loss of `lerobot_train.update_policy`), run
//! by `fixtures/rabc_lerobot_parity.py` in `.venv-lerobot` on the same per-frame progress, chunk size and
//! kappa.
//!
//! Compared: every frame's progress delta and weight (toprl's `frame_weights` with the `oracle` source,
//! the path an experiment arm takes), and per batch the self-normalised weights and the weighted loss
//! (toprl: `self_normalise` then the policies' `mean(w' l)`; LeRobot: `w B / (sum w + eps)` then
//! `sum(w l) / (sum w + eps)`, eps = 1e-6).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use toprl_envs::episode::Episode;
use toprl_rewards::metrics::WeightParams;
use toprl_trainer::arm_weights::{LabelSettings, frame_weights};
use toprl_trainer::config::RewardSource;
use toprl_trainer::weighting::{
    DeltaKind, ProgressScale, Weighting, WeightingParams, deltas, self_normalise, weights_from_deltas,
};

/// Deltas and per-frame weights: LeRobot rounds deltas to f32, toprl keeps f64 deltas and f32 weights.
const FRAME_TOLERANCE: f64 = 1e-6;
/// Batch weights and losses, relative: LeRobot adds eps = 1e-6 to both normalising sums.
const BATCH_RELATIVE_TOLERANCE: f64 = 1e-5;

struct Case {
    name: &'static str,
    chunk: usize,
    kappa: f64,
    progress: Vec<Vec<f32>>,
    /// Progress given to both sides as these f64 values (a TOPReward-like f64 source, through
    /// `weights_from_deltas`) instead of the f32 simulator progress of `frame_weights`.
    f64_progress: Option<Vec<Vec<f64>>>,
    batch_size: usize,
    num_batches: usize,
}

impl Case {
    /// The progress both sides read, as f64.
    fn progress64(&self) -> Vec<Vec<f64>> {
        self.f64_progress.clone().unwrap_or_else(|| {
            self.progress
                .iter()
                .map(|p| p.iter().map(|&x| f64::from(x)).collect())
                .collect()
        })
    }
}

/// A small deterministic generator (the test's inputs need no statistics, only variety).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0
    }
}

fn cases() -> Vec<Case> {
    // A demonstration that rises with wiggles (some chunk deltas negative, some tiny).
    let wiggly: Vec<f32> = (0..40)
        .map(|t| (t as f32 / 39.0 + 0.04 * (1.3 * t as f32).sin()).clamp(0.0, 1.0))
        .collect();
    let constant = vec![0.4f32; 20];
    let failing: Vec<f32> = (0..25).map(|t| 0.6 - 0.02 * t as f32).collect();
    let shorter_than_chunk = vec![0.1f32, 0.2, 0.25, 0.5, 0.55];
    // Deltas of exactly kappa in decimal (0.31 - 0.3): above kappa in f64, at kappa in f32.
    let at_kappa: Vec<f32> = (0..12).map(|t| if t < 4 { 0.3 } else { 0.31 }).collect();
    let slow: Vec<f32> = (0..30).map(|t| 0.0004 * t as f32).collect();
    vec![
        Case {
            name: "mixed_episodes",
            chunk: 8,
            kappa: 0.01,
            progress: vec![
                wiggly.clone(),
                constant,
                failing.clone(),
                shorter_than_chunk,
                at_kappa,
                slow,
            ],
            f64_progress: None,
            batch_size: 16,
            num_batches: 6,
        },
        Case {
            // f64 progress whose chunk deltas are kappa in decimal but above it in f64 (0.31 - 0.3).
            name: "f64_deltas_at_kappa",
            chunk: 4,
            kappa: 0.01,
            progress: Vec::new(),
            f64_progress: Some(vec![
                (0..12).map(|t| if t < 4 { 0.3 } else { 0.31 }).collect(),
                (0..20).map(|t| 0.05 * f64::from(t)).collect(),
            ]),
            batch_size: 8,
            num_batches: 3,
        },
        Case {
            // Mostly regress: the mean delta is negative and LeRobot floors it at 0.
            name: "negative_mean",
            chunk: 3,
            kappa: 0.005,
            progress: vec![
                failing.clone(),
                failing.iter().map(|p| p * 0.5).collect(),
                wiggly.iter().take(10).copied().collect(),
            ],
            f64_progress: None,
            batch_size: 8,
            num_batches: 4,
        },
        Case {
            // SmolVLA's chunk of 50: longer than most episodes, every delta reaches the episode end.
            name: "chunk_past_episode_end",
            chunk: 50,
            kappa: 0.01,
            progress: vec![
                (0..60).map(|t| (t as f32 / 59.0).powi(2)).collect(),
                wiggly,
                failing,
            ],
            f64_progress: None,
            batch_size: 32,
            num_batches: 3,
        },
    ]
}

fn lerobot_python() -> PathBuf {
    let python = std::env::var_os("TOPRL_LEROBOT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-lerobot/bin/python"));
    // A missing LeRobot is a failure with the fix, never a silent pass.
    assert!(
        python.exists(),
        "no LeRobot Python at {}: run scripts/setup.sh (it installs .venv-lerobot) or set TOPRL_LEROBOT_PYTHON",
        python.display()
    );
    python
}

fn settings(case: &Case) -> LabelSettings {
    LabelSettings {
        delta: DeltaKind::Chunk,
        chunk: case.chunk,
        weighting: WeightingParams {
            weighting: Weighting::Rabc,
            eq3: WeightParams::default(),
            kappa: case.kappa,
        },
        progress: ProgressScale::Dataset,
        voc: None,
        seed: 0,
    }
}

fn episodes(case: &Case) -> Vec<Episode> {
    case.progress
        .iter()
        .enumerate()
        .map(|(index, p)| Episode {
            index,
            states: vec![vec![0.0; 6]; p.len()],
            actions: vec![vec![0.0; 6]; p.len()],
            success: Some(p.last() > p.first()),
            true_progress: Some(p.clone()),
            ..Episode::default()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

#[test]
fn rabc_weights_and_weighted_loss_match_lerobot() {
    let python = lerobot_python();
    let cases = cases();
    let mut rng = Lcg(11);
    // Global frame indices of each batch (as LeRobot's `index` column) and a per-sample loss for each.
    let mut batches: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut losses: Vec<Vec<Vec<f32>>> = Vec::new();
    for case in &cases {
        let frames: usize = case.progress64().iter().map(Vec::len).sum();
        let mut b: Vec<Vec<usize>> = (0..case.num_batches)
            .map(|_| (0..case.batch_size).map(|_| rng.below(frames)).collect())
            .collect();
        if case.name == "mixed_episodes" {
            // A batch from the failing episode only (frames 60..85): every weight 0.
            b.push((0..case.batch_size).map(|i| 60 + i).collect());
        }
        losses.push(
            b.iter()
                .map(|ix| ix.iter().map(|_| 0.05 + rng.unit()).collect())
                .collect(),
        );
        batches.push(b);
    }
    let input: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "name": c.name,
                "chunk": c.chunk,
                "kappa": c.kappa,
                "progress": c.progress64(),
                "batches": batches[i],
                "losses": losses[i],
            })
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let (in_path, out_path) = (tmp.path().join("cases.json"), tmp.path().join("lerobot.json"));
    std::fs::write(&in_path, Value::Array(input).to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rabc_lerobot_parity.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&in_path)
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "LeRobot's RA-BC failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lerobot: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();

    let (mut max_frame, mut max_batch) = (0.0f64, 0.0f64);
    let (mut soft, mut zero, mut full) = (0, 0, 0);
    for (i, case) in cases.iter().enumerate() {
        let theirs = &lerobot[i];
        let progress = case.progress64();
        let our_deltas: Vec<Vec<f64>> = progress
            .iter()
            .map(|p| deltas(p, DeltaKind::Chunk, case.chunk, &[]))
            .collect();
        let our_weights: Vec<f32> = if case.f64_progress.is_some() {
            weights_from_deltas(&our_deltas, &settings(case).weighting)
                .into_iter()
                .flatten()
                .map(|w| w as f32)
                .collect()
        } else {
            // The path of an experiment arm with simulator progress.
            let eps = episodes(case);
            let ours = frame_weights(RewardSource::Oracle, &eps, None, &settings(case)).unwrap();
            ours.weights.into_iter().flatten().collect()
        };
        let our_deltas: Vec<f64> = our_deltas.into_iter().flatten().collect();
        let (their_deltas, their_weights) = (floats(&theirs["deltas"]), floats(&theirs["weights"]));
        assert_eq!(
            our_weights.len(),
            their_weights.len(),
            "{}: frame count",
            case.name
        );
        for (f, (a, b)) in our_deltas.iter().zip(&their_deltas).enumerate() {
            assert!(
                (a - b).abs() <= FRAME_TOLERANCE,
                "{} frame {f}: delta {a} vs LeRobot {b}",
                case.name
            );
        }
        for (f, (&a, &b)) in our_weights.iter().zip(&their_weights).enumerate() {
            let diff = (f64::from(a) - b).abs();
            max_frame = max_frame.max(diff);
            assert!(
                diff <= FRAME_TOLERANCE,
                "{} frame {f}: weight {a} vs LeRobot {b} (delta {} vs {})",
                case.name,
                our_deltas[f],
                their_deltas[f]
            );
            match b {
                0.0 => zero += 1,
                1.0 => full += 1,
                _ => soft += 1,
            }
        }
        for (k, (indices, l)) in batches[i].iter().zip(&losses[i]).enumerate() {
            let w: Vec<f32> = indices.iter().map(|&g| our_weights[g]).collect();
            let normalised = self_normalise(&w);
            // The policies' weighted loss: mean(w' l) over the batch.
            let loss = normalised.iter().zip(l).map(|(a, b)| a * b).sum::<f32>() / l.len() as f32;
            let their_batch = &theirs["batches"][k];
            let relative = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
            for (j, (&a, b)) in normalised.iter().zip(floats(&their_batch["weights"])).enumerate() {
                let r = relative(f64::from(a), b);
                max_batch = max_batch.max(r);
                assert!(
                    r <= BATCH_RELATIVE_TOLERANCE,
                    "{} batch {k} sample {j}: {a} vs LeRobot {b}",
                    case.name
                );
            }
            let their_loss = their_batch["loss"].as_f64().unwrap();
            let r = relative(f64::from(loss), their_loss);
            max_batch = max_batch.max(r);
            assert!(
                r <= BATCH_RELATIVE_TOLERANCE,
                "{} batch {k}: loss {loss} vs LeRobot {their_loss}",
                case.name
            );
        }
    }
    // The cases reach every branch of RA-BC's weight (RA-BC Eq. 9): 0, soft and 1.
    assert!(
        zero > 0 && soft > 0 && full > 0,
        "zero {zero}, soft {soft}, full {full}"
    );
    eprintln!(
        "RA-BC parity with LeRobot 0.4.4: max |weight diff| {max_frame:.2e} over frames ({zero} zero, {soft} soft, \
         {full} full), max relative diff {max_batch:.2e} over batch weights and losses"
    );
}
