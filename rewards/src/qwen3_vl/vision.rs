//! Qwen3-VL vision tower (transformers `Qwen3VLVisionModel`): Conv3d patch embedding (as a linear over
//! flattened patches), bilinearly interpolated learned position embedding, 2-D rotary attention confined to
//! one temporal group, and 2x2 patch mergers (the DeepStack mergers normalise after the shuffle).

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::activation;
use super::attention::{DEFAULT_CHUNK_BYTES, Visibility, chunked_attention};
use super::config::VisionConfig;

/// The grid of one video (or one image): temporal groups, patch rows, patch columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GridThw {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl GridThw {
    pub fn new(t: usize, h: usize, w: usize) -> Self {
        Self { t, h, w }
    }
    /// Patches (rows of `pixel_values`) in the grid.
    pub fn num_patches(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// Features of the vision tower: merged tokens and one DeepStack feature per `deepstack_visual_indexes`.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `(tokens, out_hidden_size)`, tokens = patches / merge^2.
    pub embeds: Tensor,
    /// Same shape as `embeds`, one per DeepStack layer.
    pub deepstack: Vec<Tensor>,
}

impl VisionOutput {
    /// Tokens `start..start + len` of the embeddings and of every DeepStack feature.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            embeds: self.embeds.narrow(0, start, len)?,
            deepstack: self
                .deepstack
                .iter()
                .map(|d| d.narrow(0, start, len))
                .collect::<Result<_>>()?,
        })
    }

    /// The tokens of `parts` one after another; `None` when there are none.
    pub fn cat(parts: &[Self]) -> Result<Option<Self>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let layer = |l: usize| Tensor::cat(&parts.iter().map(|p| &p.deepstack[l]).collect::<Vec<_>>(), 0);
        Ok(Some(Self {
            embeds: Tensor::cat(&parts.iter().map(|p| &p.embeds).collect::<Vec<_>>(), 0)?,
            deepstack: (0..first.deepstack.len()).map(layer).collect::<Result<_>>()?,
        }))
    }
}

#[derive(Debug, Clone)]
struct PatchMerger {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    hidden: usize,
    postshuffle: bool,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, postshuffle: bool, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let norm_dim = if postshuffle { hidden } else { cfg.hidden_size };
        Ok(Self {
            norm: candle_nn::layer_norm(norm_dim, 1e-6, vb.pp("norm"))?,
            fc1: candle_nn::linear(hidden, hidden, vb.pp("linear_fc1"))?,
            fc2: candle_nn::linear(hidden, cfg.out_hidden_size, vb.pp("linear_fc2"))?,
            hidden,
            postshuffle,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = if self.postshuffle {
            xs.reshape(((), self.hidden))?.apply(&self.norm)?
        } else {
            xs.apply(&self.norm)?.reshape(((), self.hidden))?
        };
        // transformers uses nn.GELU() (erf) here, unlike the blocks' gelu_pytorch_tanh.
        xs.apply(&self.fc1)?.gelu_erf()?.apply(&self.fc2)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    num_heads: usize,
    head_dim: usize,
    tanh_gelu: bool,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            norm1: candle_nn::layer_norm(d, 1e-6, vb.pp("norm1"))?,
            norm2: candle_nn::layer_norm(d, 1e-6, vb.pp("norm2"))?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("attn.proj"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp.linear_fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp.linear_fc2"))?,
            num_heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
            tanh_gelu: cfg.hidden_act != "gelu",
        })
    }

    /// `xs`: `(groups, group_len, hidden)`; attention never crosses a group (cu_seqlens in transformers).
    /// `cos`/`sin` are f32: transformers' `apply_rotary_pos_emb_vision` rotates q and k in f32 and casts back.
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, chunk_bytes: usize) -> Result<Tensor> {
        let (g, n, d) = xs.dims3()?;
        let h = xs.apply(&self.norm1)?;
        let qkv = h
            .apply(&self.qkv)?
            .reshape((g, n, 3, self.num_heads, self.head_dim))?;
        let qkv = qkv.permute((2, 0, 3, 1, 4))?; // (3, g, heads, n, hd)
        let q = qkv.i(0)?.contiguous()?;
        let k = qkv.i(1)?.contiguous()?;
        let v = qkv.i(2)?.contiguous()?;
        let dtype = q.dtype();
        let rope = |x: &Tensor| -> Result<Tensor> {
            candle_nn::rotary_emb::rope(&x.to_dtype(DType::F32)?, cos, sin)?.to_dtype(dtype)
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (heads, hd) = (self.num_heads, self.head_dim);
        let scale = (hd as f64).powf(-0.5);
        // Every (group, head) pair is its own attention problem over the group's n patches.
        let out = chunked_attention(
            &q.reshape((g * heads, 1, n, hd))?,
            &k.reshape((g * heads, n, hd))?,
            &v.reshape((g * heads, n, hd))?,
            scale,
            Visibility::All,
            chunk_bytes,
        )?
        .reshape((g, heads, n, hd))?;
        let out = out.transpose(1, 2)?.reshape((g, n, d))?.apply(&self.proj)?;
        let xs = (xs + out)?;
        let h = xs.apply(&self.norm2)?.apply(&self.fc1)?;
        let h = if self.tanh_gelu {
            activation::gelu_tanh(&h)?
        } else {
            h.gelu_erf()?
        };
        xs + h.apply(&self.fc2)?
    }
}

/// The Qwen3-VL vision transformer.
#[derive(Debug, Clone)]
pub struct VisionModel {
    patch_embed: Linear,
    pos_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    deepstack_mergers: Vec<PatchMerger>,
    deepstack_indexes: Vec<usize>,
    cfg: VisionConfig,
    rope_inv_freq: Vec<f32>,
    attention_chunk_bytes: usize,
}

impl VisionModel {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        // Conv3d with kernel == stride over pre-cut patches is a linear map on the flattened (C, T, P, P) patch.
        let w = vb.get(
            (
                cfg.hidden_size,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "patch_embed.proj.weight",
        )?;
        let b = vb.get(cfg.hidden_size, "patch_embed.proj.bias")?;
        let patch_embed = Linear::new(w.reshape((cfg.hidden_size, patch_dim))?, Some(b));
        let pos_embed = vb.get((cfg.num_position_embeddings, cfg.hidden_size), "pos_embed.weight")?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        let merger = PatchMerger::new(cfg, false, vb.pp("merger"))?;
        let deepstack_mergers = (0..cfg.deepstack_visual_indexes.len())
            .map(|i| PatchMerger::new(cfg, true, vb.pp(format!("deepstack_merger_list.{i}"))))
            .collect::<Result<_>>()?;
        // Qwen3VLVisionRotaryEmbedding(head_dim / 2): inv_freq = 1 / 10000^(2i / dim), f32 like torch.
        let dim = cfg.hidden_size / cfg.num_heads / 2;
        let rope_inv_freq = (0..dim)
            .step_by(2)
            .map(|i| 1.0f32 / 10000f32.powf(i as f32 / dim as f32))
            .collect::<Vec<_>>();
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            merger,
            deepstack_mergers,
            deepstack_indexes: cfg.deepstack_visual_indexes.clone(),
            cfg: cfg.clone(),
            rope_inv_freq,
            attention_chunk_bytes: DEFAULT_CHUNK_BYTES,
        })
    }

    /// Budget in bytes of one chunk of f32 attention scores (see [`super::attention`]).
    pub fn set_attention_chunk_bytes(&mut self, bytes: usize) {
        self.attention_chunk_bytes = bytes.max(1);
    }

    /// The dtype of the tower's weights (and of its computation).
    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }

    /// Rows of `pixel_values` per patch: C * T * P * P.
    pub fn patch_dim(&self) -> usize {
        self.cfg.in_channels * self.cfg.temporal_patch_size * self.cfg.patch_size * self.cfg.patch_size
    }

    /// Encode one or more videos: `pixel_values` is `(sum of patches, patch_dim)` in the processor's order.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<VisionOutput> {
        let mut parts = Vec::with_capacity(grids.len());
        let mut offset = 0;
        for g in grids {
            let n = g.num_patches();
            parts.push(self.forward_one(&pixel_values.narrow(0, offset, n)?, *g)?);
            offset += n;
        }
        if offset != pixel_values.dim(0)? {
            candle_core::bail!(
                "pixel_values has {} rows, the grids need {offset}",
                pixel_values.dim(0)?
            );
        }
        VisionOutput::cat(&parts)?.ok_or_else(|| candle_core::Error::Msg("no grids to encode".into()))
    }

    /// Encode the media of several inputs at once: each element is one input's `pixel_values` and grids, as
    /// [`Self::forward`] takes them. Temporal groups of the same size are encoded in one batch whichever input
    /// and grid they come from (a group attends only within itself), so many small requests cost about what
    /// one large one does. Returns one output per input, each as `forward` would return it.
    pub fn forward_many(&self, inputs: &[(&Tensor, &[GridThw])]) -> Result<Vec<VisionOutput>> {
        let m2 = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        // Every temporal group: (input, patch row offset, h, w), in input order.
        let mut groups = Vec::new();
        for (i, (pixels, grids)) in inputs.iter().enumerate() {
            let mut offset = 0;
            for g in *grids {
                for _ in 0..g.t {
                    groups.push((i, offset, g.h, g.w));
                    offset += g.h * g.w;
                }
            }
            if offset != pixels.dim(0)? {
                candle_core::bail!(
                    "input {i}: pixel_values has {} rows, its grids need {offset}",
                    pixels.dim(0)?
                );
            }
        }
        // One batch per group size; each group's output rows, by group index.
        let mut sizes: Vec<(usize, usize)> = groups.iter().map(|&(_, _, h, w)| (h, w)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut outputs: Vec<Option<VisionOutput>> = vec![None; groups.len()];
        for (h, w) in sizes {
            let members: Vec<usize> = (0..groups.len())
                .filter(|&j| (groups[j].2, groups[j].3) == (h, w))
                .collect();
            let rows = members
                .iter()
                .map(|&j| inputs[groups[j].0].0.narrow(0, groups[j].1, h * w))
                .collect::<Result<Vec<_>>>()?;
            let out = self.forward_one(&Tensor::cat(&rows, 0)?, GridThw::new(members.len(), h, w))?;
            let per = h * w / m2;
            for (k, &j) in members.iter().enumerate() {
                outputs[j] = Some(out.narrow(k * per, per)?);
            }
        }
        // Back to inputs, groups in order.
        let mut per_input: Vec<Vec<VisionOutput>> = vec![Vec::new(); inputs.len()];
        for ((i, ..), out) in groups.iter().zip(outputs) {
            per_input[*i].push(out.ok_or_else(|| candle_core::Error::Msg("a group was not encoded".into()))?);
        }
        per_input
            .into_iter()
            .enumerate()
            .map(|(i, outs)| {
                VisionOutput::cat(&outs)?
                    .ok_or_else(|| candle_core::Error::Msg(format!("input {i} has no image or video")))
            })
            .collect()
    }

    fn forward_one(&self, pixel_values: &Tensor, grid: GridThw) -> Result<VisionOutput> {
        let dev = self.pos_embed.device();
        let xs = pixel_values
            .to_device(dev)?
            .to_dtype(self.pos_embed.dtype())?
            .apply(&self.patch_embed)?;
        let pos = self.interpolated_pos_embed(grid)?;
        let xs = xs.broadcast_add(
            &pos.unsqueeze(0)?
                .repeat((grid.t, 1, 1))?
                .reshape(((), pos.dim(1)?))?,
        )?;
        let (cos, sin) = self.rotary(grid, dev)?;
        let group = grid.h * grid.w;
        let mut xs = xs.reshape((grid.t, group, ()))?;
        let mut deepstack = Vec::with_capacity(self.deepstack_mergers.len());
        for (i, blk) in self.blocks.iter().enumerate() {
            xs = blk.forward(&xs, &cos, &sin, self.attention_chunk_bytes)?;
            if let Some(j) = self.deepstack_indexes.iter().position(|&d| d == i) {
                deepstack.push((
                    j,
                    self.deepstack_mergers[j].forward(&xs.reshape(((), self.cfg.hidden_size))?)?,
                ));
            }
        }
        deepstack.sort_by_key(|(j, _)| *j);
        let embeds = self.merger.forward(&xs.reshape(((), self.cfg.hidden_size))?)?;
        Ok(VisionOutput {
            embeds,
            deepstack: deepstack.into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// `fast_pos_embed_interpolate` for one frame grid, in merge-window order: `(h * w, hidden)`.
    fn interpolated_pos_embed(&self, grid: GridThw) -> Result<Tensor> {
        let side = (self.cfg.num_position_embeddings as f64).sqrt() as usize;
        let (h, w, m) = (grid.h, grid.w, self.cfg.spatial_merge_size);
        let hs = linspace(0.0, (side - 1) as f32, h);
        let ws = linspace(0.0, (side - 1) as f32, w);
        let n = h * w;
        let mut idx = [vec![0u32; n], vec![0u32; n], vec![0u32; n], vec![0u32; n]];
        let mut wgt = [vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]];
        // Window order: (block row, block col, intra row, intra col), as the processor lays out patches.
        let mut k = 0;
        for br in 0..h / m {
            for bc in 0..w / m {
                for ir in 0..m {
                    for ic in 0..m {
                        let (r, c) = (br * m + ir, bc * m + ic);
                        let (hf, wf) = (hs[r] as usize, ws[c] as usize);
                        let (hc, wc) = ((hf + 1).min(side - 1), (wf + 1).min(side - 1));
                        let (dh, dw) = (hs[r] - hf as f32, ws[c] - wf as f32);
                        let cells = [(hf, wf), (hf, wc), (hc, wf), (hc, wc)];
                        let weights = [(1.0 - dh) * (1.0 - dw), (1.0 - dh) * dw, dh * (1.0 - dw), dh * dw];
                        for q in 0..4 {
                            idx[q][k] = (cells[q].0 * side + cells[q].1) as u32;
                            wgt[q][k] = weights[q];
                        }
                        k += 1;
                    }
                }
            }
        }
        let dev = self.pos_embed.device();
        let mut acc: Option<Tensor> = None;
        for q in 0..4 {
            let ids = Tensor::from_vec(idx[q].clone(), n, dev)?;
            let wt = Tensor::from_vec(wgt[q].clone(), (n, 1), dev)?.to_dtype(self.pos_embed.dtype())?;
            let e = self.pos_embed.index_select(&ids, 0)?.broadcast_mul(&wt)?;
            acc = Some(match acc {
                None => e,
                Some(a) => (a + e)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::Msg("empty position grid".into()))
    }

    /// 2-D rotary tables for one frame grid (merge-window order): f32 cos/sin of shape `(h * w, head_dim / 2)`.
    fn rotary(&self, grid: GridThw, dev: &Device) -> Result<(Tensor, Tensor)> {
        let (h, w, m) = (grid.h, grid.w, self.cfg.spatial_merge_size);
        let f = self.rope_inv_freq.len();
        let mut freqs = Vec::with_capacity(h * w * 2 * f);
        for br in 0..h / m {
            for bc in 0..w / m {
                for ir in 0..m {
                    for ic in 0..m {
                        let (r, c) = ((br * m + ir) as f32, (bc * m + ic) as f32);
                        freqs.extend(self.rope_inv_freq.iter().map(|x| r * x));
                        freqs.extend(self.rope_inv_freq.iter().map(|x| c * x));
                    }
                }
            }
        }
        let freqs = Tensor::from_vec(freqs, (h * w, 2 * f), dev)?;
        Ok((freqs.cos()?, freqs.sin()?))
    }
}

/// `torch.linspace(start, end, steps)` in f32, with torch's two-sided evaluation.
pub(crate) fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}
