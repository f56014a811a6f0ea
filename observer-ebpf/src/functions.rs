//! Each kernel function's arguments, read the same way by every rung that
//! watches it: fentry/fexit and kprobe/kretprobe programs differ only in
//! their context type, so they share these handlers through [`Args`].

use aya_ebpf::programs::{
    FEntryContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext,
};
use observer_abi::{
    Config, EOF_PAGE, FS_REMOVE_BTRFS, FS_REMOVE_EXT4_EXT, FS_REMOVE_EXT4_IND, FS_REMOVE_F2FS,
    FS_REMOVE_GFS2, FS_REMOVE_NTFS, FS_REMOVE_NTFS3, FS_REMOVE_OCFS2, FS_REMOVE_XFS, Kind,
};

use crate::{
    kernel::config,
    probe::{
        byte_pages, ext4_block_pages, folio_add, fs_remove_enter, fs_remove_exit,
        inclusive_byte_pages, invalidate_enter, invalidate_exit, map_pages_enter, map_pages_exit,
        pmd_install_check, pte_install_check, pte_install_return, pte_install_send,
        pte_install_stash, shmem_undo_enter, shmem_undo_exit, truncate_pages, unmap_pages,
    },
};

/// A probe context that can read the probed call's arguments.
pub trait Args: StackIdContext {
    /// Argument `n` as a 64-bit word (narrower ones are truncated by the
    /// caller); None when the context cannot read it.
    fn arg_u64(&self, n: usize) -> Option<u64>;
}

impl Args for FEntryContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> Option<u64> {
        Some(self.arg::<u64>(n))
    }
}

/// In fexit, the return value follows the arguments.
impl Args for FExitContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> Option<u64> {
        Some(self.arg::<u64>(n))
    }
}

impl Args for ProbeContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> Option<u64> {
        self.arg::<u64>(n)
    }
}

/// A kretprobe sees no arguments: its handlers use what the entry stashed.
impl Args for RetProbeContext {
    #[inline(always)]
    fn arg_u64(&self, _n: usize) -> Option<u64> {
        None
    }
}

/// unmap_mapping_range(mapping, holebegin, holelen, even_cows)
#[inline(always)]
pub fn unmap_enter<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(mapping), Some(begin), Some(len)) = (ctx.arg_u64(0), ctx.arg_u64(1), ctx.arg_u64(2))
    else {
        return;
    };
    let (start, end) = unmap_pages(begin as i64, len as i64);
    invalidate_enter(ctx, Kind::UnmapEnter, fidelity, mapping, start, end);
}

#[inline(always)]
pub fn unmap_exit<C: Args>(ctx: &C, fidelity: u8) {
    invalidate_exit(ctx, Kind::UnmapEnter, Kind::UnmapExit, fidelity);
}

/// truncate_inode_pages_range(mapping, lstart, lend)
#[inline(always)]
pub fn truncate_enter<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(mapping), Some(lstart), Some(lend)) =
        (ctx.arg_u64(0), ctx.arg_u64(1), ctx.arg_u64(2))
    else {
        return;
    };
    let (start, end) = truncate_pages(lstart as i64, lend as i64);
    invalidate_enter(ctx, Kind::TruncateEnter, fidelity, mapping, start, end);
}

#[inline(always)]
pub fn truncate_exit<C: Args>(ctx: &C, fidelity: u8) {
    invalidate_exit(ctx, Kind::TruncateEnter, Kind::TruncateExit, fidelity);
}

/// filemap_map_pages(vmf, start_pgoff, end_pgoff)
#[inline(always)]
pub fn map_pages_entry<C: Args>(ctx: &C, _fidelity: u8) {
    let (Some(vmf), Some(start), Some(end)) = (ctx.arg_u64(0), ctx.arg_u64(1), ctx.arg_u64(2))
    else {
        return;
    };
    map_pages_enter(vmf, start, end);
}

#[inline(always)]
pub fn map_pages_return<C: Args>(_ctx: &C, fidelity: u8) {
    map_pages_exit(fidelity);
}

/// set_pte_range(vmf, folio, page, nr, addr) (6.5+) maps `nr` pages at `addr`.
#[inline(always)]
pub fn set_pte_range<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(vmf), Some(nr), Some(addr)) = (ctx.arg_u64(0), ctx.arg_u64(3), ctx.arg_u64(4)) else {
        return;
    };
    if let Some(install) = pte_install_check(vmf, Some(addr), nr & 0xffff_ffff) {
        pte_install_send(ctx, fidelity, &install);
    }
}

/// do_set_pte(vmf, page, addr) (5.18..6.4; without addr since 5.12, where
/// vmf->address is the page's address).
#[inline(always)]
pub fn do_set_pte<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(cfg), Some(vmf)) = (config(), ctx.arg_u64(0)) else {
        return;
    };
    let addr = if cfg.pte_addr_arg == 2 {
        ctx.arg_u64(2)
    } else {
        None
    };
    if let Some(install) = pte_install_check(vmf, addr, 1) {
        pte_install_send(ctx, fidelity, &install);
    }
}

/// An installer that may fail, seen at exit: `ret_arg` is where fexit finds
/// its return value (5.10 alloc_set_pte(vmf, page): 0 when it installed the
/// PTE; filemap_map_pages advances vmf->address per page).
#[inline(always)]
fn installed_at_exit(ctx: &FExitContext, fidelity: u8, ret_arg: usize, pmd: bool) {
    if ctx.arg::<u64>(ret_arg) as u32 != 0 {
        return;
    }
    let vmf = ctx.arg::<u64>(0);
    let checked = if pmd {
        pmd_install_check(vmf)
    } else {
        pte_install_check(vmf, None, 1)
    };
    if let Some(install) = checked {
        pte_install_send(ctx, fidelity, &install);
    }
}

#[inline(always)]
pub fn alloc_set_pte_fexit(ctx: &FExitContext, fidelity: u8) {
    installed_at_exit(ctx, fidelity, 2, false);
}

/// do_set_pmd(vmf, page) (6.1..6.12; inlined in 5.10's alloc_set_pte): a
/// large folio mapped by one PMD. 0: mapped.
#[inline(always)]
pub fn do_set_pmd_fexit(ctx: &FExitContext, fidelity: u8) {
    installed_at_exit(ctx, fidelity, 2, true);
}

/// do_set_pmd(vmf, folio, page) (6.13+): the return value comes fourth.
#[inline(always)]
pub fn do_set_pmd3_fexit(ctx: &FExitContext, fidelity: u8) {
    installed_at_exit(ctx, fidelity, 3, true);
}

/// The kprobe rung of the failing installers: the entry remembers the
/// pages, the return sends them if the call returned 0.
#[inline(always)]
pub fn alloc_set_pte_kprobe(ctx: &ProbeContext, _fidelity: u8) {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        pte_install_stash(pte_install_check(vmf, None, 1));
    }
}

#[inline(always)]
pub fn do_set_pmd_kprobe(ctx: &ProbeContext, _fidelity: u8) {
    if let Some(vmf) = ctx.arg::<u64>(0) {
        pte_install_stash(pmd_install_check(vmf));
    }
}

#[inline(always)]
pub fn installer_kretprobe(ctx: &RetProbeContext, fidelity: u8) {
    let ret = ctx.ret::<u64>();
    pte_install_return(ctx, fidelity, ret);
}

/// A filesystem's block-removal entry: `args` are the argument slots of
/// its inode and of the two ends of its range, `pages` turns the range into
/// page indexes. The VFS inode sits at `Config::remover_inode` in the first
/// (0 for a `struct inode *`); where the module's BTF did not say, the probe
/// takes the file of the task's last invalidation.
#[inline(always)]
fn fs_remover<C: Args>(
    ctx: &C,
    fidelity: u8,
    code: u64,
    args: (usize, usize, usize),
    pages: impl Fn(u64, u64, u64) -> (u64, u64),
) {
    let (Some(cfg), Some(ip), Some(a), Some(b)) = (
        config(),
        ctx.arg_u64(args.0),
        ctx.arg_u64(args.1),
        ctx.arg_u64(args.2),
    ) else {
        return;
    };
    let off = cfg
        .remover_inode
        .get(code as usize)
        .copied()
        .unwrap_or(Config::UNKNOWN);
    let inode = (off != Config::UNKNOWN).then(|| ip + off as u64);
    let (start, end) = pages(ip, a, b);
    fs_remove_enter(ctx, fidelity, inode, start, end, code);
}

/// One entry handler per block-removal function of the filesystem table:
/// `name(CODE, (inode, range start, range end argument slots)) => pages`,
/// where `pages(first argument, start, end)` gives the page indexes.
macro_rules! removers {
    ($($(#[$doc:meta])* $name:ident($code:ident, $args:expr) => $pages:expr;)*) => {$(
        $(#[$doc])*
        #[inline(always)]
        pub fn $name<C: Args>(ctx: &C, fidelity: u8) {
            fs_remover(ctx, fidelity, $code, $args, $pages);
        }
    )*};
}

removers! {
    /// ext4_ext_remove_space(inode, start, end): logical blocks, end inclusive.
    ext4_ext_remove_space(FS_REMOVE_EXT4_EXT, (0, 1, 2)) =>
        |inode, first, last| ext4_block_pages(inode, first as u32, last as u32);
    /// ext4_ind_remove_space(handle, inode, start, end): end exclusive.
    ext4_ind_remove_space(FS_REMOVE_EXT4_IND, (1, 2, 3)) =>
        |inode, first, stop| ext4_block_pages(inode, first as u32, (stop as u32).wrapping_sub(1));
    /// xfs_free_file_space(ip, offset, len): bytes.
    xfs_free_file_space(FS_REMOVE_XFS, (0, 1, 2)) =>
        |_, offset, len| byte_pages(offset, len);
    /// btrfs_replace_file_extents(inode, path, start, end, ...): bytes, end
    /// inclusive; `inode` is a `struct btrfs_inode *` since 5.12 (a VFS inode
    /// before).
    btrfs_replace_file_extents(FS_REMOVE_BTRFS, (0, 2, 3)) =>
        |_, first, last| inclusive_byte_pages(first, last);
    /// f2fs_truncate_hole(inode, pg_start, pg_end): pages, end exclusive.
    f2fs_truncate_hole(FS_REMOVE_F2FS, (0, 1, 2)) =>
        |_, first, stop| (first, stop.saturating_sub(1).max(first));
    /// attr_punch_hole(ni, vbo, bytes, frame_size): ntfs3's, in bytes.
    attr_punch_hole(FS_REMOVE_NTFS3, (0, 1, 2)) =>
        |_, vbo, bytes| byte_pages(vbo, bytes);
    /// ntfs_non_resident_attr_punch_hole(ni, start_vcn, len): clusters, whose
    /// size is the volume's. The agent takes only the removal's time and
    /// file, so the record gives a superset: from page `start_vcn` (a cluster
    /// is at least a page, so no later than the first page punched) to the
    /// end, the range ntfs truncated from the page cache before it.
    ntfs_non_resident_attr_punch_hole(FS_REMOVE_NTFS, (0, 1, 2)) =>
        |_, vcn, _| (vcn, EOF_PAGE);
    /// gfs2's punch_hole(ip, offset, length): bytes, length 0 to the end (a
    /// truncate).
    gfs2_punch_hole(FS_REMOVE_GFS2, (0, 1, 2)) =>
        |_, offset, len| byte_pages(offset, len);
    /// ocfs2_remove_inode_range(inode, di_bh, byte_start, byte_len).
    ocfs2_remove_inode_range(FS_REMOVE_OCFS2, (0, 2, 3)) =>
        |_, start, len| byte_pages(start, len);
}

#[inline(always)]
pub fn fs_remove_return<C: Args>(ctx: &C, fidelity: u8) {
    fs_remove_exit(ctx, fidelity);
}

/// shmem_undo_range(inode, lstart, lend, unfalloc): static, but in BTF.
#[inline(always)]
pub fn shmem_undo_range<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(inode), Some(lstart), Some(lend)) = (ctx.arg_u64(0), ctx.arg_u64(1), ctx.arg_u64(2))
    else {
        return;
    };
    shmem_undo_enter(ctx, fidelity, inode, lstart as i64, lend as i64);
}

#[inline(always)]
pub fn shmem_undo_return<C: Args>(ctx: &C, fidelity: u8) {
    shmem_undo_exit(ctx, fidelity);
}

/// shmem_add_to_page_cache(folio, mapping, index, ...): tmpfs's add, which
/// fires no filemap tracepoint. Seen at entry (it rarely fails: -EEXIST on a
/// racing add), so the folio's own mapping and index are not set yet.
#[inline(always)]
pub fn shmem_add_to_page_cache<C: Args>(ctx: &C, fidelity: u8) {
    let (Some(folio), Some(mapping), Some(index)) =
        (ctx.arg_u64(0), ctx.arg_u64(1), ctx.arg_u64(2))
    else {
        return;
    };
    folio_add(ctx, fidelity, folio, Some((mapping, index)));
}
