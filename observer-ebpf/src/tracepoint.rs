//! Classic tracepoints: the last rung, available everywhere. map_pages is seen
//! as a point after the PTEs went in; windows are whole invalidating syscalls.
//! Folio-delete field offsets come from tracefs via `CONFIG`; map_pages is
//! read at offsets the agent checked against tracefs before attaching it;
//! syscall records have the fixed layout of all syscall tracepoints.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_abi::{
    Config, EOF_PAGE, FALLOC_INVALIDATING, FICLONE, FICLONERANGE, FIDEDUPERANGE,
    FIDELITY_TRACEPOINT, FileKey, Kind, MADV_REMOVE, OP_CLONE, OP_CLONE_RANGE, OP_DEDUPE_RANGE,
    OP_FALLOCATE, OP_FTRUNCATE, OP_MADV_REMOVE, OP_TRUNCATE, TP_MAP_PAGES_LAYOUT,
};

use crate::{
    emit::{Record, is_self, now, send},
    kernel::{config, file_of_fd},
    maps::WINDOWS,
    probe::{adopt_syscall_file, byte_pages, map_pages_point, syscall_enter, syscall_exit},
};

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
    let Some(cfg) = config() else { return 0 };
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
    map_pages_point(cfg, key, start, end, FIDELITY_TRACEPOINT);
    0
}

/// Folios leaving the page cache, only for files with a window open: the
/// outcome side of a flagged fault-around. The fallback of the raw
/// tracepoint (raw_tracepoint.rs), which also reads the mapcount.
#[tracepoint(category = "filemap", name = "mm_filemap_delete_from_page_cache")]
pub fn mm_filemap_delete_from_page_cache(ctx: TracePointContext) -> u32 {
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
    if (open || cfg.full_stream != 0) && !is_self(cfg) {
        send(Record {
            entry_ts: 0,
            aux: pfn,
            ..Record::new(
                Kind::FolioDelete,
                FIDELITY_TRACEPOINT,
                now(),
                key,
                index,
                index,
            )
        });
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_fallocate")]
pub fn sys_enter_fallocate(ctx: TracePointContext) -> u32 {
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
        FIDELITY_TRACEPOINT,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_fallocate")]
pub fn sys_exit_fallocate(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        syscall_exit(cfg, FIDELITY_TRACEPOINT, ret(&ctx));
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_ftruncate")]
pub fn sys_enter_ftruncate(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let key = file_of_fd(cfg, arg(&ctx, 0)).unwrap_or_default();
    syscall_enter(
        cfg,
        key,
        arg(&ctx, 1) >> 12,
        EOF_PAGE,
        OP_FTRUNCATE,
        FIDELITY_TRACEPOINT,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ftruncate")]
pub fn sys_exit_ftruncate(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        syscall_exit(cfg, FIDELITY_TRACEPOINT, ret(&ctx));
    }
    0
}

/// truncate(2) names a path, which the kernel has not resolved yet at entry:
/// the record labels the operation but its file is unknown (ino 0).
#[tracepoint(category = "syscalls", name = "sys_enter_truncate")]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    syscall_enter(
        cfg,
        FileKey::default(),
        arg(&ctx, 1) >> 12,
        EOF_PAGE,
        OP_TRUNCATE,
        FIDELITY_TRACEPOINT,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_truncate")]
pub fn sys_exit_truncate(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        syscall_exit(cfg, FIDELITY_TRACEPOINT, ret(&ctx));
    }
    0
}

/// madvise(MADV_REMOVE) names a virtual range; which file backs it is only
/// known once the kernel looked up the vma, so the record labels the
/// operation and the function probes name the file.
#[tracepoint(category = "syscalls", name = "sys_enter_madvise")]
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) != MADV_REMOVE {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    syscall_enter(
        cfg,
        FileKey::default(),
        0,
        EOF_PAGE,
        OP_MADV_REMOVE,
        FIDELITY_TRACEPOINT,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_madvise")]
pub fn sys_exit_madvise(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        syscall_exit(cfg, FIDELITY_TRACEPOINT, ret(&ctx));
    }
    0
}

/// uapi struct file_clone_range.
#[repr(C)]
#[derive(Clone, Copy)]
struct CloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

/// uapi struct file_dedupe_range with its first file_dedupe_range_info.
#[repr(C)]
#[derive(Clone, Copy)]
struct DedupeRange {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
    dest_fd: i64,
    dest_offset: u64,
}

/// The remap ioctls invalidate the destination range. ioctl is hot on some
/// hosts: everything but the three commands leaves after one compare.
#[tracepoint(category = "syscalls", name = "sys_enter_ioctl")]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    let cmd = arg(&ctx, 1) as u32;
    if cmd != FICLONE && cmd != FICLONERANGE && cmd != FIDEDUPERANGE {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let (fd, user) = (arg(&ctx, 0), arg(&ctx, 2));
    let (fd, start, end, op) = if cmd == FICLONE {
        (fd, 0, EOF_PAGE, OP_CLONE)
    } else if cmd == FICLONERANGE {
        match unsafe { bpf_probe_read_user(user as *const CloneRange) } {
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
        match unsafe { bpf_probe_read_user(user as *const DedupeRange) } {
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
    syscall_enter(cfg, key, start, end, op, FIDELITY_TRACEPOINT);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_ioctl")]
pub fn sys_exit_ioctl(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        syscall_exit(cfg, FIDELITY_TRACEPOINT, ret(&ctx));
    }
    0
}
