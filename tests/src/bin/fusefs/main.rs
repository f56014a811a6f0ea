//! fusefs: the project's own FUSE server, so the tests can race on fuse.
//!
//! It opens /dev/fuse, mounts itself at `--mountpoint` with mount(2)
//! (type `fuse.pcro`), and serves a flat directory of regular files backed
//! by the files of `--backing` (a directory on a real filesystem). The
//! protocol is handled here, from the kernel's include/uapi/linux/fuse.h
//! (`proto`); the files are in `fs`. Files are opened without
//! FOPEN_DIRECT_IO, so reads and shared mappings go through the kernel's
//! page cache (fault-around, filemap_map_pages, runs on them), and
//! FALLOCATE passes its mode to fallocate(2) on the backing file.
//!
//! One thread serves one request at a time. It prints `fusefs: mounted
//! MNT` on stdout once mounted, and exits 0 when the filesystem is
//! unmounted (read(2) on /dev/fuse fails with ENODEV) or, on SIGTERM or
//! SIGINT, after it has detached the mount itself (umount2 MNT_DETACH) and
//! the kernel has let the connection go.

mod fs;
mod proto;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Parser;

use proto::{InHeader, InitIn, InitOut, OutHeader, Pod};

/// A FUSE server of a flat directory of files backed by another directory.
#[derive(Debug, Parser)]
#[command(name = "fusefs", version)]
struct Args {
    /// Directory whose regular files the mount shows.
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount (an existing directory).
    #[arg(long)]
    mountpoint: PathBuf,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_sig: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", p.display()))
}

fn mount(dev: &File, mountpoint: &Path) -> Result<()> {
    let target = cstr(mountpoint)?;
    let opts = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        dev.as_raw_fd()
    ))?;
    // SAFETY: NUL-terminated strings; data is the fuse option string.
    let r = unsafe {
        libc::mount(
            c"pcro".as_ptr(),
            target.as_ptr(),
            c"fuse.pcro".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mount fuse.pcro on {}", mountpoint.display()));
    }
    Ok(())
}

fn reply(dev: &File, unique: u64, r: fs::Reply) {
    let (error, body) = match r {
        Ok(b) => (0, b),
        Err(e) => (-e, Vec::new()),
    };
    let h = OutHeader {
        len: (size_of::<OutHeader>() + body.len()) as u32,
        error,
        unique,
    };
    let mut msg = h.bytes().to_vec();
    msg.extend_from_slice(&body);
    // ENOENT: the request was interrupted and is gone; nothing to do.
    let _ = (&*dev).write(&msg);
}

fn init(body: &[u8]) -> fs::Reply {
    let (i, _) = proto::take::<InitIn>(body).ok_or(libc::EINVAL)?;
    if i.major != proto::KERNEL_VERSION {
        return Err(libc::EPROTO);
    }
    let out = InitOut {
        major: proto::KERNEL_VERSION,
        minor: proto::KERNEL_MINOR.min(i.minor),
        max_readahead: i.max_readahead,
        flags: i.flags & (proto::ASYNC_READ | proto::BIG_WRITES),
        max_background: 16,
        congestion_threshold: 12,
        max_write: proto::MAX_WRITE,
        time_gran: 1,
        ..Default::default()
    };
    Ok(out.bytes().to_vec())
}

/// Waits for a request; false when it is time to check STOP again.
fn readable(dev: &File) -> bool {
    let mut p = libc::pollfd {
        fd: dev.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 200) > 0 }
}

fn serve(dev: &File, mountpoint: &Path, fs: &mut fs::Fs) -> Result<()> {
    let mut buf = vec![0u8; proto::BUFFER_SIZE];
    let mut detached = false;
    loop {
        if STOP.load(Ordering::Relaxed) && !detached {
            let target = cstr(mountpoint)?;
            // SAFETY: NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } < 0 {
                let e = io::Error::last_os_error();
                // Already unmounted by someone else: ENODEV follows.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e).context("umount2 MNT_DETACH");
                }
            }
            detached = true;
        }
        if !readable(dev) {
            continue;
        }
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Unmounted (or the connection aborted): done.
                Some(libc::ENODEV) => return Ok(()),
                // Interrupted, or a request that went away before we read it.
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                _ => return Err(e).context("read /dev/fuse"),
            },
        };
        let Some((h, _)) = proto::take::<InHeader>(&buf[..n]) else {
            bail!("short request ({n} bytes)");
        };
        let body = &buf[size_of::<InHeader>()..(h.len as usize).min(n)];
        let r = match h.opcode {
            proto::INIT => Some(init(body)),
            _ => fs.dispatch(&h, body),
        };
        if let Some(r) = r {
            reply(dev, h.unique, r);
        }
    }
}

fn run(args: Args) -> Result<()> {
    let backing = std::fs::canonicalize(&args.backing)
        .with_context(|| format!("backing directory {}", args.backing.display()))?;
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    // SAFETY: a handler that only stores an atomic; no SA_RESTART, so a
    // blocked poll returns.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop as *const () as usize;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error()).context("sigaction");
            }
        }
    }
    let dev = File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("open /dev/fuse")?;
    mount(&dev, &mountpoint)?;
    println!("fusefs: mounted {}", mountpoint.display());
    io::stdout().flush()?;
    let mut fs = fs::Fs::new(backing);
    serve(&dev, &mountpoint, &mut fs)
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusefs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
