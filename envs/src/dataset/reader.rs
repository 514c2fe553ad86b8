//! Reading a LeRobotDataset (v3.0 or v2.1) from a local folder or a Hugging Face hub repo: metadata,
//! frame rows from parquet, camera frames decoded from mp4, and whole episodes as [`Episode`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::RgbImage;
use serde_json::Value;

use super::error::{DatasetError, Result};
use super::meta::{self, EpisodeMeta, Info, Version};
use super::table::Table;
use super::video;
use crate::episode::Episode;

/// LeRobot's state and action feature keys.
pub const STATE_KEY: &str = "observation.state";
pub const ACTION_KEY: &str = "action";
/// LeRobot's key of a simulator's privileged scene vector.
pub const ENVIRONMENT_STATE_KEY: &str = "observation.environment_state";

/// The parquet rows of one episode, ordered by frame index.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRows {
    pub timestamp: Vec<f32>,
    pub frame_index: Vec<i64>,
    /// Global row index over the dataset.
    pub index: Vec<i64>,
    pub task_index: Vec<i64>,
    /// `observation.state` per row (empty vectors when the dataset declares none).
    pub state: Vec<Vec<f32>>,
    /// `action` per row (empty vectors when the dataset declares none).
    pub action: Vec<Vec<f32>>,
    /// `observation.environment_state` per row (empty vectors when the dataset declares none).
    pub environment_state: Vec<Vec<f32>>,
}

/// One frame: its row and the decoded camera images.
#[derive(Debug, Clone)]
pub struct FrameItem {
    pub episode_index: usize,
    pub frame_index: i64,
    pub index: i64,
    pub timestamp: f32,
    pub task_index: i64,
    pub task: String,
    pub state: Vec<f32>,
    pub action: Vec<f32>,
    pub images: BTreeMap<String, RgbImage>,
}

/// Where to fetch hub datasets from; `None` fields fall back to the environment (`HF_ENDPOINT`, `HF_HOME`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HubOptions {
    /// Hub URL, e.g. `https://huggingface.co` or a mirror.
    pub endpoint: Option<String>,
    /// Cache folder (the `hub/` folder of `HF_HOME`).
    pub cache_dir: Option<PathBuf>,
    /// Show download progress bars on stderr.
    pub progress: bool,
}

/// The columns of one data file that the reader uses.
struct DataFile {
    path: PathBuf,
    episode_index: Vec<i64>,
    rows: EpisodeRows,
}

/// A LeRobotDataset opened for reading. Metadata is read (and checked) when opening; rows and frames
/// are read on demand.
pub struct LeRobotDataset {
    root: PathBuf,
    version: Version,
    info: Info,
    tasks: BTreeMap<i64, String>,
    episodes: Vec<EpisodeMeta>,
    stats: Option<Value>,
    /// The last data file read: v3.0 files hold many episodes, and episodes are usually read in order.
    cache: Mutex<Option<Arc<DataFile>>>,
}

impl std::fmt::Debug for LeRobotDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeRobotDataset")
            .field("root", &self.root)
            .field("version", &self.version)
            .field("episodes", &self.episodes.len())
            .finish_non_exhaustive()
    }
}

impl LeRobotDataset {
    /// Open the dataset in folder `root` (the folder holding `meta/`, `data/` and `videos/`).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(DatasetError::MissingFile {
                root: root.clone(),
                path: root,
            });
        }
        let (info, version) = Info::load(&root)?;
        let tasks = meta::load_tasks(&root, version)?;
        let episodes = meta::load_episodes(&root, version, &info)?;
        let stats = meta::load_stats(&root, version)?;
        for ep in &episodes {
            if ep.dataset_to_index < ep.dataset_from_index
                || ep.dataset_to_index - ep.dataset_from_index != ep.length
            {
                return Err(DatasetError::Inconsistent {
                    path: root.join(meta::EPISODES_DIR),
                    reason: format!(
                        "episode {}: length {} but rows [{}, {})",
                        ep.episode_index, ep.length, ep.dataset_from_index, ep.dataset_to_index
                    ),
                });
            }
        }
        Ok(Self {
            root,
            version,
            info,
            tasks,
            episodes,
            stats,
            cache: Mutex::new(None),
        })
    }

    /// Download (or reuse from the Hugging Face cache) every file of dataset repo `repo_id` at
    /// `revision` (LeRobot tags datasets by codebase version, e.g. `v3.0`; `None`: the default branch),
    /// then open it. Honours `HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` like the Python client.
    pub fn from_hub(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        Self::from_hub_with(repo_id, revision, &HubOptions::default())
    }

    /// [`Self::from_hub`] with an explicit endpoint or cache folder (overriding the environment).
    pub fn from_hub_with(repo_id: &str, revision: Option<&str>, opts: &HubOptions) -> Result<Self> {
        use hf_hub::{Repo, RepoType, api::sync::ApiBuilder};
        let herr = |e: hf_hub::api::sync::ApiError| DatasetError::Hub {
            repo: repo_id.to_string(),
            reason: e.to_string(),
        };
        let mut builder = ApiBuilder::from_env().with_progress(opts.progress);
        if let Some(endpoint) = &opts.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(dir) = &opts.cache_dir {
            builder = builder.with_cache_dir(dir.clone());
        }
        let api = builder.build().map_err(herr)?;
        let repo = match revision {
            Some(rev) => Repo::with_revision(repo_id.to_string(), RepoType::Dataset, rev.to_string()),
            None => Repo::new(repo_id.to_string(), RepoType::Dataset),
        };
        let repo = api.repo(repo);
        let listing = repo.info().map_err(herr)?;
        if !listing.siblings.iter().any(|s| s.rfilename == meta::INFO_PATH) {
            return Err(DatasetError::Hub {
                repo: repo_id.to_string(),
                reason: format!("no {} in the repo: not a LeRobotDataset", meta::INFO_PATH),
            });
        }
        let info_path = repo.get(meta::INFO_PATH).map_err(herr)?;
        for sibling in &listing.siblings {
            let name = &sibling.rfilename;
            if name.starts_with("meta/") || name.starts_with("data/") || name.starts_with("videos/") {
                // The listing comes from the server: a name must not place a file outside the snapshot.
                crate::safe_path::safe_join(Path::new(""), name, "hub file name").map_err(|e| {
                    DatasetError::Hub {
                        repo: repo_id.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                repo.get(name).map_err(herr)?;
            }
        }
        // Files land in .../snapshots/<sha>/<path>: the dataset root is two levels above meta/info.json.
        let root = info_path
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| DatasetError::Hub {
                repo: repo_id.to_string(),
                reason: format!("unexpected cache path {}", info_path.display()),
            })?;
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn version(&self) -> Version {
        self.version
    }
    pub fn info(&self) -> &Info {
        &self.info
    }
    pub fn fps(&self) -> f64 {
        self.info.fps
    }
    pub fn robot_type(&self) -> Option<&str> {
        self.info.robot_type.as_deref()
    }
    /// Task texts by task index.
    pub fn tasks(&self) -> &BTreeMap<i64, String> {
        &self.tasks
    }
    pub fn episodes(&self) -> &[EpisodeMeta] {
        &self.episodes
    }
    pub fn num_episodes(&self) -> usize {
        self.episodes.len()
    }
    pub fn num_frames(&self) -> usize {
        self.episodes.iter().map(|e| e.length).sum()
    }
    /// Video feature keys, e.g. `observation.images.front`.
    pub fn camera_keys(&self) -> Vec<String> {
        self.info.video_keys()
    }
    /// v3.0 `meta/stats.json`; v2.1 `episodes_stats.jsonl` rows as an array. `None` when absent.
    pub fn stats(&self) -> Option<&Value> {
        self.stats.as_ref()
    }

    /// Metadata of episode `episode`, or an out-of-range error.
    pub fn episode_meta(&self, episode: usize) -> Result<&EpisodeMeta> {
        self.episodes.get(episode).ok_or(DatasetError::EpisodeOutOfRange {
            episode,
            count: self.episodes.len(),
        })
    }

    /// The text of task index `task_index`.
    pub fn task(&self, task_index: i64) -> Result<&str> {
        self.tasks
            .get(&task_index)
            .map(String::as_str)
            .ok_or_else(|| DatasetError::Inconsistent {
                path: self.root.join(match self.version {
                    Version::V30 => meta::TASKS_PATH,
                    Version::V21 => meta::LEGACY_TASKS_PATH,
                }),
                reason: format!("no task with task_index {task_index}"),
            })
    }

    fn data_file(&self, rel: &Path) -> Result<Arc<DataFile>> {
        let path = self.root.join(rel);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(df) = cache.as_ref().filter(|d| d.path == path) {
            return Ok(df.clone());
        }
        if !path.exists() {
            return Err(DatasetError::MissingFile {
                root: self.root.clone(),
                path,
            });
        }
        // Every declared non-video feature must be a column: reading them all checks the schema.
        let required = self.info.required_columns();
        let refs: Vec<&str> = required.iter().map(String::as_str).collect();
        let t = Table::read(&path, Some(&refs))?;
        let n = t.num_rows();
        let vectors = |key: &str| -> Result<Vec<Vec<f32>>> {
            if self.info.features.contains_key(key) {
                t.vectors(key)
            } else {
                Ok(vec![Vec::new(); n])
            }
        };
        let df = Arc::new(DataFile {
            episode_index: t.i64s("episode_index")?,
            rows: EpisodeRows {
                timestamp: t.f64s("timestamp")?.into_iter().map(|v| v as f32).collect(),
                frame_index: t.i64s("frame_index")?,
                index: t.i64s("index")?,
                task_index: t.i64s("task_index")?,
                state: vectors(STATE_KEY)?,
                action: vectors(ACTION_KEY)?,
                environment_state: vectors(ENVIRONMENT_STATE_KEY)?,
            },
            path,
        });
        *cache = Some(df.clone());
        Ok(df)
    }

    /// The parquet rows of `episode`, ordered by frame index.
    pub fn episode_rows(&self, episode: usize) -> Result<EpisodeRows> {
        let meta = self.episode_meta(episode)?;
        let df = self.data_file(&meta.data_path)?;
        let mut picked: Vec<usize> = (0..df.episode_index.len())
            .filter(|&r| df.episode_index[r] == episode as i64)
            .collect();
        picked.sort_by_key(|&r| df.rows.frame_index[r]);
        if picked.len() != meta.length {
            return Err(DatasetError::Inconsistent {
                path: df.path.clone(),
                reason: format!(
                    "episode {episode} has {} rows but its metadata says length {}",
                    picked.len(),
                    meta.length
                ),
            });
        }
        let take = |v: &Vec<Vec<f32>>| picked.iter().map(|&r| v[r].clone()).collect::<Vec<_>>();
        let rows = EpisodeRows {
            timestamp: picked.iter().map(|&r| df.rows.timestamp[r]).collect(),
            frame_index: picked.iter().map(|&r| df.rows.frame_index[r]).collect(),
            index: picked.iter().map(|&r| df.rows.index[r]).collect(),
            task_index: picked.iter().map(|&r| df.rows.task_index[r]).collect(),
            state: take(&df.rows.state),
            action: take(&df.rows.action),
            environment_state: take(&df.rows.environment_state),
        };
        for (i, &f) in rows.frame_index.iter().enumerate() {
            if f != i as i64 {
                return Err(DatasetError::Inconsistent {
                    path: df.path.clone(),
                    reason: format!(
                        "episode {episode}: frame_index {f} at position {i} (expected 0..{})",
                        meta.length
                    ),
                });
            }
        }
        Ok(rows)
    }

    fn video_path_and_times(
        &self,
        episode: usize,
        camera: &str,
        timestamps: &[f32],
    ) -> Result<(PathBuf, Vec<f64>)> {
        let meta = self.episode_meta(episode)?;
        let span = meta
            .videos
            .get(camera)
            .ok_or_else(|| DatasetError::UnknownCamera {
                camera: camera.to_string(),
                available: self.camera_keys().join(", "),
            })?;
        let times = timestamps
            .iter()
            .map(|&t| span.from_timestamp + f64::from(t))
            .collect();
        Ok((self.root.join(&span.path), times))
    }

    /// Half a frame period minus a margin: the nearest decoded frame must be this close to the
    /// requested time, so a missing frame is an error rather than its neighbour.
    fn tolerance_s(&self) -> f64 {
        0.45 / self.info.fps
    }

    /// All frames of one camera for one episode, decoded to RGB8.
    pub fn camera_frames(&self, episode: usize, camera: &str) -> Result<Vec<RgbImage>> {
        let rows = self.episode_rows(episode)?;
        let (path, times) = self.video_path_and_times(episode, camera, &rows.timestamp)?;
        video::decode_frames(&path, &times, self.tolerance_s())
    }

    /// The frames at `frames` (indices within the episode, increasing) of one camera, given the
    /// episode's `rows` ([`Self::episode_rows`]): only these are converted and kept, so sampling a few
    /// frames of a long episode holds only those.
    pub fn camera_frames_at(
        &self,
        episode: usize,
        rows: &EpisodeRows,
        camera: &str,
        frames: &[usize],
    ) -> Result<Vec<RgbImage>> {
        let len = rows.timestamp.len();
        if let Some(&frame) = frames.iter().find(|&&f| f >= len) {
            return Err(DatasetError::FrameOutOfRange { episode, frame, len });
        }
        let wanted: Vec<f32> = frames.iter().map(|&f| rows.timestamp[f]).collect();
        let (path, times) = self.video_path_and_times(episode, camera, &wanted)?;
        video::decode_frames(&path, &times, self.tolerance_s())
    }

    /// The instruction of `episode` from its `rows` ([`Self::episode_rows`]): the task of its first frame
    /// (the episode's first listed task when it has no rows).
    pub fn instruction_of(&self, episode: usize, rows: &EpisodeRows) -> Result<String> {
        Ok(match rows.task_index.first() {
            Some(&t) => self.task(t)?.to_string(),
            None => self
                .episode_meta(episode)?
                .tasks
                .first()
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// Random access: row and camera images of frame `frame` of `episode`.
    pub fn frame(&self, episode: usize, frame: usize) -> Result<FrameItem> {
        let rows = self.episode_rows(episode)?;
        let len = rows.timestamp.len();
        if frame >= len {
            return Err(DatasetError::FrameOutOfRange { episode, frame, len });
        }
        let mut images = BTreeMap::new();
        for camera in self.camera_keys() {
            let (path, times) =
                self.video_path_and_times(episode, &camera, &rows.timestamp[frame..=frame])?;
            let mut imgs = video::decode_frames(&path, &times, self.tolerance_s())?;
            images.insert(camera, imgs.remove(0));
        }
        Ok(FrameItem {
            episode_index: episode,
            frame_index: rows.frame_index[frame],
            index: rows.index[frame],
            timestamp: rows.timestamp[frame],
            task_index: rows.task_index[frame],
            task: self.task(rows.task_index[frame])?.to_string(),
            state: rows.state[frame].clone(),
            action: rows.action[frame].clone(),
            images,
        })
    }

    /// A whole episode: states, actions, instruction (the task of its first frame) and every camera's
    /// decoded frames.
    pub fn episode(&self, episode: usize) -> Result<Episode> {
        self.episode_with_cameras(episode, &self.camera_keys())
    }

    /// Like [`Self::episode`] with only the named cameras decoded (decoding is the slow part).
    pub fn episode_with_cameras(&self, episode: usize, cameras: &[String]) -> Result<Episode> {
        self.episode_with_cameras_mapped(episode, cameras, |_, frame| frame)
    }

    /// Like [`Self::episode_with_cameras`], with `map(camera, frame)` applied to each frame as it is
    /// decoded (see [`video::decode_frames_with`]): a trainer resizing to its policy's input never holds
    /// an episode's frames at the camera's native size.
    pub fn episode_with_cameras_mapped(
        &self,
        episode: usize,
        cameras: &[String],
        mut map: impl FnMut(&str, RgbImage) -> RgbImage,
    ) -> Result<Episode> {
        let rows = self.episode_rows(episode)?;
        let instruction = self.instruction_of(episode, &rows)?;
        let mut frames = BTreeMap::new();
        for camera in cameras {
            let (path, times) = self.video_path_and_times(episode, camera, &rows.timestamp)?;
            let decoded =
                video::decode_frames_with(&path, &times, self.tolerance_s(), |frame| map(camera, frame))?;
            frames.insert(camera.clone(), decoded);
        }
        Ok(Episode {
            index: episode,
            instruction,
            fps: self.info.fps,
            states: rows.state,
            actions: rows.action,
            environment_states: if self.info.features.contains_key(ENVIRONMENT_STATE_KEY) {
                rows.environment_state
            } else {
                Vec::new()
            },
            cameras: frames,
            success: None,
            true_progress: None,
        })
    }

    /// Every episode in index order (decoded lazily, one at a time).
    pub fn iter_episodes(&self) -> impl Iterator<Item = Result<Episode>> + '_ {
        (0..self.episodes.len()).map(|e| self.episode(e))
    }
}
