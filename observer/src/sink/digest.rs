//! The default text stream, readable through a three-hour test run: every
//! critical alert on its own line, never held back; warnings one line each
//! but at most [`LINES_PER_S`] a second; information one line per window
//! that had PTEs installed in it, at the same rate; and every
//! [`ROLLUP_NS`] a line that says how many were held back. Apart from
//! critical lines the stream keeps to [`observer_report::text`]'s rates.
//! Time is event time, so a replay digests alike.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::text::{duration, printable};
use super::{UtcTime, unix_ns};
use crate::correlator::{Alert, Finding, Severity};
use crate::event::{FileId, Op, PageRange};

use observer_report::text::{BURST, LINES_PER_S, ROLLUP_NS};

const NS: u64 = 1_000_000_000;

/// A token bucket over event time.
#[derive(Debug)]
struct Rate {
    tokens: u64,
    /// Event time up to which tokens were added.
    at: u64,
}

impl Rate {
    fn new() -> Rate {
        Rate {
            tokens: BURST,
            at: 0,
        }
    }

    fn take(&mut self, ts: u64) -> bool {
        if self.at == 0 {
            self.at = ts;
        }
        let earned = ts.saturating_sub(self.at) * LINES_PER_S / NS;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(BURST);
            self.at = ts;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The information alerts of one window, gathered into one line.
#[derive(Debug)]
struct WindowLine {
    id: u64,
    ts: u64,
    file: FileId,
    path: Option<String>,
    op: Op,
    pages: PageRange,
    test: Option<String>,
    calls: u64,
    /// Page-exact counts, when the kernel gives them.
    installed: Option<u64>,
    rezapped: u64,
    still_mapped: u64,
}

/// What the digest holds between alerts.
#[derive(Debug)]
pub struct Digest {
    boot_to_realtime_ns: i64,
    current: Option<WindowLine>,
    windows: Rate,
    warnings: Rate,
    held_windows: u64,
    held_files: BTreeSet<FileId>,
    held_warnings: u64,
    last_rollup: u64,
}

impl Digest {
    pub fn new(boot_to_realtime_ns: i64) -> Digest {
        Digest {
            boot_to_realtime_ns,
            current: None,
            windows: Rate::new(),
            warnings: Rate::new(),
            held_windows: 0,
            held_files: BTreeSet::new(),
            held_warnings: 0,
            last_rollup: 0,
        }
    }

    fn when(&self, ts: u64) -> String {
        UtcTime::from_unix_ns(unix_ns(ts, self.boot_to_realtime_ns)).time_of_day_us()
    }

    /// Takes an alert that is not critical (those go straight out); appends
    /// the lines due now. `line` renders the alert on its own (warnings).
    pub fn alert(&mut self, a: &Alert, path: Option<&str>, line: String, out: &mut Vec<String>) {
        let window = a.window.as_ref().map(|w| w.id);
        if self.current.as_ref().is_some_and(|c| Some(c.id) != window) {
            self.flush_window(out);
        }
        match a.severity {
            Severity::Warning => {
                if self.warnings.take(a.ts) {
                    out.push(line);
                } else {
                    self.held_warnings += 1;
                }
            }
            _ => self.gather(a, path),
        }
        self.rollup(a.ts, out);
    }

    fn gather(&mut self, a: &Alert, path: Option<&str>) {
        // Windowless alerts (beyond_eof) are critical and never gathered.
        let Some(w) = &a.window else {
            return;
        };
        let ptes = match a.finding {
            Finding::PteInPunchWindow { ptes, .. } => ptes,
            _ => None,
        };
        let c = self.current.get_or_insert_with(|| WindowLine {
            id: w.id,
            ts: a.ts,
            file: a.file,
            path: path.map(str::to_owned),
            op: w.op,
            pages: w.pages,
            test: w.test.clone(),
            calls: 0,
            installed: None,
            rezapped: 0,
            still_mapped: 0,
        });
        c.calls += 1;
        if c.path.is_none() {
            c.path = path.map(str::to_owned);
        }
        if let Some(p) = ptes {
            *c.installed.get_or_insert(0) += p.installed;
            c.rezapped += p.rezapped;
            c.still_mapped += p.still_mapped;
        }
    }

    /// The window being gathered is complete (another one's alerts came,
    /// or the stream ends).
    pub fn flush_window(&mut self, out: &mut Vec<String>) {
        let Some(c) = self.current.take() else { return };
        if !self.windows.take(c.ts) {
            self.held_windows += 1;
            self.held_files.insert(c.file);
            return;
        }
        let mut s = format!(
            "{} WINDOW {} dev {}:{} ino {}",
            self.when(c.ts),
            c.op.as_str(),
            c.file.major(),
            c.file.minor(),
            c.file.ino
        );
        if let Some(p) = &c.path {
            let _ = write!(s, " {}", printable(p));
        }
        let _ = write!(s, " pages {}", c.pages);
        if let Some(t) = &c.test {
            let _ = write!(s, " [{}]", printable(t));
        }
        let calls = if c.calls == 1 { "call" } else { "calls" };
        let _ = write!(s, ": {} fault-around {calls} in it", c.calls);
        match c.installed {
            None => s.push_str(" (PTE outcomes not observable here)"),
            Some(n) if n == c.rezapped => {
                let _ = write!(s, ", {n} PTEs, all zapped again");
            }
            Some(n) => {
                let _ = write!(
                    s,
                    ", {n} PTEs: {} zapped again, {} still mapped (edge pages, large folios)",
                    c.rezapped, c.still_mapped
                );
            }
        }
        s.push_str(" | info");
        out.push(s);
    }

    /// Every ROLLUP_NS of event time, what was held back.
    fn rollup(&mut self, ts: u64, out: &mut Vec<String>) {
        if self.last_rollup == 0 {
            self.last_rollup = ts;
        }
        if ts.saturating_sub(self.last_rollup) < ROLLUP_NS {
            return;
        }
        self.last_rollup = ts;
        self.held(ts, out);
    }

    fn held(&mut self, ts: u64, out: &mut Vec<String>) {
        if self.held_windows == 0 && self.held_warnings == 0 {
            return;
        }
        let mut parts = Vec::new();
        if self.held_windows > 0 {
            parts.push(format!(
                "{} more windows like this on {} {}",
                self.held_windows,
                self.held_files.len(),
                if self.held_files.len() == 1 {
                    "file"
                } else {
                    "files"
                }
            ));
        }
        if self.held_warnings > 0 {
            parts.push(format!("{} more warnings", self.held_warnings));
        }
        out.push(format!(
            "{} ... {} (at most {LINES_PER_S} line/s each; --json or --per-call keep every one, \
             the summary counts them; last {})",
            self.when(ts),
            parts.join(", "),
            duration(ROLLUP_NS)
        ));
        self.held_windows = 0;
        self.held_files.clear();
        self.held_warnings = 0;
    }

    /// End of the stream: the last window, and what was held back.
    pub fn finish(&mut self, ts: u64, out: &mut Vec<String>) {
        self.flush_window(out);
        self.held(ts, out);
    }
}
