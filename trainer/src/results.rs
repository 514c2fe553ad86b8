//! The results of an experiment: per arm, success over seeds, written as `results.json` and a Markdown
//! table `results.md`, and printed at the end of `train`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::config::RewardSource;
use crate::stats::{PairedDifference, bootstrap_ci95, mean, paired_difference};
use crate::weighting::WeightStats;

/// Arms every other arm is compared with, seed by seed, when present.
pub const BASELINES: [&str; 2] = ["bc", "sparse"];

/// Seed of the bootstrap resampling (fixed, so a results file is reproducible from its runs).
pub const BOOTSTRAP_SEED: u64 = 0x0b00_7575;

/// Outcome of one arm trained with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Final success rate over the evaluation episodes; NaN (`null` in JSON) when it was not measured
    /// (evaluation on the real arm, where no simulator knows success).
    #[serde(deserialize_with = "nan_if_null")]
    pub success: f64,
    /// Evaluation episodes behind `success`.
    pub episodes: u32,
    /// Mean evaluation return (sum of the task's shaped reward); NaN when not measured (real arm).
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_return: f64,
    /// Training wall time in seconds.
    pub wall_time_s: f64,
    /// (training step, success rate) at each evaluation, the last one being the final evaluation.
    pub curve: Vec<(u32, f64)>,
    /// Mean success of the last `train.last_k` evaluations (NaN without measured evaluations).
    #[serde(default, deserialize_with = "nan_if_null")]
    pub last_k_mean: f64,
    /// Spread of the arm's per-frame demonstration weights (of the BC phase for AWR arms).
    #[serde(default)]
    pub weights: Option<WeightStats>,
    /// Mean prefix VOC of the arm's dense progress signal.
    #[serde(default)]
    pub reward_voc: Option<f64>,
    /// Noise standard deviation of an `oracle_noisy` arm.
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

/// serde_json writes a non-finite number as `null`; read it back as NaN ("not measured").
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One arm aggregated over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub reward: RewardSource,
    /// How the arm trains, in words (algorithm, weighting, deltas, steps).
    #[serde(default)]
    pub method: String,
    /// Mean over seeds of the final evaluation's success.
    pub success_mean: f64,
    /// Sample standard deviation over seeds (0 for a single seed).
    pub success_std: f64,
    /// Percentile bootstrap 95% interval of `success_mean` over seeds.
    #[serde(default)]
    pub ci95: [f64; 2],
    /// Mean over seeds of the mean of the last `train.last_k` evaluations, and its interval.
    #[serde(default)]
    pub last_k_mean: f64,
    #[serde(default)]
    pub last_k_ci95: [f64; 2],
    /// Per-frame weights, averaged over seeds: mean, standard deviation, effective sample size as a
    /// fraction of frames (1 = plain BC) and fraction of zero weights.
    #[serde(default)]
    pub weight_mean: Option<f64>,
    #[serde(default)]
    pub weight_std: Option<f64>,
    #[serde(default)]
    pub weight_ess: Option<f64>,
    #[serde(default)]
    pub weight_zero_fraction: Option<f64>,
    /// Mean over seeds of the dense reward's prefix VOC.
    #[serde(default)]
    pub reward_voc: Option<f64>,
    /// Paired differences (same seeds, same evaluation scenes) of the final success against each
    /// baseline arm of [`BASELINES`] present in the experiment (not against itself).
    #[serde(default)]
    pub paired: Vec<PairedDifference>,
    /// The same for the mean of the last evaluations.
    #[serde(default)]
    pub paired_last_k: Vec<PairedDifference>,
    pub per_seed: Vec<SeedResult>,
}

/// The whole experiment's results, the schema of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub experiment: String,
    /// Which reward model produced the `topreward` arms' labels (path or hub id), if any arm used one.
    pub reward_model: Option<String>,
    pub arms: Vec<ArmResult>,
}

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Mean over the seeds that have a value; `None` when none has.
fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| mean(&v))
}

impl ArmResult {
    /// Aggregate the per-seed results of one arm (paired differences are added by [`Results::new`]).
    pub fn from_seeds(name: &str, reward: RewardSource, method: &str, per_seed: Vec<SeedResult>) -> Self {
        let successes: Vec<f64> = per_seed.iter().map(|s| s.success).collect();
        let last_k: Vec<f64> = per_seed.iter().map(|s| s.last_k_mean).collect();
        let (success_mean, success_std) = mean_std(&successes);
        let weights =
            |f: fn(&WeightStats) -> f64| mean_of(per_seed.iter().map(|s| s.weights.as_ref().map(f)));
        Self {
            name: name.to_string(),
            reward,
            method: method.to_string(),
            success_mean,
            success_std,
            ci95: bootstrap_ci95(&successes, BOOTSTRAP_SEED),
            last_k_mean: mean(&last_k),
            last_k_ci95: bootstrap_ci95(&last_k, BOOTSTRAP_SEED),
            weight_mean: weights(|w| w.mean),
            weight_std: weights(|w| w.std),
            weight_ess: weights(|w| w.ess),
            weight_zero_fraction: weights(|w| w.zero_fraction),
            reward_voc: mean_of(per_seed.iter().map(|s| s.reward_voc)),
            paired: Vec::new(),
            paired_last_k: Vec::new(),
            per_seed,
        }
    }
}

fn interval(ci: [f64; 2]) -> String {
    format!("[{:.3}, {:.3}]", ci[0], ci[1])
}

fn optional(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

fn difference(d: Option<&PairedDifference>) -> String {
    d.map_or("–".into(), |d| {
        format!(
            "{:+.3} {} ({}/{}/{})",
            d.mean,
            interval(d.ci95),
            d.wins,
            d.ties,
            d.losses
        )
    })
}

/// (seed, value) of one arm.
type SeedValues = Vec<(u64, f64)>;

impl Results {
    /// The results of `arms`, with every arm's paired differences against the [`BASELINES`] present.
    pub fn new(experiment: String, reward_model: Option<String>, mut arms: Vec<ArmResult>) -> Self {
        let series = |arm: &ArmResult, last_k: bool| -> SeedValues {
            arm.per_seed
                .iter()
                .map(|s| (s.seed, if last_k { s.last_k_mean } else { s.success }))
                .collect()
        };
        let baselines: Vec<(String, SeedValues, SeedValues)> = BASELINES
            .iter()
            .filter_map(|b| arms.iter().find(|a| a.name == *b))
            .map(|a| (a.name.clone(), series(a, false), series(a, true)))
            .collect();
        for arm in &mut arms {
            let (final_, last) = (series(arm, false), series(arm, true));
            for (name, base_final, base_last) in &baselines {
                if *name == arm.name {
                    continue;
                }
                arm.paired
                    .extend(paired_difference(name, &final_, base_final, BOOTSTRAP_SEED));
                arm.paired_last_k
                    .extend(paired_difference(name, &last, base_last, BOOTSTRAP_SEED));
            }
        }
        Self {
            experiment,
            reward_model,
            arms,
        }
    }

    /// The Markdown tables: per arm the final success (mean, bootstrap 95% interval over seeds), the
    /// mean of the last evaluations, the weights' spread, the reward's VOC, and the paired differences
    /// against `bc` and `sparse` (mean, interval, and seeds won/tied/lost).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.experiment);
        if let Some(model) = &self.reward_model {
            let _ = writeln!(out, "TOPReward labels from `{model}`.\n");
        }
        let _ = writeln!(
            out,
            "| arm | method | success (mean ± std) | 95% CI | last-k mean | 95% CI | weight ESS | weight mean ± std | reward VOC | seeds | eval episodes | wall time (s) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for arm in &self.arms {
            let episodes: u32 = arm.per_seed.iter().map(|s| s.episodes).sum();
            let wall: f64 = arm.per_seed.iter().map(|s| s.wall_time_s).sum();
            let weights = match (arm.weight_mean, arm.weight_std) {
                (Some(m), Some(s)) => format!("{m:.3} ± {s:.3}"),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} ± {:.3} | {} | {:.3} | {} | {} | {} | {} | {} | {} | {:.1} |",
                arm.name,
                arm.method,
                arm.success_mean,
                arm.success_std,
                interval(arm.ci95),
                arm.last_k_mean,
                interval(arm.last_k_ci95),
                optional(arm.weight_ess),
                weights,
                optional(arm.reward_voc),
                arm.per_seed.len(),
                episodes,
                wall
            );
        }
        let present: Vec<&str> = BASELINES
            .iter()
            .copied()
            .filter(|b| self.arms.iter().any(|a| a.name == *b))
            .collect();
        if !present.is_empty() {
            let _ = writeln!(
                out,
                "\nPaired differences (arm - baseline, same seeds and evaluation scenes): mean, bootstrap 95% \
                 interval, seeds won/tied/lost.\n"
            );
            let mut header = String::from("| arm |");
            let mut rule = String::from("|---|");
            for b in &present {
                let _ = write!(header, " vs {b} (final) | vs {b} (last-k) |");
                rule.push_str("---|---|");
            }
            let _ = writeln!(out, "{header}\n{rule}");
            for arm in &self.arms {
                let mut row = format!("| {} |", arm.name);
                for b in &present {
                    let find = |v: &[PairedDifference]| v.iter().find(|d| d.baseline == *b).cloned();
                    let _ = write!(
                        row,
                        " {} | {} |",
                        difference(find(&arm.paired).as_ref()),
                        difference(find(&arm.paired_last_k).as_ref())
                    );
                }
                let _ = writeln!(out, "{row}");
            }
        }
        out
    }

    /// Write `results.json` and `results.md` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<(), ResultsError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| ResultsError::Encode(e.to_string()))?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            write_atomic(&path, bytes).map_err(|source| ResultsError::Io { path, source })
        };
        write("results.json", json.as_bytes())?;
        write("results.md", self.to_markdown().as_bytes())
    }
}

/// Errors writing results.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode results: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeasured_success_round_trips_as_null_and_nan() {
        // Evaluation on the real arm: no success, no return, no curve.
        let mut r = seed(3, f64::NAN);
        r.mean_return = f64::NAN;
        r.last_k_mean = f64::NAN;
        r.curve.clear();
        let json = serde_json::to_value(&r).unwrap();
        assert!(
            json["success"].is_null() && json["mean_return"].is_null(),
            "{json}"
        );
        let back: SeedResult = serde_json::from_value(json).unwrap();
        assert!(back.success.is_nan() && back.mean_return.is_nan() && back.last_k_mean.is_nan());
        assert_eq!(back.seed, 3);
    }

    fn seed(seed: u64, success: f64) -> SeedResult {
        SeedResult {
            seed,
            success,
            episodes: 10,
            mean_return: 1.0,
            wall_time_s: 2.0,
            curve: vec![(100, success)],
            last_k_mean: success,
            weights: None,
            reward_voc: None,
            noise_sigma: None,
        }
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[0.2, 0.4, 0.6]);
        assert!((m - 0.4).abs() < 1e-12 && (s - 0.2).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }

    #[test]
    fn results_table_and_json_have_every_arm() {
        let results = Results::new(
            "demo".into(),
            None,
            vec![
                ArmResult::from_seeds("bc", RewardSource::None, "BC", vec![seed(0, 0.2), seed(1, 0.4)]),
                ArmResult::from_seeds(
                    "oracle",
                    RewardSource::Oracle,
                    "RA-BC",
                    vec![seed(0, 0.8), seed(1, 0.6)],
                ),
            ],
        );
        let md = results.to_markdown();
        assert!(
            md.contains("| bc | BC | 0.300 ± 0.141 | [0.200, 0.400] |"),
            "{md}"
        );
        assert!(md.contains("| oracle | RA-BC | 0.700 ± 0.141 |"), "{md}");
        // Oracle - bc is +0.6 and +0.2 on seeds 0 and 1: both won.
        assert!(md.contains("| oracle | +0.400 [0.200, 0.600] (2/0/0) |"), "{md}");
        assert!(md.contains("| bc | – | – |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        results.write(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["arms"][1]["name"], "oracle");
        assert_eq!(json["arms"][0]["per_seed"].as_array().unwrap().len(), 2);
        assert!((json["arms"][1]["success_mean"].as_f64().unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(json["arms"][1]["ci95"][0].as_f64(), Some(0.6));
        assert_eq!(json["arms"][1]["paired"][0]["baseline"], "bc");
    }
}
