//! The agent's view of what the kernel reported: decoded, typed records that the
//! correlator consumes. Nothing here knows about ring buffers or BPF.

use std::fmt;

use observer_abi::filesystems::{self, Filesystem, Remover};

/// How an event was observed: the attach method of its program (the probe
/// table's, best first; the weaker of two is the greater).
pub use observer_abi::probes::Method as Fidelity;

/// A file as the kernel names it: `super_block::s_dev` (kernel dev_t encoding,
/// major << 20 | minor) and the inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    pub fn major(self) -> u32 {
        self.dev >> 20
    }
    pub fn minor(self) -> u32 {
        self.dev & 0xf_ffff
    }
    /// A syscall window whose file could not be resolved in the kernel.
    pub fn is_unknown(self) -> bool {
        self.ino == 0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ino {}", self.major(), self.minor(), self.ino)
    }
}

/// Page indexes, both ends inclusive. `end == EOF` means "to the end of file".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageRange {
    pub start: u64,
    pub end: u64,
}

impl PageRange {
    pub const EOF: u64 = u64::MAX;

    pub fn new(start: u64, end: u64) -> Self {
        PageRange { start, end }
    }
    pub fn overlaps(&self, other: &PageRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
    pub fn union(&self, other: &PageRange) -> PageRange {
        PageRange::new(self.start.min(other.start), self.end.max(other.end))
    }
    pub fn contains(&self, page: u64) -> bool {
        self.start <= page && page <= self.end
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end == Self::EOF {
            write!(f, "{}-EOF", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

/// The two kernel functions that invalidate a file range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invalidator {
    /// `unmap_mapping_range`: zaps PTEs of the range.
    Unmap,
    /// `truncate_inode_pages_range`: removes the folios from the page cache.
    Truncate,
    /// `shmem_undo_range`: tmpfs's own removal of a range.
    ShmemUndo,
}

/// The filesystem function that frees a punched range's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FsRemover(u64);

impl FsRemover {
    /// The remover whose records carry this `FS_REMOVE_*` code.
    pub fn from_code(code: u64) -> Option<FsRemover> {
        filesystems::by_code(code).map(|_| FsRemover(code))
    }

    fn entry(self) -> (&'static Filesystem, &'static Remover) {
        filesystems::by_code(self.0).expect("made from a known code")
    }

    pub fn as_str(self) -> &'static str {
        self.entry().1.function
    }

    /// Its filesystem's policy.
    pub fn filesystem(self) -> &'static Filesystem {
        self.entry().0
    }
}

/// The file's `mapping->invalidate_lock` when a record was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidateLock {
    /// The kernel has none (before 5.15, PREEMPT_RT) or it was unreadable.
    #[default]
    NotExposed,
    /// Free or held shared (readers filling the cache take it shared).
    NotWriteHeld,
    /// Held for writing by this task (0: its owner word was unreadable).
    WriteHeld { tid: u32 },
}

impl InvalidateLock {
    pub fn from_aux(aux: u64) -> Self {
        if aux & observer_abi::LOCK_EXPOSED == 0 {
            InvalidateLock::NotExposed
        } else if aux & observer_abi::LOCK_WRITE_HELD == 0 {
            InvalidateLock::NotWriteHeld
        } else {
            InvalidateLock::WriteHeld {
                tid: (aux >> observer_abi::LOCK_OWNER_SHIFT) as u32,
            }
        }
    }

    /// The lock as seen by the task `puncher`.
    pub fn seen_by(self, puncher: u32) -> LockHolder {
        match self {
            InvalidateLock::NotExposed => LockHolder::NotExposed,
            InvalidateLock::NotWriteHeld => LockHolder::NotHeld,
            InvalidateLock::WriteHeld { tid } if tid == puncher => LockHolder::Puncher,
            InvalidateLock::WriteHeld { .. } => LockHolder::Other,
        }
    }
}

/// Who held a file's invalidate_lock for writing, relative to a punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockHolder {
    NotExposed,
    NotHeld,
    Puncher,
    Other,
}

impl LockHolder {
    pub fn as_str(self) -> &'static str {
        match self {
            LockHolder::NotExposed => "not_exposed",
            LockHolder::NotHeld => "not_held",
            LockHolder::Puncher => "held_by_puncher",
            LockHolder::Other => "held_by_other",
        }
    }
}

/// The user-visible operation behind a window, when a syscall told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    PunchHole,
    ZeroRange,
    CollapseRange,
    InsertRange,
    /// fallocate with a mode that does not invalidate (e.g. plain allocation).
    Fallocate {
        mode: u32,
    },
    Ftruncate,
    Truncate,
    /// madvise(MADV_REMOVE).
    MadvRemove,
    /// ioctl FICLONE, FICLONERANGE, FIDEDUPERANGE on the destination.
    Clone,
    CloneRange,
    DedupeRange,
    Unknown,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::PunchHole => "punch_hole",
            Op::ZeroRange => "zero_range",
            Op::CollapseRange => "collapse_range",
            Op::InsertRange => "insert_range",
            Op::Fallocate { .. } => "fallocate",
            Op::Ftruncate => "ftruncate",
            Op::Truncate => "truncate",
            Op::MadvRemove => "madv_remove",
            Op::Clone => "clone",
            Op::CloneRange => "clone_range",
            Op::DedupeRange => "dedupe_range",
            Op::Unknown => "unknown",
        }
    }
    /// Whether the operation moves the file's EOF (or may: an unknown
    /// op), so that installs past the new EOF can be legitimate.
    pub fn changes_size(self) -> bool {
        matches!(
            self,
            Op::Ftruncate | Op::Truncate | Op::CollapseRange | Op::InsertRange | Op::Unknown
        )
    }

    /// Whether this syscall drops page cache for its range.
    pub fn invalidates(self) -> bool {
        !matches!(self, Op::Fallocate { .. } | Op::Unknown)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Entry of an invalidating function for `range` of the file.
    InvalidateEnter {
        /// The file's invalidate_lock as the call began.
        lock: InvalidateLock,
        which: Invalidator,
        range: PageRange,
    },
    /// Exit of the same call (range repeated for convenience).
    InvalidateExit {
        which: Invalidator,
        range: PageRange,
    },
    /// A `filemap_map_pages` call that ran from `entry_ts` to the event's `ts`
    /// and was asked to map `range`. Tracepoint mode: `entry_ts == ts`.
    MapPages {
        entry_ts: u64,
        range: PageRange,
    },
    /// An invalidating-capable syscall began. `range` is what it targets.
    /// The file is unknown (`ino == 0`) for truncate(2) by path.
    SyscallEnter {
        op: Op,
        range: PageRange,
    },
    /// The syscall returned `ret` (a negative errno when it failed).
    SyscallExit {
        op: Op,
        ret: i32,
    },
    /// A folio left the page cache (filemap:mm_filemap_delete_from_page_cache).
    /// `still_mapped` is Some when the probe could read the mapcount: true
    /// means a PTE still maps the folio as it leaves (a freed page mapped).
    /// `folios` > 1: a run of contiguous folios that one task removed inside
    /// one invalidation, none mapped, with no page-cache add on the file
    /// between the first and the last (`ts`), so that every add and install
    /// is either before the whole run or after it.
    FolioDelete {
        /// The folio's pages (more than one for a large folio), or the run's.
        range: PageRange,
        folios: u64,
        /// When the (last) folio left the cache. A run is sent when it ends,
        /// and the event's `ts`, which orders it, is that send: events
        /// between the two are before the removal's send but after the
        /// removal, and the outcomes go by this time.
        removed_ts: u64,
        /// The folio's pfn; 0 for a run.
        pfn: u64,
        still_mapped: Option<bool>,
    },
    /// PTEs were installed for `range` (page-exact, from the kernel's PTE
    /// installer) by the event's task.
    PteInstall {
        range: PageRange,
        /// The file's size in bytes as the PTEs went in (None: the kernel's
        /// BTF has no `inode.i_size`).
        i_size: Option<u64>,
        /// One PMD (do_set_pmd) maps the range.
        pmd: bool,
        /// The file is on tmpfs.
        shmem: bool,
    },
    /// Folios entered the page cache for `range`. `uptodate`: already filled
    /// when added (not read from disk).
    FolioAdd {
        range: PageRange,
        uptodate: bool,
        lock: InvalidateLock,
    },
    /// The filesystem's block removal for the punched range began / ended.
    FsRemoveEnter {
        fs: FsRemover,
        lock: InvalidateLock,
    },
    FsRemoveExit {
        fs: FsRemover,
    },
    /// A test of the running suite began (a kernel-log marker).
    TestStart {
        name: String,
    },
    /// The kernel began one of its reports of this bug class: the windows
    /// open now are kept until the report is whole and joins them.
    ReportBegins,
    /// One of the kernel's own reports of this bug class (kernel log), whole;
    /// it comes later than its own time.
    KernelReport(crate::kmsg::KernelReport),
}

impl Body {
    /// From the kernel log, not the probes: such events reach the agent
    /// later than the ring buffer's and are never counted late.
    pub fn is_log(&self) -> bool {
        matches!(
            self,
            Body::TestStart { .. } | Body::ReportBegins | Body::KernelReport(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts: u64,
    /// Kernel stack id (in the STACKS map) captured with this record, if any.
    pub stack_id: Option<u32>,
    pub file: FileId,
    pub task: Task,
    pub fidelity: Fidelity,
    pub body: Body,
}

impl Event {
    /// A kernel-log event: no probe made it, so no file, task or stack.
    pub fn from_log(ts: u64, body: Body) -> Event {
        debug_assert!(body.is_log());
        Event {
            ts,
            stack_id: None,
            file: FileId::default(),
            task: Task::default(),
            fidelity: Fidelity::Tracepoint,
            body,
        }
    }
}
