//! Qwen3-VL: the video VLM TOPReward reads token probabilities from.

pub mod processor;
