//! What the correlator reports: a fault-around that installed PTEs for pages
//! of a file range while that range was being invalidated.

use crate::event::{Fidelity, FileId, Op, PageRange, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// `filemap_map_pages` ran, at least partly, inside an invalidation
    /// window of the same file and for pages of that window's range.
    PteInPunchWindow,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PteInPunchWindow => "pte_in_punch_window",
        }
    }
}

/// The invalidation window an alert fell into, as it was when it final-closed
/// (so `pages` is the union over the whole operation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowInfo {
    /// Sequential per correlator, so that alerts of one window can be grouped.
    pub id: u64,
    pub op: Op,
    pub pages: PageRange,
    /// The invalidating task.
    pub task: Task,
    pub opened_ts: u64,
    /// `None` when the stream ended with the window still open.
    pub closed_ts: Option<u64>,
    /// How long the window had been open when the fault-around returned.
    pub open_for_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    /// Exit of the `filemap_map_pages` call.
    pub ts: u64,
    pub map_entry_ts: u64,
    pub file: FileId,
    /// The faulting task.
    pub task: Task,
    /// The range fault-around was asked to map.
    pub pages: PageRange,
    pub window: WindowInfo,
    /// The weaker of the two sides: an alert is only as precise as its
    /// least precise observation.
    pub fidelity: Fidelity,
    pub map_fidelity: Fidelity,
    pub window_fidelity: Fidelity,
    /// Folios of `pages` deleted from the page cache between the fault-around
    /// and the end of the operation: PTEs that may now point at freed folios.
    /// `None` when no folio deletion was observed at all (source not attached).
    pub folios_removed: Option<u64>,
}
