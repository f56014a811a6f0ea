//! What the correlator reports: a fault-around that installed PTEs for pages
//! of a file range while that range was being invalidated, and the two
//! critical outcomes such races can have.

use crate::event::{Fidelity, FileId, FsRemover, LockHolder, Op, PageRange, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// `filemap_map_pages` ran, at least partly, inside an invalidation
    /// window of the same file and for pages of that window's range.
    PteInPunchWindow,
    /// A PTE installed inside a window still mapped its folio when the folio
    /// left the page cache: the PTE now points to a freed page.
    StalePte,
    /// A folio read from disk inside a punch, after the page cache was
    /// truncated and before the filesystem freed the blocks, survived the
    /// punch: the cache holds data of blocks the punch then freed.
    StaleData,
    /// A PTE or PMD was installed at or past the file's EOF while no size
    /// change on the file explains it (class C): an access there must raise
    /// SIGBUS, and maps a page the file does not have.
    BeyondEof,
}

/// How much an alert matters, worst last (ordered for `--fail-on`).
/// `Info`: PTEs in a window that were zapped again, the partial edge pages
/// of a punch, pages of a large folio that straddles the punched range, and
/// outcomes the kernel gives no way to observe (no PTE installer: the
/// host's tracepoint mode). `Warning`: PTEs still mapped after the window
/// that none of those explain, and outcomes that should have been
/// observable but were not. `Critical`: a freed page mapped, freed data
/// cached, and the kernel's own reports of either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl AlertKind {
    /// Every kind, in the order the summary lists them.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::PteInPunchWindow,
        AlertKind::StalePte,
        AlertKind::StaleData,
        AlertKind::BeyondEof,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PteInPunchWindow => "pte_in_punch_window",
            AlertKind::StalePte => "stale_pte",
            AlertKind::StaleData => "stale_data",
            AlertKind::BeyondEof => "beyond_eof",
        }
    }

    /// Evidence of corruption, not only of a race.
    pub fn is_critical(self) -> bool {
        matches!(
            self,
            AlertKind::StalePte | AlertKind::StaleData | AlertKind::BeyondEof
        )
    }

    /// One sentence for people, for critical kinds.
    pub fn message(self) -> Option<&'static str> {
        match self {
            AlertKind::PteInPunchWindow => None,
            AlertKind::StalePte => Some("pte now points to a freed page"),
            AlertKind::StaleData => Some("the cache holds data from blocks the punch then freed"),
            AlertKind::BeyondEof => Some("a page at or past EOF is mapped: an access must SIGBUS"),
        }
    }
}

/// The invalidation window an alert fell into, as it was when it final-closed
/// (so `pages` is the union over the whole operation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowInfo {
    /// Sequential per correlator, so that alerts of one window can be grouped.
    /// A `stale_data` alert carries the id of the invalidation window its
    /// punch opened or resumed at the truncate.
    pub id: u64,
    pub op: Op,
    /// The invalidated range. For `stale_data`: the punched range, i.e. the
    /// union of the punching task's truncate ranges in the operation.
    pub pages: PageRange,
    /// The invalidating task.
    pub task: Task,
    /// For `stale_data`: the truncate's entry (the class-B window opens there).
    pub opened_ts: u64,
    /// `None` when the stream ended with the window still open. For
    /// `stale_data`: the last exit of the filesystem's block removal.
    pub closed_ts: Option<u64>,
    /// How long the window had been open at the alert's `ts`.
    pub open_for_ns: u64,
    /// The test of the suite that was running when the window opened.
    pub test: Option<String>,
}

/// Page-exact outcomes of the PTEs one fault-around installed inside its
/// window (from the kernel's PTE installer, matched by task, time and page).
/// `installed == rezapped + stale + still_mapped + unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PteCounts {
    pub installed: u64,
    /// The folio left the cache with no PTE left on it.
    pub rezapped: u64,
    /// The folio left the cache still mapped (each also raised `stale_pte`).
    pub stale: u64,
    /// No removal seen before the window final-closed: the page stayed.
    pub still_mapped: u64,
    /// Removed, but the mapcount could not be read; or no removal source.
    pub unknown: u64,
}

/// What an alert found, with the facts only that finding has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A fault-around call that ran, at least partly, inside the window.
    PteInPunchWindow {
        /// Entry of the `filemap_map_pages` call (the alert's `ts` is its
        /// exit).
        map_entry_ts: u64,
        /// Folios of `pages` deleted from the page cache between the
        /// fault-around and the end of the operation. `None` when no folio
        /// deletion was observed at all (source not attached).
        folios_removed: Option<u64>,
        /// Page-exact outcomes of this call's PTEs. `None` when no PTE
        /// installer record was seen, when the call is a point (tracepoint),
        /// or when the alert went out after its window.
        ptes: Option<PteCounts>,
    },
    /// The alert's `ts` is the PTE install; `pages` is the one page.
    StalePte { deleted_ts: u64, pfn: u64 },
    /// The alert's `ts` is the page-cache add (by `task`, not uptodate, so
    /// read from disk); `pages` are the refilled pages that survived.
    StaleData {
        /// Last exit of the punching task's truncate in the operation.
        truncate_exit_ts: Option<u64>,
        fs_remove: FsRemover,
        /// Last exit of the block removal: the class-B window's close.
        fs_remove_exit_ts: u64,
        /// Who held invalidate_lock for writing as the folio went in.
        invalidate_lock: LockHolder,
    },
    /// The alert's `ts` is the install; `pages` its pages (of which some lie
    /// at or past EOF); no window explains it (`Alert::window` is None).
    BeyondEof {
        /// The file's size in bytes as the installer read it.
        i_size: u64,
        /// One PMD (do_set_pmd) mapped the pages.
        pmd: bool,
    },
}

/// Kernel stack ids (the `STACKS` map) captured with the records that make
/// up an alert. Symbolizing them is the agent's business.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackIds {
    /// From the victim's record: the map_pages call, the PTE install, or the
    /// page-cache add.
    pub victim: Option<u32>,
    /// From the punching task's last window transition record that carried
    /// a stack (invalidate enter/exit, block removal enter/exit) when the
    /// outcome was decided: at the folio removal for `stale_pte`, at the
    /// block removal's exit for `stale_data`.
    pub punch: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub stack_ids: StackIds,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub finding: Finding,
    /// That of the worst outcome among its pages (see [`Severity`]).
    pub severity: Severity,
    /// The victim record's time: exit of the `filemap_map_pages` call, the
    /// PTE install (`stale_pte`) or the page-cache add (`stale_data`).
    pub ts: u64,
    pub file: FileId,
    /// The faulting, installing or refilling task.
    pub task: Task,
    /// The range fault-around was asked to map; the stale page (`stale_pte`);
    /// the surviving refilled pages (`stale_data`); the installed pages
    /// (`beyond_eof`).
    pub pages: PageRange,
    /// None for `beyond_eof`: no invalidation window is involved.
    pub window: Option<WindowInfo>,
    /// The weaker of the two sides: an alert is only as precise as its
    /// least precise observation.
    pub fidelity: Fidelity,
    /// The victim side's fidelity (map_pages, PTE installer, page-cache add).
    pub map_fidelity: Fidelity,
    pub window_fidelity: Fidelity,
    pub evidence: Evidence,
}

impl Alert {
    /// The window, for tests of alerts that have one.
    #[cfg(test)]
    pub fn win(&self) -> &WindowInfo {
        self.window.as_ref().expect("an alert with a window")
    }

    #[cfg(test)]
    pub fn win_mut(&mut self) -> &mut WindowInfo {
        self.window.as_mut().expect("an alert with a window")
    }

    pub fn kind(&self) -> AlertKind {
        match self.finding {
            Finding::PteInPunchWindow { .. } => AlertKind::PteInPunchWindow,
            Finding::StalePte { .. } => AlertKind::StalePte,
            Finding::StaleData { .. } => AlertKind::StaleData,
            Finding::BeyondEof { .. } => AlertKind::BeyondEof,
        }
    }

    /// When the victim's call began: the fault-around's entry, else `ts`.
    pub fn map_entry_ts(&self) -> u64 {
        match self.finding {
            Finding::PteInPunchWindow { map_entry_ts, .. } => map_entry_ts,
            _ => self.ts,
        }
    }

    pub fn folios_removed(&self) -> Option<u64> {
        match self.finding {
            Finding::PteInPunchWindow { folios_removed, .. } => folios_removed,
            _ => None,
        }
    }

    pub fn ptes(&self) -> Option<PteCounts> {
        match self.finding {
            Finding::PteInPunchWindow { ptes, .. } => ptes,
            _ => None,
        }
    }
}
