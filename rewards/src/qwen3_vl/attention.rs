//! Scaled dot-product attention computed in query chunks, so that the full `heads x L x S` score matrix is
//! never held at once: each chunk of queries takes its scores against the keys it may see (with a causal mask,
//! only keys up to its last query), a softmax in f32 (transformers' eager attention: `softmax(...,
//! dtype=torch.float32).to(query.dtype)`), and its share of the output. Every query row sees all of its keys
//! in one softmax, so the result equals the unchunked computation up to float summation order.
//!
//! Peak memory of the scores is about `chunk_bytes` (plus a copy for the softmax) instead of
//! `batch * rep * L * S * 4` bytes: at 9k tokens and 32 heads the unchunked matrix is about 10 GB per layer.

use candle_core::{D, DType, Device, Result, Tensor};

/// Default budget for one chunk's f32 score matrix (64 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 20;

/// Rows of queries per chunk so that `batch * rep * rows * keys` f32 scores fit `chunk_bytes` (at least 1).
pub fn chunk_rows(batch: usize, rep: usize, keys: usize, chunk_bytes: usize) -> usize {
    let per_row = (batch * rep * keys * 4).max(1);
    (chunk_bytes / per_row).max(1)
}

/// Attention of `q` `(batch, rep, l, hd)` over `k`, `v` `(batch, s, hd)`: `rep` query heads share each key/value
/// head (GQA, heads adjacent as in transformers' `repeat_kv`). With `causal_offset = Some(o)` query `i` (absolute
/// position `o + i`) sees keys `0..=o + i`; with `None` it sees all `s` keys. Returns `(batch, rep, l, hd)` in
/// `q`'s dtype. Scores are scaled and soft-maxed in f32.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal_offset: Option<usize>,
    chunk_bytes: usize,
) -> Result<Tensor> {
    let (batch, rep, l, hd) = q.dims4()?;
    let s = k.dim(1)?;
    if let Some(o) = causal_offset
        && o + l != s
    {
        candle_core::bail!("causal attention: offset {o} + {l} queries but {s} keys");
    }
    let rows = chunk_rows(batch, rep, s, chunk_bytes).min(l.max(1));
    let mut outs = Vec::with_capacity(l.div_ceil(rows));
    let mut start = 0;
    while start < l {
        let c = rows.min(l - start);
        // Keys this chunk may see: causal chunks stop at their last query.
        let keys = match causal_offset {
            Some(o) => o + start + c,
            None => s,
        };
        let qc = q.narrow(2, start, c)?.reshape((batch, rep * c, hd))?;
        let kc = k.narrow(1, 0, keys)?;
        let vc = v.narrow(1, 0, keys)?;
        let scores = (qc.matmul(&kc.t()?)?.to_dtype(DType::F32)? * scale)?;
        let scores = match causal_offset {
            Some(o) => {
                let mask = causal_mask(c, o + start, q.device())?;
                scores
                    .reshape((batch, rep, c, keys))?
                    .broadcast_add(&mask)?
                    .reshape((batch, rep * c, keys))?
            }
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(&vc)?.reshape((batch, rep, c, hd))?);
        start += c;
    }
    if outs.len() == 1 {
        return outs
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no attention chunk".into()));
    }
    Tensor::cat(&outs, 2)
}

/// Additive f32 causal mask `(l, offset + l)`: query i (absolute offset + i) sees keys 0..=offset + i.
pub fn causal_mask(l: usize, offset: usize, dev: &Device) -> Result<Tensor> {
    let s = offset + l;
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..s).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (l, s), dev)
}

/// Unchunked attention with the same conventions (the whole score matrix at once); for tests and as the
/// reference the chunked version is checked against.
pub fn full_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal_offset: Option<usize>,
) -> Result<Tensor> {
    let (batch, rep, l, hd) = q.dims4()?;
    let s = k.dim(1)?;
    let scores = (q
        .reshape((batch, rep * l, hd))?
        .matmul(&k.t()?)?
        .to_dtype(DType::F32)?
        * scale)?;
    let scores = match causal_offset {
        Some(o) => scores
            .reshape((batch, rep, l, s))?
            .broadcast_add(&causal_mask(l, o, q.device())?)?
            .reshape((batch, rep * l, s))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
    probs.matmul(v)?.reshape((batch, rep, l, hd))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A small deterministic generator (splitmix64) keeps the test free of extra dependencies.
        let n: usize = shape.iter().product();
        let mut x = seed;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn chunked_equals_full_attention_causal_and_not() {
        let (batch, rep, hd) = (3, 2, 16);
        for (l, offset, causal) in [(37, 0, true), (29, 11, true), (41, 0, false), (1, 20, true)] {
            let s = if causal { offset + l } else { 23 };
            let q = random(&[batch, rep, l, hd], 1);
            let k = random(&[batch, s, hd], 2);
            let v = random(&[batch, s, hd], 3);
            let off = causal.then_some(offset);
            let full = full_attention(&q, &k, &v, 0.25, off).unwrap();
            // budgets of 1 row, a few rows, and everything at once
            for bytes in [1, batch * rep * s * 4 * 5, usize::MAX / 2] {
                let chunked = chunked_attention(&q, &k, &v, 0.25, off, bytes).unwrap();
                assert_eq!(chunked.dims(), full.dims());
                let d = max_diff(&chunked, &full);
                assert!(
                    d < 1e-5,
                    "l {l} offset {offset} causal {causal} budget {bytes}: {d}"
                );
            }
        }
    }

    #[test]
    fn chunk_rows_respects_the_budget() {
        assert_eq!(chunk_rows(8, 4, 1000, 8 * 4 * 1000 * 4 * 10), 10);
        assert_eq!(chunk_rows(8, 4, 1000, 1), 1);
    }

    #[test]
    fn causal_offset_must_match_the_key_count() {
        let q = random(&[1, 1, 4, 8], 1);
        let k = random(&[1, 5, 8], 2);
        assert!(chunked_attention(&q, &k, &k, 1.0, Some(0), 1 << 20).is_err());
    }
}
