//! Reward models over robot episodes: frames and an instruction in, scores out.
//!
//! The centre is TOPReward (arXiv 2602.19313): the log-probability a video VLM (Qwen3-VL) gives to the
//! token " True" after "... completes the following task: {instruction} Decide whether the above statement
//! is True or not. The answer is:", read for growing prefixes of an episode. Around it: min-max progress,
//! value-order correlation (VOC), success detection and the reward-aligned BC weights of the paper's Eq. 3.
//!
//! This crate depends on no other toprl crate.

pub mod assets;
pub mod calibration;
pub mod checkpoint;
pub mod frames;
pub mod gvl;
pub mod metrics;
pub mod multimodal;
pub mod qwen3_vl;
pub mod remote;
pub mod score;
pub mod topreward;
