//! The benchmark's peer: the project's own bpftrace script (peer.bt), what a
//! kernel developer would write by hand instead of running the observer.
//!
//! bpftrace reads tracepoint formats from tracefs, which a fresh host does
//! not mount; as the observer does, it gets a mount namespace of its own
//! with tracefs in it, so the host's mounts never change. `unshare` and `sh`
//! exec into bpftrace, so the process started is the one that holds the
//! programs (its fdinfo is what the bpf_stats rounds read).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The script; its BEGIN prints `ready` once every probe is attached.
pub(super) const SCRIPT: &str = include_str!("peer.bt");

pub(super) struct Peer {
    child: Child,
    stdout: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
    stderr_file: PathBuf,
}

impl Peer {
    /// Starts bpftrace on `script` and waits for its ready line.
    pub(super) fn start(script: &Path, stderr_file: &Path, timeout: Duration) -> Result<Self> {
        let stderr = std::fs::File::create(stderr_file)
            .with_context(|| format!("cannot create {}", stderr_file.display()))?;
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; \
                 exec bpftrace -B line \"$0\"",
            )
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start bpftrace (`cargo xtask setup` installs it)")?;
        let pipe = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let reader = observer_tests::tee_lines(pipe, Arc::clone(&stdout), tx);
        let mut peer = Self {
            child,
            stdout,
            reader: Some(reader),
            stderr_file: stderr_file.to_owned(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.trim() == "ready" => return Ok(peer),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("bpftrace not ready after {timeout:?}: {}", peer.stderr())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = peer.child.wait().ok();
                    bail!(
                        "bpftrace exited before it was ready ({status:?}): {}",
                        peer.stderr()
                    )
                }
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n  ")
    }

    /// SIGINTs bpftrace (its END prints the maps) and returns the
    /// fault-around calls it counted inside a window.
    pub(super) fn stop(mut self, timeout: Duration) -> Result<u64> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet, so the pid still names it.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("bpftrace still running {timeout:?} after SIGINT; killed it");
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if !status.success() {
            bail!("bpftrace failed ({status}): {}", self.stderr());
        }
        let out = self.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(in_window(&out))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sum of the script's `@in_window[dev, ino]: N` lines.
pub(super) fn in_window(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.starts_with("@in_window["))
        .filter_map(|l| l.rsplit_once(':')?.1.trim().parse::<u64>().ok())
        .sum()
}
