//! What each probe point does, whatever mechanism fired it.

use aya_ebpf::programs::tracing::StackIdContext;
use observer_abi::{
    COUNTER_NO_ENTRY, COUNTER_PTE_FILTERED, COUNTER_UNRESOLVED, Config, EOF_PAGE, FLAG_ISIZE_KNOWN,
    FLAG_MAPCOUNT_KNOWN, FLAG_PMD, FLAG_RUN, FLAG_SHMEM, FLAG_STILL_MAPPED, FLAG_UPTODATE, FileKey,
    Kind, NO_STACK, eof_page,
};

use crate::{
    emit::{
        Record, any_stashed, any_unnamed, any_window_open, count, ignored, now, point_meets_window,
        send, stashed_add, tid, unnamed_add, window_add_seen, window_adds, window_close,
        window_is_open, window_open, window_range, worth_sending,
    },
    kernel::{
        Direct, Fields, Folio, FolioHead, config, file_of_fault, file_of_inode, file_of_mapping,
        folio_mapped, i_size, inode_of_vma, invalidate_lock, on_tmpfs, pfn_of, read_u32, read_u64,
    },
    maps::{LAST_FILE, RUNS, Run, STACKS, STASH, Stash},
};

const PAGE_SHIFT: u64 = 12;
/// VM_SHARED from include/linux/mm.h (unchanged since 2.6).
const VM_SHARED: u64 = 0x8;

#[inline(always)]
fn stash_key(kind: Kind) -> u64 {
    stash_key_of(tid(), kind)
}

/// [`stash_key`] of another task's entry.
#[inline(always)]
fn stash_key_of(tid: u32, kind: Kind) -> u64 {
    ((tid as u64) << 8) | kind as u64
}

/// Page range of `unmap_mapping_range(mapping, holebegin, holelen, even_cows)`,
/// computed as mm/memory.c does (a partial page counts; holelen 0 = to EOF).
#[inline(always)]
pub fn unmap_pages(holebegin: i64, holelen: i64) -> (u64, u64) {
    let first = (holebegin as u64) >> PAGE_SHIFT;
    if holelen <= 0 {
        return (first, EOF_PAGE);
    }
    let count = ((holelen as u64) + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT;
    (first, first + count - 1)
}

/// Page range of `truncate_inode_pages_range(mapping, lstart, lend)`; lend is an
/// inclusive byte offset, -1 meaning EOF. Partial pages are zeroed, not
/// dropped, but their PTEs are as interesting, so they count.
#[inline(always)]
pub fn truncate_pages(lstart: i64, lend: i64) -> (u64, u64) {
    let first = (lstart as u64) >> PAGE_SHIFT;
    if lend < 0 {
        return (first, EOF_PAGE);
    }
    (first, (lend as u64) >> PAGE_SHIFT)
}

/// The kernel stack of the current task, or NO_STACK (a bucket taken by
/// another stack, or no room).
#[inline(always)]
pub fn stack<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(_) => NO_STACK,
    }
}

/// A window on `key` opens: the kernel pre-filter lets its file's records
/// through until the matching [`window_exit`]. Used by every invalidator and
/// filesystem block removal.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window_enter<C: StackIdContext>(
    ctx: &C,
    enter: Kind,
    fidelity: u8,
    key: FileKey,
    start: u64,
    end: u64,
    aux: u64,
) {
    let ts = now();
    window_open(&key);
    let stash = Stash {
        ts,
        key,
        start,
        end,
        aux,
        flags: 0,
    };
    let _ = STASH.insert(&stash_key(enter), &stash, 0);
    send(Record {
        aux: aux,
        stack_id: stack(ctx),
        ..Record::new(enter, fidelity, ts, key, start, end)
    });
}

/// An entry whose call is not reported (its file could not be read, and was
/// counted as unresolved): its exit must not count as one without entry.
#[inline(always)]
fn stash_unresolved(enter: Kind) {
    let stash = Stash {
        ts: 0,
        key: FileKey::default(),
        start: 0,
        end: 0,
        aux: 0,
        flags: 0,
    };
    let _ = STASH.insert(&stash_key(enter), &stash, 0);
}

/// The entry a function probe's exit pairs with, taken out of STASH. None
/// for an ignored task, for an entry that was unresolved, and for one that
/// is gone: STASH is an LRU, which evicts silently, so that last case (or a
/// call already running when the observer attached) is counted.
#[inline(always)]
fn take_entry(enter: Kind, exit: Kind) -> Option<Stash> {
    let cfg = config()?;
    if ignored(cfg) {
        return None;
    }
    let skey = stash_key(enter);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        count(COUNTER_NO_ENTRY + exit as u32);
        return None;
    };
    let _ = STASH.remove(&skey);
    (stash.key.ino != 0).then_some(stash)
}

/// Exit of the call [`window_enter`] saw; `enter` names its entry record.
#[inline(always)]
fn window_exit<C: StackIdContext>(ctx: &C, enter: Kind, exit: Kind, fidelity: u8) {
    run_flush(tid());
    let Some(stash) = take_entry(enter, exit) else {
        return;
    };
    let ts = now();
    window_close(&stash.key, ts);
    send(Record {
        entry_ts: stash.ts,
        aux: stash.aux,
        stack_id: stack(ctx),
        ..Record::new(exit, fidelity, ts, stash.key, stash.start, stash.end)
    });
}

/// An invalidator's file, or `None` once its entry is counted unresolved
/// (and stashed so that its exit is dropped too).
#[inline(always)]
fn resolved(enter: Kind, key: Option<FileKey>) -> Option<FileKey> {
    if key.is_none() {
        count(COUNTER_UNRESOLVED + enter as u32);
        stash_unresolved(enter);
    }
    key
}

/// Entry of unmap_mapping_range / truncate_inode_pages_range.
#[inline(always)]
pub fn invalidate_enter<C: StackIdContext>(
    ctx: &C,
    enter: Kind,
    fidelity: u8,
    mapping: u64,
    start: u64,
    end: u64,
) {
    let Some(cfg) = config() else { return };
    if ignored(cfg) {
        return;
    }
    let Some(key) = resolved(enter, file_of_mapping(cfg, mapping)) else {
        return;
    };
    let _ = LAST_FILE.insert(&tid(), &key, 0);
    let lock = invalidate_lock(cfg, mapping);
    window_enter(ctx, enter, fidelity, key, start, end, lock);
}

/// Exit of the same call; `enter` names the entry record to pair with.
#[inline(always)]
pub fn invalidate_exit<C: StackIdContext>(ctx: &C, enter: Kind, exit: Kind, fidelity: u8) {
    window_exit(ctx, enter, exit, fidelity);
}

/// shmem_undo_range(inode, lstart, lend, unfalloc): tmpfs removes its pages
/// here, without truncate_inode_pages_range.
#[inline(always)]
pub fn shmem_undo_enter<C: StackIdContext>(
    ctx: &C,
    fidelity: u8,
    inode: u64,
    lstart: i64,
    lend: i64,
) {
    let Some(cfg) = config() else { return };
    if ignored(cfg) {
        return;
    }
    let Some(key) = resolved(Kind::ShmemUndoEnter, file_of_inode(cfg, inode)) else {
        return;
    };
    let (start, end) = truncate_pages(lstart, lend);
    window_enter(ctx, Kind::ShmemUndoEnter, fidelity, key, start, end, 0);
}

#[inline(always)]
pub fn shmem_undo_exit<C: StackIdContext>(ctx: &C, fidelity: u8) {
    window_exit(ctx, Kind::ShmemUndoEnter, Kind::ShmemUndoExit, fidelity);
}

/// Entry of a filesystem's block-removal function (`aux` = FS_REMOVE_*):
/// `inode` is the VFS inode, None when the module's BTF did not say where
/// its argument keeps it. Pages [start, end] are what is removed, when
/// known. The window stays open for the whole removal, so that refills
/// during it pass the pre-filter.
#[inline(always)]
pub fn fs_remove_enter<C: StackIdContext>(
    ctx: &C,
    fidelity: u8,
    inode: Option<u64>,
    start: u64,
    end: u64,
    aux: u64,
) {
    let Some(cfg) = config() else { return };
    if ignored(cfg) {
        return;
    }
    let key = match inode {
        Some(inode) => file_of_inode(cfg, inode),
        // No module BTF (5.10): the file this task last invalidated. The
        // callers invalidate first (xfs_flush_unmap_range before
        // xfs_free_file_space on 5.10; btrfs_punch_hole_lock_range before
        // btrfs_replace_file_extents), so this is the punched file.
        None => unsafe { LAST_FILE.get(&tid()) }.copied(),
    };
    let Some(key) = key else {
        count(COUNTER_UNRESOLVED + Kind::FsRemoveEnter as u32);
        stash_unresolved(Kind::FsRemoveEnter);
        return;
    };
    // Whether the blocks go while the punching task holds invalidate_lock.
    let lock = inode
        .and_then(|i| read_u64(i, cfg.inode_i_mapping))
        .map_or(0, |m| invalidate_lock(cfg, m));
    window_enter(
        ctx,
        Kind::FsRemoveEnter,
        fidelity,
        key,
        start,
        end,
        aux | lock,
    );
}

#[inline(always)]
pub fn fs_remove_exit<C: StackIdContext>(ctx: &C, fidelity: u8) {
    window_exit(ctx, Kind::FsRemoveEnter, Kind::FsRemoveExit, fidelity);
}

/// Byte range [offset, offset + len) as pages (len 0: to the end).
#[inline(always)]
pub fn byte_pages(offset: u64, len: u64) -> (u64, u64) {
    if len == 0 {
        return (offset >> PAGE_SHIFT, EOF_PAGE);
    }
    (offset >> PAGE_SHIFT, (offset + len - 1) >> PAGE_SHIFT)
}

/// Byte range [first, last] as pages (last u64::MAX: to the end).
#[inline(always)]
pub fn inclusive_byte_pages(first: u64, last: u64) -> (u64, u64) {
    if last == u64::MAX {
        return (first >> PAGE_SHIFT, EOF_PAGE);
    }
    (first >> PAGE_SHIFT, last >> PAGE_SHIFT)
}

/// Pages of ext4 logical blocks [first, last] (inclusive), for the inode's
/// block size. ext4 passes EXT_MAX_BLOCKS - 1 (0xfffffffe) for "to the end".
#[inline(always)]
pub fn ext4_block_pages(inode: u64, first: u32, last: u32) -> (u64, u64) {
    let bits = config()
        .and_then(|cfg| read_u32(inode, cfg.inode_i_blkbits))
        .map(|v| (v & 0xff) as u64)
        .unwrap_or(PAGE_SHIFT);
    let start = ((first as u64) << bits) >> PAGE_SHIFT;
    if last >= 0xffff_fffe {
        return (start, EOF_PAGE);
    }
    (start, ((((last as u64) + 1) << bits) - 1) >> PAGE_SHIFT)
}

/// PTEs (or one PMD) a kernel installer is putting in for pages
/// `start..=end` of `key`, with the file's size as the installer saw it.
#[derive(Clone, Copy)]
pub struct Install {
    pub key: FileKey,
    pub start: u64,
    pub end: u64,
    /// `inode.i_size` in bytes, when `flags` has FLAG_ISIZE_KNOWN.
    pub i_size: u64,
    pub flags: u8,
}

/// Page-exact classes A and C: PTEs for `nr` pages of a file, starting at
/// user address `addr` (None: `vmf->address`), are being installed by the
/// current task. Reported: installs on a file with a window open right now
/// (class A), and installs reaching at or past the file's EOF (class C,
/// whatever the windows). With neither windows nor `inode.i_size` in BTF,
/// every call returns after one array lookup.
#[inline(always)]
pub fn pte_install_check(vmf: u64, addr: Option<u64>, nr: u64) -> Option<Install> {
    pte_range_check(vmf, addr, nr, false)
}

/// do_set_pmd(vmf, page): one PMD maps the HPAGE_PMD_NR pages around
/// `vmf->address`.
#[inline(always)]
pub fn pmd_install_check(vmf: u64) -> Option<Install> {
    pte_range_check(vmf, None, PMD_PAGES, true)
}

/// x86-64 (4 KiB pages): a PMD maps 2 MiB.
const PMD_PAGES: u64 = 512;

#[inline(always)]
fn pte_range_check(vmf: u64, addr: Option<u64>, nr: u64, pmd: bool) -> Option<Install> {
    let windows = any_window_open();
    let cfg = config()?;
    if !windows && cfg.inode_i_size == Config::UNKNOWN {
        return None;
    }
    if ignored(cfg) {
        return None;
    }
    let Some(vma) = read_u64(vmf, cfg.vm_fault_vma) else {
        count(COUNTER_UNRESOLVED + Kind::PteInstall as u32);
        return None;
    };
    // Special mappings (the vDSO's, say) fault pages in without a file.
    if read_u64(vma, cfg.vma_vm_file)? == 0 {
        return None;
    }
    let inode = inode_of_vma(cfg, vma);
    let Some((inode, key)) = inode.and_then(|i| Some((i, file_of_inode(cfg, i)?))) else {
        count(COUNTER_UNRESOLVED + Kind::PteInstall as u32);
        return None;
    };
    // A write fault on a private mapping installs an anonymous copy
    // (vmf->cow_page), not the file's page.
    let fault_flags = read_u32(vmf, cfg.vmf_flags)?;
    let vm_flags = read_u64(vma, cfg.vma_vm_flags)?;
    if fault_flags & cfg.fault_flag_write != 0 && vm_flags & VM_SHARED == 0 {
        return None;
    }
    let mut addr = match addr {
        Some(a) => a,
        None => read_u64(vmf, cfg.vmf_address)?,
    };
    if pmd {
        addr &= !((PMD_PAGES << PAGE_SHIFT) - 1);
    }
    let vm_start = read_u64(vma, cfg.vma_vm_start)?;
    let pgoff = read_u64(vma, cfg.vma_vm_pgoff)?;
    let first = pgoff + ((addr - vm_start) >> PAGE_SHIFT);
    let nr = if nr == 0 { 1 } else { nr };
    let last = first + nr - 1;
    let i_size = i_size(cfg, inode);
    let past_eof = i_size.is_some_and(|sz| last >= eof_page(sz));
    if !past_eof && !(windows && window_is_open(&key)) {
        if i_size.is_some() {
            count(COUNTER_PTE_FILTERED);
        }
        return None;
    }
    let mut flags = if pmd { FLAG_PMD } else { 0 };
    if i_size.is_some() {
        flags |= FLAG_ISIZE_KNOWN;
    }
    if on_tmpfs(cfg, inode) {
        flags |= FLAG_SHMEM;
    }
    Some(Install {
        key,
        start: first,
        end: last,
        i_size: i_size.unwrap_or(0),
        flags,
    })
}

#[inline(always)]
pub fn pte_install_send<C: StackIdContext>(ctx: &C, fidelity: u8, install: &Install) {
    let ts = now();
    send(Record {
        stack_id: stack(ctx),
        aux: install.i_size,
        flags: install.flags,
        ..Record::new(
            Kind::PteInstall,
            fidelity,
            ts,
            install.key,
            install.start,
            install.end,
        )
    });
}

/// kprobe rung of a PTE installer that may fail (5.10 alloc_set_pte,
/// do_set_pmd): the entry remembers, the return sends if it returned 0.
#[inline(always)]
pub fn pte_install_stash(checked: Option<Install>) {
    if let Some(i) = checked {
        let stash = Stash {
            ts: 0,
            key: i.key,
            start: i.start,
            end: i.end,
            aux: i.i_size,
            flags: i.flags as u64,
        };
        let _ = STASH.insert(&stash_key(Kind::PteInstall), &stash, 0);
    }
}

#[inline(always)]
pub fn pte_install_return<C: StackIdContext>(ctx: &C, fidelity: u8, ret: u64) {
    let skey = stash_key(Kind::PteInstall);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        return;
    };
    let _ = STASH.remove(&skey);
    if ret as u32 == 0 {
        let install = Install {
            key: stash.key,
            start: stash.start,
            end: stash.end,
            i_size: stash.aux,
            flags: stash.flags as u8,
        };
        pte_install_send(ctx, fidelity, &install);
    }
}

/// A folio leaves the page cache (raw tracepoint
/// mm_filemap_delete_from_page_cache, argument a `struct folio *`, or the
/// head `struct page *` on 5.10). It fires before the folio leaves the
/// xarray, with its mapping and index still set, after truncation unmapped
/// it: a mapcount >= 0 here is a PTE that outlives the folio. Only for files
/// with a window open (or --full-stream, as the classic tracepoint).
///
/// Unmapped folios that a task removes one after another inside an
/// invalidation become one run record (`FLAG_RUN`), sent when the run
/// breaks or the invalidation exits ([`run_flush`]). A mapped or unreadable
/// folio is always a record of its own: those carry the findings.
#[inline(always)]
pub fn folio_delete(folio: u64, fidelity: u8) {
    let Some(cfg) = config() else { return };
    let Some(head) = FolioHead::read(folio) else {
        return;
    };
    let Some(mapping) = head.u64_at(cfg.page_mapping) else {
        return;
    };
    let Some(index) = head.u64_at(cfg.page_index) else {
        return;
    };
    // The common case first: the next folio of the task's run. Its window is
    // open (the run ends at the invalidation's exit), and its file is the
    // run's: the key's four reads are not needed.
    let tid = tid();
    if let Some(run) = RUNS.get_ptr_mut(&tid) {
        let r = unsafe { &mut *run };
        if r.mapping == mapping && r.end + 1 == index && r.fidelity == fidelity as u64 {
            let Some(f) = Folio::read(cfg, &head) else {
                return;
            };
            if folio_mapped(cfg, folio, &head, &f) == Some(false) {
                let ts = now();
                // After the clock: an add timed before this removal has
                // bumped it.
                if window_adds() == r.adds {
                    r.end = index + f.nr - 1;
                    r.folios += 1;
                    r.last_ts = ts;
                    return;
                }
            }
        }
    }
    let Some(key) = file_of_mapping(cfg, mapping) else {
        count(COUNTER_UNRESOLVED + Kind::FolioDelete as u32);
        return;
    };
    adopt_syscall_file(&key);
    if !(window_is_open(&key) || cfg.full_stream != 0) || ignored(cfg) {
        return;
    }
    let Some(f) = Folio::read(cfg, &head) else {
        return;
    };
    let end = index + f.nr - 1;
    let mapped = folio_mapped(cfg, folio, &head, &f);
    let ts = now();
    run_flush(tid);
    if mapped == Some(false) && cfg.full_stream == 0 && in_invalidation(tid) {
        let run = Run {
            mapping,
            key,
            start: index,
            end,
            folios: 1,
            first_ts: ts,
            last_ts: ts,
            adds: window_adds(),
            fidelity: fidelity as u64,
        };
        if RUNS.insert(&tid, &run, 0).is_ok() {
            return;
        }
    }
    let flags = match mapped {
        Some(true) => FLAG_MAPCOUNT_KNOWN | FLAG_STILL_MAPPED,
        Some(false) => FLAG_MAPCOUNT_KNOWN,
        None => 0,
    };
    send(Record {
        aux: pfn_of(cfg, folio),
        flags: flags,
        ..Record::new(Kind::FolioDelete, fidelity, ts, key, index, end)
    });
}

/// Whether the task is inside an invalidation whose exit [`run_flush`]es:
/// a syscall window, truncate_inode_pages_range or shmem_undo_range.
#[inline(always)]
fn in_invalidation(tid: u32) -> bool {
    let inside = |kind: Kind| unsafe { STASH.get(&stash_key_of(tid, kind)) }.is_some();
    inside(Kind::SyscallEnter) || inside(Kind::TruncateEnter) || inside(Kind::ShmemUndoEnter)
}

/// Sends the task's pending run of removals, if it has one. Runs end at
/// the task's own exits, so the record carries its tid and comm. Its `ts` is
/// the send, so that it is never late against what the agent has seen since
/// the last removal (an xfs punch frees its blocks between the two); `ret`
/// says how many microseconds (rounded up) before that the last removal was.
#[inline(always)]
pub fn run_flush(tid: u32) {
    let Some(run) = (unsafe { RUNS.get(&tid) }).copied() else {
        return;
    };
    let _ = RUNS.remove(&tid);
    let ts = now();
    let before_us = ts.saturating_sub(run.last_ts).div_ceil(1000);
    send(Record {
        entry_ts: run.first_ts,
        aux: run.folios,
        flags: FLAG_MAPCOUNT_KNOWN | FLAG_RUN,
        ret: before_us.min(i32::MAX as u64) as i32,
        ..Record::new(
            Kind::FolioDelete,
            run.fidelity as u8,
            ts,
            run.key,
            run.start,
            run.end,
        )
    });
}

/// A folio enters the page cache: the raw tracepoint
/// mm_filemap_add_to_page_cache (`mapping` None: the folio's own, set by
/// then), or shmem_add_to_page_cache(folio, mapping, index, ...) at entry,
/// before it sets them. Windowed files only.
#[inline(always)]
pub fn folio_add<C: StackIdContext>(ctx: &C, fidelity: u8, folio: u64, at: Option<(u64, u64)>) {
    if !any_window_open() {
        return;
    }
    let Some(cfg) = config() else { return };
    let (mapping, index, shmem) = match at {
        Some((mapping, index)) => (mapping, index, FLAG_SHMEM),
        // One at a time: a pair of Options keeps the payload of a None
        // live, and LLVM may spill that undefined register, which the
        // verifier refuses (R3 !read_ok).
        None => {
            let Some(m) = read_u64(folio, cfg.page_mapping) else {
                return;
            };
            let Some(i) = read_u64(folio, cfg.page_index) else {
                return;
            };
            (m, i, 0)
        }
    };
    let Some(key) = file_of_mapping(cfg, mapping) else {
        count(COUNTER_UNRESOLVED + Kind::FolioAdd as u32);
        return;
    };
    if ignored(cfg) || !window_add_seen(&key) {
        return;
    }
    let Some(f) = Folio::read(cfg, &Direct(folio)) else {
        return;
    };
    let uptodate = if f.test(cfg.pg_uptodate) {
        FLAG_UPTODATE
    } else {
        0
    };
    let ts = now();
    send(Record {
        aux: invalidate_lock(cfg, mapping),
        flags: uptodate | shmem,
        stack_id: stack(ctx),
        ..Record::new(Kind::FolioAdd, fidelity, ts, key, index, index + f.nr - 1)
    });
}

#[inline(always)]
pub fn map_pages_enter(vmf: u64, start: u64, end: u64) {
    let Some(cfg) = config() else { return };
    if ignored(cfg) {
        return;
    }
    let Some(key) = file_of_fault(cfg, vmf) else {
        count(COUNTER_UNRESOLVED + Kind::MapPages as u32);
        stash_unresolved(Kind::MapPages);
        return;
    };
    let stash = Stash {
        ts: now(),
        key,
        start,
        end,
        aux: 0,
        flags: 0,
    };
    let _ = STASH.insert(&stash_key(Kind::MapPages), &stash, 0);
}

/// The PTEs are in place once filemap_map_pages returns; report the call with
/// its whole [entry, exit] interval.
#[inline(always)]
pub fn map_pages_exit(fidelity: u8) {
    let Some(cfg) = config() else { return };
    let Some(stash) = take_entry(Kind::MapPages, Kind::MapPages) else {
        return;
    };
    if worth_sending(cfg, &stash.key, stash.ts) {
        send(Record {
            entry_ts: stash.ts,
            ..Record::new(
                Kind::MapPages,
                fidelity,
                now(),
                stash.key,
                stash.start,
                stash.end,
            )
        });
    }
}

/// A point observation of fault-around (the tracepoint fires after the PTEs
/// were installed, and only when at least one folio was mapped).
#[inline(always)]
pub fn map_pages_point(cfg: &Config, key: FileKey, start: u64, end: u64, fidelity: u8) {
    // A point has no entry: only a window open right now can meet it, so the
    // clock is read only for the rare record that is sent.
    let meets = cfg.full_stream != 0 || point_meets_window(&key, start, end);
    if meets && !ignored(cfg) {
        let ts = now();
        send(Record::new(Kind::MapPages, fidelity, ts, key, start, end));
    }
}

/// Syscall-level window (tracepoint fallback) or operation label.
#[inline(always)]
pub fn syscall_enter(cfg: &Config, key: FileKey, start: u64, end: u64, aux: u64, fidelity: u8) {
    if ignored(cfg) {
        return;
    }
    let ts = now();
    if cfg.syscall_windows != 0 && key.ino != 0 {
        if window_open(&key) {
            window_range(&key, start, end);
        }
    }
    let stash = Stash {
        ts,
        key,
        start,
        end,
        aux,
        flags: 0,
    };
    let stashed = STASH
        .insert(&stash_key(Kind::SyscallEnter), &stash, 0)
        .is_ok();
    if stashed {
        stashed_add(1);
    }
    if cfg.syscall_windows != 0 && key.ino == 0 && stashed {
        // The first folio the syscall removes names its file.
        unnamed_add(1);
    }
    send(Record {
        aux: aux,
        ..Record::new(Kind::SyscallEnter, fidelity, ts, key, start, end)
    });
}

/// Tracepoint mode: a syscall that named no file at entry (truncate(2) a
/// path, madvise an address) removing a folio of `key` is invalidating that
/// file; its window opens here and closes at the syscall's exit. Called by
/// the folio-removal programs before they look at the window table.
#[inline(always)]
pub fn adopt_syscall_file(key: &FileKey) {
    if !any_unnamed() {
        return;
    }
    let Some(stash) = STASH.get_ptr_mut(&stash_key(Kind::SyscallEnter)) else {
        return;
    };
    unsafe {
        if (*stash).key.ino != 0 {
            return;
        }
        (*stash).key = *key;
    }
    window_open(key);
    unnamed_add(u64::MAX);
}

/// `ret` is the syscall's return value: a failed call that removed nothing
/// is no window of its operation, which the agent decides.
#[inline(always)]
pub fn syscall_exit(cfg: &Config, fidelity: u8, ret: i64) {
    if !any_stashed() {
        return;
    }
    let skey = stash_key(Kind::SyscallEnter);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        return;
    };
    if STASH.remove(&skey).is_ok() {
        stashed_add(u64::MAX);
    }
    run_flush(tid());
    let ts = now();
    if cfg.syscall_windows != 0 {
        if stash.key.ino != 0 {
            window_close(&stash.key, ts);
        } else {
            unnamed_add(u64::MAX);
        }
    }
    send(Record {
        entry_ts: stash.ts,
        aux: stash.aux,
        // Errors are small negatives; a success's value only matters as >= 0.
        ret: ret.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        ..Record::new(
            Kind::SyscallExit,
            fidelity,
            ts,
            stash.key,
            stash.start,
            stash.end,
        )
    });
}
