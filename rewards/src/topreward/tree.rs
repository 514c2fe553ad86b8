//! Incremental TOPReward as a packed prefix tree: all prefixes of an episode at one resolution scored in a few
//! large passes instead of one small forward per prefix.
//!
//! The prompts of an episode's prefixes share their beginning: the system text and the frame groups before the
//! point where a prefix ends (its closing `<|vision_end|>`, or a padded last group for an odd frame count). The
//! longest prefix is the *trunk*. Every other prefix is a *branch*: the tokens after the trunk position where it
//! leaves the trunk (its own last group, `<|vision_end|>` and the question). The trunk and the branches are laid
//! end to end and run in one decoder pass (more when they exceed the pass size; later passes run over the
//! trunk's cached keys); each token sees the trunk up to its branch's branch point and the earlier tokens of its
//! own branch ([`TreeRow`]), which is exactly the causal attention of the prefix's own prompt. The frame groups
//! of a pass are encoded in one vision batch, and the answer log-probabilities of all prefixes come from one
//! product with the language-model head.
//!
//! The scores equal those of [`super::IncrementalSession`] (the same computation, batched), up to float
//! summation order.

use std::collections::HashMap;

use candle_core::Tensor;

use super::scorer::{
    GroupKey, PrefixInput, PrefixScore, TokenKey, TokenLayout, TopRewardError, TopRewardModel,
};
use crate::qwen3_vl::{GridThw, KvCache, Position3, TreeRow, VisionOutput};

/// Branch tokens per decoder pass (the default of [`PrefixTree::with_pass_tokens`]): large enough that the
/// matrix products run at full speed, small enough that a pass's activations stay well below the weights.
pub const DEFAULT_PASS_TOKENS: usize = 2048;

/// A prefix waiting for the next pass: its tokens after the branch point.
struct Branch {
    /// Index of the prefix in the order it was added (the trunk is 0).
    index: usize,
    ids: Vec<u32>,
    positions: Vec<Position3>,
    /// Trunk tokens it shares (its branch point).
    shared: usize,
    /// Visual runs in token order: (group, offset within the group, tokens).
    visual: Vec<(GroupKey, usize, usize)>,
    target: u32,
    num_tokens: usize,
}

/// Scores prefixes of one episode at one resolution as a packed prefix tree (see the module docs).
pub struct PrefixTree<'a> {
    m: &'a TopRewardModel,
    cache: KvCache,
    /// Tokens of the trunk, which the cache holds after the first pass.
    trunk_len: usize,
    trunk_keys: Vec<TokenKey>,
    groups: HashMap<GroupKey, VisionOutput>,
    /// Pixel rows and grid of groups the pending branches need but no pass has encoded yet.
    new_groups: Vec<(GroupKey, Tensor, GridThw)>,
    pending: Vec<Branch>,
    pending_tokens: usize,
    pass_tokens: usize,
    /// Final hidden row and target of each prefix scored so far, by index.
    rows: Vec<Option<(Tensor, u32, usize)>>,
    computed_tokens: usize,
}

impl std::fmt::Debug for PrefixTree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixTree")
            .field("trunk_tokens", &self.trunk_keys.len())
            .field("prefixes", &self.rows.len())
            .field("computed_tokens", &self.computed_tokens)
            .finish()
    }
}

impl TopRewardModel {
    /// Start a prefix tree on `trunk`, the longest prefix of the episode (it runs in the first pass, with the
    /// prefixes added before it). Add the other prefixes with [`PrefixTree::add`], then
    /// [`PrefixTree::finish`].
    pub fn prefix_tree(&self, trunk: &PrefixInput) -> Result<PrefixTree<'_>, TopRewardError> {
        PrefixTree::new(self, trunk)
    }
}

impl<'a> PrefixTree<'a> {
    fn new(m: &'a TopRewardModel, trunk: &PrefixInput) -> Result<Self, TopRewardError> {
        m.check(trunk)?;
        let ids = &trunk.input_ids[..trunk.score_position + 1];
        let layout = TokenLayout::new(m.model(), trunk, ids)?;
        let mut tree = Self {
            m,
            cache: KvCache::new(m.model().text.num_layers()),
            trunk_len: ids.len(),
            trunk_keys: Vec::new(),
            groups: HashMap::new(),
            new_groups: Vec::new(),
            pending: Vec::new(),
            pending_tokens: 0,
            pass_tokens: DEFAULT_PASS_TOKENS,
            rows: Vec::new(),
            computed_tokens: 0,
        };
        // The trunk is the first branch, of an empty trunk: it runs in the first pass, together with the
        // branches added before that pass (they see its keys, computed in the same pass, through their rows).
        tree.push(trunk, &layout, 0)?;
        tree.trunk_keys = layout.keys;
        Ok(tree)
    }

    /// Branch tokens run per decoder pass (at least 1); more uses more memory per pass.
    pub fn with_pass_tokens(mut self, tokens: usize) -> Self {
        self.pass_tokens = tokens.max(1);
        self
    }

    /// Tokens run through the decoder so far (trunk and branches).
    pub fn computed_tokens(&self) -> usize {
        self.computed_tokens
    }

    /// Add a prefix; its score comes out of [`Self::finish`] at the returned index (the trunk is 0). Runs a
    /// pass when the pending branches reach the pass size.
    pub fn add(&mut self, input: &PrefixInput) -> Result<usize, TopRewardError> {
        self.m.check(input)?;
        let ids = &input.input_ids[..input.score_position + 1];
        let layout = TokenLayout::new(self.m.model(), input, ids)?;
        let mut shared = self
            .trunk_keys
            .iter()
            .zip(&layout.keys)
            .take_while(|(a, b)| a == b)
            .count();
        if shared == ids.len() {
            shared -= 1; // the score position must run to give its logits
        }
        let index = self.push(input, &layout, shared)?;
        if self.pending_tokens >= self.pass_tokens {
            self.run_pass()?;
        }
        Ok(index)
    }

    /// Queue the tokens of `input` after its first `shared` (the trunk's) for the next pass, and the pixel
    /// rows of frame groups no pass has encoded yet.
    fn push(
        &mut self,
        input: &PrefixInput,
        layout: &TokenLayout,
        shared: usize,
    ) -> Result<usize, TopRewardError> {
        let ids = &input.input_ids[..input.score_position + 1];
        let mut visual = Vec::new();
        for run in layout.visual_runs(input, shared) {
            if !self.groups.contains_key(&run.key) && !self.new_groups.iter().any(|(k, ..)| *k == run.key) {
                // Keep just the group's pixel rows until the pass encodes it.
                let (pixels, grid) = input.group_pixels(run.group)?;
                self.new_groups.push((run.key, pixels.contiguous()?, grid));
            }
            visual.push((run.key, run.offset, run.len));
        }
        let index = self.rows.len();
        self.rows.push(None);
        self.pending_tokens += ids.len() - shared;
        self.pending.push(Branch {
            index,
            ids: ids[shared..].to_vec(),
            positions: layout.positions[shared..].to_vec(),
            shared,
            visual,
            target: input.target_token_id,
            num_tokens: input.input_ids.len(),
        });
        Ok(index)
    }

    /// Encode the new groups and run the pending branches in one decoder pass.
    fn run_pass(&mut self) -> Result<(), TopRewardError> {
        // On the CPU, candle's own thread pool, kept warm across the many short parallel sections.
        let device = self.m.model().device().clone();
        device.with_context(|| self.run_pass_inner())
    }

    fn run_pass_inner(&mut self) -> Result<(), TopRewardError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let model = self.m.model();
        // New groups in shared vision batches (one per group size).
        let new_groups = std::mem::take(&mut self.new_groups);
        let media: Vec<(&Tensor, &[GridThw])> = new_groups
            .iter()
            .map(|(_, pixels, grid)| (pixels, std::slice::from_ref(grid)))
            .collect();
        let encoded = model.visual.forward_many(&media)?;
        for ((key, ..), out) in new_groups.iter().zip(encoded) {
            self.groups.insert(*key, out);
        }
        // The branches end to end after what the cache holds (nothing before the first pass, which starts
        // with the trunk itself; the trunk after it), each token seeing its part of the trunk and its own
        // branch.
        let cached = self.cache.len();
        let pending = std::mem::take(&mut self.pending);
        self.pending_tokens = 0;
        let (mut ids, mut positions, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        let mut parts = Vec::new();
        let mut last_rows = Vec::with_capacity(pending.len());
        for b in &pending {
            let start = cached + ids.len();
            ids.extend_from_slice(&b.ids);
            positions.extend_from_slice(&b.positions);
            rows.extend(std::iter::repeat_n(
                TreeRow {
                    shared: b.shared,
                    start,
                },
                b.ids.len(),
            ));
            last_rows.push(ids.len() - 1);
            for (key, off, n) in &b.visual {
                let out = self
                    .groups
                    .get(key)
                    .ok_or_else(|| TopRewardError::Encode(format!("frame group {key:?} was not encoded")))?;
                parts.push(out.narrow(*off, *n)?);
            }
        }
        let vis = VisionOutput::cat(&parts)?;
        let result = model.forward_tree_tokens(&ids, &positions, vis.as_ref(), &rows, &mut self.cache);
        // Back to the trunk whatever happened: the next pass starts from it.
        self.cache.truncate(self.trunk_len)?;
        let hidden = result?;
        self.computed_tokens += ids.len();
        for (b, &r) in pending.iter().zip(&last_rows) {
            self.rows[b.index] = Some((hidden.get(r)?, b.target, b.num_tokens));
        }
        Ok(())
    }

    /// Run what is pending and return the scores of all prefixes in the order they were added (trunk first).
    /// The log-probabilities come from the language-model head in a few large products.
    pub fn finish(mut self) -> Result<Vec<PrefixScore>, TopRewardError> {
        self.run_pass()?;
        let rows: Vec<(Tensor, u32, usize)> = self
            .rows
            .into_iter()
            .map(|r| r.ok_or_else(|| TopRewardError::Encode("a prefix was never run".into())))
            .collect::<Result<_, _>>()?;
        let mut scores = Vec::with_capacity(rows.len());
        // Bounded batches: each is a (rows, vocab) f32 matrix.
        for chunk in rows.chunks(64) {
            let hidden = Tensor::stack(&chunk.iter().map(|(h, ..)| h).collect::<Vec<_>>(), 0)?;
            let targets: Vec<u32> = chunk.iter().map(|(_, t, _)| *t).collect();
            let lps = self.m.log_probs(&hidden, &targets)?;
            scores.extend(
                chunk
                    .iter()
                    .zip(lps)
                    .map(|((.., num_tokens), log_prob)| PrefixScore {
                        log_prob,
                        num_tokens: *num_tokens,
                    }),
            );
        }
        Ok(scores)
    }
}
