//! Records, counters and the kernel-side window table (the pre-filter).

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};
use observer_abi::{
    COUNTER_EMITTED, COUNTER_FILTERED, COUNTER_FILTERED_RANGE, COUNTER_LOST, Config, Event,
    FileKey, Kind, NO_STACK, SCOPE_CGROUP, SCOPE_HOST, WindowState, probes::Prog,
};

use core::ptr::{read_volatile, write_volatile};

use crate::{
    kernel::config,
    maps::{COUNTERS, EVENTS, HITS, OPEN_ANY, SCOPE_TASKS, WINDOWS},
};

/// bpf_ringbuf_submit flags and bpf_ringbuf_query's (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Counts one run of `prog`.
#[inline(always)]
pub fn hit(prog: Prog) {
    if let Some(c) = HITS.get_ptr_mut(prog as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}

/// Whether the current task's activity is not reported: the agent's own
/// never is, and with `observer run --scope cmd` nothing outside the
/// command's cgroup or process tree.
#[inline(always)]
pub fn ignored(cfg: &Config) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == cfg.self_tgid {
        return true;
    }
    match cfg.scope {
        SCOPE_HOST => false,
        // The task's own cgroup: bpf_get_current_ancestor_cgroup_id would
        // also follow the command's tasks into cgroups of their own, but
        // tracing programs on 5.10 may not call it.
        SCOPE_CGROUP => (unsafe { bpf_get_current_cgroup_id() }) != cfg.scope_cgroup_id,
        _ => unsafe { SCOPE_TASKS.get(&tgid) }.is_none(),
    }
}

/// What a probe reports; [`send`] adds the task. Fields as in
/// `observer_abi::Event`.
#[derive(Clone, Copy)]
pub struct Record {
    pub kind: Kind,
    pub fidelity: u8,
    pub ts: u64,
    pub entry_ts: u64,
    pub key: FileKey,
    pub start: u64,
    pub end: u64,
    pub aux: u64,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// A `STACKS` id or `NO_STACK`.
    pub stack_id: i32,
    pub ret: i32,
}

impl Record {
    /// A record of `kind` about pages `start..=end` of `key` at `ts`, with
    /// nothing else to say.
    #[inline(always)]
    pub fn new(kind: Kind, fidelity: u8, ts: u64, key: FileKey, start: u64, end: u64) -> Record {
        Record {
            kind,
            fidelity,
            ts,
            entry_ts: ts,
            key,
            start,
            end,
            aux: 0,
            flags: 0,
            stack_id: NO_STACK,
            ret: 0,
        }
    }
}

/// Sends one record. A full ring buffer is counted, per kind, never hidden.
#[inline(always)]
pub fn send(r: Record) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(COUNTER_LOST + r.kind as u32);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    slot.write(Event {
        ts: r.ts,
        entry_ts: r.entry_ts,
        ino: r.key.ino,
        start: r.start,
        end: r.end,
        aux: r.aux,
        dev: r.key.dev,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        kind: r.kind as u8,
        fidelity: r.fidelity,
        flags: r.flags,
        _pad: 0,
        comm,
        stack_id: r.stack_id,
        ret: r.ret,
    });
    // No wakeup per record (under a steady trickle that is nearly every
    // record, and a wakeup costs more than the record): the agent polls the
    // ring on a short interval, and a ring filling up wakes it at once.
    let wake = match config() {
        Some(cfg) if EVENTS.query(BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes as u64 => {
            BPF_RB_FORCE_WAKEUP
        }
        _ => BPF_RB_NO_WAKEUP,
    };
    slot.submit(wake);
    count(COUNTER_EMITTED + r.kind as u32);
}

/// BPF has no atomic RMW in `core` for this target; XADD is in every BPF
/// ISA version. Adding `u64::MAX` subtracts one.
#[inline(always)]
fn atomic_add(ptr: *mut u64, val: u64) {
    unsafe { core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) ptr, in(reg) val) };
}

/// Keeps `OPEN_ANY` in step with every change of a file's `open` count, so
/// that it is never below their sum (LRU evictions of open entries only
/// leave it higher, which costs speed, not records).
#[inline(always)]
fn open_any_add(val: u64) {
    if let Some(n) = OPEN_ANY.get_ptr_mut(0) {
        atomic_add(n, val);
    }
}

/// Syscall windows (tracepoint mode) whose file the syscall did not name:
/// truncate(2) names a path, madvise an address.
#[inline(always)]
pub fn unnamed_add(val: u64) {
    if let Some(n) = OPEN_ANY.get_ptr_mut(1) {
        atomic_add(n, val);
    }
}

#[inline(always)]
pub fn any_unnamed() -> bool {
    OPEN_ANY.get(1).is_some_and(|n| *n != 0)
}

/// Syscall entries in STASH. The exit programs of ioctl and madvise run on
/// every such call on the machine; with nothing stashed they return after
/// this array read instead of a hash lookup.
#[inline(always)]
pub fn stashed_add(val: u64) {
    if let Some(n) = OPEN_ANY.get_ptr_mut(2) {
        atomic_add(n, val);
    }
}

#[inline(always)]
pub fn any_stashed() -> bool {
    OPEN_ANY.get(2).is_some_and(|n| *n != 0)
}

/// Whether any file at all has a window open (a cheap first test for probes
/// on hot paths).
#[inline(always)]
pub fn any_window_open() -> bool {
    match OPEN_ANY.get(0) {
        Some(n) => *n != 0,
        None => true,
    }
}

/// Whether `key` has a window open right now.
#[inline(always)]
pub fn window_is_open(key: &FileKey) -> bool {
    match unsafe { WINDOWS.get(key) } {
        Some(w) => w.open > 0,
        None => false,
    }
}

/// A page-cache add on `key` while a window is open: bumps the count of
/// such adds before the add takes its timestamp, so that a removal timed
/// after it reads the new count (see `probe::folio_delete`). Whether a
/// window is open.
#[inline(always)]
pub fn window_add_seen(key: &FileKey) -> bool {
    if !window_is_open(key) {
        return false;
    }
    if let Some(n) = OPEN_ANY.get_ptr_mut(3) {
        atomic_add(n, 1);
    }
    true
}

/// Page-cache adds seen on any file with a window open, so far: one array
/// read, where a per-file count would take a hash lookup per removal.
#[inline(always)]
pub fn window_adds() -> u64 {
    match OPEN_ANY.get_ptr_mut(3) {
        Some(n) => unsafe { read_volatile(n) },
        None => 0,
    }
}

/// An invalidation of `key` began: map_pages on it must now reach the agent.
/// Whether it found itself the file's only window (then it may publish its
/// range with [`window_range`]).
#[inline(always)]
pub fn window_open(key: &FileKey) -> bool {
    if let Some(w) = WINDOWS.get_ptr_mut(key) {
        return window_join(w);
    }
    let fresh = WindowState {
        open: 1,
        ..WindowState::default()
    };
    // A racing insert by another CPU wins; then count on the winner.
    if WINDOWS.insert(key, &fresh, 1 /* BPF_NOEXIST */).is_ok() {
        open_any_add(1);
        return true;
    }
    match WINDOWS.get_ptr_mut(key) {
        Some(w) => window_join(w),
        None => false,
    }
}

#[inline(always)]
fn window_join(w: *mut WindowState) -> bool {
    unsafe {
        atomic_add(&raw mut (*w).open, 1);
        open_any_add(1);
        read_volatile(&raw const (*w).open) == 1
    }
}

#[inline(always)]
pub fn window_close(key: &FileKey, ts: u64) {
    if let Some(w) = WINDOWS.get_ptr_mut(key) {
        unsafe {
            // Before the count drops: for a moment no range is known, rather
            // than this window's range standing for another one's.
            if read_volatile(&raw const (*w).owner) == tid() {
                write_volatile(&raw mut (*w).owner, 0);
            }
            // Exits seen without their entry (attached mid-call) must not
            // drive the count below zero.
            if (*w).open > 0 {
                atomic_add(&raw mut (*w).open, u64::MAX);
                open_any_add(u64::MAX);
            }
            (*w).closed_at = ts;
        }
    }
}

/// The current task's window on `key`, which [`window_open`] found alone,
/// covers pages `start..=end`: while it stays the file's only one,
/// fault-arounds elsewhere in the file are counted, not sent. The owner is
/// written last, so a reader that sees it sees the range.
#[inline(always)]
pub fn window_range(key: &FileKey, start: u64, end: u64) {
    let Some(w) = WINDOWS.get_ptr_mut(key) else {
        return;
    };
    unsafe {
        let generation = read_volatile(&raw const (*w).generation).wrapping_add(1);
        write_volatile(&raw mut (*w).generation, generation);
        write_volatile(&raw mut (*w).start, start);
        write_volatile(&raw mut (*w).end, end);
        write_volatile(&raw mut (*w).owner, tid());
    }
}

/// Whether a fault-around point on pages `start..=end` of `key` may meet a
/// window: some window is open, and (while there is only one, of known
/// range) it covers some of the pages. The state is read before and after
/// the range, so a window opening, closing or rewriting its range meanwhile
/// makes it send.
#[inline(always)]
pub fn point_meets_window(key: &FileKey, start: u64, end: u64) -> bool {
    let Some(w) = WINDOWS.get_ptr_mut(key) else {
        count(COUNTER_FILTERED);
        return false;
    };
    let before = unsafe { state_of(w) };
    if before.0 == 0 {
        count(COUNTER_FILTERED);
        return false;
    }
    if before.0 != 1 || before.1 == 0 {
        return true;
    }
    let (first, last) = unsafe {
        (
            read_volatile(&raw const (*w).start),
            read_volatile(&raw const (*w).end),
        )
    };
    if unsafe { state_of(w) } != before || (start <= last && first <= end) {
        return true;
    }
    count(COUNTER_FILTERED_RANGE);
    false
}

/// (open, owner, generation) of a window entry.
#[inline(always)]
unsafe fn state_of(w: *const WindowState) -> (u64, u32, u32) {
    unsafe {
        (
            read_volatile(&raw const (*w).open),
            read_volatile(&raw const (*w).owner),
            read_volatile(&raw const (*w).generation),
        )
    }
}

/// Whether a map_pages call on `key` that ran since `entry_ts` may have met a
/// window: one is open now, or one closed after the call entered.
#[inline(always)]
pub fn worth_sending(cfg: &Config, key: &FileKey, entry_ts: u64) -> bool {
    if cfg.full_stream != 0 {
        return true;
    }
    let hit = match unsafe { WINDOWS.get(key) } {
        Some(w) => w.open > 0 || w.closed_at >= entry_ts,
        None => false,
    };
    if !hit {
        count(COUNTER_FILTERED);
    }
    hit
}
