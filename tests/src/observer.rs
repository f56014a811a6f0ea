//! Running the observer under test.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Reads `pipe` line by line on a thread of its own: each line is kept in
/// `text` and sent on `lines` (whose receiver may be gone: the text is kept
/// regardless), so a caller can wait for one line and still show it all.
pub fn tee_lines(
    pipe: impl std::io::Read + Send + 'static,
    text: std::sync::Arc<std::sync::Mutex<String>>,
    lines: std::sync::mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader};
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut s) = text.lock() {
                s.push_str(&line);
                s.push('\n');
            }
            let _ = lines.send(line);
        }
    })
}

/// A running `observer` with its stdout and stderr read by background threads
/// (so neither pipe can fill up and stall it). Dropping it SIGKILLs and reaps
/// the process if it was not waited for.
pub struct ObserverProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How an [`ObserverProcess`] ended.
#[derive(Debug)]
pub struct ObserverExit {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ObserverExit {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl ObserverProcess {
    /// Starts `bin` with `args`, stdin from /dev/null, stdout and stderr piped.
    pub fn spawn<I, S>(bin: &Path, args: I) -> Result<ObserverProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        use std::io::Read;
        use std::process::Stdio;
        use std::sync::{Arc, Mutex, mpsc};

        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // As from a terminal, whatever started the tests: a shell that ran
        // them in the background left SIGINT ignored, `observer run` passes
        // that on to its command, and a command that inherits it ignored
        // cannot trap it (the forwarding test's sh then never ends).
        // SAFETY: signal(2) is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                for sig in [libc::SIGINT, libc::SIGTERM] {
                    if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            readers.push(tee_lines(pipe, Arc::clone(&stderr), tx));
        }
        if let Some(mut pipe) = child.stdout.take() {
            let sink = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Ok(mut s) = sink.lock() {
                                s.extend_from_slice(&buf[..n]);
                            }
                        }
                    }
                }
            }));
        }
        Ok(ObserverProcess {
            child,
            lines,
            stderr,
            stdout,
            readers,
        })
    }

    /// [`spawn`](Self::spawn), then [`wait_ready`](Self::wait_ready).
    pub fn start<I, S>(bin: &Path, args: I, ready: Duration) -> Result<ObserverProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut p = ObserverProcess::spawn(bin, args)?;
        p.wait_ready(ready)?;
        Ok(p)
    }

    /// SIGINTs the observer (its normal way to stop) and waits up to
    /// `timeout` for it, as [`wait`](Self::wait) does.
    pub fn stop(self, timeout: Duration) -> Result<ObserverExit> {
        self.signal(libc::SIGINT)?;
        self.wait(timeout)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the `observer: ready:` line on stderr. Fails (with the
    /// stderr so far) on timeout or when the observer exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("observer: ready:") => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "observer not ready after {timeout:?}; stderr so far:\n{}",
                    self.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "observer closed stderr before it was ready (exit status {status:?}); \
                         stderr:\n{}",
                        self.stderr_so_far()
                    )
                }
            }
        }
    }

    /// Sends signal `sig` (e.g. `libc::SIGINT`) to the observer.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the child is not
        // reaped yet, so the pid still names it.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({pid}, {sig})"));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the observer to exit by itself (SIGKILLing it
    /// and failing after that), then collects its output.
    pub fn wait(mut self, timeout: Duration) -> Result<ObserverExit> {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for the observer")? {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "observer still running {timeout:?} later; killed it. stderr:\n{}",
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = self
            .stdout
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default();
        Ok(ObserverExit {
            status,
            stdout,
            stderr: self.stderr_so_far(),
        })
    }
}

impl Drop for ObserverProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
