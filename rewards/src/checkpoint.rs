//! Pinned checkpoints: hub models at a fixed revision, and an identity of the weights for cache keys (the
//! hub commit of a snapshot, or a content hash of a local checkpoint), so cached scores never outlive the
//! weights that produced them.

use std::io::Read;
use std::path::Path;

use crate::qwen3_vl::{CheckpointFiles, ModelError};

/// Resolve `model` (local directory or hub id) at `revision` (a commit, tag or branch of a hub repo;
/// `None`: the hub's default branch). A revision with a local directory is an error: pin local weights by
/// their content (see [`checkpoint_identity`]).
pub fn resolve_checkpoint(model: &str, revision: Option<&str>) -> Result<CheckpointFiles, ModelError> {
    let Some(revision) = revision else {
        return CheckpointFiles::resolve(model);
    };
    if Path::new(model).exists() {
        return Err(ModelError::BadInput(format!(
            "--revision {revision} applies to hub models, but {model} is a local path"
        )));
    }
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| ModelError::Hub {
        repo: format!("{model}@{revision}"),
        file: file.to_string(),
        reason: e.to_string(),
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| hub_err("(client)", e))?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        model.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let config = repo.get("config.json").map_err(|e| hub_err("config.json", e))?;
    let weights = match repo.get("model.safetensors.index.json") {
        Ok(index) => shards(&index)?
            .into_iter()
            .map(|f| repo.get(&f).map_err(|e| hub_err(&f, e)))
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => vec![
            repo.get("model.safetensors")
                .map_err(|e| hub_err("model.safetensors", e))?,
        ],
    };
    let tokenizer = repo.get("tokenizer.json").ok();
    // Optional processor configs land in the same snapshot directory, where the processors look for them.
    let _ = repo.get("video_preprocessor_config.json");
    let _ = repo.get("preprocessor_config.json");
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(CheckpointFiles {
        dir,
        config,
        weights,
        tokenizer,
    })
}

/// Files that decide how a prompt is tokenised: the processors look for these beside the tokenizer.
const PROCESSOR_FILES: [&str; 3] = [
    "tokenizer.json",
    "video_preprocessor_config.json",
    "preprocessor_config.json",
];

/// A folder with `model`'s tokenizer and processor configs (no weights), for counting the prompt tokens a
/// server that serves `model` will see: a local checkpoint folder as it is, or for a hub id the files
/// fetched through the Hugging Face cache (a few MB). `None` when neither gives a tokenizer (a served
/// model name that is no hub id, or no network).
pub fn resolve_processor_files(model: &str) -> Result<Option<std::path::PathBuf>, ModelError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.join("tokenizer.json").is_file().then(|| path.to_path_buf()));
    }
    if !crate::qwen3_vl::looks_like_hub_id(model) {
        return Ok(None);
    }
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| ModelError::Hub {
        repo: model.to_string(),
        file: file.to_string(),
        reason: e.to_string(),
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| hub_err("(client)", e))?;
    let repo = api.model(model.to_string());
    let tokenizer = repo
        .get(PROCESSOR_FILES[0])
        .map_err(|e| hub_err(PROCESSOR_FILES[0], e))?;
    for optional in &PROCESSOR_FILES[1..] {
        let _ = repo.get(optional);
    }
    Ok(tokenizer.parent().map(Path::to_path_buf))
}

fn shards(index: &Path) -> Result<Vec<String>, ModelError> {
    let bad = |reason: String| ModelError::BadIndex {
        path: index.into(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut files: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map".into()))?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Identity of the weights: `rev:<commit>` for a hub snapshot (`.../snapshots/<commit>/`), else
/// `fnv:<hash>` over config.json and every weight file (read once; about a second per few GB).
pub fn checkpoint_identity(files: &CheckpointFiles) -> Result<String, ModelError> {
    let snapshot = files.dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_snapshots = files
        .dir
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "snapshots");
    if in_snapshots && snapshot.len() == 40 && snapshot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(format!("rev:{snapshot}"));
    }
    let mut h: u64 = 0xcbf29ce484222325;
    let mut buf = vec![0u8; 1 << 20];
    for path in std::iter::once(&files.config).chain(&files.weights) {
        let io = |e: std::io::Error| ModelError::Io {
            path: path.clone(),
            source: e,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        // Length-prefixed per file; 8-byte words, FNV-style multiply-xor (a change anywhere changes it).
        h = (h ^ f.metadata().map_err(io)?.len()).wrapping_mul(0x100000001b3);
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            for chunk in buf[..n].chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100000001b3);
            }
        }
    }
    Ok(format!("fnv:{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_content_and_hub_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), vec![1u8; 100]).unwrap();
        let files = CheckpointFiles::from_dir(&dir).unwrap();
        let a = checkpoint_identity(&files).unwrap();
        assert!(a.starts_with("fnv:"), "{a}");
        assert_eq!(a, checkpoint_identity(&files).unwrap());
        let mut w = vec![1u8; 100];
        w[57] = 2;
        std::fs::write(dir.join("model.safetensors"), w).unwrap();
        assert_ne!(a, checkpoint_identity(&files).unwrap());

        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = tmp.path().join("models--o--n/snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "x").unwrap();
        let files = CheckpointFiles::from_dir(&snap).unwrap();
        assert_eq!(checkpoint_identity(&files).unwrap(), format!("rev:{commit}"));
    }

    #[test]
    fn processor_files_of_a_local_checkpoint_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        std::fs::create_dir_all(&dir).unwrap();
        let name = dir.to_str().unwrap();
        assert_eq!(resolve_processor_files(name).unwrap(), None, "no tokenizer.json");
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(resolve_processor_files(name).unwrap(), Some(dir.clone()));
        // A served model name that is neither a folder nor owner/name has no files to find.
        assert_eq!(resolve_processor_files("my-served-model").unwrap(), None);
    }

    #[test]
    fn revision_of_a_local_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_checkpoint(tmp.path().to_str().unwrap(), Some("main"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("applies to hub models"), "{err}");
    }
}
