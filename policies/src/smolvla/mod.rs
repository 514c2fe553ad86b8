//! SmolVLA (LeRobot 0.4.4, `lerobot/smolvla_base`) in Burn: a faithful port of `VLAFlowMatching` and
//! `SmolVLMWithExpertModel`, proven against LeRobot on a tiny random model
//! (`policies/fixtures/smolvla/`, `tests/smolvla_parity.rs`).
//!
//! # Public API
//!
//! Configs ([`config`]):
//! - [`SmolVlaConfig`]: LeRobot's `config.json` (`SmolVlaConfig::from_file`, unknown fields ignored,
//!   unsupported options refused by `validate`); `image_features()` gives the cameras in LeRobot's
//!   order, `state_dim()` / `action_dim()` the unpadded sizes.
//! - [`VlmConfig`] ([`TextConfig`], [`VisionConfig`]): the backbone's `config.json` from the
//!   `vlm_model_name` folder (`VlmConfig::from_file`).
//! - [`SmolVlaDims`]: shapes derived from both (`SmolVlaDims::new(&cfg, &vlm)`).
//!
//! Model ([`model`]):
//! - [`SmolVla`] (Burn module): `SmolVla::new(dims, device)` (random), [`SmolVla::load`]
//!   (config + `model.safetensors`, LeRobot's trainability applied), `load_safetensors` /
//!   `save_safetensors` (strict, f32 on save, same names and `[out, in]` layouts as LeRobot).
//! - [`SmolVlaBatch`]: raw camera images `[B, 3, H, W]` in [0, 1] (any sizes; resized inside as
//!   LeRobot's `prepare_images`), normalised state `[B, state_dim]`, prompt tokens + mask `[B, L]`.
//! - `flow_losses(&batch, actions, noise, &time, trace) -> [B, chunk, max_action_dim]` per-element
//!   loss (`VLAFlowMatching.forward`); `sample_actions(&batch, noise) -> [B, chunk, max_action_dim]`
//!   (10-step Euler, prefix encoded once: `encode_prefix` -> [`PrefixCache`], `denoise_step`).
//!   Slice `[.., ..action_dim]` for `predict_action_chunk`'s result.
//! - Frozen-VLM training cache: `encode_context(&batch) -> [ContextCache]` (image + language keys
//!   and values of every VLM layer; `ContextCache::concat` stacks per-frame caches) and
//!   `flow_losses_with_context(&ctx, state, actions, noise, &time)`, which runs only the state token
//!   and the expert and equals `flow_losses`.
//! - Lower-level pieces: `embed_prefix`, `embed_suffix`, `embed_image`, `prepare_image`,
//!   [`make_att_2d_masks`], [`position_ids`], [`time_embedding`], [`resize_with_pad`], [`pad_last`];
//!   [`SmolVlaTrace`] collects intermediates (vision features, per-layer hidden states).
//!
//! LeRobot folder and processing ([`lerobot`], [`processor`], [`policy`], [`finetune`]): the checkpoint
//! folder's config, processor pipelines and statistics read and written as LeRobot does; LeRobot's
//! preprocessing (tokenisation, normalisation, padding) and postprocessing; [`SmolVlaPolicy`] (load a
//! folder, `predict` with optional fixed noise, save atomically); [`finetune::SmolVlaFinetuner`]
//! (weighted flow-matching steps, statistics replaced by the training data's).
//!
//! Weights ([`weights`]): one name map, [`SmolVla::map_named`] with a [`ParamVisitor`], serves load,
//! save, trainability ([`lerobot_trainable`], `with_lerobot_trainability`, `with_trainable`) and
//! lookups (`named_shapes`, `named_tensor`, `named_grad`, `param_ids`).
//!
//! Training ([`train`]): [`per_sample_flow_loss`] with [`LossPadding`] (`AllElements` = LeRobot 0.4.4
//! parity, `Valid` = padding-masked for real fine-tuning), [`weighted_flow_loss`] (reward-aligned BC
//! / AWR weights), [`SmolVlaOptimizer`] (global-norm clip + AdamW with the config's settings) and
//! [`clip_grad_norm`].

pub mod config;
pub mod finetune;
pub mod layers;
pub mod lerobot;
pub mod model;
pub mod policy;
pub mod processor;
pub mod train;
pub mod weights;

use std::path::Path;

use burn::prelude::*;

pub use config::{
    Features, PolicyFeature, SmolVlaConfig, SmolVlaDims, TextConfig, VisionConfig, VlmConfig,
    expert_intermediate_size,
};
pub use model::{
    ContextCache, PrefixCache, PrefixLayout, SmolVla, SmolVlaBatch, SmolVlaTrace, make_att_2d_masks,
    pad_last, position_ids, resize_with_pad, time_embedding,
};
pub use policy::{SmolVlaPolicy, is_lerobot_folder};
pub use train::{LossPadding, SmolVlaOptimizer, clip_grad_norm, per_sample_flow_loss, weighted_flow_loss};
pub use weights::{Layout, ParamVisitor, lerobot_trainable};

use crate::error::{PolicyError, Result};

impl SmolVla {
    /// Build from the policy config and the VLM config, load `weights` (a LeRobot `model.safetensors`)
    /// strictly, and mark parameters trainable as LeRobot does for this config.
    pub fn load(
        cfg: &SmolVlaConfig,
        vlm: &VlmConfig,
        weights: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let weights = weights.as_ref();
        let dims = SmolVlaDims::new(cfg, vlm).map_err(|reason| PolicyError::Config {
            path: weights.to_path_buf(),
            reason,
        })?;
        Ok(Self::load_safetensors(dims, weights, device)?.with_lerobot_trainability(cfg))
    }
}
