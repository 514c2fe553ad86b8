//! The results of an experiment: per arm, success over seeds, written as `results.json` and a Markdown
//! table `results.md`, and printed at the end of `train`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::config::RewardSource;

/// Outcome of one arm trained with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Final success rate over the evaluation episodes.
    pub success: f64,
    /// Evaluation episodes behind `success`.
    pub episodes: u32,
    /// Mean evaluation return (sum of the task's shaped reward).
    pub mean_return: f64,
    /// Training wall time in seconds.
    pub wall_time_s: f64,
    /// (training step, success rate) at each evaluation, the last one being the final evaluation.
    pub curve: Vec<(u32, f64)>,
}

/// One arm aggregated over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub reward: RewardSource,
    pub success_mean: f64,
    /// Sample standard deviation over seeds (0 for a single seed).
    pub success_std: f64,
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

impl ArmResult {
    /// Aggregate the per-seed results of one arm.
    pub fn from_seeds(name: &str, reward: RewardSource, per_seed: Vec<SeedResult>) -> Self {
        let successes: Vec<f64> = per_seed.iter().map(|s| s.success).collect();
        let (success_mean, success_std) = mean_std(&successes);
        Self {
            name: name.to_string(),
            reward,
            success_mean,
            success_std,
            per_seed,
        }
    }
}

impl Results {
    /// The Markdown table: arm, reward, success mean +- std over seeds, episodes, wall time.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", self.experiment);
        if let Some(model) = &self.reward_model {
            let _ = writeln!(out, "TOPReward labels from `{model}`.\n");
        }
        let _ = writeln!(
            out,
            "| arm | reward | success (mean ± std) | seeds | eval episodes | wall time (s) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for arm in &self.arms {
            let episodes: u32 = arm.per_seed.iter().map(|s| s.episodes).sum();
            let wall: f64 = arm.per_seed.iter().map(|s| s.wall_time_s).sum();
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} ± {:.3} | {} | {} | {:.1} |",
                arm.name,
                serde_json::to_value(arm.reward)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                arm.success_mean,
                arm.success_std,
                arm.per_seed.len(),
                episodes,
                wall
            );
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

    fn seed(seed: u64, success: f64) -> SeedResult {
        SeedResult {
            seed,
            success,
            episodes: 10,
            mean_return: 1.0,
            wall_time_s: 2.0,
            curve: vec![(100, success)],
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
        let results = Results {
            experiment: "demo".into(),
            reward_model: None,
            arms: vec![
                ArmResult::from_seeds("bc", RewardSource::None, vec![seed(0, 0.2), seed(1, 0.4)]),
                ArmResult::from_seeds("oracle", RewardSource::Oracle, vec![seed(0, 0.8), seed(1, 0.6)]),
            ],
        };
        let md = results.to_markdown();
        assert!(
            md.contains("| bc | none | 0.300 ± 0.141 | 2 | 20 | 4.0 |"),
            "{md}"
        );
        assert!(md.contains("| oracle | oracle | 0.700 ± 0.141 |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        results.write(dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["arms"][1]["name"], "oracle");
        assert_eq!(json["arms"][0]["per_seed"].as_array().unwrap().len(), 2);
        assert!((json["arms"][1]["success_mean"].as_f64().unwrap() - 0.7).abs() < 1e-12);
    }
}
