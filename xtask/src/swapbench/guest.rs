//! What the swap bench's client VM boots: the client image as `cargo xtask client-image` makes it
//! (run first, so kclient, the guest programs and the initramfs match the tree; the kernel is
//! cached), which must carry the zram and nbd modules the comparison backends load; and the host
//! side: the release appliance and qemu-nbd.

use anyhow::{ensure, Context, Result};
use qemu_tests::linux_vm::ClientImage;

use crate::host::{cargo, ensure_apt_tool, run, step};
use crate::{artefacts, testing};

/// Modules the zram and nbd backends load in the guest.
const MODULES: [&str; 2] = ["lib/modules/zram.ko", "lib/modules/nbd.ko"];

pub(super) fn prepare() -> Result<ClientImage> {
    step("swap bench: client image (kernel cached; kclient, guest programs, initramfs)");
    testing::xtask(&["client-image"])?;
    step("swap bench: release appliance, qemu-nbd");
    run(cargo().args(["build", "--release", "-p", "appliance"]))?;
    ensure_apt_tool("qemu-nbd", "qemu-utils")?;
    let image = artefacts::client_image()?;
    let archive = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&image.initramfs)
        .output()
        .context("reading the initramfs with gzip")?;
    let listing = String::from_utf8_lossy(&archive.stdout);
    for module in MODULES {
        ensure!(
            listing.contains(module),
            "{module} is not in {}: images/linux/kclient.config needs CONFIG_ZRAM=m and CONFIG_BLK_DEV_NBD=m",
            image.initramfs.display()
        );
    }
    Ok(image)
}
