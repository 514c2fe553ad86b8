//! ACT as LeRobot 0.4.4 has it (`lerobot/policies/act/`), in Burn: ResNet backbone with frozen batch
//! norm, DETR-style transformer, the CVAE encoder with its KL term, action chunks with LeRobot's
//! `n_action_steps` queue or temporal ensembling. Reads and writes LeRobot ACT checkpoint folders
//! (`config.json` with `"type": "act"`, `model.safetensors`, `policy_preprocessor.json` /
//! `policy_postprocessor.json` and their statistics) and is proven against LeRobot on a tiny random ACT
//! (`policies/tests/fixtures/make_lerobot_act.py`, `tests/lerobot_act_parity.rs`).
//!
//! - [`config`]: [`LeRobotActConfig`] (LeRobot's fields and defaults) and the derived [`ActDims`].
//! - [`model`]: [`Act`] (`new` random, `forward(&ActBatch, Option<&VaeTarget>)`), its parts, and
//!   [`per_sample_losses`] (L1 and KL per sample).
//! - [`weights`]: the checkpoint name map, `Act::load_safetensors` / `save_safetensors`.
//! - [`policy`]: [`LeRobotActPolicy`] (folder load/save, `create` a new folder from a config and
//!   statistics, LeRobot's pre/post-processing, `select_action` with the queue or
//!   [`TemporalEnsembler`]), implementing [`crate::Policy`].
//! - [`train`]: the weighted training loss ([`act_loss`], [`weighted_act_loss`]), LeRobot's optimiser
//!   preset ([`ActOptimizer`]: clip 10, AdamW with a backbone group) and [`ActTrainer`].
//!
//! The toprl-native ACT-style policy (`crate::act`, `kind = "act"`) is a separate, smaller model.

pub mod config;
pub mod model;
pub mod policy;
pub mod train;
pub mod weights;

pub use config::{ActDims, ActFolderConfig, Activation, LeRobotActConfig};
pub use model::{Act, ActBatch, ActOutput, VaeTarget, per_sample_losses};
pub use policy::{ActSample, LeRobotActPolicy, TemporalEnsembler};
pub use train::{ActOptimizer, ActTrainer, act_loss, weighted_act_loss};
