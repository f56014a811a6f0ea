//! Scratch file systems for the tests, the benchmark and the matrix's host
//! row: a fresh loop mount on a sparse image, a tmpfs, or the project's
//! FUSE server (`fusefs`) over a loop-mounted ext4.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// File system for a [`LoopMount`] and for the VM guests' disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Xfs,
    Ext4,
    Btrfs,
    /// No image: a tmpfs of the given size.
    Tmpfs,
    /// `fusefs` serving the files of an ext4 loop mount (ext4 punches,
    /// zeroes, collapses and inserts, so every fallocate mode the kernel's
    /// fuse passes on works).
    Fuse,
    F2fs,
    /// The NTFS driver of 5.15 to 6.x (Paragon's).
    Ntfs3,
    /// The NTFS driver Debian builds from 7.x (`fs/ntfs`, read-write); on
    /// older kernels the same name is the legacy driver.
    Ntfs,
    /// With `lock_nolock`: one node, no cluster.
    Gfs2,
    /// A local mount (`mkfs.ocfs2 -M local`): no cluster stack.
    Ocfs2,
    /// Debian's 6.12 has it (gone from 6.18); nothing here can make one.
    Bcachefs,
}

impl FsType {
    pub const ALL: [FsType; 11] = [
        FsType::Xfs,
        FsType::Ext4,
        FsType::Btrfs,
        FsType::Tmpfs,
        FsType::Fuse,
        FsType::F2fs,
        FsType::Ntfs3,
        FsType::Ntfs,
        FsType::Gfs2,
        FsType::Ocfs2,
        FsType::Bcachefs,
    ];

    /// Its name, which is also its `mount -t` type and its kernel module.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Xfs => "xfs",
            FsType::Ext4 => "ext4",
            FsType::Btrfs => "btrfs",
            FsType::Tmpfs => "tmpfs",
            FsType::Fuse => "fuse",
            FsType::F2fs => "f2fs",
            FsType::Ntfs3 => "ntfs3",
            FsType::Ntfs => "ntfs",
            FsType::Gfs2 => "gfs2",
            FsType::Ocfs2 => "ocfs2",
            FsType::Bcachefs => "bcachefs",
        }
    }

    /// The file system called `name` (see [`FsType::as_str`]).
    pub fn named(name: &str) -> Option<FsType> {
        FsType::ALL.into_iter().find(|fs| fs.as_str() == name)
    }

    /// Smallest image mkfs accepts (mkfs.xfs ≥ 5.19 refuses < 300 MB;
    /// mkfs.gfs2 wants room for its journal).
    pub fn min_size_mib(self) -> u64 {
        match self {
            FsType::Xfs => 300,
            FsType::Ext4 | FsType::Tmpfs | FsType::Fuse | FsType::Ntfs3 | FsType::Ntfs => 8,
            FsType::Btrfs | FsType::F2fs | FsType::Gfs2 | FsType::Ocfs2 | FsType::Bcachefs => 128,
        }
    }

    /// The mkfs program and its flags; None for tmpfs and fuse (whose
    /// image is [`FsType::backing`]'s), and where there is none
    /// ([`FsType::untestable_here`]).
    pub fn mkfs(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            FsType::Fuse | FsType::Tmpfs | FsType::Bcachefs => None,
            FsType::Xfs => Some(("mkfs.xfs", &["-q", "-f"])),
            FsType::Ext4 => Some(("mkfs.ext4", &["-q", "-F"])),
            FsType::Btrfs => Some(("mkfs.btrfs", &["-q", "-f"])),
            FsType::F2fs => Some(("mkfs.f2fs", &["-q", "-f"])),
            // -Q: no zeroing of the whole image; -F: an image, not a disk.
            FsType::Ntfs3 | FsType::Ntfs => Some(("mkntfs", &["-Q", "-F", "-q"])),
            // Format 1801: 5.10 refuses gfs2-utils 3.5's default, 1802.
            FsType::Gfs2 => Some((
                "mkfs.gfs2",
                &[
                    "-O",
                    "-q",
                    "-p",
                    "lock_nolock",
                    "-j",
                    "1",
                    "-J",
                    "16",
                    "-o",
                    "format=1801",
                ],
            )),
            FsType::Ocfs2 => Some(("mkfs.ocfs2", &["-q", "-F", "-M", "local", "-N", "1"])),
        }
    }

    /// Options its mount needs: a local ocfs2 volume runs no heartbeat
    /// (mount.ocfs2 says so for it; a plain mount(2) must); ntfs3 punches
    /// and inserts only in sparse files, which `sparse` makes every new
    /// file.
    pub fn mount_options(self) -> Option<&'static str> {
        match self {
            FsType::Ocfs2 => Some("heartbeat=none"),
            FsType::Ntfs3 => Some("sparse"),
            _ => None,
        }
    }

    /// Why no kernel's support makes it testable on this Debian 12 host.
    pub fn untestable_here(self) -> Option<&'static str> {
        match self {
            FsType::Bcachefs => Some(
                "Debian 12 packages no bcachefs-tools (nor does any suite here), so no \
                 bcachefs can be made",
            ),
            _ => None,
        }
    }

    /// The file system the image holds: fuse's files live on ext4.
    pub fn backing(self) -> FsType {
        match self {
            FsType::Fuse => FsType::Ext4,
            fs => fs,
        }
    }

    /// The kernel modules it needs (the backing one's too; one built into
    /// the kernel is skipped when loading), each with the config option
    /// that builds it.
    pub fn modules(self) -> &'static [(&'static str, &'static str)] {
        match self {
            FsType::Tmpfs => &[],
            FsType::Fuse => &[("fuse", "CONFIG_FUSE_FS"), ("ext4", "CONFIG_EXT4_FS")],
            FsType::Xfs => &[("xfs", "CONFIG_XFS_FS")],
            FsType::Ext4 => &[("ext4", "CONFIG_EXT4_FS")],
            FsType::Btrfs => &[("btrfs", "CONFIG_BTRFS_FS")],
            FsType::F2fs => &[("f2fs", "CONFIG_F2FS_FS")],
            FsType::Ntfs3 => &[("ntfs3", "CONFIG_NTFS3_FS")],
            FsType::Ntfs => &[("ntfs", "CONFIG_NTFS_FS")],
            FsType::Gfs2 => &[("gfs2", "CONFIG_GFS2_FS")],
            FsType::Ocfs2 => &[("ocfs2", "CONFIG_OCFS2_FS")],
            FsType::Bcachefs => &[("bcachefs", "CONFIG_BCACHEFS_FS")],
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly made file system on a sparse image, loop-mounted in a private
/// temporary directory (or a tmpfs mounted there; for fuse, the image is
/// mounted at `DIR/backing` and `fusefs` mounts itself on the mount point
/// with it as its backing directory). Dropping it stops the server (which
/// unmounts the fuse mount and exits), unmounts (which also detaches the
/// auto-cleared loop device) and removes the directory with the image.
#[derive(Debug)]
pub struct LoopMount {
    dir: PathBuf,
    image: PathBuf,
    mountpoint: PathBuf,
    /// Where the image (or tmpfs) is mounted: the mount point, or for fuse
    /// the server's backing directory.
    lower: PathBuf,
    fs: FsType,
    dev: u64,
    mounted: bool,
    /// The fuse server, until it has exited.
    server: Option<Child>,
}

/// statfs f_type of a fuse mount (FUSE_SUPER_MAGIC).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// How long the fuse server may take to mount, and to exit once told.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// runs [`FsType::mkfs`] on it and `mount -o loop`s it; a tmpfs gets
    /// `size_mib` MiB and no image. Needs root and the mkfs tools.
    pub fn new(fs: FsType, size_mib: u64) -> Result<LoopMount> {
        if let Some(why) = fs.untestable_here() {
            bail!("cannot make {fs}: {why}");
        }
        let dir = unique_temp_dir(&format!("observer-loop-{fs}"))?;
        let lower = match fs {
            FsType::Fuse => dir.join("backing"),
            _ => dir.join("mnt"),
        };
        let mut lm = LoopMount {
            image: dir.join(format!("{}.img", fs.backing())),
            mountpoint: dir.join("mnt"),
            lower,
            dir,
            fs,
            dev: 0,
            mounted: false,
            server: None,
        };
        // From here on Drop cleans up whatever got created.
        for d in [&lm.mountpoint, &lm.lower] {
            if !d.exists() {
                std::fs::create_dir(d).with_context(|| format!("cannot create {}", d.display()))?;
            }
        }
        let size_mib = size_mib.max(fs.min_size_mib());
        let mut mount = Command::new("mount");
        match fs.backing().mkfs() {
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
                let options = ["loop"]
                    .into_iter()
                    .chain(fs.backing().mount_options())
                    .collect::<Vec<_>>()
                    .join(",");
                mount
                    .args(["-t", fs.backing().as_str(), "-o", &options])
                    .arg(&lm.image);
            }
        }
        run(mount.arg(&lm.lower))?;
        lm.mounted = true;
        if fs == FsType::Fuse {
            lm.start_server()?;
        }
        lm.dev = std::fs::metadata(&lm.mountpoint)
            .with_context(|| format!("cannot stat {}", lm.mountpoint.display()))?
            .dev();
        Ok(lm)
    }

    /// Starts `fusefs --backing LOWER --mountpoint MNT` and waits for its
    /// `fusefs: mounted` line and for statfs to see a fuse mount there.
    fn start_server(&mut self) -> Result<()> {
        let bin = crate::fusefs_bin();
        let mut child = Command::new(&bin)
            .arg("--backing")
            .arg(&self.lower)
            .arg("--mountpoint")
            .arg(&self.mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.server = Some(child);
        // The line comes after mount(2) returned; on failure the server
        // exits (its error is on the inherited stderr) and stdout ends.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading fusefs's output")?;
        if !line.starts_with("fusefs: mounted ") {
            let status = self.server.as_mut().and_then(|c| c.wait().ok());
            self.server = None;
            bail!("fusefs did not mount (exit {status:?}): {line:?}");
        }
        if statfs_type(&self.mountpoint)? != FUSE_SUPER_MAGIC {
            bail!("{} is not a fuse mount", self.mountpoint.display());
        }
        Ok(())
    }

    /// SIGTERMs the server, which detaches its mount and exits 0; waits
    /// for it. After a timeout it is killed and the mount detached here.
    fn stop_server(&mut self) -> Result<()> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + SERVER_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for fusefs")? {
                if !status.success() {
                    bail!("fusefs exited with {status}");
                }
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = run(Command::new("umount").arg("-l").arg(&self.mountpoint));
                bail!("fusefs did not exit within {SERVER_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the fuse server and reports how it ended (Ok: exit status 0,
    /// and its mount is gone); a no-op for the other file systems.
    pub fn stop_fuse_server(&mut self) -> Result<()> {
        self.stop_server()
    }

    /// The fuse server's pid while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
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
        self.stop_server()?;
        let r = self.try_unmount();
        if r.is_ok() {
            self.mounted = false;
        }
        r
    }

    fn try_unmount(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..20 {
            match run(Command::new("umount").arg(&self.lower)) {
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
        if let Err(e) = self.stop_server() {
            eprintln!("LoopMount: {e:#}");
        }
        if self.mounted {
            if let Err(e) = self.try_unmount() {
                eprintln!("LoopMount: {e:#}; detaching lazily");
                let _ = run(Command::new("umount").arg("-l").arg(&self.lower));
            }
            self.mounted = false;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// statfs(2)'s f_type for `path`.
pub fn statfs_type(path: &Path) -> Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statfs is a valid out buffer; c is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(s.f_type)
}
