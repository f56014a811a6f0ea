//! fentry/fexit: the best rung. Trampolines fire at the exact call boundaries
//! and cost the least per call.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use observer_abi::{FIDELITY_FENTRY, Kind};

use crate::probe::{
    invalidate_enter, invalidate_exit, map_pages_enter, map_pages_exit, truncate_pages, unmap_pages,
};

#[fentry(function = "unmap_mapping_range")]
pub fn unmap_mapping_range_fentry(ctx: FEntryContext) -> u32 {
    let (start, end) = unmap_pages(ctx.arg::<i64>(1), ctx.arg::<i64>(2));
    invalidate_enter(
        Kind::UnmapEnter,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        start,
        end,
    );
    0
}

#[fexit(function = "unmap_mapping_range")]
pub fn unmap_mapping_range_fexit(_ctx: FExitContext) -> u32 {
    invalidate_exit(Kind::UnmapEnter, Kind::UnmapExit, FIDELITY_FENTRY);
    0
}

#[fentry(function = "truncate_inode_pages_range")]
pub fn truncate_inode_pages_range_fentry(ctx: FEntryContext) -> u32 {
    let (start, end) = truncate_pages(ctx.arg::<i64>(1), ctx.arg::<i64>(2));
    invalidate_enter(
        Kind::TruncateEnter,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        start,
        end,
    );
    0
}

#[fexit(function = "truncate_inode_pages_range")]
pub fn truncate_inode_pages_range_fexit(_ctx: FExitContext) -> u32 {
    invalidate_exit(Kind::TruncateEnter, Kind::TruncateExit, FIDELITY_FENTRY);
    0
}

#[fentry(function = "filemap_map_pages")]
pub fn filemap_map_pages_fentry(ctx: FEntryContext) -> u32 {
    map_pages_enter(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2));
    0
}

#[fexit(function = "filemap_map_pages")]
pub fn filemap_map_pages_fexit(_ctx: FExitContext) -> u32 {
    map_pages_exit(FIDELITY_FENTRY);
    0
}
