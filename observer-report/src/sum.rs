//! Adding up the counters of several runs (the matrix sums a cell's steps).

use std::ops::AddAssign;

use crate::{ClassA, ClassB, ClassC, Classes, Counts, Lost};

impl AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, other: &Counts) {
        for (name, n) in other.iter() {
            self.add(name, n);
        }
    }
}

/// `AddAssign` field by field; every field must be listed (the
/// destructuring fails to compile when one is added and not here).
macro_rules! add_fields {
    ($($t:ident { $($f:ident),* })*) => {$(
        impl AddAssign for $t {
            fn add_assign(&mut self, other: $t) {
                let $t { $($f),* } = other;
                $(self.$f += $f;)*
            }
        }
    )*};
}

add_fields! {
    Lost { ringbuf_full, unresolved, late, undecodable, no_entry }
    ClassA {
        ptes_in_window,
        rezapped,
        stale_pte,
        still_mapped_after_window,
        unknown,
        still_mapped_unattributed
    }
    ClassB {
        windows,
        unbounded,
        refills,
        survived,
        stale_data,
        exempt,
        removals_under_lock,
        removals_without_lock,
        refills_under_lock
    }
    ClassC {
        installs_past_eof,
        pmd,
        during_size_change,
        shmem,
        beyond_eof
    }
    Classes { a, b, c }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_field_by_field_and_name_by_name() {
        let mut c = Classes::default();
        let mut one = Classes::default();
        one.a.ptes_in_window = 2;
        one.b.stale_data = 1;
        c += one;
        c += one;
        assert_eq!((c.a.ptes_in_window, c.b.stale_data), (4, 2));
        let mut w: Counts = [("punch_hole", 1)].into_iter().collect();
        w += &[("zero_range", 2), ("punch_hole", 3)].into_iter().collect();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"punch_hole":4,"zero_range":2}"#
        );
        let mut l = Lost::default();
        l += Lost {
            late: 3,
            ..Lost::default()
        };
        assert_eq!(l.total(), 3);
    }
}
