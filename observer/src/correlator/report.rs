//! Kernel reports (oops, warnings, bad-page dumps) joined to the windows
//! open on their file, and the per-test table the suite's markers fill.

use std::collections::HashMap;

use super::{Correlator, OpCounts, Severity, WindowInfo};
use crate::event::FileId;
use crate::kmsg::KernelReport;

/// A kernel report with the test running as it came and the windows open
/// on its file (on any file when it names none) in the preceding horizon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedReport {
    pub report: KernelReport,
    pub severity: Severity,
    pub test: Option<String>,
    pub windows: Vec<(FileId, WindowInfo)>,
}

/// Tests by name, in the order they began.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestTable {
    index: HashMap<String, usize>,
    rows: Vec<(String, TestStats)>,
}

impl TestTable {
    pub fn entry(&mut self, name: String) -> &mut TestStats {
        let next = self.rows.len();
        let i = *self.index.entry(name.clone()).or_insert(next);
        if i == next {
            self.rows.push((name, TestStats::default()));
        }
        &mut self.rows[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TestStats)> {
        self.rows.iter().map(|(n, t)| (n, t))
    }
}

/// What one test of the suite did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestStats {
    pub windows_by_op: OpCounts,
    /// By severity: info, warning, critical.
    pub alerts: [u64; 3],
    pub kernel_reports: u64,
}

impl Correlator {
    /// The kernel reports joined so far.
    pub fn take_reports(&mut self) -> Vec<JoinedReport> {
        std::mem::take(&mut self.reports)
    }

    /// A kernel report joins the windows open on its file at its time, by
    /// inode number (the page dump names no device), or on any file when it
    /// names none: open ones, and those closed within the retention before.
    pub(super) fn kernel_report(&mut self, report: KernelReport) {
        const MAX_WINDOWS: usize = 16;
        let ts = report.ts;
        let retain = self.retain_ns();
        let test = match self.report_open.take() {
            Some((_, test)) => test,
            None => self.current_test.clone(),
        };
        let mut windows = Vec::new();
        let mut files: Vec<&FileId> = self
            .files
            .keys()
            .filter(|f| report.ino.is_none_or(|ino| f.ino == ino))
            .collect();
        files.sort();
        for f in files {
            let fw = &self.files[f];
            for w in fw.active.iter().chain(fw.retained.iter()) {
                let near = w.closed_ts.is_none_or(|c| c.saturating_add(retain) >= ts);
                if w.opened_ts <= ts && near && windows.len() < MAX_WINDOWS {
                    windows.push((*f, w.info(ts)));
                }
            }
        }
        // A warning in mm/ or fs/ is often made on purpose (error injection);
        // one whose page dump names a file with a window open is not.
        let severity = if report.kind.is_critical() || (report.ino.is_some() && !windows.is_empty())
        {
            Severity::Critical
        } else {
            Severity::Warning
        };
        self.stats.kernel_reports += 1;
        if severity == Severity::Critical {
            self.stats.critical_reports += 1;
        }
        if let Some(t) = &test {
            self.stats.tests.entry(t.clone()).kernel_reports += 1;
        }
        self.reports.push(JoinedReport {
            report,
            severity,
            test,
            windows,
        });
    }
}
