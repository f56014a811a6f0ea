//! Per-filesystem policy, in one table: which function frees a punched
//! range's blocks (the end of a class-B window: a refill before it may read
//! blocks about to be freed), and whether such a refill can really read
//! freed data on that filesystem, and why not when it cannot. The correlator
//! applies it; the matrix names the hooks from it.

use crate::{FS_REMOVE_BTRFS, FS_REMOVE_EXT4_EXT, FS_REMOVE_EXT4_IND, FS_REMOVE_XFS};

/// A block-removal function, and the `FS_REMOVE_*` code its records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remover {
    /// The probe table's function.
    pub function: &'static str,
    pub code: u64,
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
            Remover {
                function: "ext4_ext_remove_space",
                code: FS_REMOVE_EXT4_EXT,
            },
            Remover {
                function: "ext4_ind_remove_space",
                code: FS_REMOVE_EXT4_IND,
            },
        ],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    Filesystem {
        name: "xfs",
        removers: &[Remover {
            function: "xfs_free_file_space",
            code: FS_REMOVE_XFS,
        }],
        hooks: &[],
        refill: RefillPolicy::CanReadFreedBlocks,
    },
    Filesystem {
        name: "btrfs",
        removers: &[Remover {
            function: "btrfs_replace_file_extents",
            code: FS_REMOVE_BTRFS,
        }],
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
        ] {
            assert!(by_code(code).is_some(), "{code}");
        }
        assert_eq!(by_code(FS_REMOVE_XFS).unwrap().0.name, "xfs");
        assert!(by_code(0).is_none());
    }
}
