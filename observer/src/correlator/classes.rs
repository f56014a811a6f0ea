//! Counters of the two race classes and of windows by operation, for the
//! summary.

use crate::event::Op;

/// Class A: PTEs installed inside invalidation windows (page-exact, from the
/// kernel's PTE installer), and what became of each.
///
/// Every installed (page, task) pair inside a window gets exactly one
/// outcome: `ptes_in_window == rezapped + stale_pte +
/// still_mapped_after_window + unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassA {
    pub ptes_in_window: u64,
    /// The folio later left the cache with no PTE on it.
    pub rezapped: u64,
    /// The folio left the cache still mapped: a `stale_pte` alert each.
    pub stale_pte: u64,
    /// No removal before the window final-closed (partial pages, large
    /// folios whose head was not removed, pages outside the truncated part):
    /// legitimate, classified only.
    pub still_mapped_after_window: u64,
    /// Removed but the mapcount was unreadable, no removal source at all, or
    /// the install record arrived after its window had final-closed.
    pub unknown: u64,
    /// Folio removals with a PTE still on them that no install inside a
    /// window accounts for (not an alert: the installer was not seen).
    pub still_mapped_unattributed: u64,
}

/// Class B: page-cache refills inside a punch, between the truncate and the
/// end of the filesystem's block removal. Refills count folios (page-cache
/// add records), not pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassB {
    /// Class-B windows that ended (their operation's syscall returned).
    pub windows: u64,
    /// Of those, windows without any block-removal exit record (tmpfs, a
    /// filesystem without the hook, a lost record): not evaluated.
    pub unbounded: u64,
    /// Folios added inside evaluated class-B windows, overlapping the
    /// punched range.
    pub refills: u64,
    /// Refills with a page the operation did not remove again.
    pub survived: u64,
    /// Survivors read from disk by another task, on fully punched pages: a
    /// `stale_data` alert each.
    pub stale_data: u64,
    /// Evaluated windows whose block removal began with the punching task
    /// holding the file's invalidate_lock for writing (5.15+ ext4, xfs)...
    pub removals_under_lock: u64,
    /// ...or without it (btrfs and tmpfs use their own locks). Neither on a
    /// kernel without invalidate_lock.
    pub removals_without_lock: u64,
    /// Refills by another task while the punching task held invalidate_lock
    /// for writing: a path that filled the cache without taking it shared.
    pub refills_under_lock: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classes {
    pub a: ClassA,
    pub b: ClassB,
}

impl Classes {
    /// Critical outcomes: the verdict is `critical` when this is non-zero.
    pub fn critical(&self) -> u64 {
        self.a.stale_pte + self.b.stale_data
    }
}

/// Final-closed invalidation windows by operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowsByOp {
    counts: [u64; Self::NAMES.len()],
}

impl WindowsByOp {
    const NAMES: [&'static str; 11] = [
        "punch_hole",
        "zero_range",
        "collapse_range",
        "insert_range",
        "ftruncate",
        "truncate",
        "madv_remove",
        "clone",
        "clone_range",
        "dedupe_range",
        "unknown",
    ];

    pub(crate) fn count(&mut self, op: Op) {
        let slot = match op {
            Op::PunchHole => 0,
            Op::ZeroRange => 1,
            Op::CollapseRange => 2,
            Op::InsertRange => 3,
            Op::Ftruncate => 4,
            Op::Truncate => 5,
            Op::MadvRemove => 6,
            Op::Clone => 7,
            Op::CloneRange => 8,
            Op::DedupeRange => 9,
            // Windows never take a non-invalidating op; count it as unknown.
            Op::Fallocate { .. } | Op::Unknown => 10,
        };
        self.counts[slot] += 1;
    }

    pub fn get(&self, op: Op) -> u64 {
        let mut one = WindowsByOp::default();
        one.count(op);
        let slot = one.counts.iter().position(|&n| n == 1).unwrap_or(10);
        self.counts[slot]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every op, in a fixed order, zeros included.
    pub fn by_op(&self) -> [(&'static str, u64); 11] {
        std::array::from_fn(|i| (Self::NAMES[i], self.counts[i]))
    }
}
