//! What happens to the window's pages: folios leaving and entering the page
//! cache, PTEs installed on them, and the filesystem's block removal that
//! ends a class-B window.

use super::*;

/// Folios that left the page cache together: one folio, or a run of them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Removed {
    pub range: PageRange,
    pub folios: u64,
    pub pfn: u64,
    pub still_mapped: Option<bool>,
}

impl Correlator {
    pub(super) fn folio_delete(&mut self, ts: u64, file: FileId, tid: u32, removed: Removed) {
        self.folio_source = true;
        let still_mapped = removed.still_mapped;
        let Some(fw) = self.files.get_mut(&file) else {
            if still_mapped == Some(true) {
                self.stats.classes.a.still_mapped_unattributed += 1;
            }
            return;
        };
        let range = &removed.range;
        // Only windows that have not final-closed: deletions after close +
        // op gap, or after the operation's syscall returned, are some later
        // operation's.
        let mut attributed = false;
        for w in &mut fw.active {
            if w.tid() == tid {
                w.removed += removed.folios;
            }
            for p in w.pending.iter_mut().chain(w.gap_candidates.iter_mut()) {
                p.folios_removed += p.deletions_counted(&removed, ts);
            }
            let removal = match still_mapped {
                Some(true) => Removal::StillMapped {
                    deleted_ts: ts,
                    pfn: removed.pfn,
                    punch_stack: w.punch_stack,
                },
                Some(false) => Removal::Unmapped,
                None => Removal::Unreadable,
            };
            attributed |= w.ptes.folio_deleted(range, ts, removal);
        }
        if still_mapped == Some(true) && !attributed {
            self.stats.classes.a.still_mapped_unattributed += 1;
        }
        for b in &mut fw.refills {
            b.folio_deleted(range, ts);
        }
    }

    /// Class A: PTEs installed by the event's task. They belong to the first
    /// window they fall into (in time and pages), for sure or, when it is
    /// tentatively closed, if its operation resumes.
    pub(super) fn pte_install(&mut self, file: FileId, install: Install, range: PageRange) {
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
    pub(super) fn folio_add(&mut self, file: FileId, refill: Refill) {
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
    pub(super) fn fs_remove(
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
