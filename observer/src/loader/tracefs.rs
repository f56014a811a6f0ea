//! Tracepoint layouts as the running kernel describes them in tracefs, and
//! tracefs itself: found where the host mounted it, or mounted by the
//! observer in a mount namespace of its own when the host has none.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

const TRACING: &str = "/sys/kernel/tracing";
const DEBUG: &str = "/sys/kernel/debug";
const ROOTS: [&str; 2] = [TRACING, "/sys/kernel/debug/tracing"];

fn root() -> Option<PathBuf> {
    ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// What to go back to: the host's mount namespace, and this process's root
/// and working directory in it. setns(CLONE_NEWNS) resets both to the
/// namespace's own root, which in a chroot (a CI root, a container's
/// pivot) is not the process's: paths would then resolve outside it.
struct Host {
    ns: OwnedFd,
    root: OwnedFd,
    cwd: OwnedFd,
}

/// Where tracefs came from for this run.
pub struct Tracefs {
    pub root: PathBuf,
    /// Set when the observer mounted tracefs itself: the mount namespace it
    /// left, to go back to once the probes are attached.
    host_ns: Option<Host>,
    /// The observer mounted it (and says so at startup).
    mounted: bool,
}

impl Tracefs {
    /// Back to the host's mount namespace, once tracefs is no longer needed
    /// (attached tracepoints do not need it): paths in /proc/PID/maps are
    /// written relative to the reader's mounts, and the host's are the ones
    /// that name the files the user knows; the observer's `run` children
    /// make their mounts where the user sees them. The private namespace,
    /// and its tracefs, go with the last reference. A thread may join a
    /// mount namespace only while it shares its filesystem attributes with
    /// no other: call this before any thread exists.
    pub fn leave(&mut self) -> Result<()> {
        let Some(host) = self.host_ns.take() else {
            return Ok(());
        };
        let fail = |what: &str| {
            anyhow::anyhow!(
                "cannot return to the host's mount namespace: {what}: {}",
                std::io::Error::last_os_error()
            )
        };
        // SAFETY: setns, fchdir and chroot on descriptors we own.
        unsafe {
            if libc::setns(host.ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                return Err(fail("setns"));
            }
            if libc::fchdir(host.root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                return Err(fail("back to the root directory"));
            }
            if libc::fchdir(host.cwd.as_raw_fd()) != 0 {
                return Err(fail("back to the working directory"));
            }
        }
        Ok(())
    }

    /// The startup line, when there is something to say.
    pub fn note(&self) -> Option<String> {
        self.mounted.then(|| {
            format!(
                "tracefs was not mounted: mounted it at {} in a mount namespace of the observer's own, for as long as attaching took (the host's mounts are unchanged)",
                self.root.display()
            )
        })
    }
}

/// Makes tracefs readable for this process. A host that mounted it is used
/// as it is. Otherwise the calling thread moves to a new mount namespace
/// and mounts tracefs there, so the host's mount table never changes, not
/// even when the observer is killed: the namespace dies with it.
///
/// Mount namespaces belong to threads: call this before any thread exists,
/// so that every later thread inherits the namespace.
pub fn ensure() -> Result<Tracefs> {
    if let Some(root) = root() {
        return Ok(Tracefs {
            root,
            host_ns: None,
            mounted: false,
        });
    }
    let why = |what: &str| {
        format!(
            "tracefs is not mounted and the observer could not mount it in a namespace of its own: {what}"
        )
    };
    let dir = |path: &str| -> Result<OwnedFd> {
        Ok(File::open(path)
            .with_context(|| why(&format!("cannot open {path}")))?
            .into())
    };
    let host = Host {
        ns: dir("/proc/self/ns/mnt")?,
        root: dir("/")?,
        cwd: dir(".")?,
    };
    // SAFETY: plain syscalls on constant, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!(why(&format!(
                "unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    // Slave, not shared: the host's later mounts (a test suite's scratch
    // filesystems) still show up here for path lookups, while nothing
    // mounted here goes back to the host.
    make_slave().map_err(|e| anyhow::anyhow!(why(&e)))?;
    let mounted = if Path::new(TRACING).is_dir() {
        mount("tracefs", TRACING)
    } else {
        // Before 4.1 tracefs had no mount point of its own: debugfs mounts
        // it at tracing/ by itself.
        mount("debugfs", DEBUG)
    };
    if let Err(e) = mounted {
        bail!(why(&e));
    }
    match root() {
        Some(root) => Ok(Tracefs {
            root,
            host_ns: Some(host),
            mounted: true,
        }),
        None => bail!(why("mounted, but it shows no events/ directory")),
    }
}

/// Every mount of this namespace a slave: `/` recursively, or, in a chroot
/// whose root is no mount point (where that is EINVAL), each mount point
/// mountinfo lists.
fn make_slave() -> std::result::Result<(), String> {
    let slave = |path: &std::ffi::CStr, flags: libc::c_ulong| {
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                flags | libc::MS_SLAVE,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match slave(c"/", libc::MS_REC) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
            return Err(format!("making / a slave mount: {e}"));
        }
        Err(_) => {}
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    for point in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        let path = CString::new(unescape_octal(point)).map_err(|e| e.to_string())?;
        slave(&path, 0)
            .map_err(|e| format!("making {} a slave mount: {e}", path.to_string_lossy()))?;
    }
    Ok(())
}

/// mountinfo writes space, tab, newline and backslash as `\NNN`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount(fstype: &str, target: &str) -> std::result::Result<(), String> {
    let (fs, dir) = (
        CString::new(fstype).expect("no NUL"),
        CString::new(target).expect("no NUL"),
    );
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            dir.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount -t {fstype} {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether tracepoint `category:name` exists. The error says why it cannot
/// be told (tracefs not mounted) or that the kernel really lacks it.
pub fn check(category: &str, name: &str) -> Result<()> {
    let root = root().context(
        "tracefs is not mounted (mount -t tracefs none /sys/kernel/tracing), so no tracepoint can be found",
    )?;
    let dir = root.join("events").join(category).join(name);
    if !dir.is_dir() {
        bail!(
            "tracepoint {category}:{name} does not exist on this kernel (no {})",
            dir.display()
        );
    }
    Ok(())
}

/// A tracepoint's field layout: (name, offset, size) from its `format` file.
pub struct Format {
    fields: Vec<(String, u32, u32)>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Format> {
        check(category, name)?;
        let root = root().context("tracefs is not mounted")?;
        let path = root.join("events").join(category).join(name).join("format");
        Self::parse(&std::fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is missing ({})",
                path.display()
            )
        })?)
    }

    pub fn parse(text: &str) -> Result<Format> {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default().to_owned();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            if let (Some(o), Some(s)) = (offset, size) {
                fields.push((name, o, s));
            }
        }
        if fields.is_empty() {
            bail!("no fields in tracepoint format");
        }
        Ok(Format { fields })
    }

    /// Offset of `name`, checking its width matches what the program reads.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32> {
        let (_, off, sz) = self
            .fields
            .iter()
            .find(|(n, _, _)| n == name)
            .with_context(|| format!("tracepoint has no field {name}"))?;
        if *sz != size {
            bail!("tracepoint field {name} is {sz} bytes, expected {size}");
        }
        Ok(*off)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_octal("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_octal("/x\\134y"), "/x\\y");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal("/odd\\9"), "/odd\\9");
    }

    use super::*;

    const MAP_PAGES: &str = "name: mm_filemap_map_pages
ID: 598
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long i_ino;\toffset:8;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:16;\tsize:4;\tsigned:0;
\tfield:unsigned long index;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long last_index;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_field_offsets() {
        let f = Format::parse(MAP_PAGES).unwrap();
        assert_eq!(f.offset("i_ino", 8).unwrap(), 8);
        assert_eq!(f.offset("s_dev", 4).unwrap(), 16);
        assert_eq!(f.offset("last_index", 8).unwrap(), 32);
        assert!(f.offset("s_dev", 8).is_err());
        assert!(f.offset("nope", 8).is_err());
    }
}
