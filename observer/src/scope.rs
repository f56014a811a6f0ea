//! `observer run --scope cmd`: which tasks count as the command's. With
//! cgroup2 the command runs in a cgroup of its own, and the kernel programs
//! compare each task's cgroup ancestor with it; without cgroup2 they follow
//! the process tree (sched_process_fork/exit) from the command itself.

use std::{
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// statfs magic of cgroup2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the cgroup2 hierarchy is mounted, from mountinfo text: the mount
/// point and the path of its root inside the hierarchy. The first cgroup2
/// mount wins.
pub fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        // "id parent maj:min root mountpoint opts [optional...] - fstype source superopts"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        Some((PathBuf::from(unescape(point)), unescape(root)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The level of a cgroup directory `rel` (relative to a mount whose root
/// is `root` in the hierarchy): the hierarchy's root is level 0.
pub fn level(root: &str, rel: &Path) -> u32 {
    let depth = |p: &Path| {
        p.components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .count() as u32
    };
    depth(Path::new(root)) + depth(rel)
}

/// The cgroup the command runs in.
pub struct CommandCgroup {
    pub dir: PathBuf,
    /// The cgroup id (its directory's inode number on cgroup2).
    pub id: u64,
    pub level: u32,
    /// `cgroup.procs` of the cgroup, opened for the child to write "0"
    /// into (moving itself) before it execs.
    procs: OwnedFd,
}

impl CommandCgroup {
    /// Creates `pcro-run-PID` at the top of the cgroup2 hierarchy. None:
    /// no cgroup2 is mounted.
    pub fn create() -> Result<Option<CommandCgroup>> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let Some((point, root)) = cgroup2_mount(&mountinfo) else {
            return Ok(None);
        };
        // A tmpfs at /sys/fs/cgroup (a v1/v2 hybrid) accepts mkdir too but
        // makes no cgroup: only the statfs magic tells.
        let c = CString::new(point.as_os_str().as_encoded_bytes()).context("mount point")?;
        // SAFETY: statfs fills the struct for a NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0
            || st.f_type as i64 != CGROUP2_SUPER_MAGIC
        {
            bail!("{} is listed as cgroup2 but is not one", point.display());
        }
        let name = format!("pcro-run-{}", std::process::id());
        let dir = point.join(&name);
        fs::create_dir(&dir).with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        let id = fs::metadata(&dir)
            .with_context(|| format!("cannot stat {}", dir.display()))?
            .ino();
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .with_context(|| format!("cannot open {}/cgroup.procs", dir.display()))?;
        Ok(Some(CommandCgroup {
            level: level(&root, Path::new(&name)),
            dir,
            id,
            procs: procs.into(),
        }))
    }

    /// The open `cgroup.procs`, for [`enter`] in the child.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Removes the cgroup; it fails while processes the command left
    /// behind are still in it.
    pub fn remove(self) -> Result<()> {
        fs::remove_dir(&self.dir)
            .with_context(|| format!("cannot remove cgroup {}", self.dir.display()))
    }
}

/// Moves the calling (child) process into the cgroup whose `cgroup.procs`
/// is open as `procs`. Async-signal-safe: for `pre_exec`.
pub fn enter(procs: RawFd) -> std::io::Result<()> {
    // "0" is the writing process itself.
    // SAFETY: a write of two bytes from a static buffer.
    let n = unsafe { libc::write(procs, b"0\n".as_ptr().cast(), 2) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_in_a_hybrid_mountinfo() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned()))
        );
        let v1_only = HYBRID.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(cgroup2_mount(&v1_only), None);
        let unified =
            "29 23 0:26 /user.slice /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some((PathBuf::from("/sys/fs/cgroup"), "/user.slice".to_owned()))
        );
        let escaped = "1 2 0:3 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(escaped).unwrap().0,
            PathBuf::from("/mnt/my cg")
        );
    }

    #[test]
    fn levels_count_from_the_hierarchy_root() {
        assert_eq!(level("/", Path::new("pcro-run-1")), 1);
        assert_eq!(level("/user.slice", Path::new("pcro-run-1")), 2);
    }
}
