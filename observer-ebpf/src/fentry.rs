//! fentry/fexit: the best rung. Trampolines fire at the exact call boundaries
//! and cost the least per call. vmlinux functions only: aya 0.14 cannot load
//! a tracing program against a module's BTF (xfs, btrfs use kprobes).

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use observer_abi::{
    FIDELITY_FENTRY, FS_REMOVE_BTRFS, FS_REMOVE_EXT4_EXT, FS_REMOVE_EXT4_IND, FS_REMOVE_XFS, Kind,
};

use crate::{
    kernel::config,
    probe::{
        FsFile, byte_pages, ext4_block_pages, folio_add, fs_remove_enter, fs_remove_exit,
        inclusive_byte_pages, invalidate_enter, invalidate_exit, map_pages_enter, map_pages_exit,
        pmd_install_check, pte_install_check, pte_install_send, shmem_undo_enter, shmem_undo_exit,
        truncate_pages, unmap_pages,
    },
};

#[fentry(function = "unmap_mapping_range")]
pub fn unmap_mapping_range_fentry(ctx: FEntryContext) -> u32 {
    let (start, end) = unmap_pages(ctx.arg::<i64>(1), ctx.arg::<i64>(2));
    invalidate_enter(
        &ctx,
        Kind::UnmapEnter,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        start,
        end,
    );
    0
}

#[fexit(function = "unmap_mapping_range")]
pub fn unmap_mapping_range_fexit(ctx: FExitContext) -> u32 {
    invalidate_exit(&ctx, Kind::UnmapEnter, Kind::UnmapExit, FIDELITY_FENTRY);
    0
}

#[fentry(function = "truncate_inode_pages_range")]
pub fn truncate_inode_pages_range_fentry(ctx: FEntryContext) -> u32 {
    let (start, end) = truncate_pages(ctx.arg::<i64>(1), ctx.arg::<i64>(2));
    invalidate_enter(
        &ctx,
        Kind::TruncateEnter,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        start,
        end,
    );
    0
}

#[fexit(function = "truncate_inode_pages_range")]
pub fn truncate_inode_pages_range_fexit(ctx: FExitContext) -> u32 {
    invalidate_exit(
        &ctx,
        Kind::TruncateEnter,
        Kind::TruncateExit,
        FIDELITY_FENTRY,
    );
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

/// 6.5+: set_pte_range(vmf, folio, page, nr, addr) maps `nr` pages at `addr`.
#[fentry(function = "set_pte_range")]
pub fn set_pte_range_fentry(ctx: FEntryContext) -> u32 {
    let nr = ctx.arg::<u64>(3) & 0xffff_ffff;
    if let Some((key, start, end)) =
        pte_install_check(ctx.arg::<u64>(0), Some(ctx.arg::<u64>(4)), nr)
    {
        pte_install_send(&ctx, FIDELITY_FENTRY, &key, start, end);
    }
    0
}

/// do_set_pte(vmf, page, addr) (5.18..6.4; 5.12..5.17 without addr, where
/// vmf->address is the page's address).
#[fentry(function = "do_set_pte")]
pub fn do_set_pte_fentry(ctx: FEntryContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let addr = if cfg.pte_addr_arg == 2 {
        Some(ctx.arg::<u64>(2))
    } else {
        None
    };
    if let Some((key, start, end)) = pte_install_check(ctx.arg::<u64>(0), addr, 1) {
        pte_install_send(&ctx, FIDELITY_FENTRY, &key, start, end);
    }
    0
}

/// 5.10: alloc_set_pte(vmf, page) returns 0 when it installed the PTE
/// (VM_FAULT_NOPAGE when one was already there); filemap_map_pages advances
/// vmf->address per page.
#[fexit(function = "alloc_set_pte")]
pub fn alloc_set_pte_fexit(ctx: FExitContext) -> u32 {
    if ctx.arg::<u64>(2) as u32 != 0 {
        return 0;
    }
    if let Some((key, start, end)) = pte_install_check(ctx.arg::<u64>(0), None, 1) {
        pte_install_send(&ctx, FIDELITY_FENTRY, &key, start, end);
    }
    0
}

/// do_set_pmd(vmf, page) (6.1+; inlined in 5.10's alloc_set_pte): a large
/// folio mapped by one PMD, from filemap_map_pmd or finish_fault. 0: mapped.
#[fexit(function = "do_set_pmd")]
pub fn do_set_pmd_fexit(ctx: FExitContext) -> u32 {
    if ctx.arg::<u64>(2) as u32 != 0 {
        return 0;
    }
    if let Some((key, start, end)) = pmd_install_check(ctx.arg::<u64>(0)) {
        pte_install_send(&ctx, FIDELITY_FENTRY, &key, start, end);
    }
    0
}

/// do_set_pmd(vmf, folio, page) (6.13+): the return value comes third.
#[fexit(function = "do_set_pmd")]
pub fn do_set_pmd3_fexit(ctx: FExitContext) -> u32 {
    if ctx.arg::<u64>(3) as u32 != 0 {
        return 0;
    }
    if let Some((key, start, end)) = pmd_install_check(ctx.arg::<u64>(0)) {
        pte_install_send(&ctx, FIDELITY_FENTRY, &key, start, end);
    }
    0
}

/// ext4_ext_remove_space(inode, start, end): logical blocks, end inclusive.
#[fentry(function = "ext4_ext_remove_space")]
pub fn ext4_ext_remove_space_fentry(ctx: FEntryContext) -> u32 {
    let inode = ctx.arg::<u64>(0);
    let (start, end) = ext4_block_pages(inode, ctx.arg::<u32>(1), ctx.arg::<u32>(2));
    fs_remove_enter(
        &ctx,
        FIDELITY_FENTRY,
        FsFile::Inode(inode),
        start,
        end,
        FS_REMOVE_EXT4_EXT,
    );
    0
}

#[fexit(function = "ext4_ext_remove_space")]
pub fn ext4_ext_remove_space_fexit(ctx: FExitContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_FENTRY);
    0
}

/// ext4_ind_remove_space(handle, inode, start, end): end exclusive.
#[fentry(function = "ext4_ind_remove_space")]
pub fn ext4_ind_remove_space_fentry(ctx: FEntryContext) -> u32 {
    let inode = ctx.arg::<u64>(1);
    let last = ctx.arg::<u32>(3).wrapping_sub(1);
    let (start, end) = ext4_block_pages(inode, ctx.arg::<u32>(2), last);
    fs_remove_enter(
        &ctx,
        FIDELITY_FENTRY,
        FsFile::Inode(inode),
        start,
        end,
        FS_REMOVE_EXT4_IND,
    );
    0
}

#[fexit(function = "ext4_ind_remove_space")]
pub fn ext4_ind_remove_space_fexit(ctx: FExitContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_FENTRY);
    0
}

/// shmem_undo_range(inode, lstart, lend, unfalloc): static, but in BTF.
#[fentry(function = "shmem_undo_range")]
pub fn shmem_undo_range_fentry(ctx: FEntryContext) -> u32 {
    shmem_undo_enter(
        &ctx,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        ctx.arg::<i64>(1),
        ctx.arg::<i64>(2),
    );
    0
}

#[fexit(function = "shmem_undo_range")]
pub fn shmem_undo_range_fexit(ctx: FExitContext) -> u32 {
    shmem_undo_exit(&ctx, FIDELITY_FENTRY);
    0
}

/// shmem_add_to_page_cache(folio, mapping, index, ...): tmpfs's add, which
/// fires no filemap tracepoint. Seen at entry (it rarely fails: -EEXIST on a
/// racing add), so the folio's own mapping and index are not set yet.
#[fentry(function = "shmem_add_to_page_cache")]
pub fn shmem_add_to_page_cache_fentry(ctx: FEntryContext) -> u32 {
    folio_add(
        &ctx,
        FIDELITY_FENTRY,
        ctx.arg::<u64>(0),
        Some((ctx.arg::<u64>(1), ctx.arg::<u64>(2))),
    );
    0
}

/// xfs_free_file_space(ip, offset, len), when xfs is built into vmlinux (as
/// a module it has kprobes only, see kprobe.rs).
#[fentry(function = "xfs_free_file_space")]
pub fn xfs_free_file_space_fentry(ctx: FEntryContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let (start, end) = byte_pages(ctx.arg::<u64>(1), ctx.arg::<u64>(2));
    fs_remove_enter(
        &ctx,
        FIDELITY_FENTRY,
        FsFile::Embedded(ctx.arg::<u64>(0), cfg.xfs_inode_vnode),
        start,
        end,
        FS_REMOVE_XFS,
    );
    0
}

#[fexit(function = "xfs_free_file_space")]
pub fn xfs_free_file_space_fexit(ctx: FExitContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_FENTRY);
    0
}

/// btrfs_replace_file_extents(inode, path, start, end, ...), when btrfs is
/// built into vmlinux.
#[fentry(function = "btrfs_replace_file_extents")]
pub fn btrfs_replace_file_extents_fentry(ctx: FEntryContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let (start, end) = inclusive_byte_pages(ctx.arg::<u64>(2), ctx.arg::<u64>(3));
    fs_remove_enter(
        &ctx,
        FIDELITY_FENTRY,
        FsFile::Embedded(ctx.arg::<u64>(0), cfg.btrfs_inode_vnode),
        start,
        end,
        FS_REMOVE_BTRFS,
    );
    0
}

#[fexit(function = "btrfs_replace_file_extents")]
pub fn btrfs_replace_file_extents_fexit(ctx: FExitContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_FENTRY);
    0
}
