//! Where things live: the repo root, and the cache for large build outputs kept outside the repo.

use std::path::PathBuf;

/// The workspace root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cache for expensive builds (Hermit kernel, Linux kernel), outside the repo so clean checkouts reuse it.
/// Overridable with `TMEM_CACHE`; defaults to `~/.cache/tmem`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TMEM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("tmem")
}

/// Final artefacts users boot (documented path): `target/images/`.
pub fn images_out() -> PathBuf {
    repo_root().join("target").join("images")
}
