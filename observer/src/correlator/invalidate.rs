//! The invalidators' own records: a punch or truncate's unmap and truncate
//! calls open, glue and tentatively close its window.

use super::*;

impl Correlator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invalidate_enter(
        &mut self,
        ts: u64,
        file: FileId,
        task: Task,
        fidelity: Fidelity,
        which: Invalidator,
        lock: InvalidateLock,
        range: PageRange,
        stack_id: Option<u32>,
        out: &mut Vec<Alert>,
    ) {
        let tid = task.tid;
        let gap = self.cfg.op_gap_ns;
        let current = self
            .files
            .get(&file)
            .and_then(|fw| fw.active.iter().find(|w| w.tid() == tid))
            .map(|w| (w.id, w.closed_ts));
        let resumed = match current {
            None => None,
            Some((id, None)) => Some(id),
            // Late events can come before the close: saturating keeps them in.
            Some((id, Some(closed))) if ts.saturating_sub(closed) <= gap => Some(id),
            Some((id, Some(_))) => {
                self.final_close(file, id, out);
                None
            }
        };
        let op = self.syscall_op(tid);
        let id = match resumed {
            Some(id) => {
                if let Some(w) = self.window_mut(file, id) {
                    if w.closed_ts.is_some() {
                        w.resume();
                    }
                    w.depth += 1;
                    w.calls += 1;
                    w.absorb(range, fidelity);
                    if w.op == Op::Unknown {
                        w.op = op;
                    }
                }
                self.note_in_syscall(tid, file, id);
                id
            }
            None => self.open_window(ts, file, task.clone(), fidelity, range, op, false),
        };
        let Some(w) = self.window_mut(file, id) else {
            return;
        };
        w.transition(None, stack_id);
        if which == Invalidator::Unmap {
            w.unmapped = Some(w.unmapped.map_or(range, |u| u.union(&range)));
        }
        let unmapped = w.unmapped;
        let fw = self.files.entry(file).or_default();
        if let Some(b) = fw.refills.iter_mut().find(|b| b.tid() == tid) {
            b.transition(fidelity, stack_id);
            match which {
                Invalidator::Unmap => {
                    b.unmapped = Some(b.unmapped.map_or(range, |u| u.union(&range)));
                }
                Invalidator::Truncate | Invalidator::ShmemUndo => {
                    b.range = b.range.union(&range);
                    b.lock_seen(lock);
                }
            }
            return;
        }
        // Class B opens at the first truncate of an invalidating syscall.
        if which == Invalidator::Unmap || op == Op::Unknown {
            return;
        }
        fw.refills.push(RefillWindow {
            window_id: id,
            task,
            op,
            opened_ts: ts,
            range,
            unmapped,
            truncate_exit_ts: None,
            fs_exit: None,
            fidelity,
            punch_stack: stack_id,
            close_stack: None,
            lock: lock.seen_by(tid),
            refills: Vec::new(),
            test: self.current_test.clone(),
        });
        self.note_refill_file(tid, file);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn invalidate_exit(
        &mut self,
        ts: u64,
        file: FileId,
        tid: u32,
        fidelity: Fidelity,
        which: Invalidator,
        range: PageRange,
        stack_id: Option<u32>,
    ) {
        let gap = self.cfg.op_gap_ns;
        let Some(fw) = self.files.get_mut(&file) else {
            return;
        };
        if let Some(b) = fw.refills.iter_mut().find(|b| b.tid() == tid) {
            b.transition(fidelity, stack_id);
            if which != Invalidator::Unmap {
                b.truncate_exit_ts = Some(ts);
            }
        }
        // An exit whose entry we never saw (probe attached mid-call) has no
        // window, or finds it already closed: nothing to end.
        let Some(w) = fw
            .active
            .iter_mut()
            .find(|w| w.tid() == tid && w.closed_ts.is_none())
        else {
            return;
        };
        w.absorb(range, fidelity);
        w.transition(None, stack_id);
        if which == Invalidator::Unmap {
            w.last_unmap_exit = Some(ts);
        }
        w.depth = w.depth.saturating_sub(1);
        if w.depth == 0 && !w.by_syscall {
            w.closed_ts = Some(ts);
            self.close_deadlines
                .push(Reverse((ts.saturating_add(gap), file, w.id)));
        }
    }
}
