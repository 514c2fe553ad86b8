//! Reward signals of controlled quality, to measure how much a progress estimate's quality matters:
//!
//! - `oracle_noisy`: the simulator's ground-truth progress plus temporally correlated Gaussian noise (an
//!   AR(1) process per episode, correlation time [`NOISE_CORRELATION_FRAMES`] frames), its scale found by
//!   bisection so that the signal's VOC hits a target. One unit-variance noise realisation per episode is
//!   drawn from the seed and only scaled, so arms with different targets share it (common random numbers).
//! - `time_bias`: progress `t / (T - 1)` whatever happens, the rising curve the TOPReward authors report
//!   Qwen3-VL-8B gives even a static video. Its VOC is 1, its information about quality none.
//!
//! VOC here is measured as TOPReward's is: Spearman correlation of the values with time at the
//! [`DENSE_PREFIXES`](crate::weighting::DENSE_PREFIXES) prefix ends of each episode, averaged over the
//! episodes where it is defined (a constant episode has none).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use toprl_rewards::metrics::voc;

use crate::config::RewardSource;
use crate::plot::{Chart, Series};
use crate::results::{ArmResult, Results};
use crate::weighting::dense_prefix_ends;

/// Correlation time of the added noise in frames (half a second at 30 Hz): exp(-1/15) per-frame
/// autocorrelation, so the noise bends whole stretches of the curve rather than jittering single frames.
pub const NOISE_CORRELATION_FRAMES: f64 = 15.0;

/// Mean VOC of per-frame progress curves, read at each episode's prefix ends. `None` when no episode
/// has a defined VOC.
pub fn mean_prefix_voc(progress: &[Vec<f64>]) -> Option<f64> {
    mean_prefix_voc_of(progress, &vec![true; progress.len()])
}

/// [`mean_prefix_voc`] over the episodes whose `include` flag is set.
pub fn mean_prefix_voc_of(progress: &[Vec<f64>], include: &[bool]) -> Option<f64> {
    let vocs: Vec<f64> = progress
        .iter()
        .zip(include)
        .filter(|(_, keep)| **keep)
        .filter_map(|(p, _)| {
            let at: Vec<f64> = dense_prefix_ends(p.len()).iter().map(|&i| p[i]).collect();
            voc(&at)
        })
        .collect();
    (!vocs.is_empty()).then(|| vocs.iter().sum::<f64>() / vocs.len() as f64)
}

/// `t / (T - 1)` for every frame of episodes of the given lengths (0 for a one-frame episode).
pub fn time_bias(lengths: &[usize]) -> Vec<Vec<f64>> {
    lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|t| if n > 1 { t as f64 / (n - 1) as f64 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Unit-variance AR(1) noise of `n` frames with correlation time `tau` frames.
fn ar1_noise(n: usize, tau: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let rho = (-1.0 / tau).exp();
    let innovation = (1.0 - rho * rho).sqrt();
    let mut out = Vec::with_capacity(n);
    let mut e = toprl_envs::sim::standard_normal(rng);
    for _ in 0..n {
        out.push(e);
        e = rho * e + innovation * toprl_envs::sim::standard_normal(rng);
    }
    out
}

/// Ground-truth progress degraded to a target VOC.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyProgress {
    pub progress: Vec<Vec<f64>>,
    /// Noise standard deviation used, in progress units.
    pub sigma: f64,
    /// Mean prefix VOC of the degraded signal (equals the target within 0.005 unless the ground truth is
    /// already below it, when no noise is added).
    pub voc: f64,
}

/// `truth` plus `sigma` times a seeded AR(1) noise, `sigma` bisected until the mean prefix VOC over the
/// `calibrate` episodes reaches `target`. When the ground truth's VOC is already at or below `target`,
/// it is returned unchanged.
///
/// Experiments calibrate on the successful demonstrations: their ground truth rises to 1 (VOC near 1),
/// as on the benchmark TOPReward's VOC is reported on, while a failed episode's true progress wanders
/// and has a low VOC however good the reward.
pub fn oracle_noisy(truth: &[Vec<f64>], calibrate: &[bool], target: f64, seed: u64) -> NoisyProgress {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f_6973_7976_6f63);
    let noise: Vec<Vec<f64>> = truth
        .iter()
        .map(|p| ar1_noise(p.len(), NOISE_CORRELATION_FRAMES, &mut rng))
        .collect();
    let degrade = |sigma: f64| -> Vec<Vec<f64>> {
        truth
            .iter()
            .zip(&noise)
            .map(|(p, z)| p.iter().zip(z).map(|(s, e)| s + sigma * e).collect())
            .collect()
    };
    let voc_at = |sigma: f64| mean_prefix_voc_of(&degrade(sigma), calibrate).unwrap_or(0.0);
    let clean = voc_at(0.0);
    if clean <= target {
        return NoisyProgress {
            progress: truth.to_vec(),
            sigma: 0.0,
            voc: clean,
        };
    }
    // Grow an upper bracket, then bisect; VOC falls (not strictly) as the noise grows.
    let mut hi = 0.01;
    while voc_at(hi) > target && hi < 1e4 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if voc_at(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Of the two bracket ends, the one whose VOC is closer to the target.
    let sigma = if (voc_at(lo) - target).abs() <= (voc_at(hi) - target).abs() {
        lo
    } else {
        hi
    };
    NoisyProgress {
        progress: degrade(sigma),
        sigma,
        voc: voc_at(sigma),
    }
}

/// TOPReward's published mean VOC on ManiRewardBench with Qwen3-VL-8B.
pub const TOPREWARD_PUBLISHED_VOC: f64 = 0.947;

/// Final success against the reward's VOC: the `oracle` and `oracle_noisy` arms as one curve, each other
/// dense arm (e.g. `time_bias`) as its own point, `bc` and `sparse` as horizontal lines, and a vertical
/// line at TOPReward's published VOC. Error bars are the half-width of the bootstrap 95% interval over
/// seeds. `None` when fewer than two arms have a reward VOC.
pub fn success_vs_voc_chart(results: &Results) -> Option<Chart> {
    let dense: Vec<&ArmResult> = results.arms.iter().filter(|a| a.reward_voc.is_some()).collect();
    if dense.len() < 2 {
        return None;
    }
    let point = |a: &ArmResult| (a.reward_voc.unwrap_or(f64::NAN), a.success_mean);
    let half = |a: &ArmResult| 0.5 * (a.ci95[1] - a.ci95[0]);
    let on_curve = |a: &ArmResult| matches!(a.reward, RewardSource::Oracle | RewardSource::OracleNoisy);
    // One curve per weighting formula (the method text starts with it), e.g. "RA-BC" and "Eq. 3".
    let mut curves: Vec<(String, Vec<&ArmResult>)> = Vec::new();
    for a in dense.iter().copied().filter(|a| on_curve(a)) {
        let formula = a.method.split(',').next().unwrap_or_default().to_string();
        match curves.iter_mut().find(|(f, _)| *f == formula) {
            Some((_, arms)) => arms.push(a),
            None => curves.push((formula, vec![a])),
        }
    }
    let mut series = Vec::new();
    for (formula, mut arms) in curves {
        arms.sort_by(|a, b| point(a).0.total_cmp(&point(b).0));
        series.push(Series {
            name: format!(
                "{formula}: {}",
                arms.iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            points: arms.iter().map(|a| point(a)).collect(),
            errors: Some(arms.iter().map(|a| half(a)).collect()),
        });
    }
    for a in dense.iter().filter(|a| !on_curve(a)) {
        series.push(Series {
            name: a.name.clone(),
            points: vec![point(a)],
            errors: Some(vec![half(a)]),
        });
    }
    let vocs: Vec<f64> = dense.iter().map(|a| point(a).0).collect();
    let x0 = vocs.iter().copied().fold(TOPREWARD_PUBLISHED_VOC, f64::min);
    let x1 = vocs.iter().copied().fold(TOPREWARD_PUBLISHED_VOC, f64::max);
    for base in ["bc", "sparse"] {
        if let Some(a) = results.arms.iter().find(|a| a.name == base) {
            series.push(Series {
                name: format!("{base} (no dense reward)"),
                points: vec![(x0, a.success_mean), (x1, a.success_mean)],
                errors: None,
            });
        }
    }
    series.push(Series {
        name: format!("TOPReward, Qwen3-VL-8B, published VOC {TOPREWARD_PUBLISHED_VOC}"),
        points: vec![(TOPREWARD_PUBLISHED_VOC, 0.0), (TOPREWARD_PUBLISHED_VOC, 1.0)],
        errors: None,
    });
    Some(Chart {
        title: format!("{}: final success against reward VOC", results.experiment),
        x_label: "reward VOC (mean over the successful demonstrations)".into(),
        y_label: "success rate (mean, 95% CI)".into(),
        series,
        y_range: Some((0.0, 1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monotone ramps and plateaus of different lengths, like demonstrations of mixed skill.
    fn truth() -> Vec<Vec<f64>> {
        (0..30)
            .map(|e| {
                let n = 120 + 7 * e;
                (0..n)
                    .map(|t| {
                        let x = t as f64 / (n - 1) as f64;
                        if e % 3 == 2 { (0.45 * x).min(0.3) } else { x }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn noise_is_scaled_until_the_voc_hits_the_target() {
        let truth = truth();
        let all = vec![true; truth.len()];
        let clean = mean_prefix_voc(&truth).unwrap();
        assert!(clean > 0.97, "{clean}");
        for target in [0.95, 0.8, 0.5] {
            let noisy = oracle_noisy(&truth, &all, target, 3);
            assert!(
                (noisy.voc - target).abs() < 0.005,
                "target {target}: {}",
                noisy.voc
            );
            assert!(noisy.sigma > 0.0);
            assert_eq!(
                mean_prefix_voc(&noisy.progress).unwrap(),
                noisy.voc,
                "reported VOC is the signal's"
            );
            // Calibrated on a subset, the subset's VOC hits the target.
            let first: Vec<bool> = (0..truth.len()).map(|i| i < 10).collect();
            let sub = oracle_noisy(&truth, &first, target, 3);
            assert!((mean_prefix_voc_of(&sub.progress, &first).unwrap() - target).abs() < 0.005);
            assert_eq!(noisy, oracle_noisy(&truth, &all, target, 3), "seeded");
        }
        // Lower targets need more noise; a different seed draws different noise.
        assert!(oracle_noisy(&truth, &all, 0.5, 3).sigma > oracle_noisy(&truth, &all, 0.8, 3).sigma);
        assert_ne!(
            oracle_noisy(&truth, &all, 0.8, 3).progress,
            oracle_noisy(&truth, &all, 0.8, 4).progress
        );
        // A target above the ground truth's own VOC leaves it untouched.
        let same = oracle_noisy(&truth, &all, 0.999, 3);
        assert_eq!((same.sigma, &same.progress), (0.0, &truth));
    }

    #[test]
    fn noise_is_temporally_correlated() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let z = ar1_noise(20_000, NOISE_CORRELATION_FRAMES, &mut rng);
        let m = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - m).powi(2)).sum::<f64>() / z.len() as f64;
        let lag1 = z.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / (z.len() - 1) as f64;
        assert!((var - 1.0).abs() < 0.1, "unit variance: {var}");
        let rho = (-1.0 / NOISE_CORRELATION_FRAMES).exp();
        assert!(
            (lag1 / var - rho).abs() < 0.02,
            "lag-1 correlation {} vs {rho}",
            lag1 / var
        );
    }

    #[test]
    fn voc_chart_has_one_curve_per_formula_and_marks_toprewards_voc() {
        use crate::results::SeedResult;
        let arm = |name: &str, reward, method: &str, voc: Option<f64>, success: f64| {
            let seed = SeedResult {
                seed: 0,
                success,
                episodes: 20,
                mean_return: 0.0,
                wall_time_s: 1.0,
                curve: vec![(10, success)],
                last_k_mean: success,
                weights: None,
                reward_voc: voc,
                noise_sigma: None,
            };
            ArmResult::from_seeds(name, reward, method, vec![seed])
        };
        let results = Results::new(
            "q".into(),
            None,
            vec![
                arm("bc", RewardSource::None, "BC", None, 0.5),
                arm("oracle", RewardSource::Oracle, "RA-BC, true", Some(0.98), 0.9),
                arm("noisy", RewardSource::OracleNoisy, "RA-BC, noisy", Some(0.8), 0.7),
                arm("eq3", RewardSource::Oracle, "Eq. 3, true", Some(0.98), 0.6),
                arm("time", RewardSource::TimeBias, "RA-BC, time", Some(1.0), 0.55),
            ],
        );
        let chart = success_vs_voc_chart(&results).unwrap();
        let names: Vec<&str> = chart.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[..3], ["RA-BC: noisy, oracle", "Eq. 3: eq3", "time"]);
        assert_eq!(chart.series[0].points, vec![(0.8, 0.7), (0.98, 0.9)]);
        let bc = &chart.series[3];
        assert!(bc.name.starts_with("bc") && bc.points.iter().all(|p| p.1 == 0.5));
        let marker = chart.series.last().unwrap();
        assert_eq!(marker.points, vec![(0.947, 0.0), (0.947, 1.0)]);
        // The horizontal lines span the VOCs shown, TOPReward's included.
        assert_eq!((bc.points[0].0, bc.points[1].0), (0.8, 1.0));
        let bare = Results::new(
            "q".into(),
            None,
            vec![arm("bc", RewardSource::None, "BC", None, 0.5)],
        );
        assert!(success_vs_voc_chart(&bare).is_none());
    }

    #[test]
    fn time_bias_rises_whatever_happens() {
        let p = time_bias(&[3, 1]);
        assert_eq!(p, vec![vec![0.0, 0.5, 1.0], vec![0.0]]);
        assert!((mean_prefix_voc(&p).unwrap() - 1.0).abs() < 1e-12);
    }
}
