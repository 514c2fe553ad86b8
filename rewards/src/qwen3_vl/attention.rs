//! Scaled dot-product attention computed in query chunks, so that the full `heads x L x S` score matrix is
//! never held at once: each chunk of queries takes its scores against the keys it may see (with a causal mask,
//! only keys up to its last query), a softmax in f32 (transformers' eager attention: `softmax(...,
//! dtype=torch.float32).to(query.dtype)`), and its share of the output. Every query row sees all of its keys
//! in one softmax, so the result equals the unchunked computation up to float summation order.
//!
//! The same function runs a packed prefix tree ([`Visibility::Tree`]): several branches that continue a
//! shared, cached trunk at different points, each seeing only its own part of the trunk and its own tokens,
//! in one pass. TOPReward's incremental mode scores all prefixes of an episode that way (one large product
//! instead of one small forward per prefix).
//!
//! Peak memory of the scores is about `chunk_bytes` (plus a copy for the softmax) instead of
//! `batch * rep * L * S * 4` bytes: at 9k tokens and 32 heads the unchunked matrix is about 10 GB per layer.

use candle_core::{D, DType, Device, Result, Tensor};

/// Default budget for one chunk's f32 score matrix (64 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 64 << 20;

/// Which keys a query of a packed prefix tree sees: the trunk's keys `0..shared` and its own branch's keys
/// `start..=` its own position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeRow {
    pub shared: usize,
    pub start: usize,
}

/// Which keys each query sees. Query `i` of a chunk of `l` queries that continue `offset` cached keys sits at
/// key index `offset + i`.
#[derive(Debug, Clone, Copy)]
pub enum Visibility<'a> {
    /// Every query sees every key (the vision tower: attention within a group of patches).
    All,
    /// Query `i` sees keys `0..=offset + i` (a causal decoder continuing a cache).
    Causal { offset: usize },
    /// Query `i` sees keys `0..rows[i].shared` and `rows[i].start..=offset + i` (a packed prefix tree on top
    /// of a cached trunk: see [`TreeRow`]).
    Tree { offset: usize, rows: &'a [TreeRow] },
}

impl Visibility<'_> {
    /// Key index of the first query, for the masked kinds.
    fn offset(&self) -> Option<usize> {
        match self {
            Self::All => None,
            Self::Causal { offset } | Self::Tree { offset, .. } => Some(*offset),
        }
    }

    /// Additive f32 mask `(c, keys)` for queries `first..first + c` against keys `0..keys`; `None` for `All`.
    fn mask(&self, first: usize, c: usize, keys: usize, dev: &Device) -> Result<Option<Tensor>> {
        match *self {
            Self::All => Ok(None),
            Self::Causal { offset } => causal_mask(c, offset + first, dev).map(Some),
            Self::Tree { offset, rows } => {
                let mut mask = vec![f32::NEG_INFINITY; c * keys];
                for (i, row) in rows[first..first + c].iter().enumerate() {
                    let own = offset + first + i;
                    let line = &mut mask[i * keys..(i + 1) * keys];
                    line[..row.shared.min(keys)].fill(0.0);
                    line[row.start.min(own)..=own.min(keys - 1)].fill(0.0);
                }
                Tensor::from_vec(mask, (c, keys), dev).map(Some)
            }
        }
    }
}

/// Rows of queries per chunk so that `batch * rep * rows * keys` f32 scores fit `chunk_bytes` (at least 1).
pub fn chunk_rows(batch: usize, rep: usize, keys: usize, chunk_bytes: usize) -> usize {
    let per_row = (batch * rep * keys * 4).max(1);
    (chunk_bytes / per_row).max(1)
}

/// Attention of `q` `(batch, rep, l, hd)` over `k`, `v` `(batch, s, hd)`: `rep` query heads share each key/value
/// head (GQA, heads adjacent as in transformers' `repeat_kv`); `visibility` says which keys each query sees.
/// Returns `(batch, rep, l, hd)` in `q`'s dtype. Scores are scaled and soft-maxed in f32.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    visibility: Visibility<'_>,
    chunk_bytes: usize,
) -> Result<Tensor> {
    let (batch, rep, l, hd) = q.dims4()?;
    let s = k.dim(1)?;
    check_visibility(&visibility, l, s)?;
    if let Visibility::Tree { offset, rows } = visibility {
        return tree_attention(q, k, v, scale, offset, rows, chunk_bytes);
    }
    let rows = chunk_rows(batch, rep, s, chunk_bytes).min(l.max(1));
    let mut outs = Vec::with_capacity(l.div_ceil(rows));
    let mut start = 0;
    while start < l {
        let c = rows.min(l - start);
        // Keys this chunk may see: masked chunks stop at their last query.
        let keys = match visibility.offset() {
            Some(o) => o + start + c,
            None => s,
        };
        let qc = q.narrow(2, start, c)?.reshape((batch, rep * c, hd))?;
        let kc = k.narrow(1, 0, keys)?;
        let vc = v.narrow(1, 0, keys)?;
        let scores = (qc.matmul(&kc.t()?)?.to_dtype(DType::F32)? * scale)?;
        let scores = match visibility.mask(start, c, keys, q.device())? {
            Some(mask) => scores
                .reshape((batch, rep, c, keys))?
                .broadcast_add(&mask)?
                .reshape((batch, rep * c, keys))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(&vc)?.reshape((batch, rep, c, hd))?);
        start += c;
    }
    join_query_chunks(outs)
}

/// A packed tree, one run of queries with the same [`TreeRow`] (a branch) at a time: the run's keys are its part
/// of the trunk and its own branch, gathered, and it attends to them causally. Skipping the keys of the other
/// branches makes the work proportional to what each branch sees, not to the whole packed sequence.
fn tree_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    offset: usize,
    rows: &[TreeRow],
    chunk_bytes: usize,
) -> Result<Tensor> {
    let mut outs = Vec::new();
    let mut first = 0;
    while first < rows.len() {
        let row = rows[first];
        let len = rows[first..].iter().take_while(|r| **r == row).count();
        // Query first + j sees keys 0..shared and start..=offset + first + j.
        let own = offset + first + len - row.start;
        let gather = |t: &Tensor| -> Result<Tensor> {
            let mine = t.narrow(1, row.start, own)?;
            if row.shared == 0 {
                return Ok(mine);
            }
            Tensor::cat(&[&t.narrow(1, 0, row.shared)?, &mine], 1)
        };
        let (kb, vb) = (gather(k)?, gather(v)?);
        let causal = Visibility::Causal {
            offset: row.shared + own - len,
        };
        outs.push(chunked_attention(
            &q.narrow(2, first, len)?,
            &kb,
            &vb,
            scale,
            causal,
            chunk_bytes,
        )?);
        first += len;
    }
    join_query_chunks(outs)
}

/// The outputs of consecutive query chunks `(batch, rep, c, hd)` as one `(batch, rep, l, hd)` (no copy for one).
fn join_query_chunks(mut outs: Vec<Tensor>) -> Result<Tensor> {
    if outs.len() == 1 {
        return outs
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no attention chunk".into()));
    }
    Tensor::cat(&outs, 2)
}

/// Masked kinds must continue exactly the keys they are given, and tree rows must see themselves.
fn check_visibility(visibility: &Visibility<'_>, l: usize, s: usize) -> Result<()> {
    if let Some(o) = visibility.offset()
        && o + l != s
    {
        candle_core::bail!("masked attention: offset {o} + {l} queries but {s} keys");
    }
    if let Visibility::Tree { offset, rows } = visibility {
        if rows.len() != l {
            candle_core::bail!("tree attention: {} rows for {l} queries", rows.len());
        }
        if let Some((i, r)) = rows
            .iter()
            .enumerate()
            .find(|(i, r)| r.shared > r.start || r.start > offset + i)
        {
            candle_core::bail!(
                "tree attention: query {i} (key {}) has shared {} and start {}",
                offset + i,
                r.shared,
                r.start
            );
        }
    }
    Ok(())
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
    visibility: Visibility<'_>,
) -> Result<Tensor> {
    let (batch, rep, l, hd) = q.dims4()?;
    let s = k.dim(1)?;
    check_visibility(&visibility, l, s)?;
    let scores = (q
        .reshape((batch, rep * l, hd))?
        .matmul(&k.t()?)?
        .to_dtype(DType::F32)?
        * scale)?;
    let scores = match visibility.mask(0, l, s, q.device())? {
        Some(mask) => scores
            .reshape((batch, rep, l, s))?
            .broadcast_add(&mask)?
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
            let vis = if causal {
                Visibility::Causal { offset }
            } else {
                Visibility::All
            };
            let full = full_attention(&q, &k, &v, 0.25, vis).unwrap();
            // budgets of 1 row, a few rows, and everything at once
            for bytes in [1, batch * rep * s * 4 * 5, usize::MAX / 2] {
                let chunked = chunked_attention(&q, &k, &v, 0.25, vis, bytes).unwrap();
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
        assert!(chunked_attention(&q, &k, &k, 1.0, Visibility::Causal { offset: 0 }, 1 << 20).is_err());
    }

    /// A packed tree (a trunk of 9 cached keys, then branches of 4, 1 and 3 queries leaving it after 5, 9 and 2
    /// keys) gives each branch what causal attention over its own sequence (trunk prefix, then branch) gives.
    #[test]
    fn tree_attention_equals_each_branch_run_causally() {
        let (batch, rep, hd, trunk) = (2, 3, 8, 9);
        let branches = [(5usize, 4usize), (9, 1), (2, 3)];
        let l: usize = branches.iter().map(|b| b.1).sum();
        let s = trunk + l;
        let q = random(&[batch, rep, l, hd], 11);
        let k = random(&[batch, s, hd], 12);
        let v = random(&[batch, s, hd], 13);
        let mut rows = Vec::new();
        let mut start = trunk;
        for &(shared, len) in &branches {
            rows.extend((0..len).map(|_| TreeRow { shared, start }));
            start += len;
        }
        let tree = Visibility::Tree {
            offset: trunk,
            rows: &rows,
        };
        let full = full_attention(&q, &k, &v, 0.3, tree).unwrap();
        for bytes in [1, batch * rep * s * 4 * 3, usize::MAX / 2] {
            let chunked = chunked_attention(&q, &k, &v, 0.3, tree, bytes).unwrap();
            assert!(max_diff(&chunked, &full) < 1e-6, "budget {bytes}");
        }
        let mut first = 0;
        let mut start = trunk;
        for &(shared, len) in &branches {
            // The branch's own sequence: trunk keys 0..shared, then its own keys.
            let pick = |t: &Tensor| {
                Tensor::cat(
                    &[t.narrow(1, 0, shared).unwrap(), t.narrow(1, start, len).unwrap()],
                    1,
                )
                .unwrap()
            };
            let qb = q.narrow(2, first, len).unwrap();
            let alone = full_attention(
                &qb,
                &pick(&k),
                &pick(&v),
                0.3,
                Visibility::Causal { offset: shared },
            )
            .unwrap();
            let packed = full.narrow(2, first, len).unwrap();
            assert!(max_diff(&alone, &packed) < 1e-6, "branch at {shared}");
            first += len;
            start += len;
        }
        let bad = [TreeRow { shared: 3, start: 2 }];
        let q1 = q.narrow(2, 0, 1).unwrap();
        let k1 = k.narrow(1, 0, trunk + 1).unwrap();
        let vis = Visibility::Tree {
            offset: trunk,
            rows: &bad,
        };
        assert!(chunked_attention(&q1, &k1, &k1, 1.0, vis, 1 << 20).is_err());
    }
}
