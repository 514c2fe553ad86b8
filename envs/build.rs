//! Lets this crate's tests, examples and binaries find `libmujoco.so` at run time without
//! `LD_LIBRARY_PATH`: mujoco-rs links the library from `MUJOCO_DYNAMIC_LINK_DIR` (set by
//! `.cargo/config.toml`) but records no run-time search path, so we add an rpath to that directory.
//! (`rustc-link-arg` from a library's build script applies to its own test/example/bin targets only;
//! `trainer/build.rs` does the same for the binaries.)

fn main() {
    println!("cargo::rerun-if-env-changed=MUJOCO_DYNAMIC_LINK_DIR");
    if let Ok(dir) = std::env::var("MUJOCO_DYNAMIC_LINK_DIR") {
        // Resolve the `.assets` link so the rpath keeps working if the checkout moves its link.
        let dir = std::fs::canonicalize(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or(dir);
        println!("cargo::rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
