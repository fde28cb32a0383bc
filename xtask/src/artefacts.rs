//! What xtask verbs boot, found or refused with an error that says how to make it (never a test's
//! skip or panic): the same lookups the VM tests use, as `anyhow` results.

use std::path::PathBuf;

use anyhow::{Context, Result};
use qemu_tests::linux_vm::ClientImage;
use qemu_tests::HermitImage;

/// The appliance unikernel image (`cargo xtask image`), with QEMU on PATH.
pub fn hermit_image() -> Result<HermitImage> {
    HermitImage::locate().context("the Hermit appliance image is not ready")
}

/// The client kernel and initramfs (`cargo xtask client-image`), with QEMU on PATH.
pub fn client_image() -> Result<ClientImage> {
    ClientImage::locate().context("the client image is not ready")
}

/// A binary of this workspace (`appliance`, `tmemctl`), release build preferred.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    qemu_tests::locate_workspace_binary(name).with_context(|| format!("no {name} binary"))
}
