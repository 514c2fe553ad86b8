//! Recording episodes into a new LeRobotDataset v3.0 that LeRobot's own loader reads.
//!
//! Everything is written into a temporary folder beside the target and renamed into place by
//! [`DatasetWriter::finish`], so a crash or an error never leaves a dataset that claims episodes it does
//! not have. Layout (LeRobot 0.4.4 `create_empty_dataset_info`, `_save_episode_data`,
//! `_save_episode_video`): one data file `data/chunk-000/file-000.parquet`, one video per camera
//! `videos/{key}/chunk-000/file-000.mp4` holding all episodes back to back (each episode's span given by
//! `videos/{key}/from_timestamp|to_timestamp`), `meta/episodes/chunk-000/file-000.parquet`,
//! `meta/tasks.parquet` (task text as the pandas index, as `pd.DataFrame.to_parquet` writes it),
//! `meta/info.json` and `meta/stats.json`. Files are not split at LeRobot's 100/200 MB soft limits;
//! LeRobot reads larger files as they are.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder, LargeStringBuilder, ListBuilder,
    StringBuilder,
};
use arrow_array::{ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};

use super::error::{DatasetError, Result, io};
use super::meta::{DEFAULT_COLUMNS, INFO_PATH, STATS_PATH, TASKS_PATH};
use super::reader::{ACTION_KEY, ENVIRONMENT_STATE_KEY, STATE_KEY};
use super::video::{VideoCodec, VideoEncoder};
use crate::episode::Episode;

/// LeRobot's path templates for v3.0.
pub const DATA_PATH: &str = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
pub const VIDEO_PATH: &str = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4";
const EPISODES_FILE: &str = "meta/episodes/chunk-000/file-000.parquet";
const DATA_FILE: &str = "data/chunk-000/file-000.parquet";

/// One camera stream of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraSpec {
    /// Feature key, e.g. `observation.images.front`.
    pub key: String,
    pub width: u32,
    pub height: u32,
}

/// What a new dataset holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Frames per second (LeRobot stores an integer).
    pub fps: u32,
    /// `robot_type` in info.json, e.g. `so101_follower`.
    pub robot_type: Option<String>,
    /// Names of the `observation.state` entries.
    pub state_names: Vec<String>,
    /// Names of the `action` entries.
    pub action_names: Vec<String>,
    /// Names of the `observation.environment_state` entries (simulation's privileged scene vector);
    /// empty: the dataset has no such feature.
    pub environment_state_names: Vec<String>,
    pub cameras: Vec<CameraSpec>,
    /// Video codec; `Auto` picks AV1 when the linked FFmpeg can encode it at this size, else H.264.
    pub codec: VideoCodec,
}

impl DatasetSpec {
    /// The SO-101 follower as LeRobot records it: `{motor}.pos` state and action at `fps`, with the given
    /// cameras as `(key, width, height)` (e.g. `("observation.images.front", 640, 480)`).
    pub fn so101(fps: u32, cameras: &[(&str, u32, u32)]) -> Self {
        Self {
            fps,
            robot_type: Some("so101_follower".into()),
            state_names: crate::so101::feature_names(),
            action_names: crate::so101::feature_names(),
            environment_state_names: Vec::new(),
            cameras: cameras
                .iter()
                .map(|&(key, width, height)| CameraSpec {
                    key: key.to_string(),
                    width,
                    height,
                })
                .collect(),
            codec: VideoCodec::Auto,
        }
    }

    /// Also record the simulator's `observation.environment_state` (see
    /// [`crate::sim::ENVIRONMENT_STATE_NAMES`]).
    pub fn with_sim_environment_state(mut self) -> Self {
        self.environment_state_names = crate::sim::ENVIRONMENT_STATE_NAMES
            .iter()
            .map(|n| n.to_string())
            .collect();
        self
    }

    /// The float-vector features in column order, with their entry names.
    fn vector_features(&self) -> Vec<(&'static str, &[String])> {
        let mut features = vec![
            (STATE_KEY, self.state_names.as_slice()),
            (ACTION_KEY, self.action_names.as_slice()),
        ];
        if !self.environment_state_names.is_empty() {
            features.push((ENVIRONMENT_STATE_KEY, self.environment_state_names.as_slice()));
        }
        features
    }
}

/// An episode's rows of the vector feature `key`.
fn episode_vectors<'e>(ep: &'e Episode, key: &str) -> &'e [Vec<f32>] {
    match key {
        STATE_KEY => &ep.states,
        ACTION_KEY => &ep.actions,
        _ => &ep.environment_states,
    }
}

/// Summary of a finished dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenDataset {
    pub path: PathBuf,
    pub episodes: usize,
    pub frames: usize,
    /// FFmpeg encoder used per camera (`libsvtav1`, `libaom-av1`, `libx264`).
    pub encoders: BTreeMap<String, String>,
}

struct EpisodeRecord {
    length: usize,
    task: String,
    from_index: usize,
    stats: BTreeMap<&'static str, Stats>,
}

/// Writes episodes into a new LeRobotDataset v3.0 folder.
pub struct DatasetWriter {
    target: PathBuf,
    tmp: tempfile::TempDir,
    spec: DatasetSpec,
    encoders: Vec<VideoEncoder>,
    tasks: Vec<String>,
    episodes: Vec<EpisodeRecord>,
    // Frame rows.
    /// Rows of each vector feature, in [`DatasetSpec::vector_features`] order.
    vectors: Vec<Vec<Vec<f32>>>,
    timestamp: Vec<f32>,
    frame_index: Vec<i64>,
    episode_index: Vec<i64>,
    task_index: Vec<i64>,
    // Per-channel pixel sums for stats.json, per camera: (sum, sum of squares, min, max) over [0, 1].
    pixel_stats: Vec<PixelStats>,
}

impl std::fmt::Debug for DatasetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("target", &self.target)
            .field("episodes", &self.episodes.len())
            .finish_non_exhaustive()
    }
}

impl DatasetWriter {
    /// Start a dataset that will appear at `path` when [`Self::finish`] succeeds. `path` must not exist.
    pub fn create(path: impl AsRef<Path>, spec: DatasetSpec) -> Result<Self> {
        let target = path.as_ref().to_path_buf();
        if target.exists() {
            return Err(DatasetError::AlreadyExists { path: target });
        }
        if spec.fps == 0 {
            return Err(DatasetError::BadFeature {
                path: target,
                feature: "fps".into(),
                reason: "must be positive".into(),
            });
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = super::progress::plain_mode(
            tempfile::Builder::new().prefix(&format!(".{name}.partial-")),
            true,
        )
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
        let mut encoders = Vec::new();
        for cam in &spec.cameras {
            let rel = format!("videos/{}/chunk-000/file-000.mp4", cam.key);
            let p = tmp.path().join(rel);
            let dir = p.parent().unwrap_or(tmp.path()).to_path_buf();
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            encoders.push(VideoEncoder::create(
                &p, cam.width, cam.height, spec.fps, spec.codec,
            )?);
        }
        let pixel_stats = vec![PixelStats::default(); spec.cameras.len()];
        let vectors = vec![Vec::new(); spec.vector_features().len()];
        Ok(Self {
            target,
            tmp,
            spec,
            encoders,
            tasks: Vec::new(),
            episodes: Vec::new(),
            vectors,
            timestamp: Vec::new(),
            frame_index: Vec::new(),
            episode_index: Vec::new(),
            task_index: Vec::new(),
            pixel_stats,
        })
    }

    /// Number of episodes added so far.
    pub fn num_episodes(&self) -> usize {
        self.episodes.len()
    }

    fn check(&self, ep: &Episode) -> Result<()> {
        let bad = |reason: String| DatasetError::BadEpisode {
            episode: ep.index,
            reason,
        };
        let n = ep.states.len();
        if n == 0 {
            return Err(bad("has no frames".into()));
        }
        if ep.actions.len() != n {
            return Err(bad(format!("{} states but {} actions", n, ep.actions.len())));
        }
        if ep.instruction.trim().is_empty() {
            return Err(bad(
                "has an empty instruction (LeRobot needs a task per frame)".into()
            ));
        }
        if (ep.fps - f64::from(self.spec.fps)).abs() > 1e-6 {
            return Err(bad(format!(
                "fps {} differs from the dataset's {}",
                ep.fps, self.spec.fps
            )));
        }
        for (what, names) in self.spec.vector_features() {
            let rows = episode_vectors(ep, what);
            if rows.len() != n {
                return Err(bad(format!("{} rows of {what} for {n} states", rows.len())));
            }
            if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != names.len()) {
                return Err(bad(format!(
                    "{what} of frame {i} has {} values, expected {}",
                    r.len(),
                    names.len()
                )));
            }
            if let Some(i) = rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
                return Err(bad(format!("{what} of frame {i} is not finite")));
            }
        }
        for cam in &self.spec.cameras {
            let frames = ep
                .cameras
                .get(&cam.key)
                .ok_or_else(|| bad(format!("has no camera {:?}", cam.key)))?;
            if frames.len() != n {
                return Err(bad(format!(
                    "camera {:?} has {} frames for {n} rows",
                    cam.key,
                    frames.len()
                )));
            }
            if let Some(i) = frames
                .iter()
                .position(|f| f.width() != cam.width || f.height() != cam.height)
            {
                return Err(bad(format!(
                    "camera {:?} frame {i} is {}x{}, expected {}x{}",
                    cam.key,
                    frames[i].width(),
                    frames[i].height(),
                    cam.width,
                    cam.height
                )));
            }
        }
        if let Some(extra) = ep
            .cameras
            .keys()
            .find(|k| !self.spec.cameras.iter().any(|c| &c.key == *k))
        {
            return Err(bad(format!("camera {extra:?} is not in the dataset spec")));
        }
        Ok(())
    }

    /// Append an episode (its `index` is ignored: episodes are numbered in the order they are added).
    /// Checked first, so a rejected episode leaves the writer unchanged.
    pub fn add_episode(&mut self, ep: &Episode) -> Result<()> {
        self.check(ep)?;
        let e = self.episodes.len() as i64;
        let n = ep.len();
        let task = match self.tasks.iter().position(|t| t == &ep.instruction) {
            Some(i) => i,
            None => {
                self.tasks.push(ep.instruction.clone());
                self.tasks.len() - 1
            }
        };
        for (c, cam) in self.spec.cameras.iter().enumerate() {
            for frame in &ep.cameras[&cam.key] {
                self.encoders[c].push(frame)?;
                self.pixel_stats[c].add(frame);
            }
        }
        let from_index = self.timestamp.len();
        let fps = self.spec.fps as f32;
        for ((key, _), rows) in self.spec.vector_features().iter().zip(&mut self.vectors) {
            rows.extend_from_slice(episode_vectors(ep, key));
        }
        for i in 0..n {
            // LeRobot's add_frame: timestamp = frame_index / fps.
            self.timestamp.push(i as f32 / fps);
            self.frame_index.push(i as i64);
            self.episode_index.push(e);
            self.task_index.push(task as i64);
        }
        let mut stats = BTreeMap::new();
        for (key, _) in self.spec.vector_features() {
            stats.insert(key, Stats::of(episode_vectors(ep, key)));
        }
        let col = |v: &[f64]| v.iter().map(|&x| vec![x as f32]).collect::<Vec<_>>();
        stats.insert(
            "timestamp",
            Stats::of(&col(&(0..n)
                .map(|i| i as f64 / f64::from(self.spec.fps))
                .collect::<Vec<_>>())),
        );
        stats.insert(
            "frame_index",
            Stats::of(&col(&(0..n).map(|i| i as f64).collect::<Vec<_>>())),
        );
        stats.insert("episode_index", Stats::of(&col(&vec![e as f64; n])));
        stats.insert(
            "index",
            Stats::of(&col(&(from_index..from_index + n)
                .map(|i| i as f64)
                .collect::<Vec<_>>())),
        );
        stats.insert("task_index", Stats::of(&col(&vec![task as f64; n])));
        self.episodes.push(EpisodeRecord {
            length: n,
            task: ep.instruction.clone(),
            from_index,
            stats,
        });
        Ok(())
    }

    /// Write the tables and metadata, close the videos and move the dataset into place.
    pub fn finish(mut self) -> Result<WrittenDataset> {
        if self.episodes.is_empty() {
            return Err(DatasetError::BadEpisode {
                episode: 0,
                reason: "no episodes were added".into(),
            });
        }
        let root = self.tmp.path().to_path_buf();
        let fps = f64::from(self.spec.fps);
        let mut encoder_names = BTreeMap::new();
        let mut codecs = BTreeMap::new();
        for (cam, enc) in self.spec.cameras.iter().zip(self.encoders.iter()) {
            encoder_names.insert(cam.key.clone(), enc.encoder_name.to_string());
            codecs.insert(cam.key.clone(), enc.codec_name);
        }
        for enc in std::mem::take(&mut self.encoders) {
            enc.finish()?;
        }
        let this = &self;
        let (spec, tasks, episodes) = (&this.spec, &this.tasks, &this.episodes);
        let total_frames = this.timestamp.len();

        // data/chunk-000/file-000.parquet
        let index: Vec<i64> = (0..total_frames as i64).collect();
        let mut data_cols: Vec<(&str, ArrayRef)> = spec
            .vector_features()
            .into_iter()
            .zip(&this.vectors)
            .map(|((key, names), rows)| (key, fixed_list(rows, names.len())))
            .collect();
        data_cols.extend([
            (
                "timestamp",
                Arc::new(Float32Array::from(this.timestamp.clone())) as ArrayRef,
            ),
            (
                "frame_index",
                Arc::new(Int64Array::from(this.frame_index.clone())),
            ),
            (
                "episode_index",
                Arc::new(Int64Array::from(this.episode_index.clone())),
            ),
            ("index", Arc::new(Int64Array::from(index))),
            ("task_index", Arc::new(Int64Array::from(this.task_index.clone()))),
        ]);
        let data = batch(data_cols, None, &root.join(DATA_FILE))?;
        write_parquet(&root.join(DATA_FILE), &data)?;

        // meta/episodes/chunk-000/file-000.parquet
        let n_ep = episodes.len();
        let ints = |f: &dyn Fn(usize, &EpisodeRecord) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from(
                episodes
                    .iter()
                    .enumerate()
                    .map(|(i, e)| f(i, e))
                    .collect::<Vec<_>>(),
            ))
        };
        let mut cols: Vec<(String, ArrayRef)> = vec![
            ("episode_index".into(), ints(&|i, _| i as i64)),
            (
                "tasks".into(),
                string_lists(episodes.iter().map(|e| vec![e.task.clone()])),
            ),
            ("length".into(), ints(&|_, e| e.length as i64)),
            ("data/chunk_index".into(), ints(&|_, _| 0)),
            ("data/file_index".into(), ints(&|_, _| 0)),
            ("dataset_from_index".into(), ints(&|_, e| e.from_index as i64)),
            (
                "dataset_to_index".into(),
                ints(&|_, e| (e.from_index + e.length) as i64),
            ),
        ];
        for cam in &spec.cameras {
            let k = &cam.key;
            cols.push((format!("videos/{k}/chunk_index"), ints(&|_, _| 0)));
            cols.push((format!("videos/{k}/file_index"), ints(&|_, _| 0)));
            // Episodes are back to back in the file: frame f of the file is shown at f / fps.
            cols.push((
                format!("videos/{k}/from_timestamp"),
                Arc::new(Float64Array::from(
                    episodes
                        .iter()
                        .map(|e| e.from_index as f64 / fps)
                        .collect::<Vec<_>>(),
                )),
            ));
            cols.push((
                format!("videos/{k}/to_timestamp"),
                Arc::new(Float64Array::from(
                    episodes
                        .iter()
                        .map(|e| (e.from_index + e.length) as f64 / fps)
                        .collect::<Vec<_>>(),
                )),
            ));
        }
        let vector_keys: Vec<&str> = spec.vector_features().iter().map(|(k, _)| *k).collect();
        for key in vector_keys.into_iter().chain(DEFAULT_COLUMNS) {
            for part in ["min", "max", "mean", "std"] {
                let rows = episodes.iter().map(|e| e.stats[key].get(part));
                cols.push((format!("stats/{key}/{part}"), f64_lists(rows)));
            }
            let counts: Vec<Vec<i64>> = episodes.iter().map(|e| vec![e.stats[key].count as i64]).collect();
            cols.push((format!("stats/{key}/count"), i64_lists(&counts)));
        }
        cols.push(("meta/episodes/chunk_index".into(), ints(&|_, _| 0)));
        cols.push(("meta/episodes/file_index".into(), ints(&|_, _| 0)));
        let refs: Vec<(&str, ArrayRef)> = cols.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let ep_batch = batch(refs, None, &root.join(EPISODES_FILE))?;
        write_parquet(&root.join(EPISODES_FILE), &ep_batch)?;
        debug_assert_eq!(ep_batch.num_rows(), n_ep);

        // meta/tasks.parquet: pandas DataFrame indexed by task text with a task_index column.
        let mut texts = LargeStringBuilder::new();
        for t in tasks {
            texts.append_value(t);
        }
        let pandas = json!({
            "index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": null, "field_name": null, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": null},
                {"name": null, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": null}
            ],
            "attributes": {},
            "creator": {"library": "toprl", "version": env!("CARGO_PKG_VERSION")},
            "pandas_version": "2.2.0"
        });
        let task_batch = batch(
            vec![
                (
                    "task_index",
                    Arc::new(Int64Array::from((0..tasks.len() as i64).collect::<Vec<_>>())) as ArrayRef,
                ),
                ("__index_level_0__", Arc::new(texts.finish())),
            ],
            Some(("pandas", pandas.to_string())),
            &root.join(TASKS_PATH),
        )?;
        write_parquet(&root.join(TASKS_PATH), &task_batch)?;

        // meta/info.json
        let vec_feature =
            |names: &[String]| json!({"dtype": "float32", "shape": [names.len()], "names": names});
        let mut features = serde_json::Map::new();
        for (key, names) in spec.vector_features() {
            features.insert(key.into(), vec_feature(names));
        }
        for cam in &spec.cameras {
            features.insert(
                cam.key.clone(),
                json!({
                    "dtype": "video",
                    "shape": [cam.height, cam.width, 3],
                    "names": ["height", "width", "channels"],
                    "info": {
                        "video.height": cam.height, "video.width": cam.width, "video.codec": codecs[&cam.key],
                        "video.pix_fmt": "yuv420p", "video.is_depth_map": false, "video.fps": spec.fps,
                        "video.channels": 3, "has_audio": false
                    }
                }),
            );
        }
        for (k, dtype) in [
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        ] {
            features.insert(k.into(), json!({"dtype": dtype, "shape": [1], "names": null}));
        }
        let info = json!({
            "codebase_version": "v3.0",
            "robot_type": spec.robot_type,
            "total_episodes": n_ep,
            "total_frames": total_frames,
            "total_tasks": tasks.len(),
            "chunks_size": 1000,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": spec.fps,
            "splits": {"train": format!("0:{n_ep}")},
            "data_path": DATA_PATH,
            "video_path": if spec.cameras.is_empty() { Value::Null } else { Value::from(VIDEO_PATH) },
            "features": features,
        });
        write_json(&root.join(INFO_PATH), &info)?;

        // meta/stats.json: dataset-wide stats (LeRobot aggregates per-episode stats the same way).
        let mut stats = serde_json::Map::new();
        for ((key, _), rows) in spec.vector_features().into_iter().zip(&this.vectors) {
            stats.insert(key.into(), Stats::of(rows).to_json(true));
        }
        let scalar = |v: Vec<f64>| v.into_iter().map(|x| vec![x as f32]).collect::<Vec<_>>();
        stats.insert(
            "timestamp".into(),
            Stats::of(&scalar(this.timestamp.iter().map(|&t| f64::from(t)).collect())).to_json(true),
        );
        for (key, v) in [
            ("frame_index", &this.frame_index),
            ("episode_index", &this.episode_index),
            ("task_index", &this.task_index),
        ] {
            stats.insert(
                key.into(),
                Stats::of(&scalar(v.iter().map(|&x| x as f64).collect())).to_json(true),
            );
        }
        stats.insert(
            "index".into(),
            Stats::of(&scalar((0..total_frames).map(|i| i as f64).collect())).to_json(true),
        );
        for (cam, px) in spec.cameras.iter().zip(&this.pixel_stats) {
            stats.insert(cam.key.clone(), px.to_json());
        }
        write_json(&root.join(STATS_PATH), &Value::Object(stats))?;

        // Move into place: the dataset appears complete or not at all.
        let DatasetWriter { target, tmp, .. } = self;
        if target.exists() {
            return Err(DatasetError::AlreadyExists { path: target });
        }
        let kept = tmp.keep();
        if let Err(e) = fs::rename(&kept, &target) {
            let _ = fs::remove_dir_all(&kept);
            return Err(io(&target)(e));
        }
        Ok(WrittenDataset {
            path: target,
            episodes: n_ep,
            frames: total_frames,
            encoders: encoder_names,
        })
    }
}

/// Per-channel pixel statistics over all frames, in [0, 1] like LeRobot's image stats.
#[derive(Debug, Clone, Default)]
struct PixelStats {
    sum: [f64; 3],
    sq: [f64; 3],
    min: [u8; 3],
    max: [u8; 3],
    count: u64,
    frames: u64,
}

impl PixelStats {
    fn add(&mut self, img: &image::RgbImage) {
        if self.count == 0 {
            self.min = [255; 3];
        }
        for p in img.pixels() {
            for c in 0..3 {
                let v = p.0[c];
                self.sum[c] += f64::from(v);
                self.sq[c] += f64::from(v) * f64::from(v);
                self.min[c] = self.min[c].min(v);
                self.max[c] = self.max[c].max(v);
            }
            self.count += 1;
        }
        self.frames += 1;
    }

    fn to_json(&self) -> Value {
        let n = self.count.max(1) as f64;
        let chan = |f: &dyn Fn(usize) -> f64| json!([[[f(0)]], [[f(1)]], [[f(2)]]]);
        let mean = |c: usize| self.sum[c] / n / 255.0;
        json!({
            "min": chan(&|c| f64::from(self.min[c]) / 255.0),
            "max": chan(&|c| f64::from(self.max[c]) / 255.0),
            "mean": chan(&mean),
            "std": chan(&|c| ((self.sq[c] / n / 65025.0) - mean(c).powi(2)).max(0.0).sqrt()),
            "count": [self.frames],
        })
    }
}

/// Per-dimension statistics of vectors (LeRobot `compute_stats`: min, max, mean, std, count, quantiles).
#[derive(Debug, Clone)]
struct Stats {
    min: Vec<f64>,
    max: Vec<f64>,
    mean: Vec<f64>,
    std: Vec<f64>,
    quantiles: Vec<(&'static str, Vec<f64>)>,
    count: usize,
}

impl Stats {
    fn of(rows: &[Vec<f32>]) -> Self {
        let dim = rows.first().map_or(0, Vec::len);
        let n = rows.len();
        let mut cols: Vec<Vec<f64>> = (0..dim)
            .map(|d| rows.iter().map(|r| f64::from(r[d])).collect())
            .collect();
        let mean: Vec<f64> = cols
            .iter()
            .map(|c| c.iter().sum::<f64>() / n.max(1) as f64)
            .collect();
        let std = cols
            .iter()
            .zip(&mean)
            .map(|(c, m)| (c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt())
            .collect();
        for c in &mut cols {
            c.sort_by(f64::total_cmp);
        }
        // numpy.quantile's default (linear interpolation between order statistics).
        let q = |p: f64| -> Vec<f64> {
            cols.iter()
                .map(|c| {
                    let pos = p * (c.len().saturating_sub(1)) as f64;
                    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                    c[lo] + (c[hi] - c[lo]) * (pos - lo as f64)
                })
                .collect()
        };
        Self {
            min: cols.iter().map(|c| c[0]).collect(),
            max: cols.iter().map(|c| c[c.len() - 1]).collect(),
            mean,
            std,
            quantiles: vec![
                ("q01", q(0.01)),
                ("q10", q(0.10)),
                ("q50", q(0.50)),
                ("q90", q(0.90)),
                ("q99", q(0.99)),
            ],
            count: n,
        }
    }

    fn get(&self, part: &str) -> Vec<f64> {
        match part {
            "min" => self.min.clone(),
            "max" => self.max.clone(),
            "mean" => self.mean.clone(),
            _ => self.std.clone(),
        }
    }

    fn to_json(&self, quantiles: bool) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("min".into(), json!(self.min));
        m.insert("max".into(), json!(self.max));
        m.insert("mean".into(), json!(self.mean));
        m.insert("std".into(), json!(self.std));
        m.insert("count".into(), json!([self.count]));
        if quantiles {
            for (k, v) in &self.quantiles {
                m.insert((*k).into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

fn fixed_list(rows: &[Vec<f32>], dim: usize) -> ArrayRef {
    let mut b = FixedSizeListBuilder::new(Float32Builder::with_capacity(rows.len() * dim), dim as i32)
        .with_field(Arc::new(Field::new("element", DataType::Float32, true)));
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn string_lists(rows: impl Iterator<Item = Vec<String>>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "element",
        DataType::Utf8,
        true,
    )));
    for r in rows {
        for s in r {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn f64_lists(rows: impl Iterator<Item = Vec<f64>>) -> ArrayRef {
    let mut b = ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new(
        "element",
        DataType::Float64,
        true,
    )));
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn i64_lists(rows: &[Vec<i64>]) -> ArrayRef {
    let mut b = ListBuilder::new(Int64Builder::new()).with_field(Arc::new(Field::new(
        "element",
        DataType::Int64,
        true,
    )));
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn batch(cols: Vec<(&str, ArrayRef)>, metadata: Option<(&str, String)>, path: &Path) -> Result<RecordBatch> {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(k, a)| Field::new(*k, a.data_type().clone(), true))
        .collect();
    let mut schema = Schema::new(fields);
    if let Some((k, v)) = metadata {
        schema = schema.with_metadata([(k.to_string(), v)]);
    }
    RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).map_err(|source| {
        DatasetError::Arrow {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let file = File::create(path).map_err(io(path))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let perr = |source| DatasetError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(perr)?;
    w.write(batch).map_err(perr)?;
    w.close().map_err(perr)?;
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    fs::write(path, text + "\n").map_err(io(path))
}
