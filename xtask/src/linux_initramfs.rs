//! The client initramfs: busybox-static, our /init and test scripts, the workload and the modules,
//! written as a `newc` cpio archive (no root needed for device nodes) and gzipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A `newc` cpio archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.next_ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime: fixed, so the archive is reproducible
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.entry(name, S_IFREG | mode, (0, 0), body);
    }

    pub fn file_from(&mut self, name: &str, mode: u32, src: &Path) -> Result<()> {
        let body = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        self.file(name, mode, &body);
        Ok(())
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[]);
    }

    /// Finishes the archive and writes it gzipped to `out`.
    pub fn write_gz(self, out: &Path) -> Result<()> {
        self.gzip_into(std::fs::File::create(out)?)
    }

    /// Writes `base` (an initramfs) to `out` followed by this archive, gzipped: the kernel unpacks
    /// concatenated archives in order, so these files are added to `base`'s, or replace them.
    pub fn write_gz_after(self, base: &Path, out: &Path) -> Result<()> {
        std::fs::copy(base, out)
            .with_context(|| format!("copying {} to {}", base.display(), out.display()))?;
        self.gzip_into(std::fs::OpenOptions::new().append(true).open(out)?)
    }

    fn gzip_into(mut self, file: std::fs::File) -> Result<()> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        let mut gzip = Command::new("gzip")
            .arg("-9n")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("running gzip")?;
        gzip.stdin
            .take()
            .context("gzip stdin")?
            .write_all(&self.data)?;
        let status = gzip.wait()?;
        if !status.success() {
            bail!("gzip failed: {status}");
        }
        Ok(())
    }
}

/// Inputs of the client initramfs.
pub struct Contents<'a> {
    /// `images/linux/initramfs/`: `init` becomes `/init`, other files go to `/tmem/`.
    pub scripts: &'a Path,
    pub busybox: &'a Path,
    /// Static guest programs for `/bin/` (tmem-workload, tmem-failtest).
    pub programs: &'a [&'a Path],
    /// Modules for `/lib/modules/` (kclient.ko, and zram.ko / nbd.ko for comparisons).
    pub modules: &'a [&'a Path],
}

pub fn build(contents: &Contents<'_>, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "lib",
        "lib/modules",
        "tmem",
        "root",
        "etc",
    ] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.char_dev("dev/null", 1, 3);
    cpio.file_from("bin/busybox", 0o755, contents.busybox)?;
    // The interpreter of /init; /init installs the other applets.
    cpio.symlink("bin/sh", "busybox");
    add_scripts(&mut cpio, contents.scripts)?;
    add_named(&mut cpio, "bin", 0o755, contents.programs.iter().copied())?;
    add_named(
        &mut cpio,
        "lib/modules",
        0o644,
        contents.modules.iter().copied(),
    )?;
    cpio.write_gz(out)
}

/// `scripts/init` as `/init` and every other file of `scripts` as `/tmem/NAME`.
pub fn add_scripts(cpio: &mut Cpio, scripts: &Path) -> Result<()> {
    cpio.file_from("init", 0o755, &scripts.join("init"))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(scripts)
        .with_context(|| format!("reading {}", scripts.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "init"))
        .collect();
    files.sort();
    add_named(cpio, "tmem", 0o755, files.iter().map(PathBuf::as_path))
}

/// Each of `files` as `DIR/NAME` (its own file name) with `mode`.
pub fn add_named<'a>(
    cpio: &mut Cpio,
    dir: &str,
    mode: u32,
    files: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("file name of {}", file.display()))?;
        cpio.file_from(&format!("{dir}/{name}"), mode, file)?;
    }
    Ok(())
}
