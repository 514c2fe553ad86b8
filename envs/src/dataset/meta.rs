//! `meta/` of a LeRobotDataset: info.json, tasks, episodes and stats, for v3.0 and v2.1.
//!
//! The serde structs are tolerant of keys they do not know (LeRobot adds keys between releases; unknown ones
//! are kept in `extra` and written back) and strict on the keys the reader needs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{DatasetError, Result, io};
use super::table::Table;

/// Paths of the v3.0 layout, relative to the dataset root (LeRobot `datasets/utils.py`).
pub const INFO_PATH: &str = "meta/info.json";
pub const STATS_PATH: &str = "meta/stats.json";
pub const TASKS_PATH: &str = "meta/tasks.parquet";
pub const EPISODES_DIR: &str = "meta/episodes";
/// Paths of the v2.1 layout (LeRobot calls them legacy).
pub const LEGACY_TASKS_PATH: &str = "meta/tasks.jsonl";
pub const LEGACY_EPISODES_PATH: &str = "meta/episodes.jsonl";
pub const LEGACY_EPISODES_STATS_PATH: &str = "meta/episodes_stats.jsonl";

/// Columns every frame row carries besides the declared features.
pub const DEFAULT_COLUMNS: [&str; 5] = ["timestamp", "frame_index", "episode_index", "index", "task_index"];

/// The on-disk layout generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Version {
    /// `v2.1`: one parquet and one mp4 per episode, JSON-lines metadata.
    V21,
    /// `v3.0`: many episodes per parquet and mp4 file, parquet metadata.
    V30,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V21 => "v2.1",
            Version::V30 => "v3.0",
        }
    }
}

/// `meta/info.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub codebase_version: String,
    #[serde(default)]
    pub robot_type: Option<String>,
    pub total_episodes: usize,
    pub total_frames: usize,
    #[serde(default)]
    pub total_tasks: usize,
    /// Files per chunk folder (LeRobot default 1000).
    #[serde(default = "default_chunks_size")]
    pub chunks_size: usize,
    pub fps: f64,
    /// Path template of the frame tables, e.g. `data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`.
    pub data_path: String,
    /// Path template of the videos; `null` for datasets without video features.
    #[serde(default)]
    pub video_path: Option<String>,
    /// Features by key, in key order.
    pub features: BTreeMap<String, Feature>,
    /// Keys this reader does not interpret (`splits`, `data_files_size_in_mb`, ...), kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

fn default_chunks_size() -> usize {
    1000
}

/// One entry of `info.json`'s `features`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feature {
    /// `float32`, `int64`, `video`, `image`, `string`, `bool`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Names of the entries (a list, or in older datasets a map such as `{"motors": [...]}`), or `null`.
    #[serde(default)]
    pub names: Option<Value>,
    /// Video stream description (`video.codec`, `video.height`, ...) for `video` features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<VideoInfo>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The `info` block of a video feature.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VideoInfo {
    #[serde(rename = "video.height", default)]
    pub height: Option<usize>,
    #[serde(rename = "video.width", default)]
    pub width: Option<usize>,
    #[serde(rename = "video.codec", default)]
    pub codec: Option<String>,
    #[serde(rename = "video.pix_fmt", default)]
    pub pix_fmt: Option<String>,
    #[serde(rename = "video.fps", default)]
    pub fps: Option<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Feature {
    /// Whether frames of this feature live in mp4 files.
    pub fn is_video(&self) -> bool {
        self.dtype == "video"
    }

    /// Entry names as a flat list (`["shoulder_pan.pos", ...]`), when given.
    pub fn name_list(&self) -> Option<Vec<String>> {
        let list = match self.names.as_ref()? {
            Value::Array(a) => a.clone(),
            // Older datasets: {"motors": [...]} (a single axis).
            Value::Object(m) if m.len() == 1 => m.values().next()?.as_array()?.clone(),
            _ => return None,
        };
        list.iter().map(|v| v.as_str().map(str::to_string)).collect()
    }

    /// (height, width) of a video/image feature: from `info` when present, else from `shape` and `names`
    /// (`[height, width, channels]`, or `[channels, height, width]` in some v2.x datasets).
    pub fn resolution(&self) -> Option<(usize, usize)> {
        if let Some(VideoInfo {
            height: Some(h),
            width: Some(w),
            ..
        }) = &self.info
        {
            return Some((*h, *w));
        }
        if self.shape.len() != 3 {
            return None;
        }
        let names = self.name_list().unwrap_or_default();
        let pos = |n: &str| names.iter().position(|x| x == n);
        match (pos("height"), pos("width")) {
            (Some(h), Some(w)) => Some((self.shape[h], self.shape[w])),
            _ if self.shape[0] == 3 => Some((self.shape[1], self.shape[2])),
            _ => Some((self.shape[0], self.shape[1])),
        }
    }
}

impl Info {
    /// Read and check `meta/info.json`.
    pub fn load(root: &Path) -> Result<(Self, Version)> {
        let path = root.join(INFO_PATH);
        let info: Info = read_json(root, &path)?;
        let version = match info.codebase_version.as_str() {
            "v3.0" => Version::V30,
            "v2.1" => Version::V21,
            other => {
                return Err(DatasetError::UnsupportedVersion {
                    path,
                    version: other.to_string(),
                });
            }
        };
        if !(info.fps.is_finite() && info.fps > 0.0) {
            return Err(DatasetError::Inconsistent {
                path,
                reason: format!("fps is {}", info.fps),
            });
        }
        if info.features.values().any(Feature::is_video) && info.video_path.is_none() {
            return Err(DatasetError::Inconsistent {
                path,
                reason: "video features are declared but video_path is null".into(),
            });
        }
        for (key, ft) in &info.features {
            if ft.is_video() && ft.resolution().is_none() {
                return Err(DatasetError::BadFeature {
                    path,
                    feature: key.clone(),
                    reason: format!("cannot tell the resolution from shape {:?}", ft.shape),
                });
            }
        }
        Ok((info, version))
    }

    /// Video feature keys in key order (LeRobot's `video_keys`).
    pub fn video_keys(&self) -> Vec<String> {
        self.features
            .iter()
            .filter(|(_, f)| f.is_video())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Columns the frame tables must have: every declared feature that is not a video, plus the
    /// standard index columns.
    pub fn required_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self
            .features
            .iter()
            .filter(|(_, f)| !f.is_video())
            .map(|(k, _)| k.clone())
            .collect();
        for c in DEFAULT_COLUMNS {
            if !cols.iter().any(|x| x == c) {
                cols.push(c.to_string());
            }
        }
        cols
    }
}

/// Read a JSON file, naming it in errors; a missing file says which dataset root it belongs to.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(root: &Path, path: &Path) -> Result<T> {
    let text = read_required(root, path)?;
    serde_json::from_str(&text).map_err(|source| DatasetError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_required(root: &Path, path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::MissingFile {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io(path)(e)),
    }
}

fn read_jsonl<T: serde::de::DeserializeOwned>(root: &Path, path: &Path) -> Result<Vec<T>> {
    let text = read_required(root, path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line).map_err(|source| DatasetError::JsonLine {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

/// Where one camera's frames of one episode are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoSpan {
    /// mp4 path relative to the dataset root.
    pub path: PathBuf,
    /// Start of the episode in the file, seconds (0 for v2.1's one file per episode).
    pub from_timestamp: f64,
    /// End of the episode in the file, seconds (exclusive).
    pub to_timestamp: f64,
}

/// One episode's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeMeta {
    pub episode_index: usize,
    pub length: usize,
    pub tasks: Vec<String>,
    /// Parquet file holding the episode's rows, relative to the root.
    pub data_path: PathBuf,
    /// Global row range `[from, to)` (`dataset_from_index`, `dataset_to_index`).
    pub dataset_from_index: usize,
    pub dataset_to_index: usize,
    pub videos: BTreeMap<String, VideoSpan>,
}

/// Expand a LeRobot path template such as `data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`:
/// `{name}` and `{name:0Nd}` fields.
pub fn format_path(template: &str, values: &[(&str, &str)], ints: &[(&str, i64)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        let field = &rest[open + 1..close];
        let (name, spec) = field.split_once(':').unwrap_or((field, ""));
        if let Some((_, v)) = values.iter().find(|(n, _)| *n == name) {
            out.push_str(v);
        } else {
            let (_, v) = ints.iter().find(|(n, _)| *n == name)?;
            let width: usize = spec
                .trim_start_matches('0')
                .trim_end_matches('d')
                .parse()
                .unwrap_or(0);
            out.push_str(&format!("{v:0width$}"));
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// An expanded `data_path` / `video_path` template as a path relative to the dataset root, refused
/// when it would leave the root (an absolute path, `..`): info.json comes from whoever made the dataset.
fn inside_root(root: &Path, expanded: &str, field: &str) -> Result<PathBuf> {
    crate::safe_path::safe_join(Path::new(""), expanded, field).map_err(|source| DatasetError::UnsafePath {
        path: root.join(INFO_PATH),
        source,
    })
}

fn template_error(path: &Path, template: &str) -> DatasetError {
    DatasetError::Inconsistent {
        path: path.to_path_buf(),
        reason: format!("cannot expand path template {template:?}"),
    }
}

/// Tasks by task index.
pub(crate) fn load_tasks(root: &Path, version: Version) -> Result<BTreeMap<i64, String>> {
    match version {
        Version::V30 => {
            let path = root.join(TASKS_PATH);
            if !path.exists() {
                return Err(DatasetError::MissingFile {
                    root: root.to_path_buf(),
                    path,
                });
            }
            let table = Table::read(&path, None)?;
            let indices = table.i64s("task_index")?;
            // LeRobot writes the task text as the pandas index (`__index_level_0__`); accept a plain
            // `task` column too.
            let text_col = ["task", "__index_level_0__"]
                .into_iter()
                .find(|c| table.has_column(c))
                .ok_or_else(|| DatasetError::MissingColumn {
                    path: path.clone(),
                    column: "task".into(),
                })?;
            let texts = table.strings(text_col)?;
            Ok(indices.into_iter().zip(texts).collect())
        }
        Version::V21 => {
            #[derive(Deserialize)]
            struct Row {
                task_index: i64,
                task: String,
            }
            let rows: Vec<Row> = read_jsonl(root, &root.join(LEGACY_TASKS_PATH))?;
            Ok(rows.into_iter().map(|r| (r.task_index, r.task)).collect())
        }
    }
}

/// Episodes in index order, with the files and time spans of their rows and frames.
pub(crate) fn load_episodes(root: &Path, version: Version, info: &Info) -> Result<Vec<EpisodeMeta>> {
    let video_keys = info.video_keys();
    let mut episodes = match version {
        Version::V30 => load_episodes_v30(root, info, &video_keys)?,
        Version::V21 => load_episodes_v21(root, info, &video_keys)?,
    };
    episodes.sort_by_key(|e| e.episode_index);
    let path = root.join(match version {
        Version::V30 => EPISODES_DIR,
        Version::V21 => LEGACY_EPISODES_PATH,
    });
    for (i, ep) in episodes.iter().enumerate() {
        if ep.episode_index != i {
            return Err(DatasetError::Inconsistent {
                path,
                reason: format!(
                    "episode indices are not 0..{}: found {} at position {i}",
                    episodes.len(),
                    ep.episode_index
                ),
            });
        }
    }
    if episodes.len() != info.total_episodes {
        return Err(DatasetError::Inconsistent {
            path,
            reason: format!(
                "{} episodes listed but meta/info.json says total_episodes = {}",
                episodes.len(),
                info.total_episodes
            ),
        });
    }
    Ok(episodes)
}

fn load_episodes_v30(root: &Path, info: &Info, video_keys: &[String]) -> Result<Vec<EpisodeMeta>> {
    let dir = root.join(EPISODES_DIR);
    let mut files = Vec::new();
    if dir.is_dir() {
        for chunk in fs::read_dir(&dir).map_err(io(&dir))? {
            let chunk = chunk.map_err(io(&dir))?.path();
            if chunk.is_dir() {
                for f in fs::read_dir(&chunk).map_err(io(&chunk))? {
                    let f = f.map_err(io(&chunk))?.path();
                    if f.extension().is_some_and(|e| e == "parquet") {
                        files.push(f);
                    }
                }
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DatasetError::MissingFile {
            root: root.to_path_buf(),
            path: dir.join("chunk-000/file-000.parquet"),
        });
    }
    let mut out = Vec::new();
    for path in files {
        let mut cols: Vec<String> = [
            "episode_index",
            "tasks",
            "length",
            "data/chunk_index",
            "data/file_index",
            "dataset_from_index",
            "dataset_to_index",
        ]
        .map(String::from)
        .to_vec();
        for key in video_keys {
            for f in ["chunk_index", "file_index", "from_timestamp", "to_timestamp"] {
                cols.push(format!("videos/{key}/{f}"));
            }
        }
        let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
        let t = Table::read(&path, Some(&refs))?;
        let idx = t.i64s("episode_index")?;
        let tasks = t.string_lists("tasks")?;
        let len = t.i64s("length")?;
        let dchunk = t.i64s("data/chunk_index")?;
        let dfile = t.i64s("data/file_index")?;
        let from = t.i64s("dataset_from_index")?;
        let to = t.i64s("dataset_to_index")?;
        let mut vids = Vec::new();
        for key in video_keys {
            vids.push((
                key.clone(),
                t.i64s(&format!("videos/{key}/chunk_index"))?,
                t.i64s(&format!("videos/{key}/file_index"))?,
                t.f64s(&format!("videos/{key}/from_timestamp"))?,
                t.f64s(&format!("videos/{key}/to_timestamp"))?,
            ));
        }
        for r in 0..idx.len() {
            let data_path = format_path(
                &info.data_path,
                &[],
                &[("chunk_index", dchunk[r]), ("file_index", dfile[r])],
            )
            .ok_or_else(|| template_error(&root.join(INFO_PATH), &info.data_path))?;
            let mut videos = BTreeMap::new();
            for (key, c, f, a, b) in &vids {
                let template = info.video_path.as_deref().unwrap_or_default();
                let p = format_path(
                    template,
                    &[("video_key", key)],
                    &[("chunk_index", c[r]), ("file_index", f[r])],
                )
                .ok_or_else(|| template_error(&root.join(INFO_PATH), template))?;
                videos.insert(
                    key.clone(),
                    VideoSpan {
                        path: inside_root(root, &p, "video_path")?,
                        from_timestamp: a[r],
                        to_timestamp: b[r],
                    },
                );
            }
            let nonneg = |v: i64, what: &str| -> Result<usize> {
                usize::try_from(v).map_err(|_| DatasetError::Inconsistent {
                    path: path.clone(),
                    reason: format!("row {r}: {what} is {v}"),
                })
            };
            out.push(EpisodeMeta {
                episode_index: nonneg(idx[r], "episode_index")?,
                length: nonneg(len[r], "length")?,
                tasks: tasks[r].clone(),
                data_path: inside_root(root, &data_path, "data_path")?,
                dataset_from_index: nonneg(from[r], "dataset_from_index")?,
                dataset_to_index: nonneg(to[r], "dataset_to_index")?,
                videos,
            });
        }
    }
    Ok(out)
}

fn load_episodes_v21(root: &Path, info: &Info, video_keys: &[String]) -> Result<Vec<EpisodeMeta>> {
    #[derive(Deserialize)]
    struct Row {
        episode_index: usize,
        #[serde(default)]
        tasks: Vec<String>,
        length: usize,
    }
    let mut rows: Vec<Row> = read_jsonl(root, &root.join(LEGACY_EPISODES_PATH))?;
    rows.sort_by_key(|r| r.episode_index);
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    for r in rows {
        let ep = r.episode_index as i64;
        let chunk = ep / info.chunks_size.max(1) as i64;
        let data_path = format_path(
            &info.data_path,
            &[],
            &[("episode_chunk", chunk), ("episode_index", ep)],
        )
        .ok_or_else(|| template_error(&root.join(INFO_PATH), &info.data_path))?;
        let mut videos = BTreeMap::new();
        for key in video_keys {
            let template = info.video_path.as_deref().unwrap_or_default();
            let p = format_path(
                template,
                &[("video_key", key)],
                &[("episode_chunk", chunk), ("episode_index", ep)],
            )
            .ok_or_else(|| template_error(&root.join(INFO_PATH), template))?;
            // One file per episode: the episode is the whole video.
            let to = r.length as f64 / info.fps;
            videos.insert(
                key.clone(),
                VideoSpan {
                    path: inside_root(root, &p, "video_path")?,
                    from_timestamp: 0.0,
                    to_timestamp: to,
                },
            );
        }
        out.push(EpisodeMeta {
            episode_index: r.episode_index,
            length: r.length,
            tasks: r.tasks,
            data_path: inside_root(root, &data_path, "data_path")?,
            dataset_from_index: start,
            dataset_to_index: start + r.length,
            videos,
        });
        start += r.length;
    }
    Ok(out)
}

/// Dataset statistics: v3.0's `meta/stats.json`; for v2.1 the per-episode `episodes_stats.jsonl` rows
/// (`{"episode_index", "stats"}`) as a JSON array. `None` when the file is absent (LeRobot allows that).
pub(crate) fn load_stats(root: &Path, version: Version) -> Result<Option<Value>> {
    let path = match version {
        Version::V30 => root.join(STATS_PATH),
        Version::V21 => root.join(LEGACY_EPISODES_STATS_PATH),
    };
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(match version {
        Version::V30 => read_json(root, &path)?,
        Version::V21 => Value::Array(read_jsonl(root, &path)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_expand_like_python_format() {
        let v3 = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4";
        assert_eq!(
            format_path(
                v3,
                &[("video_key", "observation.images.front")],
                &[("chunk_index", 2), ("file_index", 17)]
            )
            .unwrap(),
            "videos/observation.images.front/chunk-002/file-017.mp4"
        );
        let v21 = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet";
        assert_eq!(
            format_path(v21, &[], &[("episode_chunk", 0), ("episode_index", 42)]).unwrap(),
            "data/chunk-000/episode_000042.parquet"
        );
        assert_eq!(format_path("{missing}", &[], &[]), None);
    }
}
