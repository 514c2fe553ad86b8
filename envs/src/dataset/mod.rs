//! LeRobotDataset in and out: read v3.0 and v2.1 folders (or hub repos), write v3.0 that LeRobot loads.
//!
//! Layout facts follow LeRobot 0.4.4 (`lerobot/datasets/utils.py`, `lerobot_dataset.py`,
//! `v30/convert_dataset_v21_to_v30.py`); parity is tested against datasets LeRobot itself wrote
//! (`envs/fixtures/make_lerobot_fixtures.py`).
//!
//! ```no_run
//! use toprl_envs::dataset::{DatasetSpec, DatasetWriter, LeRobotDataset};
//! # fn main() -> Result<(), toprl_envs::dataset::DatasetError> {
//! let ds = LeRobotDataset::open("data/so101_pick")?; // or LeRobotDataset::from_hub("lerobot/...", None)
//! let mut out = DatasetWriter::create(
//!     "data/copy",
//!     DatasetSpec::so101(30, &[("observation.images.front", 640, 480), ("observation.images.wrist", 640, 480)]),
//! )?;
//! for episode in ds.iter_episodes() {
//!     out.add_episode(&episode?)?;
//! }
//! out.finish()?; // the folder appears only now, complete
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod meta;
pub mod progress;
pub mod reader;
mod table;
pub mod video;
pub mod writer;

pub use error::DatasetError;
pub use meta::{EpisodeMeta, Feature, Info, Version, VideoInfo, VideoSpan};
pub use progress::{ProgressTable, read_progress, write_progress};
pub use reader::{
    ACTION_KEY, ENVIRONMENT_STATE_KEY, EpisodeRows, FrameItem, HubOptions, LeRobotDataset, STATE_KEY,
};
pub use video::VideoCodec;
pub use writer::{CameraSpec, DatasetSpec, DatasetWriter, WrittenDataset};
