//! Class A bookkeeping of one window: which pages got PTEs inside it, from
//! whom, and what became of each page when its folio left the cache.

use std::collections::BTreeMap;

use super::alert::PteCounts;
use crate::event::{Fidelity, PageRange, Task};

/// Pages one record may add to a ledger. Installer and page-cache records
/// cover one folio (at most 512 pages on x86-64); an "EOF" range would be a
/// decoding accident, and must not make the agent walk 2^64 pages.
pub(crate) const MAX_PAGES_PER_RECORD: u64 = 4096;

/// `a ∩ b`, if not empty.
pub(crate) fn intersect(a: &PageRange, b: &PageRange) -> Option<PageRange> {
    a.overlaps(b)
        .then(|| PageRange::new(a.start.max(b.start), a.end.min(b.end)))
}

/// The pages of `r` a ledger walks: all of them, up to the cap.
pub(crate) fn walked(r: &PageRange) -> std::ops::RangeInclusive<u64> {
    let last = r.end.min(r.start.saturating_add(MAX_PAGES_PER_RECORD - 1));
    r.start..=last
}

/// One PteInstall record, as far as it fell into the window.
#[derive(Clone, Debug)]
pub(crate) struct Install {
    pub ts: u64,
    pub task: Task,
    pub stack_id: Option<u32>,
    pub fidelity: Fidelity,
    /// Installed while the window was tentatively closed: part of the window
    /// only if the operation resumes.
    pub in_gap: bool,
}

/// What the folio's removal said about a PTE, as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Removed with no PTE left on it.
    Unmapped,
    /// Removed while still mapped: `punch_stack` is the punching task's
    /// stack as of the removal.
    StillMapped {
        deleted_ts: u64,
        pfn: u64,
        punch_stack: Option<u32>,
    },
    /// Removed; the mapcount could not be read.
    Unreadable,
}

/// A page's outcome once its window final-closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Rezapped,
    Stale {
        deleted_ts: u64,
        pfn: u64,
        punch_stack: Option<u32>,
    },
    StillMappedAfterWindow,
    Unknown,
}

impl Outcome {
    fn of(removal: Option<Removal>, folio_source: bool) -> Outcome {
        match removal {
            Some(Removal::Unmapped) => Outcome::Rezapped,
            Some(Removal::StillMapped {
                deleted_ts,
                pfn,
                punch_stack,
            }) => Outcome::Stale {
                deleted_ts,
                pfn,
                punch_stack,
            },
            Some(Removal::Unreadable) => Outcome::Unknown,
            // Without a removal source, "not removed" is not known.
            None if folio_source => Outcome::StillMappedAfterWindow,
            None => Outcome::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PteRec {
    /// Index into `PteLedger::installs`.
    install: usize,
    removal: Option<Removal>,
}

/// PTEs installed inside one window, page by page. A page installed again by
/// the same task before any removal is one PTE: the newer install wins.
#[derive(Debug, Default)]
pub(crate) struct PteLedger {
    installs: Vec<Install>,
    pages: BTreeMap<u64, Vec<PteRec>>,
}

impl PteLedger {
    /// `span` is the install's range already cut to the window's range.
    pub fn record(&mut self, install: Install, span: PageRange) {
        let idx = self.installs.len();
        let tid = install.task.tid;
        let in_gap = install.in_gap;
        self.installs.push(install);
        for page in walked(&span) {
            let recs = self.pages.entry(page).or_default();
            let same = recs.iter_mut().find(|r| {
                let old = &self.installs[r.install];
                r.removal.is_none() && old.task.tid == tid && (!in_gap || old.in_gap)
            });
            match same {
                Some(r) => r.install = idx,
                None => recs.push(PteRec {
                    install: idx,
                    removal: None,
                }),
            }
        }
    }

    /// The operation resumed: gap installs are inside the window after all.
    pub fn promote_gap(&mut self) {
        for i in &mut self.installs {
            i.in_gap = false;
        }
    }

    /// The folios of pages `range` left the cache by `ts` (a large folio
    /// takes the PTEs of all its pages with it). Returns whether any PTE of
    /// this ledger was installed on them before.
    pub fn folio_deleted(&mut self, range: &PageRange, ts: u64, removal: Removal) -> bool {
        let mut hit = false;
        for (_, recs) in self.pages.range_mut(range.start..=range.end) {
            for r in recs.iter_mut() {
                if r.removal.is_none() && self.installs[r.install].ts <= ts {
                    r.removal = Some(removal);
                    hit = true;
                }
            }
        }
        hit
    }

    /// Whether a PTE that task `tid` installed at `ts` on some page of
    /// `pages` is still there: no removal of its folio was seen. Gap
    /// installs count: a mapping outlives a window whether or not the
    /// operation resumed.
    pub fn survived(&self, pages: &PageRange, ts: u64, tid: u32) -> bool {
        self.pages
            .range(pages.start..=pages.end)
            .flat_map(|(_, recs)| recs)
            .any(|r| {
                let i = &self.installs[r.install];
                r.removal.is_none() && i.ts == ts && i.task.tid == tid
            })
    }

    /// Every PTE recorded, with its outcome, in page order. Those still
    /// `in_gap` at final close were not part of the window.
    pub fn settle(&self, folio_source: bool) -> impl Iterator<Item = (u64, &Install, Outcome)> {
        self.pages.iter().flat_map(move |(&page, recs)| {
            recs.iter().map(move |r| {
                let install = &self.installs[r.install];
                (page, install, Outcome::of(r.removal, folio_source))
            })
        })
    }

    /// The outcomes of the PTEs that task `tid` installed for `pages` between
    /// `entry_ts` and `exit_ts`: one fault-around call's.
    /// Also returns how many of the still-mapped ones lie inside `whole`
    /// (the pages the operation unmapped in full): those are not the
    /// partial edge pages of a punch.
    pub fn counts_for(
        &self,
        tid: u32,
        entry_ts: u64,
        exit_ts: u64,
        pages: &PageRange,
        folio_source: bool,
        whole: Option<PageRange>,
    ) -> (PteCounts, u64) {
        let mut c = PteCounts::default();
        let mut inside = 0;
        for (page, recs) in self.pages.range(pages.start..=pages.end) {
            for r in recs {
                let i = &self.installs[r.install];
                if i.in_gap || i.task.tid != tid || i.ts < entry_ts || i.ts > exit_ts {
                    continue;
                }
                c.installed += 1;
                match Outcome::of(r.removal, folio_source) {
                    Outcome::Rezapped => c.rezapped += 1,
                    Outcome::Stale { .. } => c.stale += 1,
                    Outcome::StillMappedAfterWindow => {
                        c.still_mapped += 1;
                        if whole.is_some_and(|w| w.contains(*page)) {
                            inside += 1;
                        }
                    }
                    Outcome::Unknown => c.unknown += 1,
                }
            }
        }
        (c, inside)
    }

    pub fn clear(&mut self) {
        self.installs.clear();
        self.pages.clear();
    }
}
