//! Vectorised environments over threads: one worker thread per environment (each owns its MuJoCo data
//! and EGL context, which must stay on the thread that made it), stepped in lock-step like Gymnasium's
//! `AsyncVectorEnv` without auto-reset; and [`parallel_rollouts`] for collecting many scripted or random
//! episodes across threads.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::SimError;
use super::env::{SimConfig, SimObservation, So101Env, StepInfo, StepResult, load_model};
use super::expert::ScriptedExpert;
use super::rollout::{ActionSource, Rollout, RolloutOptions, rollout};

enum Command {
    Reset(Option<u64>),
    Step(Vec<f32>),
}

enum Reply {
    Ready(Result<(), SimError>),
    Reset(Result<(SimObservation, StepInfo), SimError>),
    Step(Result<StepResult, SimError>),
}

struct Worker {
    commands: Sender<Command>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// `n` environments with the same config stepped in parallel, one thread each.
pub struct VecEnv {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for VecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecEnv")
            .field("num_envs", &self.workers.len())
            .finish()
    }
}

impl VecEnv {
    /// Loads the scene once and starts `n` worker threads, each with its own copy of the model.
    pub fn new(cfg: SimConfig, n: usize) -> Result<Self, SimError> {
        if n == 0 {
            return Err(SimError::Config {
                field: "num_envs",
                reason: "must be at least 1".into(),
            });
        }
        let model = load_model(&cfg)?;
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            let (tx_cmd, rx_cmd) = channel::<Command>();
            let (tx_rep, rx_rep) = channel::<Reply>();
            let cfg = cfg.clone();
            let model = model.clone();
            let handle = std::thread::Builder::new()
                .name(format!("so101-env-{index}"))
                .spawn(move || {
                    let mut env = match So101Env::with_model(cfg, model) {
                        Ok(env) => env,
                        Err(e) => {
                            let _ = tx_rep.send(Reply::Ready(Err(e)));
                            return;
                        }
                    };
                    let _ = tx_rep.send(Reply::Ready(Ok(())));
                    for cmd in rx_cmd {
                        let reply = match cmd {
                            Command::Reset(seed) => Reply::Reset(env.reset(seed)),
                            Command::Step(a) => Reply::Step(env.step(&a)),
                        };
                        if tx_rep.send(reply).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| SimError::Worker {
                    index,
                    reason: e.to_string(),
                })?;
            // The first message says whether the env could be built.
            match rx_rep.recv() {
                Ok(Reply::Ready(Ok(()))) => {}
                Ok(Reply::Ready(Err(e))) => return Err(e),
                Ok(_) => {
                    return Err(SimError::Worker {
                        index,
                        reason: "unexpected first reply".into(),
                    });
                }
                Err(e) => {
                    return Err(SimError::Worker {
                        index,
                        reason: e.to_string(),
                    });
                }
            }
            workers.push(Worker {
                commands: tx_cmd,
                replies: rx_rep,
                handle: Some(handle),
            });
        }
        Ok(VecEnv { workers })
    }

    /// Number of environments.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: a `VecEnv` has at least one environment.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn broadcast(&self, cmds: Vec<Command>) -> Result<Vec<Reply>, SimError> {
        for (index, (w, c)) in self.workers.iter().zip(cmds).enumerate() {
            w.commands.send(c).map_err(|e| SimError::Worker {
                index,
                reason: e.to_string(),
            })?;
        }
        self.workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                w.replies.recv().map_err(|e| SimError::Worker {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Resets every environment; `seeds[i]` seeds environment `i` (must have `len()` entries).
    pub fn reset(&mut self, seeds: &[Option<u64>]) -> Result<Vec<(SimObservation, StepInfo)>, SimError> {
        if seeds.len() != self.len() {
            return Err(SimError::Config {
                field: "seeds",
                reason: format!("{} seeds for {} environments", seeds.len(), self.len()),
            });
        }
        self.broadcast(seeds.iter().map(|s| Command::Reset(*s)).collect())?
            .into_iter()
            .map(|r| match r {
                Reply::Reset(r) => r,
                _ => Err(SimError::Worker {
                    index: 0,
                    reason: "reply out of order".into(),
                }),
            })
            .collect()
    }

    /// Steps every environment with its action (must have `len()` actions). Environments are not reset
    /// automatically when they end; reset them when `terminated || truncated`.
    pub fn step(&mut self, actions: &[Vec<f32>]) -> Result<Vec<StepResult>, SimError> {
        if actions.len() != self.len() {
            return Err(SimError::Config {
                field: "actions",
                reason: format!("{} actions for {} environments", actions.len(), self.len()),
            });
        }
        self.broadcast(actions.iter().map(|a| Command::Step(a.clone())).collect())?
            .into_iter()
            .map(|r| match r {
                Reply::Step(r) => r,
                _ => Err(SimError::Worker {
                    index: 0,
                    reason: "reply out of order".into(),
                }),
            })
            .collect()
    }
}

impl Drop for VecEnv {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the command channel ends the worker's loop.
            let (dead, _) = channel();
            drop(std::mem::replace(&mut w.commands, dead));
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Which built-in policy [`parallel_rollouts`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BuiltinPolicy {
    /// Scripted expert with this noise level.
    Scripted { noise: f64 },
    /// Random walk with this per-step standard deviation in degrees.
    Random { step_deg: f32 },
}

/// Runs one episode per seed on `threads` threads (each builds one env from a shared model) and returns
/// the rollouts in seed order. Episode `i` gets index `i`; the expert for seed `s` is seeded with `s`.
pub fn parallel_rollouts(
    cfg: &SimConfig,
    policy: BuiltinPolicy,
    seeds: &[u64],
    threads: usize,
    keep_frames: bool,
) -> Result<Vec<Rollout>, SimError> {
    let model = load_model(cfg)?;
    let threads = threads.clamp(1, seeds.len().max(1));
    let mut results: Vec<Option<Result<Rollout, SimError>>> = (0..seeds.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let chunks: Vec<Vec<usize>> = (0..threads)
            .map(|t| (t..seeds.len()).step_by(threads).collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|indices| {
                let model = model.clone();
                let cfg = cfg.clone();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut env = match So101Env::with_model(cfg, model) {
                        Ok(env) => env,
                        Err(e) => {
                            let msg = e.to_string();
                            out.extend(indices.iter().map(|&i| {
                                (
                                    i,
                                    Err(SimError::Worker {
                                        index: i,
                                        reason: msg.clone(),
                                    }),
                                )
                            }));
                            return out;
                        }
                    };
                    for i in indices {
                        let seed = seeds[i];
                        let opts = RolloutOptions {
                            keep_frames,
                            index: i,
                        };
                        let r = match policy {
                            BuiltinPolicy::Scripted { noise } => {
                                let mut expert = ScriptedExpert::new(&env, noise, seed);
                                rollout(&mut env, ActionSource::Expert(&mut expert), seed, opts)
                            }
                            BuiltinPolicy::Random { step_deg } => {
                                rollout(&mut env, ActionSource::Random { step_deg }, seed, opts)
                            }
                        };
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            // A panicked thread leaves its slots empty; they are reported below.
            if let Ok(out) = h.join() {
                for (i, r) in out {
                    results[i] = Some(r);
                }
            }
        }
    });
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(SimError::Worker {
                    index: i,
                    reason: "thread panicked".into(),
                })
            })
        })
        .collect()
}
