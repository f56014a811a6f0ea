//! Progress of a long run (the matrix, the benchmark), shown the way cargo
//! shows a build: on a terminal, one status line redrawn in place under the
//! messages; elsewhere (a CI log, a file), a plain line for every finished
//! step.

use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// The status line while a [`Progress`] lives.
static BAR: Mutex<Option<Bar>> = Mutex::new(None);

struct Bar {
    total: usize,
    done: usize,
    started: Instant,
    /// The step under way, or the last one finished.
    label: String,
    /// Whether `label` is under way.
    running: bool,
    /// stderr is a terminal: redraw in place.
    tty: bool,
}

fn bar() -> MutexGuard<'static, Option<Bar>> {
    BAR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The steps of one long run. Only one at a time; dropping it clears the
/// status line.
pub struct Progress(());

impl Progress {
    pub fn start(total: usize) -> Progress {
        // SAFETY: isatty has no preconditions.
        let tty = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
        *bar() = Some(Bar {
            total,
            done: 0,
            started: Instant::now(),
            label: String::new(),
            running: false,
            tty,
        });
        Progress(())
    }

    /// The step `label` is under way (shown on a terminal only).
    pub fn working_on(&self, label: &str) {
        if let Some(b) = bar().as_mut() {
            b.label = label.to_string();
            b.running = true;
            b.redraw();
        }
    }

    /// The step `label` is done.
    pub fn finished(&self, label: &str) {
        if let Some(b) = bar().as_mut() {
            b.done += 1;
            b.label = label.to_string();
            b.running = false;
            if b.tty {
                b.redraw();
            } else {
                eprintln!("[xtask] {}", b.status());
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = bar().take()
            && b.tty
        {
            eprint!("\r\x1b[K");
        }
    }
}

impl Bar {
    fn status(&self) -> String {
        let elapsed = self.started.elapsed();
        let mut s = if self.running {
            format!("step {} of {}: {}", self.done + 1, self.total, self.label)
        } else {
            format!("step {} of {} done: {}", self.done, self.total, self.label)
        };
        let _ = write!(s, "; {} elapsed", clock(elapsed));
        if self.done > 0 && self.done < self.total {
            let left = elapsed.mul_f64((self.total - self.done) as f64 / self.done as f64);
            let _ = write!(s, ", about {} left", clock(left));
        }
        s
    }

    fn redraw(&self) {
        if !self.tty {
            return;
        }
        // A line wider than the terminal would wrap, and \r would then
        // redraw only its last row.
        let width = terminal_width().saturating_sub(1);
        let line: String = format!("[xtask] {}", self.status())
            .chars()
            .take(width)
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }
}

/// Prints a message line; on a terminal, above the status line.
pub fn print(line: &str) {
    let guard = bar();
    match guard.as_ref() {
        Some(b) if b.tty => {
            eprint!("\r\x1b[K{line}\n");
            b.redraw();
        }
        _ => eprintln!("{line}"),
    }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ writes a winsize into the zeroed struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe {
        libc::ioctl(
            libc::STDERR_FILENO,
            libc::TIOCGWINSZ,
            &mut ws as *mut libc::winsize,
        )
    } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// 75 s as "1m15s", 9 s as "9s".
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_and_estimates() {
        let b = Bar {
            total: 4,
            done: 1,
            started: Instant::now() - Duration::from_secs(30),
            label: "host xfs.punch".into(),
            running: false,
            tty: false,
        };
        let s = b.status();
        assert!(
            s.starts_with("step 1 of 4 done: host xfs.punch; 30s elapsed"),
            "{s}"
        );
        assert!(s.ends_with("about 1m30s left"), "{s}");
        let b = Bar {
            label: "host xfs.zero".into(),
            running: true,
            ..b
        };
        let s = b.status();
        assert!(s.starts_with("step 2 of 4: host xfs.zero; 30s"), "{s}");
        assert_eq!(clock(Duration::from_secs(75)), "1m15s");
    }
}
