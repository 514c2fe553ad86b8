//! TOPReward (arXiv 2602.19313): log p(" True") of a video VLM as a zero-shot progress reward.

pub mod prompt;
