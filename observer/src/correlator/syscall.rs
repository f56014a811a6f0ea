//! Invalidating syscalls: the op a window takes, the windows a syscall
//! opened and the end its return puts to them.

use super::{Alert, Correlator};
use crate::event::{Fidelity, FileId, Op, PageRange, Task};

/// The syscall a task is inside, and the windows it opened or resumed there.
pub(super) struct Syscall {
    op: Op,
    /// The file it names (unknown for truncate(2) and madvise).
    file: FileId,
    /// Tracepoint mode, a syscall that named no file (truncate(2),
    /// madvise): the range its window takes once a removal names the file.
    unnamed: Option<PageRange>,
    windows: Vec<(FileId, u64)>,
    /// Files on which the task has a class-B window in this syscall.
    refill_files: Vec<FileId>,
}

impl Correlator {
    /// The op of the invalidating syscall `tid` is inside, if any.
    pub(super) fn syscall_op(&self, tid: u32) -> Op {
        self.syscalls
            .get(&tid)
            .map(|s| s.op)
            .filter(|op| op.invalidates())
            .unwrap_or(Op::Unknown)
    }

    /// Whether some task is inside a syscall that may move `file`'s EOF
    /// (one naming no file may be on any).
    pub(super) fn size_changing_syscall_on(&self, file: FileId) -> bool {
        self.syscalls
            .values()
            .any(|sc| sc.op.changes_size() && (sc.file == file || sc.file.is_unknown()))
    }

    pub(super) fn note_in_syscall(&mut self, tid: u32, file: FileId, id: u64) {
        if let Some(sc) = self.syscalls.get_mut(&tid)
            && !sc.windows.contains(&(file, id))
        {
            sc.windows.push((file, id));
        }
    }

    /// The task's syscall has a class-B window on `file`: its return ends it.
    pub(super) fn note_refill_file(&mut self, tid: u32, file: FileId) {
        if let Some(sc) = self.syscalls.get_mut(&tid)
            && !sc.refill_files.contains(&file)
        {
            sc.refill_files.push(file);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn syscall_enter(
        &mut self,
        ts: u64,
        file: FileId,
        task: Task,
        fidelity: Fidelity,
        op: Op,
        range: PageRange,
        out: &mut Vec<Alert>,
    ) {
        let tid = task.tid;
        // A previous syscall whose exit was lost is simply superseded; its
        // class-B windows can grow no more.
        let previous = self.syscalls.insert(
            tid,
            Syscall {
                op,
                file,
                unnamed: (self.cfg.syscall_windows && op.invalidates() && file.is_unknown())
                    .then_some(range),
                windows: Vec::new(),
                refill_files: Vec::new(),
            },
        );
        if let Some(sc) = previous {
            self.end_refills(tid, &sc, out);
        }
        if !(self.cfg.syscall_windows && op.invalidates() && !file.is_unknown()) {
            return;
        }
        let fidelity = fidelity.weaker(Fidelity::Tracepoint);
        let current = self
            .files
            .get(&file)
            .and_then(|fw| fw.active.iter().find(|w| w.tid() == tid))
            .map(|w| w.id);
        match current {
            Some(id) => {
                if let Some(w) = self.window_mut(file, id) {
                    if w.closed_ts.is_some() {
                        w.resume();
                    }
                    w.by_syscall = true;
                    w.absorb(range, fidelity);
                    if w.op == Op::Unknown {
                        w.op = op;
                    }
                }
                self.note_in_syscall(tid, file, id);
            }
            None => {
                self.open_window(ts, file, task, fidelity, range, op, true);
            }
        }
    }

    /// Tracepoint mode: the first folio a file-less syscall removes names
    /// the file its window is on (the kernel side did the same).
    pub(super) fn adopt_syscall_file(
        &mut self,
        ts: u64,
        file: FileId,
        task: &Task,
        fidelity: Fidelity,
    ) {
        let Some(range) = self
            .syscalls
            .get_mut(&task.tid)
            .and_then(|sc| sc.unnamed.take())
        else {
            return;
        };
        let op = self.syscall_op(task.tid);
        let fidelity = fidelity.weaker(Fidelity::Tracepoint);
        self.open_window(ts, file, task.clone(), fidelity, range, op, true);
    }

    /// The syscall's return ends every operation it performed: the task
    /// cannot resume them, so waiting out the op gap would only glue
    /// back-to-back punches into one window. A call that failed (`ret < 0`)
    /// and removed nothing was no invalidation: its syscall-made windows
    /// are dropped and the call is counted as failed instead.
    pub(super) fn syscall_exit(&mut self, ts: u64, tid: u32, ret: i32, out: &mut Vec<Alert>) {
        let Some(sc) = self.syscalls.remove(&tid) else {
            return;
        };
        let failed = ret < 0;
        let mut invalidated = false;
        for &(file, id) in &sc.windows {
            let Some(w) = self.window_mut(file, id) else {
                continue;
            };
            if failed && w.calls == 0 && w.removed == 0 {
                self.discard(file, id);
                continue;
            }
            invalidated = true;
            // Depth above zero here means an exit record was lost: the calls
            // are over all the same.
            if w.closed_ts.is_none() {
                w.closed_ts = Some(ts);
            }
            self.final_close(file, id, out);
        }
        self.end_refills(tid, &sc, out);
        if failed && !invalidated && sc.op.invalidates() {
            self.stats.failed_calls.count(sc.op);
        }
    }

    /// The task's syscall is over: no later block removal can move the close
    /// of its class-B windows, so they are evaluated now.
    pub(super) fn end_refills(&mut self, tid: u32, sc: &Syscall, out: &mut Vec<Alert>) {
        for &file in &sc.refill_files {
            let Some(fw) = self.files.get_mut(&file) else {
                continue;
            };
            let Some(pos) = fw.refills.iter().position(|b| b.tid() == tid) else {
                continue;
            };
            let b = fw.refills.remove(pos);
            if fw.is_empty() {
                self.files.remove(&file);
            }
            let alerts = b.evaluate(file, &mut self.stats.classes.b);
            self.count_alerts(&alerts);
            out.extend(alerts);
        }
    }
}
