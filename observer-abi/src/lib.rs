//! The one place where kernel programs and the agent agree on bytes.
//!
//! Everything here is `#[repr(C)]`, fixed-width and padded by hand, so that the
//! eBPF object (built for bpfel) and the agent (built for the host) lay the
//! records out identically. Struct offsets of *kernel* types are not here: they
//! come from the running kernel's BTF at load time, inside [`Config`].
#![cfg_attr(not(test), no_std)]

pub mod filesystems;
pub mod probes;

/// Page index meaning "to the end of the file".
pub const EOF_PAGE: u64 = u64::MAX;

/// What a record reports. Values are stable: they index counters too.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    UnmapEnter = 1,
    UnmapExit = 2,
    TruncateEnter = 3,
    TruncateExit = 4,
    /// One completed `filemap_map_pages` call (or its tracepoint).
    MapPages = 5,
    SyscallEnter = 6,
    SyscallExit = 7,
    FolioDelete = 8,
    /// PTEs installed for pages `start..=end` of a windowed file (the
    /// per-kernel installer: set_pte_range / do_set_pte / alloc_set_pte).
    PteInstall = 9,
    /// A folio entered the page cache (mm_filemap_add_to_page_cache, or
    /// shmem_add_to_page_cache), for windowed files only.
    FolioAdd = 10,
    /// The filesystem's block removal for a punched range began / ended
    /// (ext4_ext_remove_space, ext4_ind_remove_space, xfs_free_file_space,
    /// btrfs_replace_file_extents). `aux` names the function (FS_REMOVE_*).
    FsRemoveEnter = 11,
    FsRemoveExit = 12,
    /// shmem_undo_range: tmpfs drops its pages here, not through
    /// truncate_inode_pages_range.
    ShmemUndoEnter = 13,
    ShmemUndoExit = 14,
}

pub const KIND_MAX: usize = 15;

impl Kind {
    /// The kind's name in summaries (`events`, `kernel_emitted`, losses).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::UnmapEnter => "unmap_mapping_range:enter",
            Kind::UnmapExit => "unmap_mapping_range:exit",
            Kind::TruncateEnter => "truncate_inode_pages_range:enter",
            Kind::TruncateExit => "truncate_inode_pages_range:exit",
            Kind::MapPages => "filemap_map_pages",
            Kind::SyscallEnter => "syscall:enter",
            Kind::SyscallExit => "syscall:exit",
            Kind::FolioDelete => "folio_delete",
            Kind::PteInstall => "pte_install",
            Kind::FolioAdd => "folio_add",
            Kind::FsRemoveEnter => "fs_remove:enter",
            Kind::FsRemoveExit => "fs_remove:exit",
            Kind::ShmemUndoEnter => "shmem_undo_range:enter",
            Kind::ShmemUndoExit => "shmem_undo_range:exit",
        }
    }

    pub const ALL: [Kind; KIND_MAX - 1] = [
        Kind::UnmapEnter,
        Kind::UnmapExit,
        Kind::TruncateEnter,
        Kind::TruncateExit,
        Kind::MapPages,
        Kind::SyscallEnter,
        Kind::SyscallExit,
        Kind::FolioDelete,
        Kind::PteInstall,
        Kind::FolioAdd,
        Kind::FsRemoveEnter,
        Kind::FsRemoveExit,
        Kind::ShmemUndoEnter,
        Kind::ShmemUndoExit,
    ];

    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::UnmapEnter,
            2 => Kind::UnmapExit,
            3 => Kind::TruncateEnter,
            4 => Kind::TruncateExit,
            5 => Kind::MapPages,
            6 => Kind::SyscallEnter,
            7 => Kind::SyscallExit,
            8 => Kind::FolioDelete,
            9 => Kind::PteInstall,
            10 => Kind::FolioAdd,
            11 => Kind::FsRemoveEnter,
            12 => Kind::FsRemoveExit,
            13 => Kind::ShmemUndoEnter,
            14 => Kind::ShmemUndoExit,
            _ => return None,
        })
    }
}

/// Syscall operations (low byte of `Event::aux` on syscall records; the
/// fallocate mode sits in bits 8..40).
pub const OP_FALLOCATE: u64 = 1;
pub const OP_FTRUNCATE: u64 = 2;
pub const OP_TRUNCATE: u64 = 3;
/// madvise(MADV_REMOVE): punches the mapped file range through
/// vfs_fallocate, so no fallocate tracepoint fires.
pub const OP_MADV_REMOVE: u64 = 4;
/// Remap ioctls: the destination range is invalidated before extents move.
pub const OP_CLONE: u64 = 5;
pub const OP_CLONE_RANGE: u64 = 6;
pub const OP_DEDUPE_RANGE: u64 = 7;

/// uapi/asm-generic/mman-common.h
pub const MADV_REMOVE: u64 = 9;
/// uapi/linux/fs.h: _IOW(0x94, 9, int), _IOW(0x94, 13, struct
/// file_clone_range), _IOWR(0x94, 54, struct file_dedupe_range).
pub const FICLONE: u32 = 0x4004_9409;
pub const FICLONERANGE: u32 = 0x4020_940d;
pub const FIDEDUPERANGE: u32 = 0xc018_9436;

/// uapi struct file_clone_range: FICLONERANGE's argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileCloneRange {
    pub src_fd: i64,
    pub src_offset: u64,
    pub src_length: u64,
    pub dest_offset: u64,
}

/// uapi struct file_dedupe_range with one struct file_dedupe_range_info:
/// FIDEDUPERANGE's argument as a caller with one destination passes it
/// (the kernel side reads only up to the first `dest_offset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileDedupeRange {
    pub src_offset: u64,
    pub src_length: u64,
    pub dest_count: u16,
    pub reserved1: u16,
    pub reserved2: u32,
    pub dest_fd: i64,
    pub dest_offset: u64,
    pub bytes_deduped: u64,
    pub status: i32,
    pub reserved: u32,
}

/// fallocate modes that invalidate page cache (uapi/linux/falloc.h).
pub const FALLOC_FL_PUNCH_HOLE: u64 = 0x02;
pub const FALLOC_FL_COLLAPSE_RANGE: u64 = 0x08;
pub const FALLOC_FL_ZERO_RANGE: u64 = 0x10;
pub const FALLOC_FL_INSERT_RANGE: u64 = 0x20;
pub const FALLOC_INVALIDATING: u64 =
    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_INSERT_RANGE;

/// `Event::flags` bits.
/// FolioDelete: the folio's mapcount was read at removal.
pub const FLAG_MAPCOUNT_KNOWN: u8 = 1;
/// FolioDelete: some PTE still mapped the folio when it left the cache.
pub const FLAG_STILL_MAPPED: u8 = 2;
/// FolioAdd: the folio was already uptodate when added (no read from disk).
pub const FLAG_UPTODATE: u8 = 4;

/// FolioAdd: the folio was added by shmem_add_to_page_cache (tmpfs).
/// PteInstall: the file is on tmpfs (its superblock's magic).
pub const FLAG_SHMEM: u8 = 8;
/// PteInstall: one PMD (do_set_pmd) maps the range.
pub const FLAG_PMD: u8 = 16;
/// PteInstall: `aux` is the file's i_size in bytes, read as the PTEs went in.
pub const FLAG_ISIZE_KNOWN: u8 = 32;
/// FolioDelete: a run of `aux` contiguous folios covering `start..=end`, that
/// one task removed inside one invalidation, the first at `entry_ts` and the
/// last `ret` microseconds (rounded up) before `ts`, the record's send; none
/// of them mapped, with no page-cache add in between. An
/// invalidation removes folios by the thousand, and one record per folio was
/// most of what the agent received under an fsx-like mix.
pub const FLAG_RUN: u8 = 64;

/// The first page index at or past EOF of a file of `i_size` bytes (4 KiB
/// pages): class C's line, drawn alike by the kernel programs and the agent.
pub const fn eof_page(i_size: u64) -> u64 {
    i_size.div_ceil(4096)
}

/// include/uapi/linux/magic.h: `super_block.s_magic` of tmpfs.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;

/// `Event::aux` of FsRemove* records.
pub const FS_REMOVE_EXT4_EXT: u64 = 1;
pub const FS_REMOVE_EXT4_IND: u64 = 2;
pub const FS_REMOVE_XFS: u64 = 3;
pub const FS_REMOVE_BTRFS: u64 = 4;
pub const FS_REMOVE_F2FS: u64 = 5;
pub const FS_REMOVE_NTFS3: u64 = 6;
pub const FS_REMOVE_NTFS: u64 = 7;
pub const FS_REMOVE_GFS2: u64 = 8;
pub const FS_REMOVE_OCFS2: u64 = 9;
/// Slots of `Config::remover_inode`: one per FS_REMOVE_* code.
pub const FS_REMOVE_CODES: usize = 16;

/// `Event::aux` bits on FolioAdd and FsRemoveEnter/Exit records: the state
/// of the file's `mapping->invalidate_lock` (5.15+) when the record was
/// made. Without LOCK_EXPOSED the kernel has no such lock (or it could not
/// be read); the owner's tid (0: unreadable) sits at LOCK_OWNER_SHIFT.
pub const LOCK_EXPOSED: u64 = 1 << 63;
pub const LOCK_WRITE_HELD: u64 = 1 << 62;
pub const LOCK_OWNER_SHIFT: u32 = 16;
/// Low bits of `aux` that name the FS_REMOVE_* function.
pub const FS_REMOVE_MASK: u64 = 0xff;

/// No stack was captured.
pub const NO_STACK: i32 = -1;

/// One ring-buffer record. 88 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// CLOCK_MONOTONIC ns: the exit, or the instant of a point event.
    pub ts: u64,
    /// For `MapPages`: when the call entered (== `ts` for tracepoints).
    pub entry_ts: u64,
    pub ino: u64,
    /// First page index of the range.
    pub start: u64,
    /// Last page index, inclusive; [`EOF_PAGE`] for "to the end".
    pub end: u64,
    /// Kind-specific: syscall op | mode << 8; pfn for `FolioDelete` (the
    /// folio count with [`FLAG_RUN`]).
    pub aux: u64,
    /// Kernel dev_t (major << 20 | minor), as in `super_block::s_dev`.
    pub dev: u32,
    pub pid: u32,
    pub tid: u32,
    pub kind: u8,
    /// The `probes::Method` that observed the record (`Method::code`).
    pub fidelity: u8,
    pub flags: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
    /// Kernel stack id in the `STACKS` map, or [`NO_STACK`].
    pub stack_id: i32,
    /// `SyscallExit`: the syscall's return value (a negative errno when it
    /// failed).
    pub ret: i32,
}

/// Kernel struct offsets and tracepoint field offsets, resolved by the agent
/// from the running kernel and written to the `CONFIG` map before attach.
/// `u32::MAX` marks an offset the kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub vm_fault_vma: u32,
    pub vma_vm_file: u32,
    pub file_f_mapping: u32,
    pub file_f_inode: u32,
    pub mapping_host: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    /// filemap:mm_filemap_delete_from_page_cache fields.
    pub tp_del_ino: u32,
    pub tp_del_dev: u32,
    pub tp_del_index: u32,
    pub tp_del_pfn: u32,
    /// Non-zero: send every map_pages record, not only those of windowed files.
    pub full_stream: u32,
    /// Non-zero: syscall records open and close kernel-side windows (no
    /// function probe is attached for unmap/truncate).
    pub syscall_windows: u32,
    /// The agent's own tgid, whose activity is never reported.
    pub self_tgid: u32,
    pub _pad: u32,

    // struct page / folio (FolioDelete and FolioAdd from raw tracepoints,
    // whose argument is a `struct page *` (5.10) or `struct folio *`).
    /// `flags`, `mapping`, `index` and `_mapcount` of page/folio (the same
    /// offsets in both: FOLIO_MATCH).
    pub page_flags: u32,
    pub page_mapping: u32,
    pub page_index: u32,
    pub page_mapcount: u32,
    /// `sizeof(struct page)`, the stride of a folio's subpages.
    pub page_size: u32,
    /// Bit numbers from `enum pageflags`.
    pub pg_head: u32,
    pub pg_uptodate: u32,
    /// Byte (from the head) holding a large folio's order: 6.1
    /// `folio._folio_order`, 6.12+ the low byte of `folio._flags_1`, 5.10
    /// `page[1].compound_order`.
    pub folio_order: u32,
    /// A large folio's -1-based mapcount word, from the head: 6.10+
    /// `folio._large_mapcount` (all mappings: exact on its own); otherwise
    /// the entire (PMD) mapcount (6.2+ `_entire_mapcount`, 6.1
    /// `_total_mapcount`, 5.10 `page[1].compound_mapcount`), which the
    /// program completes by reading every subpage's `_mapcount`.
    pub large_mapcount: u32,
    /// Non-zero: `large_mapcount` alone says whether the folio is mapped.
    pub large_mapcount_exact: u32,

    // vm_fault / vm_area_struct (PteInstall).
    pub vmf_flags: u32,
    pub vmf_address: u32,
    pub vma_vm_start: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_pgoff: u32,
    /// `FAULT_FLAG_WRITE` (enum fault_flag since 5.13, 1 before).
    pub fault_flag_write: u32,
    /// Non-zero: the PTE installer's address argument is at this index
    /// (set_pte_range: 4, do_set_pte with 3 arguments: 2); zero: the address
    /// is `vmf->address` (alloc_set_pte, 2-argument do_set_pte).
    pub pte_addr_arg: u32,

    // Filesystem block removal (FsRemove*).
    /// `inode.i_blkbits` (u8), to turn ext4 logical blocks into pages.
    pub inode_i_blkbits: u32,
    /// By FS_REMOVE_* code: where the VFS inode sits in the struct a
    /// remover takes (`xfs_inode.i_vnode`, `gfs2_inode.i_inode`, ...; 0 for a
    /// `struct inode *`), from the module's BTF (`filesystems::InodeArg`);
    /// UNKNOWN: the probe uses the task's most recent invalidation's file.
    pub remover_inode: [u32; FS_REMOVE_CODES],

    // The invalidation lock (5.15+): `address_space.invalidate_lock`, the
    // `count` and `owner` words of a (non-RT) rw_semaphore, `task_struct.pid`
    // of its writer, and `inode.i_mapping` to reach it from block removal.
    pub mapping_invalidate_lock: u32,
    pub rwsem_count: u32,
    pub rwsem_owner: u32,
    pub task_pid: u32,
    pub inode_i_mapping: u32,
    /// `inode.i_size` (loff_t) and `super_block.s_magic` (unsigned long):
    /// class C, page-exact installs at or past EOF, and whether the file is
    /// shmem's.
    pub inode_i_size: u32,
    pub sb_s_magic: u32,

    /// Kernel address of the variable `vmemmap_base` (x86-64 with a
    /// randomized memory layout), to compute pfns; 0: pfn not reported.
    pub vmemmap_base_addr: u64,

    // `observer run --scope cmd`: which tasks are watched.
    /// SCOPE_HOST, SCOPE_CGROUP or SCOPE_TREE.
    pub scope: u32,
    /// SCOPE_CGROUP: the level of the command's cgroup in the cgroup2
    /// hierarchy (reported; the programs compare the task's own cgroup).
    pub scope_cgroup_level: u32,
    /// SCOPE_CGROUP: the id of the cgroup the command runs in.
    pub scope_cgroup_id: u64,
    /// SCOPE_TREE: `parent_pid` and `child_pid` in sched:sched_process_fork.
    pub tp_fork_parent_pid: u32,
    pub tp_fork_child_pid: u32,
    /// Unread bytes in the ring past which a record wakes the agent (below,
    /// records wait for the agent's next poll).
    pub wakeup_bytes: u32,
    pub _pad3: u32,
}

/// Every task is watched.
pub const SCOPE_HOST: u32 = 0;
/// Only tasks in the cgroup `Config::scope_cgroup_id`.
pub const SCOPE_CGROUP: u32 = 1;
/// Only tasks whose tgid is in the `SCOPE_TASKS` map (the command, and what
/// it forks, followed by sched_process_fork/exit): without cgroup2.
pub const SCOPE_TREE: u32 = 2;

impl Config {
    pub const UNKNOWN: u32 = u32::MAX;
}

/// Byte offsets of i_ino, s_dev, index and last_index in the
/// filemap:mm_filemap_map_pages record. This tracepoint fires on every
/// fault-around, so the program reads its fields directly from the context
/// at these constant offsets (no helper call each); the agent attaches it
/// only after checking tracefs shows exactly this layout.
pub const TP_MAP_PAGES_LAYOUT: [u32; 4] = [8, 16, 24, 32];

/// Key of the kernel-side window table (the pre-filter).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Kernel-side view of a file's windows: how many invalidations are in
/// flight, when the last one ended, and (tracepoint mode) the page range of
/// the window that opened alone, while it stays the only one. One entry, so
/// the fault-around hot path makes one lookup and touches one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowState {
    pub open: u64,
    pub closed_at: u64,
    /// The tid whose range `start..=end` is the file's while `open == 1`;
    /// 0 when no single range is known (two windows, or one of unknown
    /// range): then nothing is filtered by range.
    pub owner: u32,
    /// Bumped before a range is written, so that a reader can tell a range
    /// rewritten under it.
    pub generation: u32,
    pub start: u64,
    pub end: u64,
}

/// Counter slots in the per-CPU `COUNTERS` array.
pub const COUNTER_EMITTED: u32 = 0; // + kind
pub const COUNTER_LOST: u32 = 16; // + kind: ring buffer full
pub const COUNTER_FILTERED: u32 = 32; // map_pages dropped by the pre-filter: no window
pub const COUNTER_FILTERED_RANGE: u32 = 33; // map_pages dropped: a window, but not these pages
pub const COUNTER_PTE_FILTERED: u32 = 34; // page-exact installs dropped: no window, below EOF
pub const COUNTER_UNRESOLVED: u32 = 40; // + kind: a kernel pointer chain could not be read
pub const COUNTER_NO_ENTRY: u32 = 64; // + kind: an exit found no STASH entry
pub const COUNTERS: u32 = 80;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::WindowState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes uapi/linux/fs.h gives these structs: a wrong one makes the
    /// ioctl read other bytes, or the kernel program read past the header.
    #[test]
    fn uapi_layouts() {
        assert_eq!(core::mem::size_of::<FileCloneRange>(), 32);
        assert_eq!(core::mem::size_of::<FileDedupeRange>(), 24 + 32);
        assert_eq!(core::mem::offset_of!(FileDedupeRange, dest_fd), 24);
        assert_eq!(core::mem::offset_of!(FileDedupeRange, status), 48);
    }

    #[test]
    fn eof_pages() {
        assert_eq!(eof_page(0), 0);
        assert_eq!(eof_page(1), 1);
        assert_eq!(eof_page(4096), 1);
        assert_eq!(eof_page(4097), 2);
        assert_eq!(eof_page(u64::MAX), u64::MAX / 4096 + 1);
    }
}
