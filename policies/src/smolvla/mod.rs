//! SmolVLA (LeRobot 0.4.4): the vision-language-action policy toprl fine-tunes.
//!
//! - [`lerobot`]: the checkpoint folder as LeRobot writes it (config, processor pipelines, statistics);
//! - [`processor`]: LeRobot's pre- and postprocessing (normalisation, image resize-with-pad, tokenisation).

pub mod lerobot;
pub mod processor;
