//! Two things the binaries need at build time:
//! - `libmujoco.so` found at run time without `LD_LIBRARY_PATH`: mujoco-rs links the library from
//!   `MUJOCO_DYNAMIC_LINK_DIR` (set by `.cargo/config.toml`) but records no run-time search path, and
//!   `rustc-link-arg` from a dependency's build script does not reach this crate's executables, so we add
//!   the rpath here (as `envs/build.rs` does for the envs crate);
//! - the git commit built from (`TOPRL_GIT_COMMIT`), so a run folder records which code produced it and
//!   `train --resume` can refuse to mix two versions. Outside a git checkout it is "unknown".

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo::rerun-if-env-changed=MUJOCO_DYNAMIC_LINK_DIR");
    if let Ok(dir) = std::env::var("MUJOCO_DYNAMIC_LINK_DIR") {
        let dir = std::fs::canonicalize(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or(dir);
        println!("cargo::rustc-link-arg=-Wl,-rpath,{dir}");
    }

    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo::rustc-env=TOPRL_GIT_COMMIT={commit}");
    println!("cargo::rerun-if-changed=build.rs");
    // Rebuild when HEAD moves: HEAD itself (branch switches), the branch ref (commits) and packed refs.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(reference);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = Path::new(&path);
            if path.exists() {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
    }
}
