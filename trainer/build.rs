//! Lets the binaries and tests of this crate find `libmujoco.so` at run time without `LD_LIBRARY_PATH`:
//! mujoco-rs links the library from `MUJOCO_DYNAMIC_LINK_DIR` (set by `.cargo/config.toml`) but records
//! no run-time search path, and `rustc-link-arg` from a dependency's build script does not reach this
//! crate's executables, so we add the rpath here (as `envs/build.rs` does for the envs crate).

fn main() {
    println!("cargo::rerun-if-env-changed=MUJOCO_DYNAMIC_LINK_DIR");
    if let Ok(dir) = std::env::var("MUJOCO_DYNAMIC_LINK_DIR") {
        let dir = std::fs::canonicalize(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or(dir);
        println!("cargo::rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
