//! Online advantage-weighted regression (AWR, Peng et al. 2019) on top of reward-aligned BC, one
//! iteration read top to bottom in [`improve`]:
//!
//! 1. roll the current policy out in simulation (`awr.rollouts` scenes, a Gaussian offset per action chunk
//!    for exploration);
//! 2. score every rollout with the arm's reward source, as a per-frame *signal* whose differences are the
//!    rewards: `oracle` the simulator's ground-truth progress, `topreward` TOPReward's raw log p(" True")
//!    interpolated to every frame (raw rather than min-max progress, so that episodes compare with each
//!    other: a failed episode does not reach the log-probability a successful one does), `sparse` 0
//!    everywhere and the success bit on the last frame;
//! 3. discounted returns `G_t = sum_k gamma^k (s_{t+k+1} - s_{t+k})` over the demonstrations plus the new
//!    rollouts, a value baseline `V(s)` fitted to them by MSE;
//! 4. advantages `A = G - V(s)`, standardised over the buffer (so `beta` is unit-free across reward
//!    sources), weights `min(exp(A / beta), max_weight)`;
//! 5. `awr.policy_steps` weighted-BC steps on the buffer, then evaluation and a checkpoint.
//!
//! The algorithm is the same for every policy kind: it sees the arm through [`AwrLearner`], which the
//! native policies' [`Run`] and SmolVLA's [`crate::smolvla_arm::SmolVlaRun`] implement.
//!
//! A resumed run restarts at the first unfinished iteration: the policy and value checkpoints are those
//! of the last finished one, and the rollouts are regenerated from their seeds, so nothing but the
//! checkpoints needs saving.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use toprl_envs::environment::Environment;
use toprl_envs::environment::EpisodeRollout;
use toprl_envs::episode::Episode;
use toprl_envs::sim::{RolloutOptions, SimConfig};
use toprl_policies::value::ValueConfig;
use toprl_policies::{Normalizer, PolicyError, TrainConfig, ValueBatch, ValueTrainer, awr_weights};
use toprl_rewards::score::EpisodeScore;

use crate::arm_weights::{LabelError, oracle_progress, prefix_values_per_frame, scores_for};
use crate::config::{ExperimentConfig, RewardSource};
use crate::driver::{DriveError, policy_rollout};
use crate::experiment::{
    AwrInputs, ExperimentError, Run, RunOptions, RunProgress, Samples, awr_seed, camera_keys, drive_err,
    policy_err, score_with,
};
use crate::tensorboard::EventWriter;

type Result<T> = std::result::Result<T, ExperimentError>;

/// Directory of the value-function checkpoint inside the run's checkpoint directory.
pub const VALUE_DIR: &str = "value";

/// Files a learner adds to its checkpoint folder before it is renamed into place.
pub(crate) type ExtraFiles<'a> = dyn Fn(&Path) -> std::result::Result<(), PolicyError> + 'a;

/// One arm x seed in training, as AWR sees it whatever the policy: it can be rolled out, take a
/// weighted step on a buffer of frames, and be evaluated and checkpointed with its progress.
/// What every arm x seed run carries, whichever policy it trains: the experiment, where the run writes,
/// and how far it has got.
pub(crate) struct RunContext<'c> {
    pub config: &'c ExperimentConfig,
    pub sim: &'c SimConfig,
    pub opts: &'c RunOptions,
    pub arm: String,
    pub seed: u64,
    /// The run's folder (`runs/<arm>/seed-<s>`), holding `checkpoint/`.
    pub dir: PathBuf,
    pub progress: RunProgress,
    pub tb: EventWriter,
}

/// A run that AWR can improve: a [`RunContext`] and the policy-specific steps below.
pub(crate) trait AwrLearner<'c> {
    fn ctx(&self) -> &RunContext<'c>;
    fn ctx_mut(&mut self) -> &mut RunContext<'c>;
    fn config(&self) -> &'c ExperimentConfig {
        self.ctx().config
    }
    fn sim(&self) -> &'c SimConfig {
        self.ctx().sim
    }
    fn opts(&self) -> &'c RunOptions {
        self.ctx().opts
    }
    fn arm<'s>(&'s self) -> &'s str
    where
        'c: 's,
    {
        &self.ctx().arm
    }
    fn seed(&self) -> u64 {
        self.ctx().seed
    }
    /// The run's folder (`runs/<arm>/seed-<s>`), holding `checkpoint/`.
    fn dir<'s>(&'s self) -> &'s Path
    where
        'c: 's,
    {
        &self.ctx().dir
    }
    fn progress<'s>(&'s mut self) -> &'s mut RunProgress
    where
        'c: 's,
    {
        &mut self.ctx_mut().progress
    }
    fn tb<'s>(&'s mut self) -> &'s mut EventWriter
    where
        'c: 's,
    {
        &mut self.ctx_mut().tb
    }
    /// The state statistics the value baseline normalises with.
    fn state_normalizer(&self) -> Result<Normalizer>;
    /// One episode of the current policy from scene `seed`, each action chunk offset as
    /// [`crate::driver::ChunkDriver::with_exploration`] does when `exploration` is given.
    fn rollout(
        &mut self,
        env: &mut dyn Environment,
        seed: u64,
        opts: RolloutOptions,
        exploration: Option<(f32, u64)>,
    ) -> std::result::Result<EpisodeRollout, DriveError>;
    /// A new buffer starts: its first `demos` episodes are the demonstrations, the rest new rollouts.
    fn new_buffer(&mut self, _demos: usize) {}
    /// One weighted-BC step on a mini-batch of `data` (per-frame `weights`); returns the loss.
    fn train_step(&mut self, data: &Samples<'_>, weights: &[Vec<f32>]) -> Result<f32>;
    /// Evaluate, log, and checkpoint with `extra` files inside; returns the evaluation success rate (NaN
    /// where success is not measured: the real arm).
    fn evaluate_and_save(&mut self, extra: &ExtraFiles<'_>) -> Result<f64>;
}

impl<'c> AwrLearner<'c> for Run<'c> {
    fn ctx(&self) -> &RunContext<'c> {
        &self.ctx
    }
    fn ctx_mut(&mut self) -> &mut RunContext<'c> {
        &mut self.ctx
    }
    fn state_normalizer(&self) -> Result<Normalizer> {
        Ok(self.trainer.normalizer().clone())
    }
    fn rollout(
        &mut self,
        env: &mut dyn Environment,
        seed: u64,
        opts: RolloutOptions,
        exploration: Option<(f32, u64)>,
    ) -> std::result::Result<EpisodeRollout, DriveError> {
        let mut policy = self.trainer.policy();
        policy.set_seed(seed);
        let cameras = camera_keys(&self.ctx.config.task.cameras);
        policy_rollout(env, &mut policy, &cameras, seed, opts, exploration)
    }
    fn train_step(&mut self, data: &Samples<'_>, weights: &[Vec<f32>]) -> Result<f32> {
        Run::train_step(self, data, weights)
    }
    fn evaluate_and_save(&mut self, extra: &ExtraFiles<'_>) -> Result<f64> {
        Ok(Run::evaluate_and_save(self, extra)?.success.unwrap_or(f64::NAN))
    }
}

/// Per-frame reward signal of each episode under `source` (see the module docs); `scores` are the
/// TOPReward scores with their sampling strides, one per episode, for `topreward`.
pub fn reward_signal(
    source: RewardSource,
    episodes: &[Episode],
    scores: Option<&[(EpisodeScore, f64)]>,
) -> std::result::Result<Vec<Vec<f64>>, LabelError> {
    match source {
        RewardSource::None => Ok(episodes.iter().map(|e| vec![0.0; e.len()]).collect()),
        RewardSource::Sparse => episodes
            .iter()
            .map(|e| {
                let success = e.success.ok_or(LabelError::NoSuccess { episode: e.index })?;
                let mut s = vec![0.0; e.len()];
                if let Some(last) = s.last_mut() {
                    *last = f64::from(u8::from(success));
                }
                Ok(s)
            })
            .collect(),
        RewardSource::Oracle => oracle_progress(episodes),
        RewardSource::TimeBias => Ok(crate::reward_quality::time_bias(
            &episodes.iter().map(Episode::len).collect::<Vec<_>>(),
        )),
        // Its noise is fitted to the demonstrations' VOC; rollouts have no target to fit.
        RewardSource::OracleNoisy => Err(LabelError::NotForAwr("oracle_noisy")),
        RewardSource::Topreward => Ok(episodes
            .iter()
            .zip(scores_for(episodes, scores)?)
            .map(|(e, (score, stride))| prefix_values_per_frame(score, &score.log_probs, *stride, e.len()))
            .collect()),
    }
}

/// Discounted return of every frame: `G_t = r_t + gamma G_{t+1}` with `r_t = s_{t+1} - s_t` and
/// `G_{T-1} = 0` (the last frame is the final observation; no action is scored from it).
pub fn discounted_returns(signal: &[f64], gamma: f64) -> Vec<f64> {
    let mut returns = vec![0.0; signal.len()];
    for t in (0..signal.len().saturating_sub(1)).rev() {
        returns[t] = (signal[t + 1] - signal[t]) + gamma * returns[t + 1];
    }
    returns
}

/// `(x - mean) / std` over all values (std floored so a constant buffer gives zeros, not NaN).
fn standardise(values: &[f64]) -> Vec<f32> {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-8);
    values.iter().map(|v| ((v - mean) / std) as f32).collect()
}

/// The AWR iterations of one arm x seed, after its BC warm start.
pub(crate) fn improve<'c>(run: &mut impl AwrLearner<'c>, inputs: AwrInputs<'_, '_, '_>) -> Result<()> {
    let AwrInputs {
        demos,
        demo_signal,
        reward,
        mut scorer,
    } = inputs;
    let config = run.config();
    let cfg = config.awr.clone();
    let mut value = value_trainer(run)?;
    let cameras = config.task.cameras.clone();
    let features = crate::experiment::state_features(config);
    let bar = crate::experiment::bar(run.opts(), u64::from(cfg.iterations), "AWR iterations");
    bar.set_message(format!("{} seed {} AWR", run.arm(), run.seed()));
    bar.set_position(u64::from(run.progress().awr_iterations));

    while run.progress().awr_iterations < cfg.iterations {
        let iteration = run.progress().awr_iterations;
        let seed = run.seed();
        let _span = tracing::info_span!("awr", arm = run.arm(), seed, iteration).entered();

        // 1. Roll out the current policy.
        //    In the simulator or on the `[robot]` arm, connected only while rolling out (its watchdog
        //    would stop it during the training steps, and evaluation connects on its own).
        let rollouts = {
            let mut env =
                crate::experiment::open_env(config, run.sim(), !run.sim().cameras.is_empty(), run.opts())?;
            collect_rollouts(run, env.as_mut(), iteration)?
        };
        let rollout_success =
            rollouts.iter().filter(|e| e.success == Some(true)).count() as f64 / rollouts.len() as f64;

        // 2. Score the rollouts with the arm's reward source.
        let scores = if reward == RewardSource::Topreward {
            Some(score_with(scorer.as_deref_mut(), &rollouts)?)
        } else {
            None
        };
        let rollout_signal =
            reward_signal(reward, &rollouts, scores.as_deref()).map_err(|source| ExperimentError::Label {
                arm: run.arm().to_string(),
                source,
            })?;

        // 3. The buffer (demonstrations + this iteration's rollouts) and its discounted returns.
        let buffer: Vec<Episode> = demos.iter().cloned().chain(rollouts).collect();
        run.new_buffer(demos.len());
        let returns: Vec<Vec<f64>> = demo_signal
            .iter()
            .chain(&rollout_signal)
            .map(|s| discounted_returns(s, cfg.gamma))
            .collect();
        let samples = Samples::new(&buffer, &cameras, &features, config.policy.chunk)?;
        let states = samples.all_states()?;
        let index = samples.positions();
        let targets: Vec<f32> = index.iter().map(|&(e, t)| returns[e][t] as f32).collect();

        //    Fit V(s) to the returns.
        let state_dim = states.len() / index.len();
        // The zero-advantage control (`reward = "none"`) fits nothing: every weight is 1.
        let value_steps = if reward == RewardSource::None {
            0
        } else {
            cfg.value_steps
        };
        let mut value_loss = 0.0;
        for k in 0..value_steps {
            let mut rng = ChaCha8Rng::seed_from_u64(awr_seed(seed, iteration, 0) ^ (u64::from(k) << 24));
            let picks: Vec<usize> = (0..config.train.batch_size)
                .map(|_| rng.random_range(0..index.len()))
                .collect();
            let batch_states: Vec<f32> = picks
                .iter()
                .flat_map(|&i| states[i * state_dim..(i + 1) * state_dim].iter().copied())
                .collect();
            let batch_targets: Vec<f32> = picks.iter().map(|&i| targets[i]).collect();
            let batch =
                ValueBatch::new(batch_states, state_dim, batch_targets).map_err(policy_err("value batch"))?;
            value_loss = value
                .step(&batch, &vec![1.0; batch.len])
                .map_err(policy_err(format!("value step {k}")))?;
        }

        // 4. Advantages and AWR weights, per buffer frame.
        let values = value.predict(&states).map_err(policy_err("value prediction"))?;
        let advantages: Vec<f64> = targets
            .iter()
            .zip(&values)
            .map(|(&g, &v)| f64::from(g - v))
            .collect();
        let flat_weights = if reward == RewardSource::None {
            vec![1.0; advantages.len()]
        } else {
            awr_weights(&standardise(&advantages), cfg.beta as f32, cfg.max_weight as f32)
                .map_err(policy_err("AWR weights"))?
        };
        let mut weights: Vec<Vec<f32>> = buffer.iter().map(|e| vec![0.0; e.len()]).collect();
        for (&(e, t), &w) in index.iter().zip(&flat_weights) {
            weights[e][t] = w;
        }

        // 5. Weighted BC on the buffer, then evaluate and checkpoint.
        let mut loss = 0.0;
        for _ in 0..cfg.policy_steps {
            loss = run.train_step(&samples, &weights)?;
        }
        let step = u64::from(run.progress().step);
        let mean_w = flat_weights.iter().sum::<f32>() / flat_weights.len().max(1) as f32;
        let tb = run.tb();
        tb.scalar("awr/rollout_success", step, rollout_success as f32)?;
        tb.scalar("awr/value_loss", step, value_loss)?;
        tb.scalar("awr/policy_loss", step, loss)?;
        tb.scalar("awr/weight_mean", step, mean_w)?;
        run.progress().awr_iterations += 1;
        // NaN on the real arm, where success is not measured.
        let eval_success = run.evaluate_and_save(&|checkpoint| value.save(checkpoint.join(VALUE_DIR)))?;
        bar.suspend(|| tracing::info!(rollout_success, eval_success, value_loss, "AWR iteration done"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The value baseline: continued from the run's value checkpoint when resuming an AWR run, else fresh,
/// normalising states with the learner's statistics.
fn value_trainer<'c>(run: &mut impl AwrLearner<'c>) -> Result<ValueTrainer> {
    let train = TrainConfig {
        lr: run.config().train.lr,
        seed: run.seed().wrapping_add(0x7661_6c75),
        ..TrainConfig::default()
    };
    let device = run
        .config()
        .train
        .policy_device()
        .map_err(policy_err("[train] backend / device"))?;
    let dir = run.dir().join("checkpoint").join(VALUE_DIR);
    if run.progress().awr_iterations > 0 {
        return ValueTrainer::from_checkpoint(&dir, train, &device)
            .map_err(policy_err(format!("resuming {}", dir.display())));
    }
    let norm = run.state_normalizer()?;
    let config = ValueConfig::new(norm.state_dim());
    ValueTrainer::new(config, &norm, train, &device).map_err(policy_err("building the value function"))
}

/// `awr.rollouts` episodes of the current policy with exploration noise, seeded by (seed, iteration).
fn collect_rollouts<'c>(
    run: &mut impl AwrLearner<'c>,
    env: &mut dyn Environment,
    iteration: u32,
) -> Result<Vec<Episode>> {
    let cfg = &run.config().awr;
    let keep_frames = !run.sim().cameras.is_empty();
    let mut episodes = Vec::with_capacity(cfg.rollouts as usize);
    for i in 0..cfg.rollouts as usize {
        let scene = awr_seed(run.seed(), iteration, i);
        let opts = RolloutOptions {
            keep_frames,
            index: i,
        };
        let exploration = Some((cfg.action_noise as f32, scene ^ 0x6e6f_6973_6500));
        let r = run
            .rollout(env, scene, opts, exploration)
            .map_err(drive_err(format!("AWR iteration {iteration} rollout {i}")))?;
        episodes.push(r.episode);
    }
    Ok(episodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_discount_the_signal_differences() {
        let g = discounted_returns(&[0.0, 0.5, 0.5, 1.0], 0.5);
        // r = [0.5, 0, 0.5]; G_2 = 0.5, G_1 = 0 + 0.25, G_0 = 0.5 + 0.125.
        assert_eq!(g, vec![0.625, 0.25, 0.5, 0.0]);
        assert_eq!(discounted_returns(&[0.0, 1.0], 1.0), vec![1.0, 0.0]);
        assert!(discounted_returns(&[], 0.9).is_empty());
    }

    #[test]
    fn sparse_signal_is_the_success_bit_on_the_last_frame() {
        let ep = |success| Episode {
            states: vec![vec![0.0; 6]; 3],
            actions: vec![vec![0.0; 6]; 3],
            success: Some(success),
            ..Episode::default()
        };
        let s = reward_signal(RewardSource::Sparse, &[ep(true), ep(false)], None).unwrap();
        assert_eq!(s, vec![vec![0.0, 0.0, 1.0], vec![0.0, 0.0, 0.0]]);
        // With gamma = 1 the return of every frame of a success is 1, of a failure 0.
        assert_eq!(discounted_returns(&s[0], 1.0), vec![1.0, 1.0, 0.0]);
    }

    #[test]
    fn topreward_signal_is_the_raw_log_prob_per_frame() {
        let ep = Episode {
            states: vec![vec![0.0; 6]; 5],
            actions: vec![vec![0.0; 6]; 5],
            ..Episode::default()
        };
        let score = EpisodeScore {
            prefix_lengths: vec![1, 2, 3],
            log_probs: vec![-3.0, -2.0, -0.5],
            progress: vec![0.0, 0.4, 1.0],
            num_tokens: vec![10, 20, 30],
            voc: Some(1.0),
        };
        let s = reward_signal(RewardSource::Topreward, &[ep], Some(&[(score, 2.0)])).unwrap();
        assert_eq!(s, vec![vec![-3.0, -2.5, -2.0, -1.25, -0.5]]);
    }

    #[test]
    fn standardised_advantages_have_zero_mean_unit_spread() {
        let z = standardise(&[1.0, 2.0, 3.0]);
        assert!((z.iter().sum::<f32>()).abs() < 1e-6);
        assert!((z[2] - 1.224_744_9).abs() < 1e-5);
        assert_eq!(standardise(&[2.0, 2.0]), vec![0.0, 0.0]);
    }
}
