//! Correlates invalidation windows with fault-around calls, per file.
//!
//! Pure: the only clock is event time (plus whatever the caller vouches for
//! through [`Correlator::advance`]), so a recorded stream always replays to the
//! same alerts.
//!
//! An invalidation *window* is one operation of one task on one file: the
//! unmap → truncate (→ unmap) calls of a hole punch or truncate, glued together
//! when the same task re-enters within `op_gap_ns`, and cut at the end of the
//! task's syscall when syscall records are available. A fault-around
//! (`filemap_map_pages`) whose run overlaps a window in time and pages is
//! reported once the window final-closes, so that the alert can say how many
//! of the mapped folios were then deleted.
//!
//! Two race classes are evaluated on top, each with its own alert:
//! - **A, page-exact** ([`pte`]): PTE installer records inside a window are
//!   kept page by page until the window final-closes; a later removal of the
//!   folio with a PTE still on it raises `stale_pte`.
//! - **B, refill inside a punch** ([`refill`]): page-cache adds between the
//!   punching task's truncate and its filesystem's block removal exit; one read
//!   from disk that survives the punch raises `stale_data`.

mod alert;
mod classes;
mod pte;
mod refill;
mod reorder;
mod window;

#[cfg(test)]
mod tests;

pub use alert::{Alert, AlertKind, Evidence, Finding, PteCounts, Severity, StackIds, WindowInfo};
pub use classes::{ClassA, ClassB, Classes, OpCounts};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::event::{
    Body, Event, Fidelity, FileId, FsRemover, InvalidateLock, Invalidator, Op, PageRange, Task,
};
use crate::kmsg::KernelReport;
use pte::{Install, Removal, intersect, walked};
use refill::{Refill, RefillWindow};
use reorder::ReorderBuffer;
use window::{FileWindows, PendingAlert, Window};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How far behind the newest event a CPU's records may still arrive.
    pub reorder_horizon_ns: u64,
    /// Longest pause between the calls of one operation (unmap → truncate).
    pub op_gap_ns: u64,
    /// How long a final-closed window still matches fault-arounds that
    /// entered before its close. Never shorter than `op_gap_ns`.
    pub retain_ns: u64,
    /// No function probes: invalidating syscalls themselves are the windows.
    pub syscall_windows: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reorder_horizon_ns: 50_000_000,
            op_gap_ns: 2_000_000,
            retain_ns: 500_000_000,
            syscall_windows: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events taken, in any order.
    pub events: u64,
    pub windows_opened: u64,
    /// Final-closed windows.
    pub windows_closed: u64,
    /// Alerts emitted so far (pending ones are not counted until emitted).
    pub alerts: u64,
    /// Events older than what had already been processed: their correlation
    /// is best effort (e.g. a window may have final-closed without them).
    pub late_events: u64,
    /// Windows open or tentatively closed right now.
    pub open_windows: u64,
    pub max_open_windows: u64,
    /// Class A and B outcomes, counted as their windows end.
    pub classes: Classes,
    /// Final-closed windows by operation.
    pub windows_by_op: OpCounts,
    /// Alerts by severity: info, warning, critical.
    pub alerts_by_severity: [u64; 3],
    /// Alerts by kind (`AlertKind as usize`), then severity.
    pub alerts_by_kind: [[u64; 3]; 3],
    /// Kernel reports of this bug class.
    pub kernel_reports: u64,
    /// Critical kernel reports.
    pub critical_reports: u64,
    /// Per test of the suite, in the order the tests began (kernel-log
    /// markers).
    pub tests: TestTable,
    /// Invalidating syscalls that failed and removed nothing: not windows.
    pub failed_calls: OpCounts,
}

/// The syscall a task is inside, and the windows it opened or resumed there.
struct Syscall {
    op: Op,
    /// Tracepoint mode, a syscall that named no file (truncate(2),
    /// madvise): the range its window takes once a removal names the file.
    unnamed: Option<PageRange>,
    windows: Vec<(FileId, u64)>,
    /// Files on which the task has a class-B window in this syscall.
    refill_files: Vec<FileId>,
}

pub struct Correlator {
    cfg: Config,
    reorder: ReorderBuffer,
    /// Event time processed so far; never moves backwards.
    clock: u64,
    files: HashMap<FileId, FileWindows>,
    /// Tentative closes, by the instant after which they become final:
    /// (close + op gap, file, window id). Stale entries are skipped.
    close_deadlines: BinaryHeap<Reverse<(u64, FileId, u64)>>,
    /// Final closes in order, to drop retained windows without scanning.
    expiries: VecDeque<(u64, FileId)>,
    syscalls: HashMap<u32, Syscall>,
    next_window_id: u64,
    /// Whether any folio deletion was seen, i.e. whether outcomes mean anything.
    folio_source: bool,
    /// Whether any PTE installer record was seen: page-exact counts for
    /// fault-around alerts.
    pte_source: bool,
    /// The suite's test running now (kernel-log markers).
    current_test: Option<String>,
    /// Kernel reports joined to their windows, for the pipeline to take.
    reports: Vec<JoinedReport>,
    /// A kernel report is being read (its header's time and the test then):
    /// retained windows are kept until it is whole and joins them.
    report_open: Option<(u64, Option<String>)>,
    stats: Stats,
}

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
    pub fn new(cfg: Config) -> Self {
        Correlator {
            reorder: ReorderBuffer::new(cfg.reorder_horizon_ns),
            cfg,
            clock: 0,
            files: HashMap::new(),
            close_deadlines: BinaryHeap::new(),
            expiries: VecDeque::new(),
            syscalls: HashMap::new(),
            next_window_id: 1,
            folio_source: false,
            pte_source: false,
            current_test: None,
            report_open: None,
            reports: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The folio-deletion source is attached: outcomes are counts from the
    /// start, instead of unknown until the first deletion shows up.
    pub fn expect_folio_deletes(&mut self) {
        self.folio_source = true;
    }

    /// The PTE installer probe is attached: fault-around alerts carry
    /// page-exact counts from the start (zeros included).
    pub fn expect_pte_installs(&mut self) {
        self.pte_source = true;
    }

    /// Events held back for reordering.
    pub fn buffered(&self) -> usize {
        self.reorder.len()
    }

    /// Takes one event in any order; appends alerts whose windows final-closed.
    pub fn push(&mut self, ev: Event, out: &mut Vec<Alert>) {
        self.stats.events += 1;
        self.reorder.push(ev);
        self.drain_settled(out);
    }

    /// The caller vouches that CLOCK_MONOTONIC reached `now_ts`: without it a
    /// quiet stream would hold the last windows, and their alerts, forever.
    /// Events that later arrive older than `now_ts - reorder_horizon_ns` are late.
    pub fn advance(&mut self, now_ts: u64, out: &mut Vec<Alert>) {
        self.reorder.observe(now_ts);
        self.drain_settled(out);
        let settled = self.reorder.settled_until();
        self.tick(settled, out);
    }

    /// End of stream: processes everything held and final-closes every window,
    /// still-open ones with `closed_ts: None`.
    pub fn flush(&mut self, out: &mut Vec<Alert>) {
        while let Some(ev) = self.reorder.pop_any() {
            self.process(ev, out);
        }
        let mut active: Vec<(u64, FileId)> = self
            .files
            .iter()
            .flat_map(|(file, fw)| fw.active.iter().map(move |w| (w.id, *file)))
            .collect();
        active.sort_unstable();
        for (id, file) in active {
            self.final_close(file, id, out);
        }
        // Syscalls that never returned: their class-B windows end here.
        let mut tids: Vec<u32> = self.syscalls.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some(sc) = self.syscalls.remove(&tid) {
                self.end_refills(tid, &sc, out);
            }
        }
        self.files.clear();
        self.close_deadlines.clear();
        self.expiries.clear();
        self.syscalls.clear();
    }

    fn drain_settled(&mut self, out: &mut Vec<Alert>) {
        while let Some(ev) = self.reorder.pop_settled() {
            self.process(ev, out);
        }
    }

    /// Event time processed so far.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    fn retain_ns(&self) -> u64 {
        self.cfg.retain_ns.max(self.cfg.op_gap_ns)
    }

    /// Moves event time forward: final-closes windows whose op gap elapsed
    /// and forgets retained windows nothing can match any more.
    fn tick(&mut self, now: u64, out: &mut Vec<Alert>) {
        self.clock = self.clock.max(now);
        let gap = self.cfg.op_gap_ns;
        while let Some(&Reverse((deadline, file, id))) = self.close_deadlines.peek() {
            // Strictly after: a re-entry exactly op_gap after the close resumes.
            if deadline >= self.clock {
                break;
            }
            self.close_deadlines.pop();
            let still_due = self
                .window(file, id)
                .and_then(|w| w.closed_ts)
                .is_some_and(|closed| closed.saturating_add(gap) == deadline);
            if still_due {
                self.final_close(file, id, out);
            }
        }
        let retain = self.retain_ns();
        while let Some(&(final_ts, file)) = self.expiries.front() {
            if self.report_open.is_some() {
                break;
            }
            if final_ts.saturating_add(retain) >= self.clock {
                break;
            }
            self.expiries.pop_front();
            let Some(fw) = self.files.get_mut(&file) else {
                continue;
            };
            let clock = self.clock;
            while fw
                .retained
                .front()
                .is_some_and(|w| w.final_ts.unwrap_or(0).saturating_add(retain) < clock)
            {
                fw.retained.pop_front();
            }
            if fw.is_empty() {
                self.files.remove(&file);
            }
        }
    }

    fn process(&mut self, ev: Event, out: &mut Vec<Alert>) {
        if ev.ts < self.clock && !ev.body.is_log() {
            self.stats.late_events += 1;
        }
        self.tick(ev.ts, out);
        let Event {
            ts,
            stack_id,
            file,
            task,
            fidelity,
            body,
        } = ev;
        match body {
            Body::InvalidateEnter { which, range, lock } => {
                self.invalidate_enter(ts, file, task, fidelity, which, lock, range, stack_id, out)
            }
            Body::InvalidateExit { which, range } => {
                self.invalidate_exit(ts, file, task.tid, fidelity, which, range, stack_id)
            }
            Body::MapPages { entry_ts, range } => {
                let fault = PendingAlert {
                    ts,
                    map_entry_ts: entry_ts.min(ts),
                    task,
                    pages: range,
                    map_fidelity: fidelity,
                    folios_removed: 0,
                    stack_id,
                };
                self.fault_around(file, fault, out)
            }
            Body::SyscallEnter { op, range } => {
                self.syscall_enter(ts, file, task, fidelity, op, range, out)
            }
            Body::SyscallExit { ret, .. } => self.syscall_exit(ts, task.tid, ret, out),
            Body::FolioDelete {
                index,
                pages,
                pfn,
                still_mapped,
            } => {
                self.adopt_syscall_file(ts, file, &task, fidelity);
                if pages > 1 {
                    self.files.entry(file).or_default().large_folios = true;
                }
                self.folio_delete(ts, file, task.tid, index, pfn, still_mapped)
            }
            Body::TestStart { name } => {
                self.stats.tests.entry(name.clone());
                self.current_test = Some(name);
            }
            Body::ReportBegins => {
                self.report_open
                    .get_or_insert((ts, self.current_test.clone()));
            }
            Body::KernelReport(report) => self.kernel_report(report),
            Body::PteInstall { range } => {
                let install = Install {
                    ts,
                    task,
                    stack_id,
                    fidelity,
                    in_gap: false,
                };
                self.pte_install(file, install, range)
            }
            Body::FolioAdd {
                range,
                uptodate,
                lock,
            } => {
                let refill = Refill {
                    ts,
                    task,
                    range,
                    uptodate,
                    lock,
                    stack_id,
                    fidelity,
                    folio_deleted: None,
                    pages_deleted: Vec::new(),
                };
                self.folio_add(file, refill)
            }
            Body::FsRemoveEnter { fs, lock } => {
                self.fs_remove(ts, file, task.tid, fidelity, fs, stack_id, Some(lock))
            }
            Body::FsRemoveExit { fs } => {
                self.fs_remove(ts, file, task.tid, fidelity, fs, stack_id, None)
            }
        }
    }

    fn window(&self, file: FileId, id: u64) -> Option<&Window> {
        self.files.get(&file)?.active.iter().find(|w| w.id == id)
    }

    fn window_mut(&mut self, file: FileId, id: u64) -> Option<&mut Window> {
        self.files
            .get_mut(&file)?
            .active
            .iter_mut()
            .find(|w| w.id == id)
    }

    /// The op of the invalidating syscall `tid` is inside, if any.
    fn syscall_op(&self, tid: u32) -> Op {
        self.syscalls
            .get(&tid)
            .map(|s| s.op)
            .filter(|op| op.invalidates())
            .unwrap_or(Op::Unknown)
    }

    fn note_in_syscall(&mut self, tid: u32, file: FileId, id: u64) {
        if let Some(sc) = self.syscalls.get_mut(&tid)
            && !sc.windows.contains(&(file, id))
        {
            sc.windows.push((file, id));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open_window(
        &mut self,
        ts: u64,
        file: FileId,
        task: Task,
        fidelity: Fidelity,
        range: PageRange,
        op: Op,
        by_syscall: bool,
    ) -> u64 {
        let id = self.next_window_id;
        self.next_window_id += 1;
        let tid = task.tid;
        self.files.entry(file).or_default().active.push(Window {
            id,
            file,
            task,
            op,
            pages: range,
            opened_ts: ts,
            closed_ts: None,
            final_ts: None,
            depth: u32::from(!by_syscall),
            fidelity,
            by_syscall,
            pending: Vec::new(),
            gap_candidates: Vec::new(),
            unmapped: None,
            punch_stack: None,
            ptes: Default::default(),
            test: self.current_test.clone(),
            calls: u32::from(!by_syscall),
            removed: 0,
        });
        self.stats.windows_opened += 1;
        self.stats.open_windows += 1;
        self.stats.max_open_windows = self.stats.max_open_windows.max(self.stats.open_windows);
        self.note_in_syscall(tid, file, id);
        id
    }

    /// Retires a window: its pending alerts go out, and it stays matchable
    /// for `retain_ns` by fault-arounds that entered before its close.
    fn final_close(&mut self, file: FileId, id: u64, out: &mut Vec<Alert>) {
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        let Some(pos) = fw.active.iter().position(|w| w.id == id) else {
            return;
        };
        let mut w = fw.active.remove(pos);
        w.final_ts = Some(self.clock);
        // Entered after the last call returned, and no call followed.
        w.gap_candidates.clear();
        let pending = std::mem::take(&mut w.pending);
        let (folio_source, pte_source) = (self.folio_source, self.pte_source);
        let large = fw.large_folios;
        let before = out.len();
        out.extend(
            pending
                .into_iter()
                .map(|p| w.alert(p, folio_source, pte_source, large)),
        );
        out.extend(w.settle_ptes(folio_source, &mut self.stats.classes.a));
        if let Some(t) = &w.test {
            self.stats.tests.entry(t.clone()).windows_by_op.count(w.op);
        }
        // Outcomes are settled; a retained window only matches late calls.
        w.ptes.clear();
        self.stats.windows_by_op.count(w.op);
        fw.retained.push_back(w);
        self.expiries.push_back((self.clock, file));
        self.stats.windows_closed += 1;
        self.stats.open_windows -= 1;
        self.count_alerts(&out[before..]);
    }

    /// Alerts made: counted in total, by severity and by test.
    fn count_alerts(&mut self, alerts: &[Alert]) {
        for a in alerts {
            let sev = a.severity as usize;
            self.stats.alerts += 1;
            self.stats.alerts_by_severity[sev] += 1;
            self.stats.alerts_by_kind[a.kind() as usize][sev] += 1;
            if let Some(t) = &a.window.test {
                self.stats.tests.entry(t.clone()).alerts[sev] += 1;
            }
        }
    }

    /// The kernel reports joined so far.
    pub fn take_reports(&mut self) -> Vec<JoinedReport> {
        std::mem::take(&mut self.reports)
    }

    /// A kernel report joins the windows open on its file at its time, by
    /// inode number (the page dump names no device), or on any file when it
    /// names none: open ones, and those closed within the retention before.
    fn kernel_report(&mut self, report: KernelReport) {
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

    #[allow(clippy::too_many_arguments)]
    fn invalidate_enter(
        &mut self,
        ts: u64,
        file: FileId,
        task: Task,
        fidelity: Fidelity,
        which: Invalidator,
        lock: InvalidateLock,
        range: PageRange,
        stack_id: Option<u32>,
        out: &mut Vec<Alert>,
    ) {
        let tid = task.tid;
        let gap = self.cfg.op_gap_ns;
        let current = self
            .files
            .get(&file)
            .and_then(|fw| fw.active.iter().find(|w| w.tid() == tid))
            .map(|w| (w.id, w.closed_ts));
        let resumed = match current {
            None => None,
            Some((id, None)) => Some(id),
            // Late events can come before the close: saturating keeps them in.
            Some((id, Some(closed))) if ts.saturating_sub(closed) <= gap => Some(id),
            Some((id, Some(_))) => {
                self.final_close(file, id, out);
                None
            }
        };
        let op = self.syscall_op(tid);
        let id = match resumed {
            Some(id) => {
                if let Some(w) = self.window_mut(file, id) {
                    if w.closed_ts.is_some() {
                        w.resume();
                    }
                    w.depth += 1;
                    w.calls += 1;
                    w.absorb(range, fidelity);
                    if w.op == Op::Unknown {
                        w.op = op;
                    }
                }
                self.note_in_syscall(tid, file, id);
                id
            }
            None => self.open_window(ts, file, task.clone(), fidelity, range, op, false),
        };
        let Some(w) = self.window_mut(file, id) else {
            return;
        };
        w.transition(None, stack_id);
        if which == Invalidator::Unmap {
            w.unmapped = Some(w.unmapped.map_or(range, |u| u.union(&range)));
        }
        let unmapped = w.unmapped;
        let fw = self.files.entry(file).or_default();
        if let Some(b) = fw.refills.iter_mut().find(|b| b.tid() == tid) {
            b.transition(fidelity, stack_id);
            match which {
                Invalidator::Unmap => {
                    b.unmapped = Some(b.unmapped.map_or(range, |u| u.union(&range)));
                }
                Invalidator::Truncate | Invalidator::ShmemUndo => {
                    b.range = b.range.union(&range);
                    b.lock_seen(lock);
                }
            }
            return;
        }
        // Class B opens at the first truncate of an invalidating syscall.
        if which == Invalidator::Unmap || op == Op::Unknown {
            return;
        }
        fw.refills.push(RefillWindow {
            window_id: id,
            task,
            op,
            opened_ts: ts,
            range,
            unmapped,
            truncate_exit_ts: None,
            fs_exit: None,
            fidelity,
            punch_stack: stack_id,
            close_stack: None,
            lock: lock.seen_by(tid),
            refills: Vec::new(),
            test: self.current_test.clone(),
        });
        if let Some(sc) = self.syscalls.get_mut(&tid)
            && !sc.refill_files.contains(&file)
        {
            sc.refill_files.push(file);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn invalidate_exit(
        &mut self,
        ts: u64,
        file: FileId,
        tid: u32,
        fidelity: Fidelity,
        which: Invalidator,
        range: PageRange,
        stack_id: Option<u32>,
    ) {
        let gap = self.cfg.op_gap_ns;
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        if let Some(b) = fw.refills.iter_mut().find(|b| b.tid() == tid) {
            b.transition(fidelity, stack_id);
            if which != Invalidator::Unmap {
                b.truncate_exit_ts = Some(ts);
            }
        }
        // An exit whose entry we never saw (probe attached mid-call) has no
        // window, or finds it already closed: nothing to end.
        let Some(w) = fw
            .active
            .iter_mut()
            .find(|w| w.tid() == tid && w.closed_ts.is_none())
        else {
            return;
        };
        w.absorb(range, fidelity);
        w.transition(None, stack_id);
        w.depth = w.depth.saturating_sub(1);
        if w.depth == 0 && !w.by_syscall {
            w.closed_ts = Some(ts);
            self.close_deadlines
                .push(Reverse((ts.saturating_add(gap), file, w.id)));
        }
    }

    fn fault_around(&mut self, file: FileId, fault: PendingAlert, out: &mut Vec<Alert>) {
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        let (entry, exit) = (fault.map_entry_ts, fault.ts);
        for w in &mut fw.active {
            match w.meets(entry, exit, &fault.pages) {
                Some(true) => w.pending.push(fault.clone()),
                Some(false) => w.gap_candidates.push(fault.clone()),
                None => {}
            }
        }
        // A fault-around that began before a close but returned after the
        // window final-closed (long call, or a late event): its outcome window
        // has passed, so it goes out at once.
        let mut settled = Vec::new();
        for w in fw.retained.iter().rev() {
            // Newest first; a window final-closed before the call entered
            // closed before it too, and so did every older one.
            if w.final_ts.is_some_and(|f| f < entry) {
                break;
            }
            if w.meets(entry, exit, &fault.pages) == Some(true) {
                // Its PTE outcomes were settled with the window.
                settled.push(w.alert(fault.clone(), self.folio_source, false, fw.large_folios));
            }
        }
        settled.reverse();
        self.count_alerts(&settled);
        out.extend(settled);
    }

    #[allow(clippy::too_many_arguments)]
    fn syscall_enter(
        &mut self,
        ts: u64,
        file: FileId,
        task: Task,
        fidelity: Fidelity,
        op: Op,
        range: PageRange,
        out: &mut Vec<Alert>,
    ) {
        let tid = task.tid;
        // A previous syscall whose exit was lost is simply superseded; its
        // class-B windows can grow no more.
        let previous = self.syscalls.insert(
            tid,
            Syscall {
                op,
                unnamed: (self.cfg.syscall_windows && op.invalidates() && file.is_unknown())
                    .then_some(range),
                windows: Vec::new(),
                refill_files: Vec::new(),
            },
        );
        if let Some(sc) = previous {
            self.end_refills(tid, &sc, out);
        }
        if !(self.cfg.syscall_windows && op.invalidates() && !file.is_unknown()) {
            return;
        }
        let fidelity = fidelity.weaker(Fidelity::Tracepoint);
        let current = self
            .files
            .get(&file)
            .and_then(|fw| fw.active.iter().find(|w| w.tid() == tid))
            .map(|w| w.id);
        match current {
            Some(id) => {
                if let Some(w) = self.window_mut(file, id) {
                    if w.closed_ts.is_some() {
                        w.resume();
                    }
                    w.by_syscall = true;
                    w.absorb(range, fidelity);
                    if w.op == Op::Unknown {
                        w.op = op;
                    }
                }
                self.note_in_syscall(tid, file, id);
            }
            None => {
                self.open_window(ts, file, task, fidelity, range, op, true);
            }
        }
    }

    /// Tracepoint mode: the first folio a file-less syscall removes names
    /// the file its window is on (the kernel side did the same).
    fn adopt_syscall_file(&mut self, ts: u64, file: FileId, task: &Task, fidelity: Fidelity) {
        let Some(range) = self
            .syscalls
            .get_mut(&task.tid)
            .and_then(|sc| sc.unnamed.take())
        else {
            return;
        };
        let op = self.syscall_op(task.tid);
        let fidelity = fidelity.weaker(Fidelity::Tracepoint);
        self.open_window(ts, file, task.clone(), fidelity, range, op, true);
    }

    /// The syscall's return ends every operation it performed: the task
    /// cannot resume them, so waiting out the op gap would only glue
    /// back-to-back punches into one window. A call that failed (`ret < 0`)
    /// and removed nothing was no invalidation: its syscall-made windows
    /// are dropped and the call is counted as failed instead.
    fn syscall_exit(&mut self, ts: u64, tid: u32, ret: i32, out: &mut Vec<Alert>) {
        let Some(sc) = self.syscalls.remove(&tid) else {
            return;
        };
        let failed = ret < 0;
        let mut invalidated = false;
        for &(file, id) in &sc.windows {
            let Some(w) = self.window_mut(file, id) else {
                continue;
            };
            if failed && w.calls == 0 && w.removed == 0 {
                self.discard(file, id);
                continue;
            }
            invalidated = true;
            // Depth above zero here means an exit record was lost: the calls
            // are over all the same.
            if w.closed_ts.is_none() {
                w.closed_ts = Some(ts);
            }
            self.final_close(file, id, out);
        }
        self.end_refills(tid, &sc, out);
        if failed && !invalidated && sc.op.invalidates() {
            self.stats.failed_calls.count(sc.op);
        }
    }

    /// Forgets a window that turned out to be none: no alert, no outcome,
    /// not counted as a window.
    fn discard(&mut self, file: FileId, id: u64) {
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        if let Some(pos) = fw.active.iter().position(|w| w.id == id) {
            fw.active.remove(pos);
            self.stats.windows_opened -= 1;
            self.stats.open_windows -= 1;
        }
        if fw.is_empty() {
            self.files.remove(&file);
        }
    }

    /// The task's syscall is over: no later block removal can move the close
    /// of its class-B windows, so they are evaluated now.
    fn end_refills(&mut self, tid: u32, sc: &Syscall, out: &mut Vec<Alert>) {
        for &file in &sc.refill_files {
            let Some(fw) = self.files.get_mut(&file) else {
                continue;
            };
            let Some(pos) = fw.refills.iter().position(|b| b.tid() == tid) else {
                continue;
            };
            let b = fw.refills.remove(pos);
            if fw.is_empty() {
                self.files.remove(&file);
            }
            let alerts = b.evaluate(file, &mut self.stats.classes.b);
            self.count_alerts(&alerts);
            out.extend(alerts);
        }
    }

    fn folio_delete(
        &mut self,
        ts: u64,
        file: FileId,
        tid: u32,
        index: u64,
        pfn: u64,
        still_mapped: Option<bool>,
    ) {
        self.folio_source = true;
        let Some(fw) = self.files.get_mut(&file) else {
            if still_mapped == Some(true) {
                self.stats.classes.a.still_mapped_unattributed += 1;
            }
            return;
        };
        // Only windows that have not final-closed: deletions after close +
        // op gap, or after the operation's syscall returned, are some later
        // operation's.
        let mut attributed = false;
        for w in &mut fw.active {
            if w.tid() == tid {
                w.removed += 1;
            }
            for p in w.pending.iter_mut().chain(w.gap_candidates.iter_mut()) {
                if p.counts_deletion(index, ts) {
                    p.folios_removed += 1;
                }
            }
            let removal = match still_mapped {
                Some(true) => Removal::StillMapped {
                    deleted_ts: ts,
                    pfn,
                    punch_stack: w.punch_stack,
                },
                Some(false) => Removal::Unmapped,
                None => Removal::Unreadable,
            };
            attributed |= w.ptes.folio_deleted(index, ts, removal);
        }
        if still_mapped == Some(true) && !attributed {
            self.stats.classes.a.still_mapped_unattributed += 1;
        }
        for b in &mut fw.refills {
            b.folio_deleted(index, ts);
        }
    }

    /// Class A: PTEs installed by the event's task. They belong to the first
    /// window they fall into (in time and pages), for sure or, when it is
    /// tentatively closed, if its operation resumes.
    fn pte_install(&mut self, file: FileId, install: Install, range: PageRange) {
        self.pte_source = true;
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        let ts = install.ts;
        let mut target = None;
        for (i, w) in fw.active.iter().enumerate() {
            match w.meets(ts, ts, &range) {
                Some(true) => {
                    target = Some((i, false));
                    break;
                }
                Some(false) if target.is_none() => target = Some((i, true)),
                _ => {}
            }
        }
        if let Some((i, in_gap)) = target {
            fw.active[i].record_install(Install { in_gap, ..install }, &range);
            return;
        }
        // Arrived after its window final-closed (late): inside the window,
        // but removals were already settled without it.
        for w in fw.retained.iter().rev() {
            if w.final_ts.is_some_and(|f| f < ts) {
                break;
            }
            if w.meets(ts, ts, &range) == Some(true)
                && let Some(span) = intersect(&range, &w.pages)
            {
                let n = walked(&span).count() as u64;
                self.stats.classes.a.ptes_in_window += n;
                self.stats.classes.a.unknown += n;
                break;
            }
        }
    }

    /// Class B: a folio entered the page cache of the file.
    fn folio_add(&mut self, file: FileId, refill: Refill) {
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        for b in &mut fw.refills {
            b.folio_added(refill.clone());
        }
    }

    /// The filesystem's block removal for a punch: its last exit closes the
    /// punching task's class-B window.
    #[allow(clippy::too_many_arguments)]
    fn fs_remove(
        &mut self,
        ts: u64,
        file: FileId,
        tid: u32,
        fidelity: Fidelity,
        fs: FsRemover,
        stack_id: Option<u32>,
        // Some at the enter: the invalidate_lock as the removal began.
        enter_lock: Option<InvalidateLock>,
    ) {
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        if let Some(w) = fw.active.iter_mut().find(|w| w.tid() == tid) {
            w.transition(None, stack_id);
        }
        if let Some(b) = fw.refills.iter_mut().find(|b| b.tid() == tid) {
            b.transition(fidelity, stack_id);
            match enter_lock {
                Some(lock) => b.lock_seen(lock),
                None => {
                    b.fs_exit = Some((fs, ts));
                    b.close_stack = b.punch_stack;
                }
            }
        }
    }
}
