//! Per-filesystem policy, in one table: which function frees a punched
//! range's blocks (the end of a class-B window: a refill before it may read
//! blocks about to be freed), and whether such a refill can really read
//! freed data on that filesystem, and why not when it cannot. The correlator
//! applies it; the matrix names the hooks from it.

use crate::{
    FS_REMOVE_BTRFS, FS_REMOVE_EXT4_EXT, FS_REMOVE_EXT4_IND, FS_REMOVE_F2FS, FS_REMOVE_GFS2,
    FS_REMOVE_NTFS, FS_REMOVE_NTFS3, FS_REMOVE_OCFS2, FS_REMOVE_XFS,
};

/// What a remover's first argument points at, to reach the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InodeArg {
    /// A `struct inode *`.
    Vfs,
    /// A filesystem inode whose VFS inode is `container.member`: the
    /// argument's own struct, or one it opens (new ntfs: `big_ntfs_inode`
    /// starts with the `ntfs_inode` the function takes). Read from the
    /// module's BTF; a `struct inode *` prototype (btrfs before 5.12) is
    /// taken as it is.
    Within {
        container: &'static str,
        member: &'static str,
    },
}

/// A block-removal function, and the `FS_REMOVE_*` code its records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remover {
    /// The probe table's function.
    pub function: &'static str,
    pub code: u64,
    /// The module that holds it (and its BTF), when it is one.
    pub module: &'static str,
    pub inode: InodeArg,
}

const fn remover(
    function: &'static str,
    code: u64,
    module: &'static str,
    inode: InodeArg,
) -> Remover {
    Remover {
        function,
        code,
        module,
        inode,
    }
}

const fn within(container: &'static str, member: &'static str) -> InodeArg {
    InodeArg::Within { container, member }
}

/// What a refill inside a punch can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefillPolicy {
    /// A folio read from disk before the blocks are freed, and surviving
    /// the punch, holds freed data: `stale_data`.
    CanReadFreedBlocks,
    /// The filesystem serializes such reads with the removal by a lock of
    /// its own: a surviving refill is counted as exempt, not critical.
    Exempt { why: &'static str },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filesystem {
    pub name: &'static str,
    /// Functions whose last exit ends the punch's class-B window. Empty:
    /// the filesystem has no separate step (its windows are unbounded).
    pub removers: &'static [Remover],
    /// Functions that watch its page removal when it has none of the
    /// above (tmpfs's shmem_undo_range).
    pub hooks: &'static [&'static str],
    pub refill: RefillPolicy,
}

pub const FILESYSTEMS: &[Filesystem] = &[
    Filesystem {
        name: "ext4",
        removers: &[
            remover(
                "ext4_ext_remove_space",
                FS_REMOVE_EXT4_EXT,
                "ext4",
                InodeArg::Vfs,
            ),
            remover(
                "ext4_ind_remove_space",
                FS_REMOVE_EXT4_IND,
                "ext4",
                InodeArg::Vfs,
            ),
        ],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    Filesystem {
        name: "xfs",
        removers: &[remover(
            "xfs_free_file_space",
            FS_REMOVE_XFS,
            "xfs",
            within("xfs_inode", "i_vnode"),
        )],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    Filesystem {
        name: "btrfs",
        removers: &[remover(
            "btrfs_replace_file_extents",
            FS_REMOVE_BTRFS,
            "btrfs",
            within("btrfs_inode", "vfs_inode"),
        )],
        hooks: &[],
        refill: RefillPolicy::Exempt {
            why: "btrfs reads map their extents under the extent-range lock the punch holds \
                  through btrfs_replace_file_extents: a folio added inside the window is read \
                  only after the blocks are gone, so it holds the hole",
        },
    },
    Filesystem {
        name: "tmpfs",
        removers: &[],
        hooks: &["shmem_undo_range"],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    // f2fs_punch_hole: truncate_pagecache_range, then f2fs_truncate_hole
    // frees the blocks, both under invalidate_lock (5.15 on; F2FS_I's own
    // i_mmap_sem before, which buffered reads do not take).
    Filesystem {
        name: "f2fs",
        removers: &[remover(
            "f2fs_truncate_hole",
            FS_REMOVE_F2FS,
            "f2fs",
            InodeArg::Vfs,
        )],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    // ntfs_fallocate (5.15 to 6.x): truncate_pagecache to EOF, then
    // attr_punch_hole frees the clusters, under invalidate_lock.
    Filesystem {
        name: "ntfs3",
        removers: &[remover(
            "attr_punch_hole",
            FS_REMOVE_NTFS3,
            "ntfs3",
            within("ntfs_inode", "vfs_inode"),
        )],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    // The ntfs of 7.x: ntfs_punch_hole truncates the page cache to EOF,
    // then ntfs_non_resident_attr_punch_hole frees the clusters, under
    // invalidate_lock.
    Filesystem {
        name: "ntfs",
        removers: &[remover(
            "ntfs_non_resident_attr_punch_hole",
            FS_REMOVE_NTFS,
            "ntfs",
            within("big_ntfs_inode", "vfs_inode"),
        )],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    // __gfs2_punch_hole: truncate_pagecache_range, then punch_hole (static,
    // not inlined: truncates and eviction call it too) frees the blocks,
    // under the inode glock held exclusively. read(2) and faults take the
    // glock shared; readahead(2) and WILLNEED advice go through
    // gfs2_readahead, which takes none.
    Filesystem {
        name: "gfs2",
        removers: &[remover(
            "punch_hole",
            FS_REMOVE_GFS2,
            "gfs2",
            within("gfs2_inode", "i_inode"),
        )],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    // ocfs2_remove_inode_range: the extents go first, then the page cache
    // (ocfs2_truncate_cluster_pages), both under ip_alloc_sem held for
    // writing; the clusters wait in the truncate log.
    Filesystem {
        name: "ocfs2",
        removers: &[remover(
            "ocfs2_remove_inode_range",
            FS_REMOVE_OCFS2,
            "ocfs2",
            InodeArg::Vfs,
        )],
        hooks: &[],
        refill: RefillPolicy::Exempt {
            why: "ocfs2 removes a punch's extents before it truncates the page cache, under \
                  ip_alloc_sem, which its read_folio and readahead only trylock: a folio added \
                  inside the window is read after the extents are gone, so it holds the hole",
        },
    },
];

/// The filesystem whose block removal records carry `code`, and the
/// remover.
pub fn by_code(code: u64) -> Option<(&'static Filesystem, &'static Remover)> {
    FILESYSTEMS
        .iter()
        .find_map(|fs| fs.removers.iter().find(|r| r.code == code).map(|r| (fs, r)))
}

pub fn by_name(name: &str) -> Option<&'static Filesystem> {
    FILESYSTEMS.iter().find(|fs| fs.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{PROBES, Role};

    /// Every remover is a block-removal row of the probe table, and every
    /// such row belongs to one filesystem.
    #[test]
    fn removers_and_probe_rows_agree() {
        let rows: Vec<&str> = PROBES
            .iter()
            .filter(|r| r.role == Role::FsRemove)
            .map(|r| r.target.name())
            .collect();
        let removers: Vec<&str> = FILESYSTEMS
            .iter()
            .flat_map(|f| f.removers)
            .map(|r| r.function)
            .collect();
        assert_eq!(rows, removers);
        for code in [
            FS_REMOVE_EXT4_EXT,
            FS_REMOVE_EXT4_IND,
            FS_REMOVE_XFS,
            FS_REMOVE_BTRFS,
            FS_REMOVE_F2FS,
            FS_REMOVE_NTFS3,
            FS_REMOVE_NTFS,
            FS_REMOVE_GFS2,
            FS_REMOVE_OCFS2,
        ] {
            assert!(by_code(code).is_some(), "{code}");
            assert!((code as usize) < crate::FS_REMOVE_CODES, "{code}");
        }
        let mut codes: Vec<u64> = FILESYSTEMS
            .iter()
            .flat_map(|f| f.removers)
            .map(|r| r.code)
            .collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), removers.len(), "a code names one remover");
        assert_eq!(by_code(FS_REMOVE_XFS).unwrap().0.name, "xfs");
        assert!(by_code(0).is_none());
    }
}
