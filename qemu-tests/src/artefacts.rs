//! Where the VM tests' inputs are (images, workspace binaries, host tools), in two forms: `locate`
//! functions that return an error naming what is missing and how to make it (for `cargo xtask`),
//! and the VM tests' helpers, which fail the test with that message. Nothing here skips: VM tests
//! are `#[ignore]`d and run by `cargo xtask test-vm`, which builds every artefact first.

use std::io;
use std::path::{Path, PathBuf};

/// Workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests is inside the workspace")
        .to_path_buf()
}

/// Where the bootable artefacts are: `$TMEM_IMAGES`, else `target/images/`.
pub fn images_dir() -> PathBuf {
    std::env::var_os("TMEM_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/images"))
}

/// Whether `program` is an executable on `PATH`.
pub fn on_path(program: &str) -> bool {
    which::which(program).is_ok()
}

/// `Ok` if QEMU can be started, else an error saying how to get it.
pub fn require_qemu() -> io::Result<()> {
    if on_path("qemu-system-x86_64") {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "qemu-system-x86_64 not found on PATH (`cargo xtask image` or `cargo xtask client-image` installs it)",
    ))
}

/// `Ok` if every one of `files` exists, else an error naming the first missing one and `make`.
pub fn require_files(files: &[&Path], make: &str) -> io::Result<()> {
    match files.iter().find(|f| !f.is_file()) {
        None => Ok(()),
        Some(missing) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} missing (run `{make}`, or set TMEM_IMAGES)",
                missing.display()
            ),
        )),
    }
}

/// The appliance unikernel image made by `cargo xtask image`.
#[derive(Clone, Debug)]
pub struct HermitImage {
    /// Our multiboot loader (QEMU `-kernel`).
    pub loader: PathBuf,
    /// The appliance with the Hermit kernel linked in (QEMU `-initrd`).
    pub appliance: PathBuf,
}

impl HermitImage {
    /// The image files in `dir` (not checked).
    pub fn in_dir(dir: &Path) -> HermitImage {
        HermitImage {
            loader: dir.join("loader"),
            appliance: dir.join("appliance"),
        }
    }

    /// The image in [`images_dir`], checked to exist, with QEMU on `PATH`.
    pub fn locate() -> io::Result<HermitImage> {
        let image = HermitImage::in_dir(&images_dir());
        require_files(&[&image.loader, &image.appliance], "cargo xtask image")?;
        require_qemu()?;
        Ok(image)
    }
}

/// A host binary of this workspace (`tmemctl`, `appliance`), release build preferred;
/// `$CARGO_TARGET_DIR` is honoured.
pub fn locate_workspace_binary(name: &str) -> io::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the {name} binary is missing in {} (run `cargo build --release -p {name}`)",
                    target.display()
                ),
            )
        })
}

/// For VM tests: `found`, or a test failure saying what is missing (never a skip).
pub fn required<T>(found: io::Result<T>) -> T {
    found.unwrap_or_else(|e| {
        panic!("VM test input missing: {e}. `cargo xtask test-vm` builds every VM test input first")
    })
}

/// For VM tests: the Hermit image, or a test failure saying what is missing.
pub fn hermit_image() -> HermitImage {
    required(HermitImage::locate())
}

/// For VM tests: a workspace binary (see [`locate_workspace_binary`]), or a test failure.
pub fn workspace_binary(name: &str) -> PathBuf {
    required(locate_workspace_binary(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_inputs_are_named_with_the_command_that_makes_them() {
        let nowhere = Path::new("/nonexistent/tmem/loader");
        let e = require_files(&[nowhere], "cargo xtask image").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/tmem/loader") && msg.contains("cargo xtask image"));
        let e = locate_workspace_binary("no-such-binary-tmem").unwrap_err();
        assert!(e
            .to_string()
            .contains("cargo build --release -p no-such-binary-tmem"));
        let panicked = std::panic::catch_unwind(|| required(require_files(&[nowhere], "x")));
        assert!(panicked.is_err(), "a missing input fails a VM test");
    }
}
