//! Episode score cache: in memory, plus an optional directory of JSON files (one per key, written to a
//! temporary file and renamed, so a crash never leaves a partial entry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::scorer::TopRewardError;
use crate::score::EpisodeScore;

/// Content hash of an episode (frames, fps, instruction) and the scoring settings: 128-bit FNV-1a, hex.
/// Stable across runs and platforms, so it can name files of an on-disk cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EpisodeKey(String);

struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    fn new() -> Self {
        Self(Self::OFFSET)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
    /// Length-prefixed, so field boundaries cannot alias.
    fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

impl EpisodeKey {
    pub fn new(frames: &[RgbImage], fps: f64, instruction: &str, settings: &str) -> Self {
        let mut h = Fnv128::new();
        h.field(b"toprl-topreward-v1");
        h.field(settings.as_bytes());
        h.field(instruction.as_bytes());
        h.field(&fps.to_bits().to_le_bytes());
        h.field(&(frames.len() as u64).to_le_bytes());
        for f in frames {
            h.field(&f.width().to_le_bytes());
            h.field(&f.height().to_le_bytes());
            h.field(f.as_raw());
        }
        Self(format!("{:032x}", h.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Scores by episode key.
#[derive(Debug, Default)]
pub struct ScoreCache {
    memory: HashMap<EpisodeKey, EpisodeScore>,
    dir: Option<PathBuf>,
}

impl ScoreCache {
    /// In memory only (`None`) or also in `dir` (created if missing).
    /// Refuse a cache folder path that names an existing file (or lies under one), before any model
    /// is loaded: `create_dir_all` would only say "File exists".
    pub fn check_dir(dir: &Path) -> Result<(), TopRewardError> {
        for ancestor in dir.ancestors() {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            if ancestor.exists() && !ancestor.is_dir() {
                return Err(TopRewardError::Cache {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "{} is a file, not a folder; pass a folder (it is created when missing)",
                        ancestor.display()
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn new(dir: Option<PathBuf>) -> Result<Self, TopRewardError> {
        if let Some(d) = &dir {
            Self::check_dir(d)?;
            std::fs::create_dir_all(d).map_err(|e| TopRewardError::Cache {
                path: d.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            memory: HashMap::new(),
            dir,
        })
    }

    fn file(dir: &Path, key: &EpisodeKey) -> PathBuf {
        dir.join(format!("{}.json", key.as_str()))
    }

    pub fn get(&mut self, key: &EpisodeKey) -> Result<Option<EpisodeScore>, TopRewardError> {
        if let Some(s) = self.memory.get(key) {
            return Ok(Some(s.clone()));
        }
        let Some(dir) = &self.dir else { return Ok(None) };
        let path = Self::file(dir, key);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| TopRewardError::Cache {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let score: EpisodeScore = serde_json::from_str(&text).map_err(|e| TopRewardError::Cache {
            path: path.clone(),
            reason: format!("corrupt entry: {e}"),
        })?;
        self.memory.insert(key.clone(), score.clone());
        Ok(Some(score))
    }

    pub fn put(&mut self, key: &EpisodeKey, score: &EpisodeScore) -> Result<(), TopRewardError> {
        self.memory.insert(key.clone(), score.clone());
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = Self::file(dir, key);
        let tmp = dir.join(format!(".{}.json.tmp{}", key.as_str(), std::process::id()));
        let err = |p: &Path, e: std::io::Error| TopRewardError::Cache {
            path: p.to_path_buf(),
            reason: e.to_string(),
        };
        let text = serde_json::to_string(score).map_err(|e| TopRewardError::Cache {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
        Ok(())
    }

    /// Entries held in memory.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_folder_that_is_a_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache");
        std::fs::write(&file, "x").unwrap();
        for path in [file.clone(), file.join("sub")] {
            let err = ScoreCache::new(Some(path)).unwrap_err().to_string();
            assert!(err.contains("is a file, not a folder"), "{err}");
        }
        assert!(ScoreCache::new(Some(dir.path().join("new/cache"))).is_ok());
    }

    fn score() -> EpisodeScore {
        EpisodeScore {
            prefix_lengths: vec![1, 2],
            log_probs: vec![-2.0, -1.0],
            progress: vec![0.0, 1.0],
            num_tokens: vec![10, 12],
            voc: Some(1.0),
        }
    }

    #[test]
    fn key_depends_on_content_and_settings() {
        let a = vec![RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))];
        let mut b = a.clone();
        b[0].put_pixel(3, 3, image::Rgb([1, 2, 4]));
        let k = EpisodeKey::new(&a, 2.0, "pick", "s");
        assert_eq!(k, EpisodeKey::new(&a, 2.0, "pick", "s"));
        assert_ne!(k, EpisodeKey::new(&b, 2.0, "pick", "s"));
        assert_ne!(k, EpisodeKey::new(&a, 1.0, "pick", "s"));
        assert_ne!(k, EpisodeKey::new(&a, 2.0, "place", "s"));
        assert_ne!(k, EpisodeKey::new(&a, 2.0, "pick", "t"));
        assert_eq!(k.as_str().len(), 32);
    }

    #[test]
    fn disk_cache_round_trips_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let key = EpisodeKey::new(&[], 2.0, "x", "s");
        let mut c = ScoreCache::new(Some(dir.path().to_path_buf())).unwrap();
        assert!(c.get(&key).unwrap().is_none());
        c.put(&key, &score()).unwrap();
        let mut fresh = ScoreCache::new(Some(dir.path().to_path_buf())).unwrap();
        assert_eq!(fresh.get(&key).unwrap(), Some(score()));
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        std::fs::write(dir.path().join(format!("{}.json", key.as_str())), "{not json").unwrap();
        let mut broken = ScoreCache::new(Some(dir.path().to_path_buf())).unwrap();
        let err = broken.get(&key).unwrap_err().to_string();
        assert!(err.contains("corrupt entry"), "{err}");
    }
}
