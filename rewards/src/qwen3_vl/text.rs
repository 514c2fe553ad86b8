//! Qwen3-VL text decoder (transformers `Qwen3VLTextModel`): Qwen3 layers (RMSNorm, q/k RMSNorm per head, GQA,
//! SiLU-gated MLP) with interleaved multimodal RoPE over 3-D positions, a causal mask, a KV cache, and the
//! DeepStack additions of visual features after the first decoder layers.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::activation;
use super::attention::{DEFAULT_CHUNK_BYTES, TreeRow, Visibility, chunked_attention};
use super::config::TextConfig;

/// `Qwen3VLTextRMSNorm`: in f32 the fused kernel; in bf16/f16 transformers' upcast (normalise in f32, round to
/// the model dtype, then multiply by the weight in the model dtype).
#[derive(Debug, Clone)]
struct RmsNorm(candle_nn::RmsNorm);

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        candle_nn::rms_norm(size, eps, vb).map(Self)
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.dtype() == DType::F32 {
            self.0.forward(xs)
        } else {
            // candle_nn's unfused path: f32 statistics, `to_dtype(x)`, then `* weight`, as transformers.
            self.0.forward_diff(xs)
        }
    }
}

/// One token's multimodal RoPE position: (temporal, height, width).
pub type Position3 = [u32; 3];

/// Per-layer key/value cache. `truncate` rolls it back to a shorter prefix (the suffix of a prompt).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions `start..start + len` of every layer as a cache of their own: one sequence of a packed batch,
    /// which then decodes on alone.
    pub fn slice(&self, start: usize, len: usize) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.narrow(2, start, len)?, v.narrow(2, start, len)?))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Keep only the first `len` positions.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        for l in self.layers.iter_mut() {
            *l = match l.take() {
                Some(_) if len == 0 => None,
                Some((k, v)) => Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)),
                None => None,
            };
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    if bias {
        candle_nn::linear(i, o, vb)
    } else {
        candle_nn::linear_no_bias(i, o, vb)
    }
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let b = cfg.attention_bias;
        Ok(Self {
            q_proj: linear(cfg.hidden_size, h * hd, b, vb.pp("q_proj"))?,
            k_proj: linear(cfg.hidden_size, kv * hd, b, vb.pp("k_proj"))?,
            v_proj: linear(cfg.hidden_size, kv * hd, b, vb.pp("v_proj"))?,
            o_proj: linear(h * hd, cfg.hidden_size, b, vb.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        chunk_bytes: usize,
        cache: &mut Option<(Tensor, Tensor)>,
        tree: Option<&[TreeRow]>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = xs
            .apply(&self.q_proj)?
            .reshape((b, l, h, hd))?
            .apply(&self.q_norm)?
            .transpose(1, 2)?;
        let k = xs
            .apply(&self.k_proj)?
            .reshape((b, l, kvh, hd))?
            .apply(&self.k_norm)?
            .transpose(1, 2)?;
        let v = xs
            .apply(&self.v_proj)?
            .reshape((b, l, kvh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let s = k.dim(2)?;
        let rep = h / kvh;
        // GQA without copying K/V: query heads sharing a KV head are adjacent (repeat_kv order), so
        // (b, h, l, hd) views as (b * kvh, rep, l, hd) against the (b * kvh, s, hd) keys. Causal: query i is
        // key s - l + i (or, in a packed tree, its branch and its part of the trunk). Chunked over queries so
        // the (h, l, s) scores never exist at once.
        let q = q.reshape((b * kvh, rep, l, hd))?;
        let k = k.reshape((b * kvh, s, hd))?;
        let v = v.reshape((b * kvh, s, hd))?;
        let scale = (hd as f64).powf(-0.5);
        let visibility = match tree {
            Some(rows) => Visibility::Tree { offset: s - l, rows },
            None => Visibility::Causal { offset: s - l },
        };
        let out = chunked_attention(&q, &k, &v, scale, visibility, chunk_bytes)?
            .reshape((b, h, l, hd))?
            .transpose(1, 2)?
            .reshape((b, l, h * hd))?;
        out.apply(&self.o_proj)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        (activation::silu(&xs.apply(&self.gate)?)? * xs.apply(&self.up)?)?.apply(&self.down)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp {
                gate: candle_nn::linear_no_bias(d, i, vb.pp("mlp.gate_proj"))?,
                up: candle_nn::linear_no_bias(d, i, vb.pp("mlp.up_proj"))?,
                down: candle_nn::linear_no_bias(i, d, vb.pp("mlp.down_proj"))?,
            },
            input_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_norm: RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        chunk_bytes: usize,
        cache: &mut Option<(Tensor, Tensor)>,
        tree: Option<&[TreeRow]>,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&xs.apply(&self.input_norm)?, cos, sin, chunk_bytes, cache, tree)?;
        let xs = (xs + h)?;
        let h = xs.apply(&self.post_norm)?.apply(&self.mlp)?;
        xs + h
    }
}

/// DeepStack inputs for one forward chunk: positions (within the chunk) of the visual tokens and one
/// feature tensor `(n_visual, hidden)` per DeepStack layer.
#[derive(Debug, Clone, Copy)]
pub struct DeepStack<'a> {
    pub positions: &'a Tensor,
    pub features: &'a [Tensor],
}

/// The text decoder plus the language-model head.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    mrope_section: Vec<usize>,
    hidden_size: usize,
    device: Device,
    dtype: DType,
    attention_chunk_bytes: usize,
}

impl TextModel {
    /// `vb` points at the checkpoint root (weights `model.language_model.*` and `lm_head.*`).
    pub fn new(cfg: &TextConfig, mrope_section: &[usize], tied: bool, vb: VarBuilder) -> Result<Self> {
        let lm = vb.pp("model.language_model");
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, lm.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, lm.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, lm.pp("norm"))?;
        let lm_head = if tied {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        if mrope_section.iter().sum::<usize>() * 2 != cfg.head_dim {
            candle_core::bail!(
                "rope_scaling.mrope_section {mrope_section:?} must sum to head_dim / 2 = {}",
                cfg.head_dim / 2
            );
        }
        // Default RoPE init: inv_freq = 1 / theta^(2i / head_dim), computed in f32 as transformers does.
        let hd = cfg.head_dim;
        let theta = cfg.rope_theta as f32;
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1.0f32 / theta.powf(i as f32 / hd as f32))
            .collect();
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            mrope_section: mrope_section.to_vec(),
            hidden_size: cfg.hidden_size,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            attention_chunk_bytes: DEFAULT_CHUNK_BYTES,
        })
    }

    /// Budget in bytes of one chunk of f32 attention scores (see [`super::attention`]).
    pub fn set_attention_chunk_bytes(&mut self, bytes: usize) {
        self.attention_chunk_bytes = bytes.max(1);
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token embeddings `(len, hidden)`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.embed_tokens.forward(&ids)
    }

    /// cos/sin tables `(len, head_dim / 2)` for interleaved MRoPE (`apply_interleaved_mrope`): frequency slot j
    /// reads the height position when j % 3 == 1 and j < 3 * section[1], the width position when j % 3 == 2 and
    /// j < 3 * section[2], and the temporal position otherwise.
    fn rope_tables(&self, positions: &[Position3]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let (sh, sw) = (self.mrope_section[1] * 3, self.mrope_section[2] * 3);
        let axis: Vec<usize> = (0..half)
            .map(|j| {
                if j % 3 == 1 && j < sh {
                    1
                } else if j % 3 == 2 && j < sw {
                    2
                } else {
                    0
                }
            })
            .collect();
        let mut freqs = Vec::with_capacity(positions.len() * half);
        for p in positions {
            for j in 0..half {
                freqs.push(p[axis[j]] as f32 * self.inv_freq[j]);
            }
        }
        let freqs = Tensor::from_vec(freqs, (positions.len(), half), &self.device)?;
        Ok((
            freqs.cos()?.to_dtype(self.dtype)?,
            freqs.sin()?.to_dtype(self.dtype)?,
        ))
    }

    /// Run the decoder on `embeds` `(len, hidden)` that continue the sequence held in `cache`, and return the
    /// final-norm hidden states `(len, hidden)`. The causal mask covers the cached positions too.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &[Position3],
        deepstack: Option<DeepStack<'_>>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.forward_rows(embeds, positions, deepstack, cache, None)
    }

    /// Run a packed prefix tree on top of the trunk held in `cache`: `embeds` `(len, hidden)` are branches laid
    /// end to end, and token `i` (cache key `cache.len() + i`) sees what `rows[i]` says (its branch's part of the
    /// trunk, then its own branch). Each branch's hidden states equal those of running its own sequence
    /// causally, in one pass for all branches. The branches stay in `cache`: truncate it back to the trunk.
    pub fn forward_tree(
        &self,
        embeds: &Tensor,
        positions: &[Position3],
        deepstack: Option<DeepStack<'_>>,
        rows: &[TreeRow],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.forward_rows(embeds, positions, deepstack, cache, Some(rows))
    }

    fn forward_rows(
        &self,
        embeds: &Tensor,
        positions: &[Position3],
        deepstack: Option<DeepStack<'_>>,
        cache: &mut KvCache,
        tree: Option<&[TreeRow]>,
    ) -> Result<Tensor> {
        let l = embeds.dim(0)?;
        if positions.len() != l {
            candle_core::bail!("{} positions for {l} tokens", positions.len());
        }
        if cache.layers.len() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        let (cos, sin) = self.rope_tables(positions)?;
        let mut xs = embeds.unsqueeze(0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(
                &xs,
                &cos,
                &sin,
                self.attention_chunk_bytes,
                &mut cache.layers[i],
                tree,
            )?;
            if let Some(ds) = deepstack.as_ref()
                && let Some(feat) = ds.features.get(i)
            {
                // DeepStack: add the i-th visual feature at the visual token positions (`_deepstack_process`).
                xs = xs.index_add(ds.positions, &feat.to_dtype(xs.dtype())?.unsqueeze(0)?, 1)?;
            }
        }
        xs.apply(&self.norm)?.squeeze(0)
    }

    /// Logits `(rows, vocab)` of the given hidden states `(rows, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        // `W h^T` rather than `h W^T` (the lm_head has no bias): the same products, but with the
        // (vocab, hidden) weight as the row-major left operand gemm streams it about 3x faster on the CPU
        // when there are few rows (measured: 15 rows of the 151936-token vocabulary, 33 vs 93 ms).
        let w = self.lm_head.weight();
        w.matmul(&hidden.to_dtype(w.dtype())?.t()?)?
            .t()?
            .to_dtype(DType::F32)?
            .contiguous()
    }
}
