//! Plain-data batches (`Vec<f32>` / `Vec<u8>`) the trainer builds without knowing Burn, the
//! normalisation statistics stored with each checkpoint, and their conversion to tensors.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result, shape_err};
use crate::{Observation, text};

/// Camera images of a batch: `len x cameras x height x width x 3` RGB bytes, row-major (HWC per image).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    pub cameras: usize,
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<u8>,
}

/// Observations of a batch of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct ObsBatch {
    /// Number of samples.
    pub len: usize,
    pub state_dim: usize,
    /// `len x state_dim` joint states in dataset units (normalised inside the policy).
    pub states: Vec<f32>,
    /// Camera images; required by the ACT-style and flow policies.
    pub images: Option<ImageBatch>,
    /// One instruction per sample (may be empty: policies that ignore text do not read it).
    pub instructions: Vec<String>,
}

/// A supervised batch: observations and the action chunk that followed each of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub obs: ObsBatch,
    pub chunk_size: usize,
    pub action_dim: usize,
    /// `len x chunk_size x action_dim` actions in dataset units.
    pub actions: Vec<f32>,
    /// Optional `len x chunk_size` validity mask (1 = real action, 0 = padding past the episode end).
    pub action_mask: Option<Vec<f32>>,
}

/// States and regression targets (returns) for the value function.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueBatch {
    pub len: usize,
    pub state_dim: usize,
    pub states: Vec<f32>,
    pub targets: Vec<f32>,
}

impl ObsBatch {
    /// A state-only batch.
    pub fn new(states: Vec<f32>, state_dim: usize) -> Result<Self> {
        if state_dim == 0 || !states.len().is_multiple_of(state_dim) || states.is_empty() {
            return Err(shape_err(
                "states",
                format!("a non-empty multiple of state_dim {state_dim}"),
                states.len(),
            ));
        }
        Ok(Self {
            len: states.len() / state_dim,
            state_dim,
            states,
            images: None,
            instructions: Vec::new(),
        })
    }

    /// Add images (`len x cameras x height x width x 3` bytes).
    pub fn with_images(mut self, rgb: Vec<u8>, cameras: usize, height: usize, width: usize) -> Result<Self> {
        let expected = self.len * cameras * height * width * 3;
        if rgb.len() != expected || expected == 0 {
            return Err(shape_err(
                "images",
                format!(
                    "{} x {cameras} x {height} x {width} x 3 = {expected} bytes",
                    self.len
                ),
                rgb.len(),
            ));
        }
        self.images = Some(ImageBatch {
            cameras,
            height,
            width,
            rgb,
        });
        Ok(self)
    }

    /// Add one instruction per sample.
    pub fn with_instructions(mut self, instructions: Vec<String>) -> Result<Self> {
        if instructions.len() != self.len {
            return Err(shape_err("instructions", self.len, instructions.len()));
        }
        self.instructions = instructions;
        Ok(self)
    }

    /// Stack observations (all cameras must share one size; images are taken in the given order).
    pub fn from_observations(observations: &[Observation]) -> Result<Self> {
        let first = observations.first().ok_or_else(|| PolicyError::Invalid {
            field: "observations",
            reason: "empty".into(),
        })?;
        let state_dim = first.state.len();
        let mut states = Vec::with_capacity(state_dim * observations.len());
        for o in observations {
            if o.state.len() != state_dim {
                return Err(shape_err("observation.state", state_dim, o.state.len()));
            }
            states.extend_from_slice(&o.state);
        }
        let mut batch = Self::new(states, state_dim)?;
        if !first.images.is_empty() {
            let (cameras, h, w) = (first.images.len(), first.images[0].height, first.images[0].width);
            let mut rgb = Vec::with_capacity(observations.len() * cameras * h * w * 3);
            for o in observations {
                if o.images.len() != cameras {
                    return Err(shape_err("observation.images", cameras, o.images.len()));
                }
                for im in &o.images {
                    if im.height != h || im.width != w || im.rgb.len() != h * w * 3 {
                        return Err(shape_err(
                            "observation.images[].rgb",
                            format!("{h}x{w}x3"),
                            format!(
                                "{}x{}x3 ({} bytes) for camera {}",
                                im.height,
                                im.width,
                                im.rgb.len(),
                                im.key
                            ),
                        ));
                    }
                    rgb.extend_from_slice(&im.rgb);
                }
            }
            batch = batch.with_images(rgb, cameras, h, w)?;
        }
        batch.with_instructions(observations.iter().map(|o| o.instruction.clone()).collect())
    }
}

impl Batch {
    /// A batch of `obs.len` samples with `chunk_size x action_dim` actions each.
    pub fn new(obs: ObsBatch, actions: Vec<f32>, chunk_size: usize, action_dim: usize) -> Result<Self> {
        let expected = obs.len * chunk_size * action_dim;
        if actions.len() != expected || expected == 0 {
            return Err(shape_err(
                "actions",
                format!("{} x {chunk_size} x {action_dim} = {expected}", obs.len),
                actions.len(),
            ));
        }
        Ok(Self {
            obs,
            chunk_size,
            action_dim,
            actions,
            action_mask: None,
        })
    }

    /// Mark padded actions (0) past the end of an episode; they do not count in the loss.
    pub fn with_action_mask(mut self, mask: Vec<f32>) -> Result<Self> {
        if mask.len() != self.obs.len * self.chunk_size {
            return Err(shape_err(
                "action_mask",
                self.obs.len * self.chunk_size,
                mask.len(),
            ));
        }
        self.action_mask = Some(mask);
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.obs.len
    }

    pub fn is_empty(&self) -> bool {
        self.obs.len == 0
    }
}

impl ValueBatch {
    pub fn new(states: Vec<f32>, state_dim: usize, targets: Vec<f32>) -> Result<Self> {
        let obs = ObsBatch::new(states, state_dim)?;
        if targets.len() != obs.len {
            return Err(shape_err("targets", obs.len, targets.len()));
        }
        Ok(Self {
            len: obs.len,
            state_dim,
            states: obs.states,
            targets,
        })
    }
}

/// Per-dimension mean and standard deviation of states and actions, fitted on the training data and
/// stored in the checkpoint; networks see `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalizer {
    pub state_mean: Vec<f32>,
    pub state_std: Vec<f32>,
    pub action_mean: Vec<f32>,
    pub action_std: Vec<f32>,
}

/// Floor on fitted standard deviations, so a constant dimension (a closed gripper) does not blow up.
pub const MIN_STD: f32 = 1e-2;

impl Normalizer {
    /// No-op normalisation.
    pub fn identity(state_dim: usize, action_dim: usize) -> Self {
        Self {
            state_mean: vec![0.0; state_dim],
            state_std: vec![1.0; state_dim],
            action_mean: vec![0.0; action_dim],
            action_std: vec![1.0; action_dim],
        }
    }

    /// Fit on row-major `states` (`n x state_dim`) and `actions` (`m x action_dim`).
    pub fn fit(states: &[f32], state_dim: usize, actions: &[f32], action_dim: usize) -> Result<Self> {
        let (state_mean, state_std) = mean_std(states, state_dim, "states")?;
        let (action_mean, action_std) = mean_std(actions, action_dim, "actions")?;
        Ok(Self {
            state_mean,
            state_std,
            action_mean,
            action_std,
        })
    }

    pub fn state_dim(&self) -> usize {
        self.state_mean.len()
    }

    pub fn action_dim(&self) -> usize {
        self.action_mean.len()
    }

    pub(crate) fn check(&self, state_dim: usize, action_dim: usize) -> Result<()> {
        if self.state_mean.len() != state_dim || self.state_std.len() != state_dim {
            return Err(shape_err(
                "normalizer.state_mean/state_std",
                state_dim,
                self.state_mean.len(),
            ));
        }
        if self.action_mean.len() != action_dim || self.action_std.len() != action_dim {
            return Err(shape_err(
                "normalizer.action_mean/action_std",
                action_dim,
                self.action_mean.len(),
            ));
        }
        if self
            .state_std
            .iter()
            .chain(&self.action_std)
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(PolicyError::Invalid {
                field: "normalizer std",
                reason: "must be finite and > 0".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn normalize_states(&self, states: &[f32]) -> Vec<f32> {
        normalize(states, &self.state_mean, &self.state_std)
    }

    pub(crate) fn normalize_actions(&self, actions: &[f32]) -> Vec<f32> {
        normalize(actions, &self.action_mean, &self.action_std)
    }

    pub(crate) fn denormalize_actions(&self, actions: &[f32]) -> Vec<f32> {
        let d = self.action_mean.len();
        actions
            .iter()
            .enumerate()
            .map(|(i, a)| a * self.action_std[i % d] + self.action_mean[i % d])
            .collect()
    }
}

fn normalize(x: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let d = mean.len();
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean[i % d]) / std[i % d])
        .collect()
}

fn mean_std(x: &[f32], dim: usize, field: &'static str) -> Result<(Vec<f32>, Vec<f32>)> {
    if dim == 0 || x.is_empty() || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            field,
            format!("a non-empty multiple of {dim}"),
            x.len(),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(PolicyError::Invalid {
            field,
            reason: "non-finite value".into(),
        });
    }
    let n = (x.len() / dim) as f64;
    let mut mean = vec![0f64; dim];
    for (i, v) in x.iter().enumerate() {
        mean[i % dim] += *v as f64 / n;
    }
    let mut var = vec![0f64; dim];
    for (i, v) in x.iter().enumerate() {
        var[i % dim] += (*v as f64 - mean[i % dim]).powi(2) / n;
    }
    Ok((
        mean.iter().map(|m| *m as f32).collect(),
        var.iter().map(|v| (v.sqrt() as f32).max(MIN_STD)).collect(),
    ))
}

/// Inputs of a batch, normalised and on the device.
pub(crate) struct Inputs {
    pub len: usize,
    /// `[len, state_dim]`
    pub states: Tensor<2>,
    /// `[len * cameras, 3, h, w]` in [-1, 1], camera-major within each sample.
    pub images: Option<Tensor<4>>,
    /// `[len, text buckets]` normalised bag of hashed trigrams (see [`text`]).
    pub text: Option<Tensor<2>>,
}

/// Targets of a batch, normalised and on the device.
pub(crate) struct Targets {
    /// `[len, chunk, action_dim]`
    pub actions: Tensor<3>,
    /// `[len, chunk]`
    pub mask: Tensor<2>,
}

pub(crate) fn to_inputs(
    obs: &ObsBatch,
    norm: &Normalizer,
    text_buckets: Option<usize>,
    device: &Device,
) -> Result<Inputs> {
    if obs.len == 0 || obs.states.len() != obs.len * obs.state_dim {
        return Err(shape_err(
            "states",
            format!("{} x {}", obs.len, obs.state_dim),
            obs.states.len(),
        ));
    }
    if obs.state_dim != norm.state_dim() {
        return Err(shape_err("state_dim", norm.state_dim(), obs.state_dim));
    }
    let states = Tensor::<2>::from_data(
        TensorData::new(norm.normalize_states(&obs.states), [obs.len, obs.state_dim]),
        device,
    );
    let images = match &obs.images {
        Some(im) => Some(images_tensor(im, obs.len, device)?),
        None => None,
    };
    let text = match text_buckets {
        Some(buckets) => {
            if obs.instructions.len() != obs.len {
                return Err(shape_err("instructions", obs.len, obs.instructions.len()));
            }
            let mut bag = Vec::with_capacity(obs.len * buckets);
            for s in &obs.instructions {
                bag.extend(text::bag_of_trigrams(s, buckets));
            }
            Some(Tensor::<2>::from_data(
                TensorData::new(bag, [obs.len, buckets]),
                device,
            ))
        }
        None => None,
    };
    Ok(Inputs {
        len: obs.len,
        states,
        images,
        text,
    })
}

/// HWC bytes to `[len * cameras, 3, h, w]` floats in [-1, 1].
fn images_tensor(im: &ImageBatch, len: usize, device: &Device) -> Result<Tensor<4>> {
    let (c, h, w) = (im.cameras, im.height, im.width);
    if im.rgb.len() != len * c * h * w * 3 || im.rgb.is_empty() {
        return Err(shape_err(
            "images",
            format!("{len} x {c} x {h} x {w} x 3"),
            im.rgb.len(),
        ));
    }
    let plane = h * w;
    let mut out = vec![0f32; im.rgb.len()];
    for (src, dst) in im
        .rgb
        .chunks_exact(plane * 3)
        .zip(out.chunks_exact_mut(plane * 3))
    {
        for p in 0..plane {
            for ch in 0..3 {
                dst[ch * plane + p] = src[p * 3 + ch] as f32 * (2.0 / 255.0) - 1.0;
            }
        }
    }
    Ok(Tensor::<4>::from_data(
        TensorData::new(out, [len * c, 3, h, w]),
        device,
    ))
}

pub(crate) fn to_targets(batch: &Batch, norm: &Normalizer, device: &Device) -> Result<Targets> {
    let (n, k, d) = (batch.obs.len, batch.chunk_size, batch.action_dim);
    if batch.actions.len() != n * k * d {
        return Err(shape_err(
            "actions",
            format!("{n} x {k} x {d}"),
            batch.actions.len(),
        ));
    }
    if d != norm.action_dim() {
        return Err(shape_err("action_dim", norm.action_dim(), d));
    }
    let mut normalized = norm.normalize_actions(&batch.actions);
    if let Some(m) = &batch.action_mask {
        // Padded steps are zeroed so they cannot leak into the loss through the flow policy's
        // noisy-action input (ACT and the MLP only read them through the mask).
        for (step, valid) in normalized.chunks_mut(d).zip(m) {
            if *valid == 0.0 {
                step.fill(0.0);
            }
        }
    }
    let actions = Tensor::<3>::from_data(TensorData::new(normalized, [n, k, d]), device);
    let mask = match &batch.action_mask {
        Some(m) => {
            if m.len() != n * k {
                return Err(shape_err("action_mask", n * k, m.len()));
            }
            if m.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(PolicyError::Invalid {
                    field: "action_mask",
                    reason: "values must be >= 0".into(),
                });
            }
            Tensor::<2>::from_data(TensorData::new(m.clone(), [n, k]), device)
        }
        None => Tensor::<2>::ones([n, k], device),
    };
    Ok(Targets { actions, mask })
}

/// Per-sample weights as a `[len]` tensor; must be finite and non-negative.
pub(crate) fn weights_tensor(weights: &[f32], len: usize, device: &Device) -> Result<Tensor<1>> {
    if weights.len() != len {
        return Err(shape_err("weights", len, weights.len()));
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(PolicyError::Invalid {
            field: "weights",
            reason: format!("{w} is not finite and >= 0"),
        });
    }
    Ok(Tensor::<1>::from_data(
        TensorData::new(weights.to_vec(), [len]),
        device,
    ))
}

/// Mean over the chunk of an element-wise loss `[n, k, d]`, counting only unmasked steps: `[n]`.
pub(crate) fn masked_mean(elementwise: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
    let [n, k, _] = elementwise.dims();
    let per_step = elementwise.mean_dim(2).reshape([n, k]);
    let num = (per_step * mask.clone()).sum_dim(1).reshape([n]);
    let den = mask.sum_dim(1).reshape([n]).clamp_min(1e-6);
    num / den
}

/// `E[w * loss]`: the batch mean of the weighted per-sample losses (TOPReward Eq. 3 / AWR).
/// With all weights 1 this is exactly the unweighted mean.
pub(crate) fn weighted_mean(per_sample: Tensor<1>, weights: Tensor<1>) -> Tensor<1> {
    (per_sample * weights).mean()
}

pub(crate) fn read_vec(t: Tensor<1>, what: &'static str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| PolicyError::Tensor {
            what,
            reason: format!("{e:?}"),
        })
}
