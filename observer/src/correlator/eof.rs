//! Class C: page-exact installs at or past the file's EOF.
//!
//! The kernel program sends every PTE or PMD install that reaches at or past
//! EOF by the i_size it read as the install went in, window or not. A
//! truncate writes i_size before it unmaps, so a fault-around that read the
//! old size may install past the new EOF, and the truncate's unmap zaps it:
//! legitimate when a size change on the file is under way, or begins within
//! the op gap after (in fentry mode the window opens only at the unmap).
//! tmpfs maps its huge pages across EOF by design. Everything else is
//! `beyond_eof`: a mapping where an access must raise SIGBUS.

use observer_abi::eof_page;

use super::Correlator;
use super::alert::{Alert, Evidence, Finding, Severity, StackIds};
use super::window::Window;
use crate::event::{Fidelity, FileId, Op, PageRange, Task};

/// One install record with the file's size, and, once nothing explained it
/// within the op gap, the `beyond_eof` alert it becomes.
#[derive(Clone, Debug)]
pub(super) struct PendingEof {
    pub ts: u64,
    pub file: FileId,
    pub task: Task,
    pub pages: PageRange,
    pub i_size: u64,
    pub pmd: bool,
    pub stack_id: Option<u32>,
    pub fidelity: Fidelity,
}

impl PendingEof {
    fn alert(self, window: Option<&Window>) -> Alert {
        Alert {
            finding: Finding::BeyondEof {
                i_size: self.i_size,
                pmd: self.pmd,
            },
            severity: Severity::Critical,
            ts: self.ts,
            file: self.file,
            task: self.task,
            pages: self.pages,
            window: window.map(|w| w.info(self.ts)),
            fidelity: self.fidelity,
            map_fidelity: self.fidelity,
            window_fidelity: self.fidelity,
            evidence: Evidence {
                stack_ids: StackIds {
                    victim: self.stack_id,
                    punch: None,
                },
            },
        }
    }
}

impl Correlator {
    /// An install record with the file's size: counted if it reaches EOF.
    pub(super) fn eof_install(&mut self, install: PendingEof, shmem: bool) {
        if install.pages.end < eof_page(install.i_size) {
            return;
        }
        let c = &mut self.stats.classes.c;
        c.installs_past_eof += 1;
        if install.pmd {
            c.pmd += 1;
        }
        if shmem && self.cfg.shmem_eof_exempt {
            c.shmem += 1;
        } else if self.size_changing_at(install.file, install.ts) {
            self.stats.classes.c.during_size_change += 1;
            self.hold_for_truncate(install);
        } else {
            self.eof_pending.push_back(install);
        }
    }

    /// An install past the EOF it read, during a truncate of its pages: the
    /// truncate's window checks at its close that it did not survive.
    fn hold_for_truncate(&mut self, install: PendingEof) {
        let Some(fw) = self.files.get_mut(&install.file) else {
            return;
        };
        if let Some(w) = fw.active.iter_mut().find(|w| {
            // Tentatively closed ones too: the last unmap's exit closes the
            // window until the syscall returns, and what comes in between
            // is what no zap pass follows.
            matches!(w.op, Op::Ftruncate | Op::Truncate)
                && w.opened_ts <= install.ts
                && w.pages.overlaps(&install.pages)
        }) {
            w.eof_explained.push(install);
        }
    }

    /// Whether `file`'s size may be changing at `ts`: a size-changing window
    /// on it open then (or closed within the op gap before), or such a
    /// syscall in progress.
    fn size_changing_at(&self, file: FileId, ts: u64) -> bool {
        let gap = self.cfg.op_gap_ns;
        let window = self.files.get(&file).is_some_and(|fw| {
            fw.active.iter().chain(fw.retained.iter()).any(|w| {
                w.op.changes_size()
                    && w.opened_ts <= ts.saturating_add(gap)
                    && w.closed_ts.is_none_or(|c| c.saturating_add(gap) >= ts)
            })
        });
        window || self.size_changing_syscall_on(file)
    }

    /// A size-changing window opened on `file` at `ts`: it explains the
    /// installs past EOF on the file within the op gap before.
    pub(super) fn size_change_began(&mut self, file: FileId, ts: u64) {
        let gap = self.cfg.op_gap_ns;
        let before = self.eof_pending.len();
        self.eof_pending
            .retain(|p| !(p.file == file && p.ts.saturating_add(gap) >= ts));
        self.stats.classes.c.during_size_change += (before - self.eof_pending.len()) as u64;
    }

    /// Installs whose op gap has passed with no size change: `beyond_eof`,
    /// each an alert. `all`: the stream ended, nothing can explain them any
    /// more.
    pub(super) fn settle_eof(&mut self, all: bool, out: &mut Vec<Alert>) {
        let gap = self.cfg.op_gap_ns;
        let before = out.len();
        while let Some(p) = self.eof_pending.front() {
            if !all && p.ts.saturating_add(gap) >= self.clock {
                break;
            }
            let Some(p) = self.eof_pending.pop_front() else {
                break;
            };
            self.stats.classes.c.beyond_eof += 1;
            out.push(p.alert(None));
        }
        self.count_alerts(&out[before..]);
    }
}

impl Window {
    /// Case (b) of class C, at the truncate window's final close: an install
    /// past the EOF it read that came after the window's last unmap (so no
    /// zap pass followed it) and whose folio never left the cache is a
    /// mapping past the new EOF that outlived the truncate. Installs before
    /// that unmap's exit are taken as zapped: the unmap walks the whole
    /// range after i_size is written.
    pub(super) fn eof_survivors(&mut self) -> Vec<Alert> {
        let Some(last_unmap) = self.last_unmap_exit else {
            return Vec::new();
        };
        let explained = std::mem::take(&mut self.eof_explained);
        explained
            .into_iter()
            .filter(|e| {
                let past = PageRange::new(eof_page(e.i_size).max(e.pages.start), e.pages.end);
                e.ts > last_unmap && self.ptes.survived(&past, e.ts, e.task.tid)
            })
            .map(|e| e.alert(Some(self)))
            .collect()
    }
}
