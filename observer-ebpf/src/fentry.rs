//! fentry/fexit: the best rung. Trampolines fire at the exact call boundaries
//! and cost the least per call. vmlinux functions only: aya 0.14 cannot load
//! a tracing program against a module's BTF (xfs, btrfs use kprobes).

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use observer_abi::probes::{Method, Prog};

use crate::{emit::hit, functions as f};

/// One fentry (or fexit) program per line: `PROG: symbol("kernel function")
/// => handler`. The handler gets the context and the fidelity.
macro_rules! programs {
    ($macro:ident, $ctx:ty, $($prog:ident: $name:ident($function:literal) => $handler:path;)*) => {$(
        #[$macro(function = $function)]
        pub fn $name(ctx: $ctx) -> u32 {
            hit(Prog::$prog);
            $handler(&ctx, Method::Fentry.code());
            0
        }
    )*};
}

programs! { fentry, FEntryContext,
    UnmapFentry: unmap_mapping_range_fentry("unmap_mapping_range") => f::unmap_enter;
    TruncateFentry: truncate_inode_pages_range_fentry("truncate_inode_pages_range") => f::truncate_enter;
    MapPagesFentry: filemap_map_pages_fentry("filemap_map_pages") => f::map_pages_entry;
    SetPteRangeFentry: set_pte_range_fentry("set_pte_range") => f::set_pte_range;
    DoSetPteFentry: do_set_pte_fentry("do_set_pte") => f::do_set_pte;
    Ext4ExtFentry: ext4_ext_remove_space_fentry("ext4_ext_remove_space") => f::ext4_ext_remove_space;
    Ext4IndFentry: ext4_ind_remove_space_fentry("ext4_ind_remove_space") => f::ext4_ind_remove_space;
    XfsFreeFentry: xfs_free_file_space_fentry("xfs_free_file_space") => f::xfs_free_file_space;
    BtrfsReplaceFentry: btrfs_replace_file_extents_fentry("btrfs_replace_file_extents") => f::btrfs_replace_file_extents;
    ShmemUndoFentry: shmem_undo_range_fentry("shmem_undo_range") => f::shmem_undo_range;
    ShmemAddFentry: shmem_add_to_page_cache_fentry("shmem_add_to_page_cache") => f::shmem_add_to_page_cache;
}

programs! { fexit, FExitContext,
    UnmapFexit: unmap_mapping_range_fexit("unmap_mapping_range") => f::unmap_exit;
    TruncateFexit: truncate_inode_pages_range_fexit("truncate_inode_pages_range") => f::truncate_exit;
    MapPagesFexit: filemap_map_pages_fexit("filemap_map_pages") => f::map_pages_return;
    AllocSetPteFexit: alloc_set_pte_fexit("alloc_set_pte") => f::alloc_set_pte_fexit;
    DoSetPmdFexit: do_set_pmd_fexit("do_set_pmd") => f::do_set_pmd_fexit;
    DoSetPmd3Fexit: do_set_pmd3_fexit("do_set_pmd") => f::do_set_pmd3_fexit;
    Ext4ExtFexit: ext4_ext_remove_space_fexit("ext4_ext_remove_space") => f::fs_remove_return;
    Ext4IndFexit: ext4_ind_remove_space_fexit("ext4_ind_remove_space") => f::fs_remove_return;
    XfsFreeFexit: xfs_free_file_space_fexit("xfs_free_file_space") => f::fs_remove_return;
    BtrfsReplaceFexit: btrfs_replace_file_extents_fexit("btrfs_replace_file_extents") => f::fs_remove_return;
    ShmemUndoFexit: shmem_undo_range_fexit("shmem_undo_range") => f::shmem_undo_return;
}
