//! The policy kinds behind one config enum and one Burn module enum.

use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::act::{Act, ActConfig};
use crate::data::{Batch, Inputs, ObsBatch, Targets};
use crate::error::{PolicyError, Result, shape_err};
use crate::flow::{Flow, FlowConfig};
use crate::gaussian::{GaussianMlp, GaussianMlpConfig};
use crate::nets::seeded_init;

/// Which policy; the `kind` tag of [`PolicyConfig`] in `policy.json` and experiment configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Gaussian,
    Act,
    Flow,
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyKind::Gaussian => "gaussian",
            PolicyKind::Act => "act",
            PolicyKind::Flow => "flow",
        })
    }
}

/// Configuration of any policy, tagged by `kind` (`"gaussian" | "act" | "flow"`). Deserialising it
/// (from JSON, TOML, ...) refuses unknown fields at any depth, although Burn's `#[derive(Config)]`
/// serde impls of the inner configs would ignore them; missing fields take the documented defaults.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyConfig {
    Gaussian(GaussianMlpConfig),
    Act(ActConfig),
    Flow(FlowConfig),
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PolicyConfigRepr {
    Gaussian(GaussianMlpConfig),
    Act(ActConfig),
    Flow(FlowConfig),
}

/// Fill fields the input leaves out with the documented defaults (Burn's derived serde impl requires
/// every field), so an experiment config needs only `kind`, `state_dim`, `action_dim` and overrides.
fn with_defaults(raw: &serde_json::Value) -> serde_json::Value {
    let get = |key: &str| {
        raw.get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
    };
    let (Some(kind), Some(state_dim), Some(action_dim)) = (
        raw.get("kind").and_then(serde_json::Value::as_str),
        get("state_dim"),
        get("action_dim"),
    ) else {
        return raw.clone(); // let the derived impl report what is missing
    };
    let defaults = match kind {
        "gaussian" => PolicyConfig::Gaussian(GaussianMlpConfig::new(state_dim, action_dim)),
        "act" => PolicyConfig::Act(ActConfig::new(state_dim, action_dim)),
        "flow" => PolicyConfig::Flow(FlowConfig::new(state_dim, action_dim)),
        _ => return raw.clone(),
    };
    let mut merged = serde_json::to_value(&defaults).unwrap_or(serde_json::Value::Null);
    merge(&mut merged, raw);
    merged
}

fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl<'de> Deserialize<'de> for PolicyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let raw = serde_json::Value::deserialize(deserializer)?;
        let config = match serde_json::from_value(with_defaults(&raw)).map_err(D::Error::custom)? {
            PolicyConfigRepr::Gaussian(c) => PolicyConfig::Gaussian(c),
            PolicyConfigRepr::Act(c) => PolicyConfig::Act(c),
            PolicyConfigRepr::Flow(c) => PolicyConfig::Flow(c),
        };
        let known = serde_json::to_value(&config).map_err(D::Error::custom)?;
        match crate::checkpoint::unknown_key(&raw, &known, "") {
            Some(key) => Err(D::Error::custom(format!(
                "unknown field `{key}` in policy config"
            ))),
            None => Ok(config),
        }
    }
}

impl PolicyConfig {
    pub fn kind(&self) -> PolicyKind {
        match self {
            PolicyConfig::Gaussian(_) => PolicyKind::Gaussian,
            PolicyConfig::Act(_) => PolicyKind::Act,
            PolicyConfig::Flow(_) => PolicyKind::Flow,
        }
    }

    pub fn state_dim(&self) -> usize {
        match self {
            PolicyConfig::Gaussian(c) => c.state_dim,
            PolicyConfig::Act(c) => c.state_dim,
            PolicyConfig::Flow(c) => c.state_dim,
        }
    }

    pub fn action_dim(&self) -> usize {
        match self {
            PolicyConfig::Gaussian(c) => c.action_dim,
            PolicyConfig::Act(c) => c.action_dim,
            PolicyConfig::Flow(c) => c.action_dim,
        }
    }

    pub fn chunk_size(&self) -> usize {
        match self {
            PolicyConfig::Gaussian(c) => c.chunk_size,
            PolicyConfig::Act(c) => c.chunk_size,
            PolicyConfig::Flow(c) => c.chunk_size,
        }
    }

    /// Cameras the policy expects (0: state only).
    pub fn cameras(&self) -> usize {
        match self {
            PolicyConfig::Gaussian(_) => 0,
            PolicyConfig::Act(c) => c.cameras,
            PolicyConfig::Flow(c) => c.cameras,
        }
    }

    pub(crate) fn text_buckets(&self) -> Option<usize> {
        match self {
            PolicyConfig::Flow(c) => Some(c.text_buckets),
            _ => None,
        }
    }

    /// Check sizes before building a network (Burn would panic on, e.g., heads not dividing d_model).
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &'static str, v: usize| {
            if v == 0 {
                Err(PolicyError::Invalid {
                    field,
                    reason: "must be > 0".into(),
                })
            } else {
                Ok(())
            }
        };
        // Sizes read from a checkpoint's policy.json are bounded before any shape is computed: a size
        // near usize::MAX made the network builder overflow or ask for impossible allocations (found by
        // fuzzing the checkpoint reader).
        if let Ok(value) = serde_json::to_value(self)
            && let Some(n) = largest_integer(&value)
            && n > MAX_SIZE
        {
            return Err(PolicyError::Invalid {
                field: "policy.json",
                reason: format!("a size of {n} is above the limit of {MAX_SIZE}"),
            });
        }
        positive("state_dim", self.state_dim())?;
        positive("action_dim", self.action_dim())?;
        positive("chunk_size", self.chunk_size())?;
        let transformer = |d_model: usize, n_heads: usize, dropout: f64, cnn: &crate::nets::CnnConfig| {
            positive("d_model", d_model)?;
            positive("n_heads", n_heads)?;
            positive("cnn.token_grid", cnn.token_grid)?;
            if !d_model.is_multiple_of(n_heads) {
                return Err(PolicyError::Invalid {
                    field: "n_heads",
                    reason: format!("{n_heads} does not divide d_model {d_model}"),
                });
            }
            if !(0.0..1.0).contains(&dropout) {
                return Err(PolicyError::Invalid {
                    field: "dropout",
                    reason: format!("{dropout} not in [0, 1)"),
                });
            }
            if cnn.channels.is_empty() || cnn.channels.contains(&0) {
                return Err(PolicyError::Invalid {
                    field: "cnn.channels",
                    reason: "need >= 1 positive width".into(),
                });
            }
            Ok(())
        };
        match self {
            PolicyConfig::Gaussian(c) => {
                if c.hidden.contains(&0)
                    || c.min_log_std >= c.max_log_std
                    || c.min_log_std.is_nan()
                    || c.max_log_std.is_nan()
                {
                    return Err(PolicyError::Invalid {
                        field: "gaussian hidden/log_std range",
                        reason: "hidden widths must be > 0 and min_log_std < max_log_std".into(),
                    });
                }
                Ok(())
            }
            PolicyConfig::Act(c) => {
                positive("cameras", c.cameras)?;
                positive("encoder_layers", c.encoder_layers)?;
                positive("decoder_layers", c.decoder_layers)?;
                transformer(c.d_model, c.n_heads, c.dropout, &c.cnn)
            }
            PolicyConfig::Flow(c) => {
                positive("cameras", c.cameras)?;
                positive("layers", c.layers)?;
                positive("text_buckets", c.text_buckets)?;
                positive("num_steps", c.num_steps)?;
                transformer(c.d_model, c.n_heads, c.dropout, &c.cnn)
            }
        }
    }

    /// Build the network with parameters drawn from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<PolicyNet> {
        self.validate()?;
        Ok(seeded_init(seed, device, |device| match self {
            PolicyConfig::Gaussian(c) => PolicyNet::Gaussian(c.init(device)),
            PolicyConfig::Act(c) => PolicyNet::Act(c.init(device)),
            PolicyConfig::Flow(c) => PolicyNet::Flow(c.init(device)),
        }))
    }

    /// Check that observations carry what this policy reads.
    pub fn check_obs(&self, obs: &ObsBatch) -> Result<()> {
        if obs.state_dim != self.state_dim() {
            return Err(shape_err("state_dim", self.state_dim(), obs.state_dim));
        }
        let cameras = self.cameras();
        if cameras > 0 {
            let policy = match self.kind() {
                PolicyKind::Act => "act",
                _ => "flow",
            };
            let im = obs.images.as_ref().ok_or(PolicyError::MissingInput {
                policy,
                what: "camera images",
            })?;
            if im.cameras != cameras {
                return Err(shape_err("cameras", cameras, im.cameras));
            }
            let min_side = 1usize << self.cnn_layers();
            if im.height < min_side || im.width < min_side {
                return Err(shape_err(
                    "image size",
                    format!(">= {min_side}x{min_side}"),
                    format!("{}x{}", im.height, im.width),
                ));
            }
        }
        if self.kind() == PolicyKind::Flow && obs.instructions.len() != obs.len {
            return Err(PolicyError::MissingInput {
                policy: "flow",
                what: "one instruction per sample",
            });
        }
        Ok(())
    }

    fn cnn_layers(&self) -> usize {
        match self {
            PolicyConfig::Gaussian(_) => 0,
            PolicyConfig::Act(c) => c.cnn.channels.len(),
            PolicyConfig::Flow(c) => c.cnn.channels.len(),
        }
    }

    /// Check a supervised batch against this policy.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        self.check_obs(&batch.obs)?;
        if batch.chunk_size != self.chunk_size() {
            return Err(shape_err("chunk_size", self.chunk_size(), batch.chunk_size));
        }
        if batch.action_dim != self.action_dim() {
            return Err(shape_err("action_dim", self.action_dim(), batch.action_dim));
        }
        Ok(())
    }
}

/// The network of any policy kind.
// One network lives per trainer or policy, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum PolicyNet {
    Gaussian(GaussianMlp),
    Act(Act),
    Flow(Flow),
}

impl PolicyNet {
    /// Per-sample training loss `[n]` in normalised action units (inputs checked by the caller).
    pub(crate) fn per_sample_loss(
        &self,
        inputs: &Inputs,
        targets: &Targets,
        rng: &mut ChaCha8Rng,
    ) -> Tensor<1> {
        match self {
            PolicyNet::Gaussian(m) => m.per_sample_loss(inputs, targets),
            PolicyNet::Act(m) => m.per_sample_loss(inputs, targets),
            PolicyNet::Flow(m) => m.per_sample_loss(inputs, targets, rng),
        }
    }

    /// Predicted action chunks `[n, chunk, action_dim]` in normalised units: the Gaussian mean, ACT's
    /// output, or a flow sample from `rng`'s noise.
    pub(crate) fn predict(&self, inputs: &Inputs, rng: &mut ChaCha8Rng) -> Tensor<3> {
        match self {
            PolicyNet::Gaussian(m) => m.forward(inputs.states.clone()),
            PolicyNet::Act(m) => m.predict(inputs),
            PolicyNet::Flow(m) => m.sample(inputs, rng),
        }
    }
}

/// Largest size (layer width, count, grid) a policy config may hold.
const MAX_SIZE: u64 = 1 << 16;

/// The largest integer anywhere in `value` (sizes of a serialised policy config).
fn largest_integer(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Array(a) => a.iter().filter_map(largest_integer).max(),
        serde_json::Value::Object(m) => m.values().filter_map(largest_integer).max(),
        _ => None,
    }
}
