//! The invalidators, in one table: the racer's `--op` name, the matrix's
//! table column, and the window operation the observer names for each.
//! The racer, the matrix (`cargo xtask matrix`) and its test read them here.

use clap::ValueEnum;

/// One way of invalidating a file range (racer `--op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
    Punch,
    /// fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
    Zero,
    /// fallocate(FALLOC_FL_COLLAPSE_RANGE), then the lost tail written back
    Collapse,
    /// fallocate(FALLOC_FL_INSERT_RANGE), then the hole written; the file is
    /// cut back (ftruncate) to its size once it has doubled, and at the end
    Insert,
    /// ftruncate down to the range start, then back to full size
    Truncate,
    /// truncate(2) by path down to the range start, then back to full size
    TruncatePath,
    /// madvise(MADV_REMOVE) on a shared writable mapping (a punch)
    MadvRemove,
    /// ioctl(FICLONERANGE) from a second file onto the range (reflink)
    Clone,
    /// ioctl(FIDEDUPERANGE) of the range against a second, identical file
    Dedupe,
}

/// Every invalidator, in the order of the matrix's columns.
pub const ALL: [Op; 9] = [
    Op::Punch,
    Op::Zero,
    Op::Collapse,
    Op::Insert,
    Op::Truncate,
    Op::TruncatePath,
    Op::MadvRemove,
    Op::Clone,
    Op::Dedupe,
];

impl Op {
    /// The racer's `--op` value.
    pub fn name(self) -> &'static str {
        self.row().0
    }

    /// The matrix table's column header.
    pub fn column(self) -> &'static str {
        self.row().1
    }

    /// The operation the observer names the windows of this op after
    /// (`windows_by_op`, an alert's `window.op`).
    pub fn window_op(self) -> &'static str {
        self.row().2
    }

    /// The op whose `--op` value is `name`.
    pub fn named(name: &str) -> Option<Op> {
        ALL.into_iter().find(|op| op.name() == name)
    }

    fn row(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Op::Punch => ("punch", "punch", "punch_hole"),
            Op::Zero => ("zero", "zero", "zero_range"),
            Op::Collapse => ("collapse", "coll", "collapse_range"),
            Op::Insert => ("insert", "ins", "insert_range"),
            Op::Truncate => ("truncate", "ftrunc", "ftruncate"),
            Op::TruncatePath => ("truncate-path", "trunc", "truncate"),
            Op::MadvRemove => ("madv-remove", "madv", "madv_remove"),
            Op::Clone => ("clone", "clone", "clone_range"),
            Op::Dedupe => ("dedupe", "dedup", "dedupe_range"),
        }
    }

    /// Ops that shrink the file for a moment: faulters may touch a page
    /// beyond EOF and get SIGBUS.
    pub fn shrinks(self) -> bool {
        matches!(self, Op::Truncate | Op::TruncatePath | Op::Collapse)
    }

    /// Ops that change the file size and must not run concurrently with
    /// each other (their size bookkeeping assumes one at a time).
    pub fn resizes(self) -> bool {
        self.shrinks() || self == Op::Insert
    }

    /// Ops that need a second file with the same contents.
    pub fn needs_source(self) -> bool {
        matches!(self, Op::Clone | Op::Dedupe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_racers_op_values() {
        for op in ALL {
            let parsed = Op::from_str(op.name(), false).unwrap();
            assert_eq!(parsed, op);
            assert_eq!(Op::named(op.name()), Some(op));
        }
        assert_eq!(Op::named("fold"), None);
        assert_eq!(Op::TruncatePath.window_op(), "truncate");
    }
}
