//! Invalidation windows: one per (file, invalidating task) operation.

use std::collections::VecDeque;

use super::alert::{Alert, Evidence, Finding, Severity, StackIds, WindowInfo};
use super::classes::ClassA;
use super::pte::{Install, Outcome, PteLedger, intersect};
use super::refill::RefillWindow;
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
    pub stack_id: Option<u32>,
}

impl PendingAlert {
    /// How many of the removed folios belong to this alert's outcome: those
    /// on its pages, removed after it. The upper bound (window close + op
    /// gap) is enforced by the caller, which only offers deletions to
    /// windows that have not final-closed. A run of small folios counts its
    /// pages on the alert's; one of large folios, its share of them.
    pub fn deletions_counted(&self, removed: &super::folio::Removed, ts: u64) -> u64 {
        if ts < self.ts {
            return 0;
        }
        let Some(on) = intersect(&self.pages, &removed.range) else {
            return 0;
        };
        let pages = |r: &PageRange| r.end.saturating_sub(r.start).saturating_add(1);
        let total = pages(&removed.range);
        if removed.folios >= total {
            return pages(&on);
        }
        // Rounded up: any page of the alert's removed means a folio of it was.
        ((pages(&on) as u128 * removed.folios as u128).div_ceil(total as u128)) as u64
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
    /// Union of the window's unmap ranges (whole pages of a punch).
    pub unmapped: Option<PageRange>,
    /// Stack of the invalidating task's last transition record that had one.
    pub punch_stack: Option<u32>,
    /// Class A: PTEs installed inside the window, page by page.
    pub ptes: PteLedger,
    /// The test of the suite running when the window opened.
    pub test: Option<String>,
    /// Invalidating function calls (unmap, truncate) seen in the window;
    /// zero for a window only a syscall made (tracepoint mode).
    pub calls: u32,
    /// Folios the window's task removed from the file while it was open.
    pub removed: u64,
    /// The last exit of an unmap_mapping_range of the window: its last pass
    /// zapping the range's PTEs.
    pub last_unmap_exit: Option<u64>,
    /// Class C installs past EOF that this truncate explained: legitimate
    /// only if its unmap zapped them or their folio left the cache.
    pub eof_explained: Vec<super::eof::PendingEof>,
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
        self.ptes.promote_gap();
    }

    pub fn transition(&mut self, fidelity: Option<Fidelity>, stack_id: Option<u32>) {
        if let Some(f) = fidelity {
            self.fidelity = self.fidelity.weaker(f);
        }
        if stack_id.is_some() {
            self.punch_stack = stack_id;
        }
    }

    /// A PTE install that `meets` this window (`in_gap`: only tentatively).
    pub fn record_install(&mut self, install: Install, range: &PageRange) {
        if let Some(span) = intersect(range, &self.pages) {
            self.ptes.record(install, span);
        }
    }

    pub fn info(&self, at_ts: u64) -> WindowInfo {
        WindowInfo {
            id: self.id,
            op: self.op,
            pages: self.pages,
            task: self.task.clone(),
            opened_ts: self.opened_ts,
            closed_ts: self.closed_ts,
            open_for_ns: at_ts.saturating_sub(self.opened_ts),
            test: self.test.clone(),
        }
    }

    /// At final close: every PTE installed inside the window gets its
    /// outcome counted, and each stale one becomes an alert.
    pub fn settle_ptes(&self, folio_source: bool, a: &mut ClassA) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for (page, install, outcome) in self.ptes.settle(folio_source) {
            if install.in_gap {
                // Not in the window after all: a removal with a PTE still on
                // it is accounted for by no window install.
                if matches!(outcome, Outcome::Stale { .. }) {
                    a.still_mapped_unattributed += 1;
                }
                continue;
            }
            a.ptes_in_window += 1;
            match outcome {
                Outcome::Rezapped => a.rezapped += 1,
                Outcome::StillMappedAfterWindow => a.still_mapped_after_window += 1,
                Outcome::Unknown => a.unknown += 1,
                Outcome::Stale {
                    deleted_ts,
                    pfn,
                    punch_stack,
                } => {
                    a.stale_pte += 1;
                    alerts.push(Alert {
                        finding: Finding::StalePte { deleted_ts, pfn },
                        severity: Severity::Critical,
                        ts: install.ts,
                        file: self.file,
                        task: install.task.clone(),
                        pages: PageRange::new(page, page),
                        window: Some(self.info(install.ts)),
                        fidelity: install.fidelity.weaker(self.fidelity),
                        map_fidelity: install.fidelity,
                        window_fidelity: self.fidelity,
                        evidence: Evidence {
                            stack_ids: StackIds {
                                victim: install.stack_id,
                                punch: punch_stack,
                            },
                        },
                    });
                }
            }
        }
        alerts
    }

    pub fn absorb(&mut self, range: PageRange, fidelity: Fidelity) {
        self.pages = self.pages.union(&range);
        self.fidelity = self.fidelity.weaker(fidelity);
    }

    /// `pte_source`: PTE installer records exist, so a fault-around that ran
    /// over an interval (not a tracepoint point) can be given page-exact
    /// counts from this window's ledger. `large_folios`: the file has shown
    /// folios of more than one page, whose pages can stay mapped beside a
    /// punch that could not take the whole folio.
    pub fn alert(
        &self,
        p: PendingAlert,
        folio_source: bool,
        pte_source: bool,
        large_folios: bool,
    ) -> Alert {
        let counted = (pte_source && p.map_entry_ts < p.ts).then(|| {
            self.ptes.counts_for(
                p.task.tid,
                p.map_entry_ts,
                p.ts,
                &p.pages,
                folio_source,
                self.unmapped,
            )
        });
        let severity = match counted {
            // What this kernel cannot show (no installer, a point in time).
            None => Severity::Info,
            // Mapped after the window, on whole punched pages of small
            // folios: nothing explains it.
            Some((_, inside)) if inside > 0 && !large_folios => Severity::Warning,
            // Removed, but whether a PTE was left could not be read.
            Some((c, _)) if c.unknown > 0 && folio_source => Severity::Warning,
            Some(_) => Severity::Info,
        };
        let ptes = counted.map(|(c, _)| c);
        Alert {
            severity,
            finding: Finding::PteInPunchWindow {
                map_entry_ts: p.map_entry_ts,
                folios_removed: folio_source.then_some(p.folios_removed),
                ptes,
            },
            ts: p.ts,
            file: self.file,
            window: Some(self.info(p.ts)),
            task: p.task,
            pages: p.pages,
            fidelity: p.map_fidelity.weaker(self.fidelity),
            map_fidelity: p.map_fidelity,
            window_fidelity: self.fidelity,
            evidence: Evidence {
                stack_ids: StackIds {
                    victim: p.stack_id,
                    punch: self.punch_stack,
                },
            },
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
    /// Class-B windows of punching tasks whose syscall has not returned; at
    /// most one per task.
    pub refills: Vec<RefillWindow>,
    /// A folio of more than one page of this file was seen.
    pub large_folios: bool,
}

impl FileWindows {
    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.retained.is_empty() && self.refills.is_empty()
    }
}
