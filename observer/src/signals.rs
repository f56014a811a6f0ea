//! SIGINT and SIGTERM, read from a signalfd so that each arrives with its
//! sender: `observer run` forwards a signal to its command only when the
//! command did not get it already (the terminal sends Ctrl-C to the whole
//! foreground process group, command included).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

/// One received signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub signo: i32,
    /// Sent by the kernel on behalf of a terminal (Ctrl-C, hang-up), which
    /// signals the whole foreground process group at once.
    pub from_terminal: bool,
}

pub struct Signals {
    fd: AsyncFd<OwnedFd>,
}

/// SIGINT and SIGTERM blocked, queuing for this signalfd.
pub struct Blocked(OwnedFd);

/// The signals the observer handles.
fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialize the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

impl Signals {
    /// Blocks SIGINT and SIGTERM for this thread, so they queue for the
    /// signalfd instead of killing the process. Call it before any other
    /// thread exists: threads inherit the mask.
    pub fn block() -> Result<Blocked> {
        let set = set();
        // SAFETY: plain syscalls on a valid set.
        let fd = unsafe {
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()).context("cannot block SIGINT/SIGTERM");
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("signalfd");
            }
            OwnedFd::from_raw_fd(fd)
        };
        Ok(Blocked(fd))
    }

    /// Polls the signalfd on the current runtime.
    pub fn new(blocked: Blocked) -> Result<Signals> {
        // SAFETY: the AsyncFd owns the signalfd, so it outlives the
        // registration.
        let fd = unsafe { AsyncFd::register(blocked.0) }
            .map_err(|e| anyhow::anyhow!("cannot poll the signalfd: {e}"))?;
        Ok(Signals { fd })
    }

    pub async fn next(&mut self) -> Result<Signal> {
        loop {
            let mut guard = self.fd.readable().await?;
            // SAFETY: a signalfd read fills whole signalfd_siginfo records.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&raw mut info).cast(),
                    size_of::<libc::signalfd_siginfo>(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(e).context("reading the signalfd");
            }
            return Ok(Signal {
                signo: info.ssi_signo as i32,
                from_terminal: info.ssi_code == libc::SI_KERNEL,
            });
        }
    }
}

/// Restores the default signal mask in a child before it execs (the mask
/// survives exec). Async-signal-safe: for `pre_exec`.
pub fn unblock_in_child() -> io::Result<()> {
    let set = set();
    // SAFETY: sigprocmask on a valid set.
    if unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
