//! Cache keys for the expensive builds kept in `~/.cache/tmem` (the Linux client kernels, the
//! Hermit kernel library): a hash of everything that changes the output, including the versions
//! the tools report about themselves.

use std::process::Command;

use anyhow::{ensure, Context, Result};

/// 64-bit FNV-1a over `parts`: a stable, dependency-free content hash for cache keys (not for
/// security). Parts are separated, so ("ab", "c") and ("a", "bc") differ.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What `cmd` (e.g. `clang --version`) prints on stdout, trimmed: a tool's own account of its
/// version, for a cache key. Fails if the tool is missing or fails.
pub fn tool_output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
