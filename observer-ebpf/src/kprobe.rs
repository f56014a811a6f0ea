//! kprobe/kretprobe: the middle rung, for kernels that refuse trampolines
//! but keep kprobes. Module functions (xfs, btrfs, f2fs, ntfs3, ntfs, gfs2,
//! ocfs2) are probed here only: aya 0.14 cannot load fentry against a
//! module's BTF.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use observer_abi::probes::{Method, Prog};

use crate::{emit::hit, functions as f};

/// One kprobe (or kretprobe) program per line: `PROG: symbol => handler`.
/// The function is named at attach time, from the probe table.
macro_rules! programs {
    ($macro:ident, $ctx:ty, $($prog:ident: $name:ident => $handler:path;)*) => {$(
        #[$macro]
        pub fn $name(ctx: $ctx) -> u32 {
            hit(Prog::$prog);
            $handler(&ctx, Method::Kprobe.code());
            0
        }
    )*};
}

programs! { kprobe, ProbeContext,
    UnmapKprobe: unmap_mapping_range_kprobe => f::unmap_enter;
    TruncateKprobe: truncate_inode_pages_range_kprobe => f::truncate_enter;
    MapPagesKprobe: filemap_map_pages_kprobe => f::map_pages_entry;
    SetPteRangeKprobe: set_pte_range_kprobe => f::set_pte_range;
    DoSetPteKprobe: do_set_pte_kprobe => f::do_set_pte;
    AllocSetPteKprobe: alloc_set_pte_kprobe => f::alloc_set_pte_kprobe;
    DoSetPmdKprobe: do_set_pmd_kprobe => f::do_set_pmd_kprobe;
    Ext4ExtKprobe: ext4_ext_remove_space_kprobe => f::ext4_ext_remove_space;
    Ext4IndKprobe: ext4_ind_remove_space_kprobe => f::ext4_ind_remove_space;
    XfsFreeKprobe: xfs_free_file_space_kprobe => f::xfs_free_file_space;
    BtrfsReplaceKprobe: btrfs_replace_file_extents_kprobe => f::btrfs_replace_file_extents;
    F2fsHoleKprobe: f2fs_truncate_hole_kprobe => f::f2fs_truncate_hole;
    Ntfs3PunchKprobe: attr_punch_hole_kprobe => f::attr_punch_hole;
    NtfsPunchKprobe: ntfs_non_resident_attr_punch_hole_kprobe => f::ntfs_non_resident_attr_punch_hole;
    Gfs2PunchKprobe: gfs2_punch_hole_kprobe => f::gfs2_punch_hole;
    Ocfs2RemoveKprobe: ocfs2_remove_inode_range_kprobe => f::ocfs2_remove_inode_range;
    ShmemUndoKprobe: shmem_undo_range_kprobe => f::shmem_undo_range;
    ShmemAddKprobe: shmem_add_to_page_cache_kprobe => f::shmem_add_to_page_cache;
}

programs! { kretprobe, RetProbeContext,
    UnmapKretprobe: unmap_mapping_range_kretprobe => f::unmap_exit;
    TruncateKretprobe: truncate_inode_pages_range_kretprobe => f::truncate_exit;
    MapPagesKretprobe: filemap_map_pages_kretprobe => f::map_pages_return;
    AllocSetPteKretprobe: alloc_set_pte_kretprobe => f::installer_kretprobe;
    DoSetPmdKretprobe: do_set_pmd_kretprobe => f::installer_kretprobe;
    Ext4ExtKretprobe: ext4_ext_remove_space_kretprobe => f::fs_remove_return;
    Ext4IndKretprobe: ext4_ind_remove_space_kretprobe => f::fs_remove_return;
    XfsFreeKretprobe: xfs_free_file_space_kretprobe => f::fs_remove_return;
    BtrfsReplaceKretprobe: btrfs_replace_file_extents_kretprobe => f::fs_remove_return;
    F2fsHoleKretprobe: f2fs_truncate_hole_kretprobe => f::fs_remove_return;
    Ntfs3PunchKretprobe: attr_punch_hole_kretprobe => f::fs_remove_return;
    NtfsPunchKretprobe: ntfs_non_resident_attr_punch_hole_kretprobe => f::fs_remove_return;
    Gfs2PunchKretprobe: gfs2_punch_hole_kretprobe => f::fs_remove_return;
    Ocfs2RemoveKretprobe: ocfs2_remove_inode_range_kretprobe => f::fs_remove_return;
    ShmemUndoKretprobe: shmem_undo_range_kretprobe => f::shmem_undo_return;
}
