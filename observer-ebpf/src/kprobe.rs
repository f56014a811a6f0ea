//! kprobe/kretprobe: the middle rung, for kernels that refuse trampolines
//! (e.g. fentry on module code of 5.10) but keep kprobes. Module functions
//! (xfs, btrfs) are probed here only: aya 0.14 cannot load fentry against a
//! module's BTF.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use observer_abi::{
    FIDELITY_KPROBE, FS_REMOVE_BTRFS, FS_REMOVE_EXT4_EXT, FS_REMOVE_EXT4_IND, FS_REMOVE_XFS, Kind,
};

use crate::{
    kernel::config,
    probe::{
        FsFile, byte_pages, ext4_block_pages, folio_add, fs_remove_enter, fs_remove_exit,
        inclusive_byte_pages, invalidate_enter, invalidate_exit, map_pages_enter, map_pages_exit,
        pmd_install_check, pte_install_check, pte_install_return, pte_install_send,
        pte_install_stash, shmem_undo_enter, shmem_undo_exit, truncate_pages, unmap_pages,
    },
};

#[kprobe]
pub fn unmap_mapping_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(mapping), Some(begin), Some(len)) =
        (ctx.arg::<u64>(0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
    else {
        return 0;
    };
    let (start, end) = unmap_pages(begin, len);
    invalidate_enter(&ctx, Kind::UnmapEnter, FIDELITY_KPROBE, mapping, start, end);
    0
}

#[kretprobe]
pub fn unmap_mapping_range_kretprobe(ctx: RetProbeContext) -> u32 {
    invalidate_exit(&ctx, Kind::UnmapEnter, Kind::UnmapExit, FIDELITY_KPROBE);
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
    invalidate_enter(
        &ctx,
        Kind::TruncateEnter,
        FIDELITY_KPROBE,
        mapping,
        start,
        end,
    );
    0
}

#[kretprobe]
pub fn truncate_inode_pages_range_kretprobe(ctx: RetProbeContext) -> u32 {
    invalidate_exit(
        &ctx,
        Kind::TruncateEnter,
        Kind::TruncateExit,
        FIDELITY_KPROBE,
    );
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

#[kprobe]
pub fn set_pte_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(vmf), Some(nr), Some(addr)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(3), ctx.arg::<u64>(4))
    else {
        return 0;
    };
    if let Some((key, start, end)) = pte_install_check(vmf, Some(addr), nr & 0xffff_ffff) {
        pte_install_send(&ctx, FIDELITY_KPROBE, &key, start, end);
    }
    0
}

#[kprobe]
pub fn do_set_pte_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cfg), Some(vmf)) = (config(), ctx.arg::<u64>(0)) else {
        return 0;
    };
    let addr = if cfg.pte_addr_arg == 2 {
        ctx.arg::<u64>(2)
    } else {
        None
    };
    if let Some((key, start, end)) = pte_install_check(vmf, addr, 1) {
        pte_install_send(&ctx, FIDELITY_KPROBE, &key, start, end);
    }
    0
}

#[kprobe]
pub fn alloc_set_pte_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        pte_install_stash(pte_install_check(vmf, None, 1));
    }
    0
}

#[kretprobe]
pub fn alloc_set_pte_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    pte_install_return(&ctx, FIDELITY_KPROBE, ret);
    0
}

#[kprobe]
pub fn ext4_ext_remove_space_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(inode), Some(first), Some(last)) =
        (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u32>(2))
    else {
        return 0;
    };
    let (start, end) = ext4_block_pages(inode, first, last);
    fs_remove_enter(
        &ctx,
        FIDELITY_KPROBE,
        FsFile::Inode(inode),
        start,
        end,
        FS_REMOVE_EXT4_EXT,
    );
    0
}

#[kretprobe]
pub fn ext4_ext_remove_space_kretprobe(ctx: RetProbeContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_KPROBE);
    0
}

#[kprobe]
pub fn ext4_ind_remove_space_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(inode), Some(first), Some(stop)) =
        (ctx.arg::<u64>(1), ctx.arg::<u32>(2), ctx.arg::<u32>(3))
    else {
        return 0;
    };
    let (start, end) = ext4_block_pages(inode, first, stop.wrapping_sub(1));
    fs_remove_enter(
        &ctx,
        FIDELITY_KPROBE,
        FsFile::Inode(inode),
        start,
        end,
        FS_REMOVE_EXT4_IND,
    );
    0
}

#[kretprobe]
pub fn ext4_ind_remove_space_kretprobe(ctx: RetProbeContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_KPROBE);
    0
}

/// xfs_free_file_space(ip, offset, len): the file from `ip->i_vnode` when
/// the xfs module's BTF gave its offset, else the task's last invalidation.
#[kprobe]
pub fn xfs_free_file_space_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cfg), Some(ip), Some(offset), Some(len)) = (
        config(),
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
    ) else {
        return 0;
    };
    let (start, end) = byte_pages(offset, len);
    fs_remove_enter(
        &ctx,
        FIDELITY_KPROBE,
        FsFile::Embedded(ip, cfg.xfs_inode_vnode),
        start,
        end,
        FS_REMOVE_XFS,
    );
    0
}

#[kretprobe]
pub fn xfs_free_file_space_kretprobe(ctx: RetProbeContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_KPROBE);
    0
}

/// btrfs_replace_file_extents(inode, path, start, end, ...): bytes, end
/// inclusive; `inode` is a `struct btrfs_inode *` since 5.12 (a VFS inode
/// before), whose offset of the VFS inode the agent found (0 for a VFS one).
#[kprobe]
pub fn btrfs_replace_file_extents_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cfg), Some(ip), Some(first), Some(last)) = (
        config(),
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3),
    ) else {
        return 0;
    };
    let (start, end) = inclusive_byte_pages(first, last);
    fs_remove_enter(
        &ctx,
        FIDELITY_KPROBE,
        FsFile::Embedded(ip, cfg.btrfs_inode_vnode),
        start,
        end,
        FS_REMOVE_BTRFS,
    );
    0
}

#[kretprobe]
pub fn btrfs_replace_file_extents_kretprobe(ctx: RetProbeContext) -> u32 {
    fs_remove_exit(&ctx, FIDELITY_KPROBE);
    0
}

#[kprobe]
pub fn shmem_undo_range_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(inode), Some(lstart), Some(lend)) =
        (ctx.arg::<u64>(0), ctx.arg::<i64>(1), ctx.arg::<i64>(2))
    else {
        return 0;
    };
    shmem_undo_enter(&ctx, FIDELITY_KPROBE, inode, lstart, lend);
    0
}

#[kretprobe]
pub fn shmem_undo_range_kretprobe(ctx: RetProbeContext) -> u32 {
    shmem_undo_exit(&ctx, FIDELITY_KPROBE);
    0
}

#[kprobe]
pub fn shmem_add_to_page_cache_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(folio), Some(mapping), Some(index)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    folio_add(&ctx, FIDELITY_KPROBE, folio, Some((mapping, index)));
    0
}

#[kprobe]
pub fn do_set_pmd_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        pte_install_stash(pmd_install_check(vmf));
    }
    0
}

#[kretprobe]
pub fn do_set_pmd_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    pte_install_return(&ctx, FIDELITY_KPROBE, ret);
    0
}

/// The same kprobes serve do_set_pmd(vmf, folio, page) (6.13+): the return
/// value is in a register whatever the prototype.
#[kprobe]
pub fn do_set_pmd3_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        pte_install_stash(pmd_install_check(vmf));
    }
    0
}

#[kretprobe]
pub fn do_set_pmd3_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<u64>();
    pte_install_return(&ctx, FIDELITY_KPROBE, ret);
    0
}
