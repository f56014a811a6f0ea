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
mod eof;
mod folio;
mod invalidate;
mod pte;
mod refill;
mod reorder;
mod report;
mod syscall;
mod window;

#[cfg(test)]
mod tests;

pub use alert::{Alert, AlertKind, Evidence, Finding, PteCounts, Severity, StackIds, WindowInfo};
pub use classes::{ClassA, ClassB, Classes, OpCounts};
pub use report::{JoinedReport, TestStats, TestTable};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::event::{
    Body, Event, Fidelity, FileId, FsRemover, InvalidateLock, Invalidator, Op, PageRange, Task,
};
use eof::PendingEof;
use folio::Removed;
use pte::{Install, Removal, intersect, walked};
use refill::{Refill, RefillWindow};
use reorder::ReorderBuffer;
use syscall::Syscall;
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
    /// tmpfs installs past EOF are by design (off only for the control).
    pub shmem_eof_exempt: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reorder_horizon_ns: 50_000_000,
            op_gap_ns: 2_000_000,
            retain_ns: 500_000_000,
            syscall_windows: false,
            shmem_eof_exempt: true,
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
    pub alerts_by_kind: [[u64; 3]; AlertKind::ALL.len()],
    /// Kernel reports of this bug class.
    pub kernel_reports: u64,
    /// Critical kernel reports.
    pub critical_reports: u64,
    /// Per test of the suite, in the order the tests began (kernel-log
    /// markers).
    pub tests: TestTable,
    /// Invalidating syscalls that failed and removed nothing: not windows.
    pub failed_calls: OpCounts,
    /// Folios the removal records carried (a run record carries many).
    pub folios_removed: u64,
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
    /// Class C installs past EOF waiting out the op gap, in event order.
    eof_pending: VecDeque<eof::PendingEof>,
    stats: Stats,
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
            eof_pending: VecDeque::new(),
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
        self.settle_eof(true, out);
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
        self.settle_eof(false, out);
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
                range,
                folios,
                removed_ts,
                pfn,
                still_mapped,
            } => {
                self.adopt_syscall_file(ts, file, &task, fidelity);
                self.stats.folios_removed += folios;
                if range.end.saturating_sub(range.start).saturating_add(1) > folios {
                    self.files.entry(file).or_default().large_folios = true;
                }
                let removed = Removed {
                    range,
                    folios,
                    pfn,
                    still_mapped,
                };
                self.folio_delete(removed_ts.min(ts), file, task.tid, removed)
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
            Body::PteInstall {
                range,
                i_size,
                pmd,
                shmem,
            } => {
                if let Some(i_size) = i_size {
                    let install = PendingEof {
                        ts,
                        file,
                        task: task.clone(),
                        pages: range,
                        i_size,
                        pmd,
                        stack_id,
                        fidelity,
                    };
                    self.eof_install(install, shmem);
                }
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
            last_unmap_exit: None,
            eof_explained: Vec::new(),
        });
        self.stats.windows_opened += 1;
        self.stats.open_windows += 1;
        self.stats.max_open_windows = self.stats.max_open_windows.max(self.stats.open_windows);
        self.note_in_syscall(tid, file, id);
        if op.changes_size() {
            self.size_change_began(file, ts);
        }
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
        let survivors = w.eof_survivors();
        let c = &mut self.stats.classes.c;
        c.during_size_change -= survivors.len() as u64;
        c.beyond_eof += survivors.len() as u64;
        out.extend(survivors);
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
            if let Some(t) = a.window.as_ref().and_then(|w| w.test.as_ref()) {
                self.stats.tests.entry(t.clone()).alerts[sev] += 1;
            }
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
}
