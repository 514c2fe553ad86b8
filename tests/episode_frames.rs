//! Shared by the end-to-end tests that score the committed fixture episodes (`rewards/fixtures/episodes`).

use std::path::{Path, PathBuf};

/// Copy the episode's original frames (`frame_*`) into `dir/<name>`: the fixture folder also holds the
/// reference's resized frames, which `topreward score --frames` must not see.
pub fn frames_dir(name: &str, dir: &Path) -> PathBuf {
    let episodes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewards/fixtures/episodes");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    for e in std::fs::read_dir(episodes.join(name)).expect("episode dir") {
        let p = e.expect("entry").path();
        let file = p
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_string();
        if file.starts_with("frame_") {
            std::fs::copy(&p, out.join(file)).expect("copy frame");
        }
    }
    out
}
