//! The run folder's guard: one process at a time, and a resumed run is the run that was started.
//!
//! - `<out>/.lock` is held with `flock` (through `File::try_lock`) for the whole run and holds the pid of
//!   its owner: a second `train` on the same folder is refused while the first runs, and a crashed
//!   owner's lock is released by the kernel, so a leftover file never blocks a `--resume`.
//! - `<out>/experiment.toml` is the resolved config and `<out>/run.json` the code version the run was
//!   started with. `--resume` compares both with the current ones and refuses any difference, naming the
//!   keys that differ; `--restart` starts over after moving the previous run aside (never deleting it)
//!   and says where it went.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;

/// Version of the code that produced a run: the crate version and, when built from a git checkout,
/// the commit (uncommitted edits are not detected).
pub const CODE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("TOPRL_GIT_COMMIT"));

const LOCK_FILE: &str = ".lock";
const CONFIG_FILE: &str = "experiment.toml";
const RUN_FILE: &str = "run.json";
/// TOPReward score cache of the run (`train` passes `<out>/topreward_cache` to the scorer).
pub const SCORE_CACHE_DIR: &str = "topreward_cache";

/// How `train` treats an output folder that already holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// Refuse a folder that holds a run.
    #[default]
    Fresh,
    /// Continue the run in the folder; refuse when its config or code version differ.
    Resume,
    /// Move the previous run aside and start over.
    Restart,
}

#[derive(Debug, thiserror::Error)]
pub enum RunFolderError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "run folder {path} is in use by another train process{owner}; wait for it to finish or pass another --out"
    )]
    Locked { path: PathBuf, owner: String },
    #[error(
        "output directory {path} already holds a run; pass --resume to continue it, --restart to start over, \
         or --out to start elsewhere"
    )]
    Exists { path: PathBuf },
    #[error(
        "cannot resume {path}: the run was started with a different config:\n{differences}\npass --restart to \
         start over (the previous run is moved aside, not deleted) or --out to start elsewhere"
    )]
    ConfigChanged { path: PathBuf, differences: String },
    #[error(
        "cannot resume {path}: the run was started by toprl {recorded}, this is {current}; results of two code \
         versions would be mixed. Pass --restart to start over (the previous run is moved aside) or --out"
    )]
    CodeChanged {
        path: PathBuf,
        recorded: String,
        current: String,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunFolderError + '_ {
    move |source| RunFolderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    code_version: String,
}

/// A run folder owned by this process until dropped (the lock is released with the file).
#[derive(Debug)]
pub struct RunFolder {
    _lock: File,
    /// Where the previous run went with `--restart`.
    pub moved_to: Option<PathBuf>,
}

/// Take `out` for a run of `resolved_config` (the config serialised as TOML): lock it, check or set
/// aside what it holds according to `mode`, and record the config and code version.
pub fn open(out: &Path, resolved_config: &str, mode: StartMode) -> Result<RunFolder, RunFolderError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let lock = take_lock(out)?;
    let config_path = out.join(CONFIG_FILE);
    let mut moved_to = None;
    if config_path.exists() {
        match mode {
            StartMode::Fresh => return Err(RunFolderError::Exists { path: out.into() }),
            StartMode::Resume => check_same_run(out, resolved_config)?,
            StartMode::Restart => moved_to = Some(move_aside(out)?),
        }
    }
    write_atomic(&config_path, resolved_config.as_bytes()).map_err(io(&config_path))?;
    let run_path = out.join(RUN_FILE);
    let record = RunRecord {
        code_version: CODE_VERSION.to_string(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| RunFolderError::Corrupt {
        path: run_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&run_path, &json).map_err(io(&run_path))?;
    Ok(RunFolder {
        _lock: lock,
        moved_to,
    })
}

/// The checks of [`open`] without taking the folder or writing anything: `train` runs them before it
/// loads the reward model, so a refused `--resume` costs no model load.
pub fn check(out: &Path, resolved_config: &str, mode: StartMode) -> Result<(), RunFolderError> {
    if !out.join(CONFIG_FILE).exists() {
        return Ok(());
    }
    drop(take_lock(out)?);
    match mode {
        StartMode::Fresh => Err(RunFolderError::Exists { path: out.into() }),
        StartMode::Resume => check_same_run(out, resolved_config),
        StartMode::Restart => Ok(()),
    }
}

fn take_lock(out: &Path) -> Result<File, RunFolderError> {
    let path = out.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let owner = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(RunFolderError::Locked {
                path: out.into(),
                owner,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0).map_err(io(&path))?;
    write!(file, "{}", std::process::id()).map_err(io(&path))?;
    file.flush().map_err(io(&path))?;
    Ok(file)
}

/// Refuse to resume when the recorded config or code version differ from the current ones.
fn check_same_run(out: &Path, resolved_config: &str) -> Result<(), RunFolderError> {
    let config_path = out.join(CONFIG_FILE);
    let recorded = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let parse = |text: &str, path: &Path| {
        toml::from_str::<toml::Table>(text).map_err(|e| RunFolderError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let before = parse(&recorded, &config_path)?;
    let now = parse(resolved_config, Path::new("the current config"))?;
    let mut differences = Vec::new();
    diff_tables("", &before, &now, &mut differences);
    if !differences.is_empty() {
        return Err(RunFolderError::ConfigChanged {
            path: out.into(),
            differences: differences.join("\n"),
        });
    }
    let run_path = out.join(RUN_FILE);
    // Runs started before the code version was recorded have no run.json: their version is unknown.
    let recorded_version = match std::fs::read(&run_path) {
        Ok(bytes) => {
            serde_json::from_slice::<RunRecord>(&bytes)
                .map_err(|e| RunFolderError::Corrupt {
                    path: run_path.clone(),
                    reason: e.to_string(),
                })?
                .code_version
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "an unrecorded version".to_string(),
        Err(e) => return Err(io(&run_path)(e)),
    };
    if recorded_version != CODE_VERSION {
        return Err(RunFolderError::CodeChanged {
            path: out.into(),
            recorded: recorded_version,
            current: CODE_VERSION.to_string(),
        });
    }
    Ok(())
}

/// Lines `key: recorded -> current` for every dotted key whose value differs.
fn diff_tables(prefix: &str, before: &toml::Table, now: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = before.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (before.get(key), now.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => diff_tables(&name, a, b, out),
            (a, b) if a == b => {}
            (a, b) => {
                let show = |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), ToString::to_string);
                out.push(format!("  {name}: {} -> {}", show(a), show(b)));
            }
        }
    }
}

/// Move everything in `out` but the lock into a new sibling `<out>.replaced-<n>` and return it.
fn move_aside(out: &Path) -> Result<PathBuf, RunFolderError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let parent = out.parent().unwrap_or(Path::new("."));
    let mut n = 1;
    let target = loop {
        let candidate = parent.join(format!("{name}.replaced-{n}"));
        match std::fs::create_dir(&candidate) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(io(&candidate)(e)),
        }
    };
    for entry in std::fs::read_dir(out).map_err(io(out))? {
        let entry = entry.map_err(io(out))?;
        // The lock stays with its owner; the score cache is keyed by content and settings, so it
        // stays valid for the new run (and the scorer already holds its path).
        if entry.file_name() == LOCK_FILE || entry.file_name() == SCORE_CACHE_DIR {
            continue;
        }
        let to = target.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(io(&to))?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_while_the_first_holds_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = open(&out, "a = 1\n", StartMode::Fresh).unwrap();
        let err = open(&out, "a = 1\n", StartMode::Resume).unwrap_err();
        assert!(matches!(err, RunFolderError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        open(&out, "a = 1\n", StartMode::Resume).unwrap();
    }

    #[test]
    fn resume_refuses_another_config_and_restart_moves_the_old_run_aside() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        drop(open(&out, "[train]\nsteps = 20\n", StartMode::Fresh).unwrap());
        std::fs::write(out.join("results.md"), "finished").unwrap();
        let err = open(&out, "[train]\nsteps = 20\n", StartMode::Fresh).unwrap_err();
        assert!(matches!(err, RunFolderError::Exists { .. }), "{err}");
        let err = open(&out, "[train]\nsteps = 2000\n", StartMode::Resume).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("train.steps: 20 -> 2000") && text.contains("--restart"),
            "{text}"
        );
        // Nothing was rewritten by the refused resume.
        assert_eq!(
            std::fs::read_to_string(out.join("experiment.toml")).unwrap(),
            "[train]\nsteps = 20\n"
        );
        drop(open(&out, "[train]\nsteps = 20\n", StartMode::Resume).unwrap());
        let restarted = open(&out, "[train]\nsteps = 2000\n", StartMode::Restart).unwrap();
        let moved = restarted.moved_to.clone().unwrap();
        assert_eq!(moved, dir.path().join("run.replaced-1"));
        assert_eq!(
            std::fs::read_to_string(moved.join("results.md")).unwrap(),
            "finished"
        );
        assert!(!out.join("results.md").exists());
        assert_eq!(
            std::fs::read_to_string(out.join("experiment.toml")).unwrap(),
            "[train]\nsteps = 2000\n"
        );
    }

    #[test]
    fn resume_refuses_another_code_version() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        drop(open(&out, "a = 1\n", StartMode::Fresh).unwrap());
        std::fs::write(out.join(RUN_FILE), r#"{"code_version": "0.0.1+old"}"#).unwrap();
        let err = open(&out, "a = 1\n", StartMode::Resume).unwrap_err();
        assert!(matches!(err, RunFolderError::CodeChanged { .. }), "{err}");
        assert!(err.to_string().contains("0.0.1+old"), "{err}");
    }
}
