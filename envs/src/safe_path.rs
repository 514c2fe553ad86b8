//! Turning untrusted names into paths that stay inside a root folder.
//!
//! Names from configs (arm names), from files other tools wrote (a LeRobotDataset's `data_path` and
//! `video_path` templates, its feature keys) and from the hub must never reach a file outside the folder
//! they belong to. Every such name goes through [`safe_join`] (a relative path of normal components) or
//! [`safe_component`] (exactly one component), which refuse absolute paths, `..`, `.`, empty names and
//! control characters before anything is opened.
//!
//! The check is lexical: symbolic links inside the root are followed as the filesystem resolves them,
//! because the Hugging Face hub cache is made of links into its blob store; what a link points at is the
//! choice of whoever made the folder, not of the text in its metadata.

use std::path::{Component, Path, PathBuf};

/// Why a name was refused as a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} {reason}")]
pub struct UnsafePath {
    /// What the name is, e.g. "arm name" or "data_path".
    pub what: String,
    pub name: String,
    pub reason: &'static str,
}

fn refuse(what: &str, name: &str, reason: &'static str) -> UnsafePath {
    UnsafePath {
        what: what.to_string(),
        name: name.to_string(),
        reason,
    }
}

fn check_characters(what: &str, name: &str) -> Result<(), UnsafePath> {
    if name.trim().is_empty() {
        return Err(refuse(what, name, "is empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse(what, name, "contains a control character"));
    }
    Ok(())
}

/// `root` joined with `relative`, which must be a relative path made only of normal components (no
/// `/` at the start, no `..`, no `.`, no drive prefix, no empty name): the result is always inside `root`.
/// `what` names the field in the error, e.g. "data_path".
pub fn safe_join(root: &Path, relative: &str, what: &str) -> Result<PathBuf, UnsafePath> {
    check_characters(what, relative)?;
    if relative.contains('\\') {
        return Err(refuse(what, relative, "contains a backslash"));
    }
    let mut out = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => return Err(refuse(what, relative, "leaves its folder with `..`")),
            Component::CurDir => return Err(refuse(what, relative, "contains a `.` component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(what, relative, "is an absolute path"));
            }
        }
    }
    // `a//b` and a trailing `/` are normalised away by `components`; a bare separator is not a name.
    if out == root {
        return Err(refuse(what, relative, "names no file"));
    }
    Ok(out)
}

/// `name` as exactly one path component: for names that become a folder of their own (arm names).
/// Refuses separators, `.`, `..`, leading dots (hidden files) and control characters.
pub fn safe_component<'a>(name: &'a str, what: &str) -> Result<&'a str, UnsafePath> {
    check_characters(what, name)?;
    if name.contains('/') || name.contains('\\') {
        return Err(refuse(what, name, "contains a path separator"));
    }
    if name.starts_with('.') {
        return Err(refuse(what, name, "starts with `.`"));
    }
    if name != name.trim() {
        return Err(refuse(what, name, "starts or ends with white space"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside_the_root() {
        let root = Path::new("/data/ds");
        assert_eq!(
            safe_join(root, "data/chunk-000/file-000.parquet", "data_path").unwrap(),
            root.join("data/chunk-000/file-000.parquet")
        );
        for bad in [
            "/etc/passwd",
            "../../etc/passwd",
            "data/../../x",
            "./data",
            "",
            " ",
            "/",
            "a\\..\\b",
            "a\0b",
        ] {
            let err = safe_join(root, bad, "data_path").unwrap_err();
            assert!(err.to_string().starts_with("data_path"), "{err}");
        }
    }

    #[test]
    fn components_are_single_plain_names() {
        assert_eq!(
            safe_component("bc_topreward", "arm name").unwrap(),
            "bc_topreward"
        );
        for bad in [
            "",
            "../../escape",
            "a/b",
            "..",
            ".",
            ".hidden",
            " x",
            "x\n",
            "a\\b",
        ] {
            assert!(safe_component(bad, "arm name").is_err(), "{bad:?} accepted");
        }
    }
}
