//! One name map between [`SmolVla`]'s parameters and LeRobot's `model.safetensors` keys, used in both
//! directions: strict loading (bf16 / f16 / f32; every expected key present, every key in the file
//! used, shapes checked), saving (f32, PyTorch `[out, in]` layout) and LeRobot's trainability rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Param, ParamId};
use burn::nn::{LayerNorm, Linear, RmsNorm};
use burn::optim::GradientsParams;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::config::{SmolVlaConfig, SmolVlaDims};
use super::layers::{LlamaLayer, VisionLayer, VisionTower};
use super::model::SmolVla;
use crate::error::{PolicyError, Result};

/// How a parameter is laid out in the checkpoint relative to Burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and order.
    Same,
    /// A `Linear` weight: Burn keeps `[in, out]`, PyTorch `[out, in]`.
    Transposed,
}

/// Visits every parameter with its checkpoint name; may replace it.
pub trait ParamVisitor {
    fn visit<const D: usize>(
        &mut self,
        name: &str,
        param: Param<Tensor<D>>,
        layout: Layout,
    ) -> Param<Tensor<D>>;
}

/// A module whose every parameter has a LeRobot checkpoint name: one `map_named` serves strict
/// safetensors loading ([`load_named`]) and saving ([`save_named`]) for every LeRobot policy port.
pub trait NamedParams: Module + Clone {
    /// Apply `v` to every parameter under its checkpoint name.
    fn map_named<V: ParamVisitor>(self, v: &mut V) -> Self;
}

impl NamedParams for SmolVla {
    fn map_named<V: ParamVisitor>(self, v: &mut V) -> Self {
        SmolVla::map_named(self, v)
    }
}

/// Load a safetensors file strictly into `model` (every expected name present with its shape, every
/// tensor of the file used; bf16 / f16 / f32 read as f32). `what` names the model in errors.
pub fn load_named<M: NamedParams>(model: M, path: &Path, device: &Device, what: &str) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| PolicyError::Record {
        path: path.to_path_buf(),
        reason: format!("not a safetensors file: {e}"),
    })?;
    let mut loader = Loader {
        file: &file,
        used: BTreeSet::new(),
        errors: Vec::new(),
        device: device.clone(),
    };
    let model = model.map_named(&mut loader);
    let mut errors = loader.errors;
    let unused: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !loader.used.contains(*n))
        .map(|n| n.to_string())
        .collect();
    if !unused.is_empty() {
        errors.push(format!(
            "{} tensor(s) in the file are not part of this {what} (wrong config?): {}",
            unused.len(),
            preview(&unused)
        ));
    }
    if !errors.is_empty() {
        return Err(PolicyError::Record {
            path: path.to_path_buf(),
            reason: errors.join("; "),
        });
    }
    Ok(model)
}

/// Write every parameter of `model` as f32 in its checkpoint names and PyTorch layouts (temp file, then
/// rename).
pub fn save_named<M: NamedParams>(model: &M, path: &Path) -> Result<()> {
    struct Collect(Vec<(String, Vec<usize>, Vec<u8>)>);
    impl ParamVisitor for Collect {
        fn visit<const D: usize>(
            &mut self,
            name: &str,
            p: Param<Tensor<D>>,
            layout: Layout,
        ) -> Param<Tensor<D>> {
            let (shape, data) = to_torch(p.val(), layout);
            let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0.push((name.to_string(), shape, bytes));
            p
        }
    }
    let mut c = Collect(Vec::new());
    let _ = model.clone().map_named(&mut c);
    let mut views = Vec::with_capacity(c.0.len());
    for (name, shape, bytes) in &c.0 {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| {
            PolicyError::Record {
                path: path.to_path_buf(),
                reason: format!("{name}: {e}"),
            }
        })?;
        views.push((name.clone(), view));
    }
    let metadata: Option<std::collections::HashMap<String, String>> =
        Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| PolicyError::Record {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A parameter's value in PyTorch layout, flattened, with its shape; `None` for an unknown name.
pub fn named_tensor_of<M: NamedParams>(model: &M, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let mut reader = Reader { name, found: None };
    let _ = model.clone().map_named(&mut reader);
    reader.found
}

/// The gradient of the parameter called `name` in PyTorch layout, if it has one.
pub fn named_grad_of<M: NamedParams>(
    model: &M,
    grads: &GradientsParams,
    name: &str,
) -> Option<(Vec<usize>, Vec<f32>)> {
    struct G<'a> {
        name: &'a str,
        grads: &'a GradientsParams,
        found: Option<(Vec<usize>, Vec<f32>)>,
    }
    impl ParamVisitor for G<'_> {
        fn visit<const D: usize>(
            &mut self,
            name: &str,
            p: Param<Tensor<D>>,
            layout: Layout,
        ) -> Param<Tensor<D>> {
            if name == self.name
                && let Some(g) = self.grads.get::<D>(p.id)
            {
                self.found = Some(to_torch(g, layout));
            }
            p
        }
    }
    let mut g = G {
        name,
        grads,
        found: None,
    };
    let _ = model.clone().map_named(&mut g);
    g.found
}

/// Set each parameter's `require_grad` from `trainable(name)`.
pub fn with_trainable_of<M: NamedParams>(model: M, trainable: impl Fn(&str) -> bool) -> M {
    struct T<F>(F);
    impl<F: Fn(&str) -> bool> ParamVisitor for T<F> {
        fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, _: Layout) -> Param<Tensor<D>> {
            p.set_require_grad((self.0)(name))
        }
    }
    model.map_named(&mut T(trainable))
}

pub(crate) fn map_linear<V: ParamVisitor>(l: Linear, prefix: &str, v: &mut V) -> Linear {
    Linear {
        weight: v.visit(&format!("{prefix}.weight"), l.weight, Layout::Transposed),
        bias: l
            .bias
            .map(|b| v.visit(&format!("{prefix}.bias"), b, Layout::Same)),
    }
}

fn map_rms<V: ParamVisitor>(mut n: RmsNorm, prefix: &str, v: &mut V) -> RmsNorm {
    n.gamma = v.visit(&format!("{prefix}.weight"), n.gamma, Layout::Same);
    n
}

pub(crate) fn map_layer_norm<V: ParamVisitor>(mut n: LayerNorm, prefix: &str, v: &mut V) -> LayerNorm {
    n.gamma = v.visit(&format!("{prefix}.weight"), n.gamma, Layout::Same);
    n.beta = n
        .beta
        .map(|b| v.visit(&format!("{prefix}.bias"), b, Layout::Same));
    n
}

fn map_llama<V: ParamVisitor>(mut l: LlamaLayer, p: &str, v: &mut V) -> LlamaLayer {
    l.input_layernorm = map_rms(l.input_layernorm, &format!("{p}.input_layernorm"), v);
    l.self_attn.q_proj = map_linear(l.self_attn.q_proj, &format!("{p}.self_attn.q_proj"), v);
    l.self_attn.k_proj = map_linear(l.self_attn.k_proj, &format!("{p}.self_attn.k_proj"), v);
    l.self_attn.v_proj = map_linear(l.self_attn.v_proj, &format!("{p}.self_attn.v_proj"), v);
    l.self_attn.o_proj = map_linear(l.self_attn.o_proj, &format!("{p}.self_attn.o_proj"), v);
    l.post_attention_layernorm = map_rms(
        l.post_attention_layernorm,
        &format!("{p}.post_attention_layernorm"),
        v,
    );
    l.mlp.gate_proj = map_linear(l.mlp.gate_proj, &format!("{p}.mlp.gate_proj"), v);
    l.mlp.up_proj = map_linear(l.mlp.up_proj, &format!("{p}.mlp.up_proj"), v);
    l.mlp.down_proj = map_linear(l.mlp.down_proj, &format!("{p}.mlp.down_proj"), v);
    l
}

fn map_vision_layer<V: ParamVisitor>(mut l: VisionLayer, p: &str, v: &mut V) -> VisionLayer {
    l.layer_norm1 = map_layer_norm(l.layer_norm1, &format!("{p}.layer_norm1"), v);
    l.self_attn.q_proj = map_linear(l.self_attn.q_proj, &format!("{p}.self_attn.q_proj"), v);
    l.self_attn.k_proj = map_linear(l.self_attn.k_proj, &format!("{p}.self_attn.k_proj"), v);
    l.self_attn.v_proj = map_linear(l.self_attn.v_proj, &format!("{p}.self_attn.v_proj"), v);
    l.self_attn.out_proj = map_linear(l.self_attn.out_proj, &format!("{p}.self_attn.out_proj"), v);
    l.layer_norm2 = map_layer_norm(l.layer_norm2, &format!("{p}.layer_norm2"), v);
    l.mlp.fc1 = map_linear(l.mlp.fc1, &format!("{p}.mlp.fc1"), v);
    l.mlp.fc2 = map_linear(l.mlp.fc2, &format!("{p}.mlp.fc2"), v);
    l
}

fn map_vision<V: ParamVisitor>(mut t: VisionTower, p: &str, v: &mut V) -> VisionTower {
    t.patch_weight = v.visit(
        &format!("{p}.embeddings.patch_embedding.weight"),
        t.patch_weight,
        Layout::Same,
    );
    t.patch_bias = v.visit(
        &format!("{p}.embeddings.patch_embedding.bias"),
        t.patch_bias,
        Layout::Same,
    );
    t.position_embedding = v.visit(
        &format!("{p}.embeddings.position_embedding.weight"),
        t.position_embedding,
        Layout::Same,
    );
    t.layers = t
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| map_vision_layer(l, &format!("{p}.encoder.layers.{i}"), v))
        .collect();
    t.post_layernorm = map_layer_norm(t.post_layernorm, &format!("{p}.post_layernorm"), v);
    t
}

/// Prefix of the VLM's parameters in LeRobot's state dict.
pub const VLM_PREFIX: &str = "model.vlm_with_expert.vlm";
/// Prefix of the action expert's parameters.
pub const EXPERT_PREFIX: &str = "model.vlm_with_expert.lm_expert";

impl SmolVla {
    /// Apply `v` to every parameter under its LeRobot checkpoint name (the single name map).
    pub fn map_named<V: ParamVisitor>(mut self, v: &mut V) -> Self {
        let vm = format!("{VLM_PREFIX}.model");
        self.vision = map_vision(self.vision, &format!("{vm}.vision_model"), v);
        self.connector = map_linear(
            self.connector,
            &format!("{vm}.connector.modality_projection.proj"),
            v,
        );
        self.embed_tokens = v.visit(
            &format!("{vm}.text_model.embed_tokens.weight"),
            self.embed_tokens,
            Layout::Same,
        );
        self.text_layers = self
            .text_layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| map_llama(l, &format!("{vm}.text_model.layers.{i}"), v))
            .collect();
        self.text_norm = map_rms(self.text_norm, &format!("{vm}.text_model.norm"), v);
        self.lm_head = self
            .lm_head
            .map(|p| v.visit(&format!("{VLM_PREFIX}.lm_head.weight"), p, Layout::Same));
        self.expert_layers = self
            .expert_layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| map_llama(l, &format!("{EXPERT_PREFIX}.layers.{i}"), v))
            .collect();
        self.expert_norm = map_rms(self.expert_norm, &format!("{EXPERT_PREFIX}.norm"), v);
        self.state_proj = map_linear(self.state_proj, "model.state_proj", v);
        self.action_in_proj = map_linear(self.action_in_proj, "model.action_in_proj", v);
        self.action_out_proj = map_linear(self.action_out_proj, "model.action_out_proj", v);
        self.action_time_mlp_in = map_linear(self.action_time_mlp_in, "model.action_time_mlp_in", v);
        self.action_time_mlp_out = map_linear(self.action_time_mlp_out, "model.action_time_mlp_out", v);
        self
    }

    /// Every checkpoint name with its PyTorch shape, in visiting order.
    pub fn named_shapes(&self) -> Vec<(String, Vec<usize>)> {
        struct Names(Vec<(String, Vec<usize>)>);
        impl ParamVisitor for Names {
            fn visit<const D: usize>(
                &mut self,
                name: &str,
                p: Param<Tensor<D>>,
                layout: Layout,
            ) -> Param<Tensor<D>> {
                self.0
                    .push((name.to_string(), torch_shape(p.lazy_shape().to_vec(), layout)));
                p
            }
        }
        let mut names = Names(Vec::new());
        let _ = self.clone().map_named(&mut names);
        names.0
    }

    /// The `ParamId` of each checkpoint name (to read gradients or optimiser state by name).
    pub fn param_ids(&self) -> BTreeMap<String, ParamId> {
        struct Ids(BTreeMap<String, ParamId>);
        impl ParamVisitor for Ids {
            fn visit<const D: usize>(
                &mut self,
                name: &str,
                p: Param<Tensor<D>>,
                _: Layout,
            ) -> Param<Tensor<D>> {
                self.0.insert(name.to_string(), p.id);
                p
            }
        }
        let mut ids = Ids(BTreeMap::new());
        let _ = self.clone().map_named(&mut ids);
        ids.0
    }

    /// A parameter's value in PyTorch layout, flattened, with its shape; `None` for an unknown name.
    pub fn named_tensor(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        named_tensor_of(self, name)
    }

    /// The gradient of the parameter called `name` in PyTorch layout, if it has one.
    pub fn named_grad(&self, grads: &GradientsParams, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        named_grad_of(self, grads, name)
    }

    /// Mark parameters trainable or frozen as LeRobot 0.4.4 does (see [`lerobot_trainable`]).
    pub fn with_lerobot_trainability(self, cfg: &SmolVlaConfig) -> Self {
        self.with_trainable(|name| lerobot_trainable(name, cfg))
    }

    /// Set each parameter's `require_grad` from `trainable(name)`.
    pub fn with_trainable(self, trainable: impl Fn(&str) -> bool) -> Self {
        with_trainable_of(self, trainable)
    }

    /// Load `model.safetensors` strictly into a model of shape `dims` on `device`.
    pub fn load_safetensors(dims: SmolVlaDims, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load_named(SmolVla::new(dims, device), path.as_ref(), device, "SmolVLA")
    }

    /// Write every parameter as f32 in LeRobot's names and layouts (temp file, then rename).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        save_named(self, path.as_ref())
    }
}

/// LeRobot 0.4.4's trainability (`SmolVLMWithExpertModel.set_requires_grad` and
/// `VLAFlowMatching.set_requires_grad`): with `train_expert_only` the whole VLM is frozen; with
/// `freeze_vision_encoder` the vision tower; `lm_head` always. (LeRobot's other patterns,
/// `text_model.model.norm.weight` and `text_model.model.layers.N.`, match no parameter name in
/// 0.4.4, so nothing else is frozen.) `state_proj` follows `train_state_proj`; the expert and the
/// action/time projections always train.
pub fn lerobot_trainable(name: &str, cfg: &SmolVlaConfig) -> bool {
    if let Some(rest) = name.strip_prefix(VLM_PREFIX) {
        if cfg.train_expert_only || rest.starts_with(".lm_head") {
            return false;
        }
        return !(cfg.freeze_vision_encoder && rest.starts_with(".model.vision_model."));
    }
    if name.starts_with("model.state_proj.") {
        return cfg.train_state_proj;
    }
    true
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(", ... ({} more)", names.len() - 5));
    }
    s
}

fn torch_shape(mut dims: Vec<usize>, layout: Layout) -> Vec<usize> {
    if layout == Layout::Transposed {
        dims.reverse();
    }
    dims
}

/// A tensor's values in PyTorch layout (transposing a Linear weight back to `[out, in]`).
fn to_torch<const D: usize>(t: Tensor<D>, layout: Layout) -> (Vec<usize>, Vec<f32>) {
    let dims = t.dims().to_vec();
    let t = if layout == Layout::Transposed && D == 2 {
        t.swap_dims(0, 1)
    } else {
        t
    };
    let data = t.into_data().try_into_vec_as::<f32>().unwrap_or_default();
    (torch_shape(dims, layout), data)
}

struct Reader<'a> {
    name: &'a str,
    found: Option<(Vec<usize>, Vec<f32>)>,
}

impl ParamVisitor for Reader<'_> {
    fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, layout: Layout) -> Param<Tensor<D>> {
        if name == self.name {
            self.found = Some(to_torch(p.val(), layout));
        }
        p
    }
}

struct Loader<'a> {
    file: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: Device,
}

/// Decode a bf16 / f16 / f32 little-endian buffer to f32.
fn decode(dtype: Dtype, data: &[u8]) -> std::result::Result<Vec<f32>, String> {
    match dtype {
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        Dtype::BF16 => Ok(data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Dtype::F16 => Ok(data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => Err(format!("dtype {other:?}, expected BF16, F16 or F32")),
    }
}

impl ParamVisitor for Loader<'_> {
    fn visit<const D: usize>(&mut self, name: &str, p: Param<Tensor<D>>, layout: Layout) -> Param<Tensor<D>> {
        let burn_shape = p.lazy_shape().to_vec();
        let expected = torch_shape(burn_shape.clone(), layout);
        let view = match self.file.tensor(name) {
            Ok(v) => v,
            Err(_) => {
                self.errors
                    .push(format!("missing tensor {name} (expected shape {expected:?})"));
                return p;
            }
        };
        self.used.insert(name.to_string());
        if view.shape() != expected.as_slice() {
            self.errors.push(format!(
                "tensor {name} has shape {:?}, expected {expected:?}",
                view.shape()
            ));
            return p;
        }
        let values = match decode(view.dtype(), view.data()) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(format!("tensor {name}: {e}"));
                return p;
            }
        };
        let values = if layout == Layout::Transposed && D == 2 {
            // [out, in] -> [in, out]
            let (rows, cols) = (expected[0], expected[1]);
            let mut t = vec![0f32; values.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = values[r * cols + c];
                }
            }
            t
        } else {
            values
        };
        let tensor = Tensor::<D>::from_data(TensorData::new(values, burn_shape), &self.device);
        Param::from_tensor(tensor)
    }
}
