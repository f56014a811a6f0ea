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

/// Where tracefs came from for this run.
pub struct Tracefs {
    pub root: PathBuf,
    /// Set when the observer mounted tracefs itself: the mount namespace it
    /// left, to go back to once the probes are attached.
    host_ns: Option<OwnedFd>,
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
        let Some(ns) = self.host_ns.take() else {
            return Ok(());
        };
        // SAFETY: setns on a namespace fd we own.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            bail!(
                "cannot return to the host's mount namespace: {}",
                std::io::Error::last_os_error()
            );
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
    let host_ns: OwnedFd = File::open("/proc/self/ns/mnt")
        .with_context(|| why("cannot open /proc/self/ns/mnt"))?
        .into();
    // SAFETY: plain syscalls on constant, NUL-terminated arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            bail!(why(&format!(
                "unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            )));
        }
        // Slave, not shared: the host's later mounts (a test suite's scratch
        // filesystems) still show up here for path lookups, while nothing
        // mounted here goes back to the host.
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            bail!(why(&format!(
                "making / a slave mount: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
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
            host_ns: Some(host_ns),
            mounted: true,
        }),
        None => bail!(why("mounted, but it shows no events/ directory")),
    }
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
