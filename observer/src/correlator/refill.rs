//! Class B: page-cache refills inside a punch.
//!
//! A punch first truncates the page cache of its range, then the filesystem
//! frees the range's blocks. A folio read from disk in between, if nothing
//! removes it again, holds the data of blocks that are then freed (and may be
//! reused). The class-B window of a punching task on a file opens at its
//! first truncate (`truncate_inode_pages_range` or `shmem_undo_range`) inside
//! an invalidating syscall, and closes at its last block-removal exit of that
//! syscall. It is evaluated when the syscall returns, when no later removal
//! can move its close; never closed at the syscall exit itself, since other
//! tasks legitimately refill once the filesystem drops its locks.

use observer_abi::filesystems::RefillPolicy;

use super::alert::{Alert, Evidence, Finding, Severity, StackIds, WindowInfo};
use super::classes::ClassB;
use super::pte::{intersect, walked};
use crate::event::{Fidelity, FileId, FsRemover, InvalidateLock, LockHolder, Op, PageRange, Task};

/// One page-cache add record overlapping the punched range.
#[derive(Clone, Debug)]
pub(crate) struct Refill {
    pub ts: u64,
    pub task: Task,
    /// The folio's pages.
    pub range: PageRange,
    pub uptodate: bool,
    /// The file's invalidate_lock as the folio went in.
    pub lock: InvalidateLock,
    pub stack_id: Option<u32>,
    pub fidelity: Fidelity,
    /// When the folio itself (a removal at its first page) left the cache.
    pub folio_deleted: Option<u64>,
    /// Other pages of it removed separately (after a split): (page, ts),
    /// first removal only.
    pub pages_deleted: Vec<(u64, u64)>,
}

impl Refill {
    /// A folio whose first page is `index` left the cache at `ts`.
    fn folio_deleted(&mut self, removed: &PageRange, ts: u64) {
        if ts < self.ts {
            return;
        }
        let Some(on) = intersect(removed, &self.range) else {
            return;
        };
        // A folio added as one unit whose first page left the cache is gone
        // whole: no add came between (a run never spans one), so the folio
        // removed there is this one.
        if removed.contains(self.range.start) {
            self.folio_deleted.get_or_insert(ts);
            return;
        }
        for page in walked(&on) {
            if !self.pages_deleted.iter().any(|&(p, _)| p == page) {
                self.pages_deleted.push((page, ts));
            }
        }
    }

    /// The hull of the pages of `span` still in the cache at `bound`.
    fn surviving(&self, span: &PageRange, bound: u64) -> Option<PageRange> {
        if self.folio_deleted.is_some_and(|t| t <= bound) {
            return None;
        }
        let pages = walked(span);
        let (first, last) = (*pages.start(), *pages.end());
        let dead = |p: u64| {
            self.pages_deleted
                .iter()
                .any(|&(q, t)| q == p && t <= bound)
        };
        // Both walks stop within pages_deleted.len() + 1 steps.
        let lo = (first..=last).find(|&p| !dead(p))?;
        let hi = (lo..=last).rev().find(|&p| !dead(p))?;
        Some(PageRange::new(lo, hi))
    }
}

/// A punching task's class-B window on one file.
#[derive(Debug)]
pub(crate) struct RefillWindow {
    /// The invalidation window the truncate opened or resumed.
    pub window_id: u64,
    pub task: Task,
    pub op: Op,
    /// First truncate entry.
    pub opened_ts: u64,
    /// Union of the task's truncate ranges in the operation.
    pub range: PageRange,
    /// Union of the task's unmap ranges in the operation: the whole pages
    /// punched (`truncate_pagecache_range` unmaps only those; its truncate
    /// also covers the partial pages at the edges, which keep their blocks).
    pub unmapped: Option<PageRange>,
    pub truncate_exit_ts: Option<u64>,
    /// Last block-removal exit: the window's close.
    pub fs_exit: Option<(FsRemover, u64)>,
    pub fidelity: Fidelity,
    /// Stack of the task's last transition record that carried one.
    pub punch_stack: Option<u32>,
    /// `punch_stack` as of the last block-removal exit.
    pub close_stack: Option<u32>,
    /// Who held invalidate_lock for writing as the operation's truncates
    /// and block removals began: any of them without the puncher holding it
    /// wins; not exposed until one shows the lock.
    pub lock: LockHolder,
    pub refills: Vec<Refill>,
    pub test: Option<String>,
}

impl RefillWindow {
    pub fn tid(&self) -> u32 {
        self.task.tid
    }

    pub fn transition(&mut self, fidelity: Fidelity, stack_id: Option<u32>) {
        self.fidelity = self.fidelity.weaker(fidelity);
        if stack_id.is_some() {
            self.punch_stack = stack_id;
        }
    }

    /// A truncate or block removal of the operation began under `lock`.
    pub fn lock_seen(&mut self, lock: InvalidateLock) {
        let holder = lock.seen_by(self.tid());
        let replace = match holder {
            LockHolder::NotExposed => false,
            LockHolder::Puncher => self.lock == LockHolder::NotExposed,
            LockHolder::NotHeld | LockHolder::Other => true,
        };
        if replace {
            self.lock = holder;
        }
    }

    /// A page-cache add on the file.
    pub fn folio_added(&mut self, refill: Refill) {
        if refill.ts >= self.opened_ts && refill.range.overlaps(&self.range) {
            self.refills.push(refill);
        }
    }

    pub fn folio_deleted(&mut self, removed: &PageRange, ts: u64) {
        for r in &mut self.refills {
            r.folio_deleted(removed, ts);
        }
    }

    /// The operation is over: counts the window and its refills, and returns
    /// a `stale_data` alert per folio read from disk inside it that survived.
    pub fn evaluate(self, file: FileId, b: &mut ClassB) -> Vec<Alert> {
        b.windows += 1;
        let Some((fs_remove, close)) = self.fs_exit else {
            b.unbounded += 1;
            return Vec::new();
        };
        match self.lock {
            LockHolder::Puncher => b.removals_under_lock += 1,
            LockHolder::NotHeld | LockHolder::Other => b.removals_without_lock += 1,
            LockHolder::NotExposed => {}
        }
        // Removals up to the end of the operation's own invalidation count:
        // a folio the punch truncated again (or that left the cache before
        // the blocks were freed) holds no freed data.
        let bound = close.max(self.truncate_exit_ts.unwrap_or(0));
        let full = match self.unmapped {
            Some(u) => intersect(&u, &self.range),
            None => Some(self.range),
        };
        let mut alerts = Vec::new();
        for r in self.refills.iter().filter(|r| r.ts <= close) {
            b.refills += 1;
            // Readers fill the cache under invalidate_lock held shared: one
            // that got in while the punch held it for writing bypassed it.
            let lock = r.lock.seen_by(self.tid());
            if r.task.tid != self.tid() && lock == LockHolder::Puncher {
                b.refills_under_lock += 1;
            }
            let Some(span) = intersect(&r.range, &self.range) else {
                continue;
            };
            if r.surviving(&span, bound).is_none() {
                continue;
            }
            b.survived += 1;
            // The punching task's own adds are the filesystem zeroing the
            // partial blocks at the edges (ext4_zero_partial_blocks,
            // xfs_zero_range): blocks the punch keeps.
            if r.uptodate || r.task.tid == self.tid() {
                continue;
            }
            // The filesystem may keep such reads from freed blocks by a lock
            // of its own (observer_abi::filesystems): counted, not critical.
            if let RefillPolicy::Exempt { .. } = fs_remove.filesystem().refill {
                b.exempt += 1;
                continue;
            }
            let Some(stale) = full
                .and_then(|f| intersect(&span, &f))
                .and_then(|s| r.surviving(&s, bound))
            else {
                continue;
            };
            b.stale_data += 1;
            alerts.push(Alert {
                severity: Severity::Critical,
                finding: Finding::StaleData {
                    truncate_exit_ts: self.truncate_exit_ts,
                    fs_remove,
                    fs_remove_exit_ts: close,
                    invalidate_lock: lock,
                },
                ts: r.ts,
                file,
                task: r.task.clone(),
                pages: stale,
                window: Some(WindowInfo {
                    id: self.window_id,
                    op: self.op,
                    pages: self.range,
                    task: self.task.clone(),
                    opened_ts: self.opened_ts,
                    closed_ts: Some(close),
                    open_for_ns: r.ts.saturating_sub(self.opened_ts),
                    test: self.test.clone(),
                }),
                fidelity: r.fidelity.weaker(self.fidelity),
                map_fidelity: r.fidelity,
                window_fidelity: self.fidelity,
                evidence: Evidence {
                    stack_ids: StackIds {
                        victim: r.stack_id,
                        punch: self.close_stack,
                    },
                },
            });
        }
        alerts
    }
}
