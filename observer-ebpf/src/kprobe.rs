//! kprobe/kretprobe: the middle rung, for kernels that refuse trampolines
//! (e.g. fentry on module code of 5.10) but keep kprobes.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use observer_abi::{FIDELITY_KPROBE, Kind};

use crate::probe::{
    invalidate_enter, invalidate_exit, map_pages_enter, map_pages_exit, truncate_pages, unmap_pages,
};

#[kprobe]
pub fn unmap_mapping_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(mapping), Some(begin), Some(len)) =
        (ctx.arg::<u64>(0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
    else {
        return 0;
    };
    let (start, end) = unmap_pages(begin, len);
    invalidate_enter(Kind::UnmapEnter, FIDELITY_KPROBE, mapping, start, end);
    0
}

#[kretprobe]
pub fn unmap_mapping_range_kretprobe(_ctx: RetProbeContext) -> u32 {
    invalidate_exit(Kind::UnmapEnter, Kind::UnmapExit, FIDELITY_KPROBE);
    0
}

#[kprobe]
pub fn truncate_inode_pages_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(mapping), Some(lstart), Some(lend)) =
        (ctx.arg::<u64>(0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
    else {
        return 0;
    };
    let (start, end) = truncate_pages(lstart, lend);
    invalidate_enter(Kind::TruncateEnter, FIDELITY_KPROBE, mapping, start, end);
    0
}

#[kretprobe]
pub fn truncate_inode_pages_range_kretprobe(_ctx: RetProbeContext) -> u32 {
    invalidate_exit(Kind::TruncateEnter, Kind::TruncateExit, FIDELITY_KPROBE);
    0
}

#[kprobe]
pub fn filemap_map_pages_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(vmf), Some(start), Some(end)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    map_pages_enter(vmf, start, end);
    0
}

#[kretprobe]
pub fn filemap_map_pages_kretprobe(_ctx: RetProbeContext) -> u32 {
    map_pages_exit(FIDELITY_KPROBE);
    0
}
