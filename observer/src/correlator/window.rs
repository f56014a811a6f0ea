//! Invalidation windows: one per (file, invalidating task) operation.

use std::collections::VecDeque;

use super::alert::{Alert, AlertKind, WindowInfo};
use crate::event::{Fidelity, FileId, Op, PageRange, Task};

/// A fault-around that fell into a window, waiting for the window to
/// final-close so that the verdict can carry the outcome.
#[derive(Clone, Debug)]
pub(crate) struct PendingAlert {
    pub ts: u64,
    pub map_entry_ts: u64,
    pub task: Task,
    pub pages: PageRange,
    pub map_fidelity: Fidelity,
    pub folios_removed: u64,
}

impl PendingAlert {
    /// Whether a folio deletion belongs to this alert's outcome. The upper
    /// bound (window close + op gap) is enforced by the caller, which only
    /// offers deletions to windows that have not final-closed.
    pub fn counts_deletion(&self, index: u64, ts: u64) -> bool {
        self.pages.contains(index) && ts >= self.ts
    }
}

#[derive(Debug)]
pub(crate) struct Window {
    pub id: u64,
    pub file: FileId,
    pub task: Task,
    pub op: Op,
    pub pages: PageRange,
    pub opened_ts: u64,
    /// `Some` once the nesting depth fell back to zero: tentatively closed
    /// until the op gap elapses without the same task re-entering.
    pub closed_ts: Option<u64>,
    /// Event time at which the window final-closed.
    pub final_ts: Option<u64>,
    /// Invalidating calls in flight (they nest: truncate may unmap).
    pub depth: u32,
    pub fidelity: Fidelity,
    /// Opened by an invalidating syscall (tracepoint fallback): only the
    /// syscall's exit closes it.
    pub by_syscall: bool,
    pub pending: Vec<PendingAlert>,
    /// Fault-arounds that entered while the window was tentatively closed: they
    /// are inside the operation only if the same task re-enters.
    pub gap_candidates: Vec<PendingAlert>,
}

impl Window {
    pub fn tid(&self) -> u32 {
        self.task.tid
    }

    /// Whether a fault-around that ran over [entry_ts, exit_ts] for `pages`
    /// meets this window as it stands now. `Some(true)`: inside for sure;
    /// `Some(false)`: inside only if the operation resumes; `None`: outside.
    pub fn meets(&self, entry_ts: u64, exit_ts: u64, pages: &PageRange) -> Option<bool> {
        if !self.pages.overlaps(pages) || exit_ts < self.opened_ts {
            return None;
        }
        match (self.closed_ts, self.final_ts) {
            (None, _) => Some(true),
            (Some(closed), _) if entry_ts <= closed => Some(true),
            (Some(_), None) => Some(false),
            (Some(_), Some(_)) => None,
        }
    }

    /// The operation resumed after a tentative close.
    pub fn resume(&mut self) {
        self.closed_ts = None;
        let promoted = std::mem::take(&mut self.gap_candidates);
        self.pending.extend(promoted);
    }

    pub fn absorb(&mut self, range: PageRange, fidelity: Fidelity) {
        self.pages = self.pages.union(&range);
        self.fidelity = self.fidelity.min(fidelity);
    }

    pub fn alert(&self, p: PendingAlert, folio_source: bool) -> Alert {
        Alert {
            kind: AlertKind::PteInPunchWindow,
            ts: p.ts,
            map_entry_ts: p.map_entry_ts,
            file: self.file,
            task: p.task,
            pages: p.pages,
            window: WindowInfo {
                id: self.id,
                op: self.op,
                pages: self.pages,
                task: self.task.clone(),
                opened_ts: self.opened_ts,
                closed_ts: self.closed_ts,
                open_for_ns: p.ts.saturating_sub(self.opened_ts),
            },
            fidelity: p.map_fidelity.min(self.fidelity),
            map_fidelity: p.map_fidelity,
            window_fidelity: self.fidelity,
            folios_removed: folio_source.then_some(p.folios_removed),
        }
    }
}

/// All windows of one file.
#[derive(Debug, Default)]
pub(crate) struct FileWindows {
    /// Open or tentatively closed; at most one per task, so this stays short.
    pub active: Vec<Window>,
    /// Final-closed windows kept for late or long fault-arounds, in
    /// final-close order (ascending `final_ts`).
    pub retained: VecDeque<Window>,
}

impl FileWindows {
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.retained.is_empty()
    }
}
