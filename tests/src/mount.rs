//! Scratch file systems for the tests, the benchmark and the matrix's host
//! row: a fresh loop mount on a sparse image, or a tmpfs.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// File system for a [`LoopMount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Xfs,
    Ext4,
    Btrfs,
    /// No image: a tmpfs of the given size.
    Tmpfs,
}

impl FsType {
    pub const ALL: [FsType; 4] = [FsType::Xfs, FsType::Ext4, FsType::Btrfs, FsType::Tmpfs];

    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Xfs => "xfs",
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Tmpfs => "tmpfs",
        }
    }

    /// The file system called `name` ("xfs", "ext4", "btrfs", "tmpfs").
    pub fn named(name: &str) -> Option<FsType> {
        FsType::ALL.into_iter().find(|fs| fs.as_str() == name)
    }

    /// Smallest image mkfs accepts (mkfs.xfs ≥ 5.19 refuses < 300 MB).
    pub fn min_size_mib(self) -> u64 {
        match self {
            FsType::Xfs => 300,
            FsType::Ext4 | FsType::Tmpfs => 8,
            FsType::Btrfs => 128,
        }
    }

    /// The mkfs program and its flags; None for tmpfs.
    pub fn mkfs(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            FsType::Xfs => Some(("mkfs.xfs", &["-q", "-f"])),
            FsType::Ext4 => Some(("mkfs.ext4", &["-q", "-F"])),
            FsType::Btrfs => Some(("mkfs.btrfs", &["-q", "-f"])),
            FsType::Tmpfs => None,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly made file system on a sparse image, loop-mounted in a private
/// temporary directory (or a tmpfs mounted there). Dropping it unmounts
/// (which also detaches the auto-cleared loop device) and removes the
/// directory with the image.
#[derive(Debug)]
pub struct LoopMount {
    dir: PathBuf,
    image: PathBuf,
    mountpoint: PathBuf,
    fs: FsType,
    dev: u64,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn unique_temp_dir(prefix: &str) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
}

impl LoopMount {
    /// Makes a `size_mib` MiB sparse image (raised to [`FsType::min_size_mib`]),
    /// runs `mkfs.xfs -q -f` / `mkfs.ext4 -q -F` / `mkfs.btrfs -q -f` on it
    /// and `mount -o loop`s it; a tmpfs gets `size_mib` MiB and no image.
    /// Needs root and the mkfs tools.
    pub fn new(fs: FsType, size_mib: u64) -> Result<LoopMount> {
        let dir = unique_temp_dir(&format!("observer-loop-{fs}"))?;
        let mut lm = LoopMount {
            image: dir.join(format!("{fs}.img")),
            mountpoint: dir.join("mnt"),
            dir,
            fs,
            dev: 0,
            mounted: false,
        };
        // From here on Drop cleans up whatever got created.
        std::fs::create_dir(&lm.mountpoint)
            .with_context(|| format!("cannot create {}", lm.mountpoint.display()))?;
        let size_mib = size_mib.max(fs.min_size_mib());
        let mut mount = Command::new("mount");
        match fs.mkfs() {
            None => {
                mount
                    .args(["-t", "tmpfs", "-o"])
                    .arg(format!("size={size_mib}m"))
                    .arg("tmpfs");
            }
            Some((mkfs, args)) => {
                let img = std::fs::File::create(&lm.image)
                    .with_context(|| format!("cannot create {}", lm.image.display()))?;
                img.set_len(size_mib * 1024 * 1024)
                    .with_context(|| format!("cannot size {}", lm.image.display()))?;
                drop(img);
                run(Command::new(mkfs).args(args).arg(&lm.image))?;
                mount.args(["-t", fs.as_str(), "-o", "loop"]).arg(&lm.image);
            }
        }
        run(mount.arg(&lm.mountpoint))?;
        lm.mounted = true;
        lm.dev = std::fs::metadata(&lm.mountpoint)
            .with_context(|| format!("cannot stat {}", lm.mountpoint.display()))?
            .dev();
        Ok(lm)
    }

    /// The mount point (an empty file system root).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing image file (for a tmpfs: where it would be).
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The private directory holding the image and the mount point: room
    /// for files that go with the mount and are removed with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fs(&self) -> FsType {
        self.fs
    }

    /// The mounted file system's device, as "MAJ:MIN" (the observer's
    /// `--dev` and an alert's `dev`).
    pub fn dev(&self) -> String {
        format!("{}:{}", libc::major(self.dev), libc::minor(self.dev))
    }

    /// Unmounts now, reporting failure (Drop only retries and then detaches lazily).
    pub fn unmount(mut self) -> Result<()> {
        let r = self.try_unmount();
        if r.is_ok() {
            self.mounted = false;
        }
        r
    }

    fn try_unmount(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match run(Command::new("umount").arg(&self.mountpoint)) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow!("umount failed")))
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = self.try_unmount() {
                eprintln!("LoopMount: {e:#}; detaching lazily");
                let _ = run(Command::new("umount").arg("-l").arg(&self.mountpoint));
            }
            self.mounted = false;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
