use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use observer_abi::{COUNTERS as COUNTER_SLOTS, Config, FileKey, WindowState, probes::PROG_COUNT};

/// Records for the agent. Resized by the agent at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 21, 0);

/// Offsets from the running kernel's BTF and tracefs, written before attach.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The pre-filter: per file, invalidations in flight and the last close.
/// LRU so that a host with millions of files never fills it.
#[map]
pub static WINDOWS: LruHashMap<FileKey, WindowState> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Runs of each program (`Prog` as the index): probe health. A program
/// that never ran while its partner ran thousands of times is a probe that
/// went silent.
#[map]
pub static HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROG_COUNT as u32, 0);

/// What an entry probe learnt, for its exit probe (kretprobes see no
/// arguments; fexit does, but one path for both keeps them identical).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stash {
    pub ts: u64,
    pub key: FileKey,
    pub start: u64,
    pub end: u64,
    pub aux: u64,
    /// The record's `FLAG_*` bits.
    pub flags: u64,
}

/// Keyed by tid << 8 | record kind of the entry. An LRU, so that entries
/// whose exit never came (a missed return) cannot fill it; an evicted
/// entry's exit is counted (COUNTER_NO_ENTRY).
#[map]
pub static STASH: LruHashMap<u64, Stash> = LruHashMap::with_max_entries(16384, 0);

/// Kernel stacks of PteInstall, FolioAdd and window enter/exit records
/// (`Event::stack_id`). A hash collision with another stack gives NO_STACK.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(2048, 0);

/// Slot 0: sum of all files' `WindowState::open` (never below it: see
/// `emit::window_open`). Zero means no file has a window open, which lets the
/// per-PTE probe return before reading any kernel memory. Slot 1: syscall
/// windows in flight whose file is not known yet (tracepoint mode). Slot 2:
/// syscall entries stashed and not yet exited (never below the truth).
/// Slot 3: page-cache adds seen on any file with a window open (a removal
/// run never spans one).
#[map]
pub static OPEN_ANY: Array<u64> = Array::with_max_entries(4, 0);

/// `--scope cmd` without cgroup2: the tgids of the command's process tree.
/// The command adds itself before it execs; sched_process_fork adds its
/// children, sched_process_exit removes them.
#[map]
pub static SCOPE_TASKS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

/// The file of each task's most recent invalidation (unmap/truncate entry),
/// for filesystem probes that see a module-private inode type whose layout
/// the agent could not read (no module BTF).
#[map]
pub static LAST_FILE: LruHashMap<u32, FileKey> = LruHashMap::with_max_entries(4096, 0);

/// A run of folio removals a task has not sent yet (`probe::folio_delete`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Run {
    /// The folios' `address_space`: what a removal can compare after one
    /// read, where its file key takes four.
    pub mapping: u64,
    pub key: FileKey,
    pub start: u64,
    pub end: u64,
    pub folios: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// `OPEN_ANY[3]` when the run began.
    pub adds: u64,
    pub fidelity: u64,
}

/// Keyed by tid. Not an LRU: an eviction would lose removals silently,
/// while a failed insert only sends that removal on its own. An entry lives
/// from a task's first removal inside an invalidation to the invalidation's
/// exit, which sends it.
#[map]
pub static RUNS: HashMap<u32, Run> = HashMap::with_max_entries(4096, 0);

/// Bytes of a folio `kernel::FolioHead` copies: two `struct page`s (64 bytes
/// each on x86-64).
pub const FOLIO_HEAD_BYTES: usize = 128;

/// The copy, per CPU, with 8 bytes of slack past it so that any masked
/// offset the verifier sees stays inside the value.
#[map]
pub static FOLIO_HEAD: PerCpuArray<[u8; FOLIO_HEAD_BYTES + 8]> =
    PerCpuArray::with_max_entries(1, 0);
