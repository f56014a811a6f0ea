//! Counters of the two race classes and of windows by operation, for the
//! summary.

use crate::event::Op;

/// The class counters are the summary's own types: one definition for the
/// correlator that counts and the readers of its summary.
pub use observer_report::{ClassA, ClassB, Classes};

/// Counts by invalidating operation (windows, failed calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    counts: [u64; Self::NAMES.len()],
}

impl OpCounts {
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
        let mut one = OpCounts::default();
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
