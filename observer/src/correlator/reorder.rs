//! Restores event-time order across CPUs: each CPU's records are ordered, but
//! the ring buffer interleaves CPUs arbitrarily.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::event::Event;

struct Queued {
    ts: u64,
    /// Arrival order: ties in `ts` keep the order the kernel committed them.
    seq: u64,
    ev: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(other.ts, other.seq))
    }
}

/// Holds events until no CPU can still deliver an older one, assuming no CPU
/// lags the newest timestamp seen by more than the horizon.
pub(crate) struct ReorderBuffer {
    heap: BinaryHeap<Reverse<Queued>>,
    next_seq: u64,
    newest_ts: u64,
    horizon_ns: u64,
}

impl ReorderBuffer {
    pub(crate) fn new(horizon_ns: u64) -> Self {
        ReorderBuffer {
            heap: BinaryHeap::new(),
            next_seq: 0,
            newest_ts: 0,
            horizon_ns,
        }
    }

    pub(crate) fn push(&mut self, ev: Event) {
        self.observe(ev.ts);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Queued { ts: ev.ts, seq, ev }));
    }

    /// Lets an outside clock vouch that time has moved on when no event came.
    pub(crate) fn observe(&mut self, ts: u64) {
        self.newest_ts = self.newest_ts.max(ts);
    }

    /// Events at or before this instant are settled: nothing older can come
    /// without being late.
    pub(crate) fn settled_until(&self) -> u64 {
        self.newest_ts.saturating_sub(self.horizon_ns)
    }

    pub(crate) fn pop_settled(&mut self) -> Option<Event> {
        let until = self.settled_until();
        match self.heap.peek() {
            Some(Reverse(q)) if q.ts <= until => self.heap.pop().map(|Reverse(q)| q.ev),
            _ => None,
        }
    }

    pub(crate) fn pop_any(&mut self) -> Option<Event> {
        self.heap.pop().map(|Reverse(q)| q.ev)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
