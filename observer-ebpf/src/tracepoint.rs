//! Classic tracepoints: the last rung, available everywhere. map_pages is seen
//! as a point after the PTEs went in; windows are whole invalidating syscalls.
//! Folio-delete field offsets come from tracefs via `CONFIG`; map_pages is
//! read at offsets the agent checked against tracefs before attaching it;
//! syscall records have the fixed layout of all syscall tracepoints.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_abi::{
    COUNTER_FILTERED, Config, EOF_PAGE, FALLOC_INVALIDATING, FICLONE, FICLONERANGE, FIDEDUPERANGE,
    FileCloneRange, FileDedupeRange, FileKey, Kind, MADV_REMOVE, OP_CLONE, OP_CLONE_RANGE,
    OP_DEDUPE_RANGE, OP_FALLOCATE, OP_FTRUNCATE, OP_MADV_REMOVE, OP_TRUNCATE, SCOPE_TREE,
    TP_MAP_PAGES_LAYOUT,
    probes::{Method, Prog},
};

use crate::{
    emit::{Record, any_window_open, count, hit, ignored, now, send},
    kernel::{config, file_of_fd},
    maps::{SCOPE_TASKS, WINDOWS},
    probe::{adopt_syscall_file, byte_pages, map_pages_point, syscall_enter, syscall_exit},
};

/// Tracepoint records are points.
const POINT: u8 = Method::Tracepoint.code();

/// Syscall arguments start after the 8-byte common header and `__syscall_nr`.
const SYSCALL_ARG0: usize = 16;

#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if off == Config::UNKNOWN {
        return None;
    }
    let at = unsafe { (ctx.as_ptr() as *const u8).add(off as usize) };
    unsafe { bpf_probe_read_kernel(at as *const T) }.ok()
}

/// `long ret` of a sys_exit record, after the header and `__syscall_nr`.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(SYSCALL_ARG0) }.unwrap_or(0)
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(SYSCALL_ARG0 + 8 * n) }.unwrap_or(0)
}

#[tracepoint(category = "filemap", name = "mm_filemap_map_pages")]
pub fn mm_filemap_map_pages(ctx: TracePointContext) -> u32 {
    hit(Prog::MapPagesTp);
    let Some(cfg) = config() else { return 0 };
    // Most calls: no file has a window open at all.
    if !any_window_open() && cfg.full_stream == 0 {
        count(COUNTER_FILTERED);
        return 0;
    }
    let [ino, dev, start, end] = TP_MAP_PAGES_LAYOUT;
    // Direct context loads at constant offsets: the verifier allows them in
    // tracepoint programs and they cost no helper call on this hot path.
    let at = |off: u32| unsafe { (ctx.as_ptr() as *const u8).add(off as usize) };
    let key = FileKey {
        dev: unsafe { *(at(dev) as *const u32) },
        _pad: 0,
        ino: unsafe { *(at(ino) as *const u64) },
    };
    let (start, end) = unsafe { (*(at(start) as *const u64), *(at(end) as *const u64)) };
    map_pages_point(cfg, key, start, end, POINT);
    0
}

/// Folios leaving the page cache, only for files with a window open: the
/// outcome side of a flagged fault-around. The fallback of the raw
/// tracepoint (raw_tracepoint.rs), which also reads the mapcount.
#[tracepoint(category = "filemap", name = "mm_filemap_delete_from_page_cache")]
pub fn mm_filemap_delete_from_page_cache(ctx: TracePointContext) -> u32 {
    hit(Prog::FolioDeleteTp);
    let Some(cfg) = config() else { return 0 };
    let (Some(ino), Some(dev), Some(index), Some(pfn)) = (
        field::<u64>(&ctx, cfg.tp_del_ino),
        field::<u32>(&ctx, cfg.tp_del_dev),
        field::<u64>(&ctx, cfg.tp_del_index),
        field::<u64>(&ctx, cfg.tp_del_pfn),
    ) else {
        return 0;
    };
    let key = FileKey { dev, _pad: 0, ino };
    adopt_syscall_file(&key);
    let open = match unsafe { WINDOWS.get(&key) } {
        Some(w) => w.open > 0,
        None => false,
    };
    if (open || cfg.full_stream != 0) && !ignored(cfg) {
        send(Record {
            entry_ts: 0,
            aux: pfn,
            ..Record::new(Kind::FolioDelete, POINT, now(), key, index, index)
        });
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fallocate")]
pub fn sys_enter_fallocate(ctx: TracePointContext) -> u32 {
    hit(Prog::SysEnterFallocate);
    let Some(cfg) = config() else { return 0 };
    let (fd, mode, offset, len) = (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3));
    // Plain allocation keeps the page cache; only invalidating modes matter.
    if mode & FALLOC_INVALIDATING == 0 || len == 0 {
        return 0;
    }
    let key = file_of_fd(cfg, fd).unwrap_or_default();
    let end = if mode & (0x08 | 0x20) != 0 {
        // Collapse and insert shift everything after the offset.
        EOF_PAGE
    } else {
        (offset + len - 1) >> 12
    };
    syscall_enter(
        cfg,
        key,
        offset >> 12,
        end,
        OP_FALLOCATE | (mode << 8),
        POINT,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_ftruncate")]
pub fn sys_enter_ftruncate(ctx: TracePointContext) -> u32 {
    hit(Prog::SysEnterFtruncate);
    let Some(cfg) = config() else { return 0 };
    let key = file_of_fd(cfg, arg(&ctx, 0)).unwrap_or_default();
    syscall_enter(cfg, key, arg(&ctx, 1) >> 12, EOF_PAGE, OP_FTRUNCATE, POINT);
    0
}

/// truncate(2) names a path, which the kernel has not resolved yet at entry:
/// the record labels the operation but its file is unknown (ino 0).
#[tracepoint(category = "syscalls", name = "sys_enter_truncate")]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    hit(Prog::SysEnterTruncate);
    let Some(cfg) = config() else { return 0 };
    syscall_enter(
        cfg,
        FileKey::default(),
        arg(&ctx, 1) >> 12,
        EOF_PAGE,
        OP_TRUNCATE,
        POINT,
    );
    0
}

/// madvise(MADV_REMOVE) names a virtual range; which file backs it is only
/// known once the kernel looked up the vma, so the record labels the
/// operation and the function probes name the file.
#[tracepoint(category = "syscalls", name = "sys_enter_madvise")]
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    hit(Prog::SysEnterMadvise);
    if arg(&ctx, 2) != MADV_REMOVE {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    syscall_enter(cfg, FileKey::default(), 0, EOF_PAGE, OP_MADV_REMOVE, POINT);
    0
}

/// Every invalidating syscall's exit (attached to each sys_exit_*): its
/// return value, and the end of a syscall window.
#[tracepoint]
pub fn sys_exit_invalidating(ctx: TracePointContext) -> u32 {
    hit(Prog::SysExit);
    if let Some(cfg) = config() {
        syscall_exit(cfg, POINT, ret(&ctx));
    }
    0
}

/// The remap ioctls invalidate the destination range. ioctl is hot on some
/// hosts: everything but the three commands leaves after one compare.
#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    hit(Prog::SysEnterIoctl);
    let cmd = arg(&ctx, 1) as u32;
    if cmd != FICLONE && cmd != FICLONERANGE && cmd != FIDEDUPERANGE {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let (fd, user) = (arg(&ctx, 0), arg(&ctx, 2));
    let (fd, start, end, op) = if cmd == FICLONE {
        (fd, 0, EOF_PAGE, OP_CLONE)
    } else if cmd == FICLONERANGE {
        match unsafe { bpf_probe_read_user(user as *const FileCloneRange) } {
            Ok(r) => {
                // A length of 0 clones to the end of the source.
                let (start, end) = byte_pages(r.dest_offset, r.src_length);
                (fd, start, end, OP_CLONE_RANGE)
            }
            Err(_) => (fd, 0, EOF_PAGE, OP_CLONE_RANGE),
        }
    } else {
        // The ioctl's fd is the source; the first destination is the file
        // whose page cache goes (the racer, like most callers, passes one).
        match unsafe { bpf_probe_read_user(user as *const FileDedupeRange) } {
            Ok(r) if r.dest_count > 0 => {
                let (start, end) = byte_pages(r.dest_offset, r.src_length);
                (r.dest_fd as u64, start, end, OP_DEDUPE_RANGE)
            }
            _ => (u64::MAX, 0, EOF_PAGE, OP_DEDUPE_RANGE),
        }
    };
    let key = if fd == u64::MAX {
        FileKey::default()
    } else {
        file_of_fd(cfg, fd).unwrap_or_default()
    };
    syscall_enter(cfg, key, start, end, op, POINT);
    0
}

/// `--scope cmd` without cgroup2: a task of the command's tree that forks
/// brings the child into the tree. Runs in the parent.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    hit(Prog::ForkTp);
    let Some(cfg) = config() else { return 0 };
    if cfg.scope != SCOPE_TREE {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if unsafe { SCOPE_TASKS.get(&tgid) }.is_none() {
        return 0;
    }
    // A new thread shares its tgid, already present; a new process's pid
    // is its tgid.
    if let Some(child) = field::<u32>(&ctx, cfg.tp_fork_child_pid) {
        let _ = SCOPE_TASKS.insert(&child, &1, 0);
    }
    0
}

/// A process of the tree ended (its main thread exits last but for
/// rare cases): its tgid may be reused by anyone.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    hit(Prog::ExitTp);
    let Some(cfg) = config() else { return 0 };
    if cfg.scope != SCOPE_TREE {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        let _ = SCOPE_TASKS.remove(&((pid_tgid >> 32) as u32));
    }
    0
}
