//! A sparse disk image made ext4 on the host (`mkfs.ext4`, e2fsprogs), removed on drop: the
//! cache device's VM test and benchmark put it behind a throttled virtio disk.

use std::io;
use std::path::PathBuf;
use std::process::Command;

/// The image file; deleted when dropped (also during a panic).
pub struct Ext4Image {
    pub path: PathBuf,
}

impl Ext4Image {
    /// `mib` MiB (sparse) in the temp dir, named after `name` and this process, made ext4 with
    /// 4 KiB blocks.
    pub fn new(name: &str, mib: u64) -> io::Result<Ext4Image> {
        let path = std::env::temp_dir().join(format!("{name}-{}.img", std::process::id()));
        std::fs::File::create(&path)?.set_len(mib << 20)?;
        let img = Ext4Image { path };
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&img.path)
            .output()
            .map_err(|e| io::Error::other(format!("mkfs.ext4 (e2fsprogs installed?): {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mkfs.ext4 {}: {}",
                img.path.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(img)
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
