//! The probe table: every kernel function and tracepoint the observer
//! watches, what it is watched for, and the programs of each rung of its
//! attach ladder. The eBPF crate defines one program per [`Prog`], the
//! loader walks [`PROBES`], and the tests and xtask take names from here; a
//! unit test holds the table and the built object to each other.

/// How a program attaches, best first: the order of the attach ladder. It
/// is also the fidelity of what a record tells (trampolines see exact call
/// boundaries, kprobes nearly, tracepoints are points): the weaker of two
/// is the greater.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Fentry,
    Kprobe,
    /// A tracepoint's raw arguments (pointers the record leaves out).
    RawTracepoint,
    Tracepoint,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
            Method::RawTracepoint => "raw_tracepoint",
            Method::Tracepoint => "tracepoint",
        }
    }

    /// The record byte (`Event::fidelity`).
    pub const fn code(self) -> u8 {
        self as u8
    }

    pub const fn from_code(code: u8) -> Option<Method> {
        Some(match code {
            0 => Method::Fentry,
            1 => Method::Kprobe,
            2 => Method::RawTracepoint,
            3 => Method::Tracepoint,
            _ => return None,
        })
    }

    /// The weaker of two: an observation made of both is only as precise
    /// as its less precise side.
    pub fn weaker(self, other: Method) -> Method {
        self.max(other)
    }
}

macro_rules! programs {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Every program in the eBPF object, by name. The discriminant is the
        /// program's slot in the `HITS` counter array.
        #[repr(u16)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Prog {
            $($(#[$doc])* $variant,)*
        }

        impl Prog {
            pub const ALL: &'static [Prog] = &[$(Prog::$variant,)*];

            /// The program's symbol in the object (what aya looks up).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Prog::$variant => $name,)*
                }
            }
        }
    };
}

programs! {
    UnmapFentry = "unmap_mapping_range_fentry",
    UnmapFexit = "unmap_mapping_range_fexit",
    UnmapKprobe = "unmap_mapping_range_kprobe",
    UnmapKretprobe = "unmap_mapping_range_kretprobe",
    TruncateFentry = "truncate_inode_pages_range_fentry",
    TruncateFexit = "truncate_inode_pages_range_fexit",
    TruncateKprobe = "truncate_inode_pages_range_kprobe",
    TruncateKretprobe = "truncate_inode_pages_range_kretprobe",
    MapPagesFentry = "filemap_map_pages_fentry",
    MapPagesFexit = "filemap_map_pages_fexit",
    MapPagesKprobe = "filemap_map_pages_kprobe",
    MapPagesKretprobe = "filemap_map_pages_kretprobe",
    MapPagesTp = "mm_filemap_map_pages",
    SetPteRangeFentry = "set_pte_range_fentry",
    SetPteRangeKprobe = "set_pte_range_kprobe",
    DoSetPteFentry = "do_set_pte_fentry",
    DoSetPteKprobe = "do_set_pte_kprobe",
    AllocSetPteFexit = "alloc_set_pte_fexit",
    AllocSetPteKprobe = "alloc_set_pte_kprobe",
    AllocSetPteKretprobe = "alloc_set_pte_kretprobe",
    /// do_set_pmd(vmf, page): the return value is the third fexit argument.
    DoSetPmdFexit = "do_set_pmd_fexit",
    /// do_set_pmd(vmf, folio, page): the return value is the fourth.
    DoSetPmd3Fexit = "do_set_pmd3_fexit",
    /// Both prototypes: the entry reads only `vmf`, the return a register.
    DoSetPmdKprobe = "do_set_pmd_kprobe",
    DoSetPmdKretprobe = "do_set_pmd_kretprobe",
    FolioDeleteRawTp = "folio_delete_raw_tp",
    FolioDeleteTp = "mm_filemap_delete_from_page_cache",
    FolioAddRawTp = "folio_add_raw_tp",
    ShmemAddFentry = "shmem_add_to_page_cache_fentry",
    ShmemAddKprobe = "shmem_add_to_page_cache_kprobe",
    ShmemUndoFentry = "shmem_undo_range_fentry",
    ShmemUndoFexit = "shmem_undo_range_fexit",
    ShmemUndoKprobe = "shmem_undo_range_kprobe",
    ShmemUndoKretprobe = "shmem_undo_range_kretprobe",
    Ext4ExtFentry = "ext4_ext_remove_space_fentry",
    Ext4ExtFexit = "ext4_ext_remove_space_fexit",
    Ext4ExtKprobe = "ext4_ext_remove_space_kprobe",
    Ext4ExtKretprobe = "ext4_ext_remove_space_kretprobe",
    Ext4IndFentry = "ext4_ind_remove_space_fentry",
    Ext4IndFexit = "ext4_ind_remove_space_fexit",
    Ext4IndKprobe = "ext4_ind_remove_space_kprobe",
    Ext4IndKretprobe = "ext4_ind_remove_space_kretprobe",
    XfsFreeFentry = "xfs_free_file_space_fentry",
    XfsFreeFexit = "xfs_free_file_space_fexit",
    XfsFreeKprobe = "xfs_free_file_space_kprobe",
    XfsFreeKretprobe = "xfs_free_file_space_kretprobe",
    BtrfsReplaceFentry = "btrfs_replace_file_extents_fentry",
    BtrfsReplaceFexit = "btrfs_replace_file_extents_fexit",
    BtrfsReplaceKprobe = "btrfs_replace_file_extents_kprobe",
    BtrfsReplaceKretprobe = "btrfs_replace_file_extents_kretprobe",
    F2fsHoleKprobe = "f2fs_truncate_hole_kprobe",
    F2fsHoleKretprobe = "f2fs_truncate_hole_kretprobe",
    Ntfs3PunchKprobe = "attr_punch_hole_kprobe",
    Ntfs3PunchKretprobe = "attr_punch_hole_kretprobe",
    NtfsPunchKprobe = "ntfs_non_resident_attr_punch_hole_kprobe",
    NtfsPunchKretprobe = "ntfs_non_resident_attr_punch_hole_kretprobe",
    /// gfs2's static punch_hole.
    Gfs2PunchKprobe = "gfs2_punch_hole_kprobe",
    Gfs2PunchKretprobe = "gfs2_punch_hole_kretprobe",
    Ocfs2RemoveKprobe = "ocfs2_remove_inode_range_kprobe",
    Ocfs2RemoveKretprobe = "ocfs2_remove_inode_range_kretprobe",
    SysEnterFallocate = "sys_enter_fallocate",
    SysEnterFtruncate = "sys_enter_ftruncate",
    SysEnterTruncate = "sys_enter_truncate",
    SysEnterMadvise = "sys_enter_madvise",
    SysEnterIoctl = "sys_enter_ioctl",
    /// One program for every invalidating syscall's exit: they are alike.
    SysExit = "sys_exit_invalidating",
    ForkTp = "sched_process_fork",
    ExitTp = "sched_process_exit",
}

impl Prog {
    /// The role of the row the program serves (each serves one role).
    pub fn role(self) -> Role {
        PROBES
            .iter()
            .find(|r| r.rungs.iter().any(|g| g.programs().any(|p| p == self)))
            .map(|r| r.role)
            .expect("every program has a row")
    }
}

/// Slots in the `HITS` array.
pub const PROG_COUNT: usize = Prog::ALL.len();

/// What a probe is watched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The three core functions: the observer cannot run without them.
    Unmap,
    Truncate,
    MapPages,
    /// An invalidating syscall: the window in tracepoint mode, the name of
    /// the operation in every mode.
    Syscall,
    /// The kernel's PTE installer (page-exact class A), one per kernel.
    PteInstall,
    /// PMD mappings of large folios.
    PmdInstall,
    FolioDelete,
    FolioAdd,
    /// A filesystem's block removal (the end of a class-B window).
    FsRemove,
    /// tmpfs: page removal and page-cache insertion of its own.
    ShmemUndo,
    ShmemAdd,
    /// `observer run --scope cmd` without cgroup2: the process tree.
    Scope,
}

impl Role {
    /// The three functions the observer cannot run without.
    pub const CORE: [Role; 3] = [Role::Unmap, Role::Truncate, Role::MapPages];
}

/// The table's function names for these roles, in table order.
pub fn functions(roles: &[Role]) -> impl Iterator<Item = &'static str> {
    PROBES
        .iter()
        .filter(move |p| roles.contains(&p.role))
        .map(|p| p.target.name())
}

/// Where a row attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A kernel function (fentry/fexit, kprobe/kretprobe).
    Function(&'static str),
    /// A tracepoint `category:name` (raw tracepoints use the name).
    Tracepoint(&'static str, &'static str),
    /// `syscalls:sys_enter_NAME` and `syscalls:sys_exit_NAME`.
    Syscall(&'static str),
}

impl Target {
    /// The name the startup lines and records use.
    pub const fn name(self) -> &'static str {
        match self {
            Target::Function(f) => f,
            Target::Tracepoint(_, n) => n,
            Target::Syscall(s) => s,
        }
    }
}

/// The BTF fact that selects a row among rows of the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    Always,
    /// The function's BTF prototype has one of these parameter counts (the
    /// programs read arguments by position).
    Params(&'static [u8]),
}

/// One rung of a ladder: a method and the programs for the call's entry
/// and its exit (either may be absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rung {
    pub method: Method,
    pub entry: Option<Prog>,
    pub exit: Option<Prog>,
    /// Where this rung attaches when not at its row's target (a function's
    /// tracepoint fallback).
    pub at: Option<Target>,
}

impl Rung {
    pub fn programs(&self) -> impl Iterator<Item = Prog> {
        self.entry.into_iter().chain(self.exit)
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub target: Target,
    pub role: Role,
    /// The observer runs without it; its startup line says why it is missing.
    pub optional: bool,
    pub select: Select,
    /// Best first.
    pub rungs: &'static [Rung],
}

const fn rung(method: Method, entry: Option<Prog>, exit: Option<Prog>) -> Rung {
    Rung {
        method,
        entry,
        exit,
        at: None,
    }
}

/// fentry/fexit, then kprobe/kretprobe.
const fn pair(fentry: Prog, fexit: Prog, kprobe: Prog, kretprobe: Prog) -> [Rung; 2] {
    [
        rung(Method::Fentry, Some(fentry), Some(fexit)),
        rung(Method::Kprobe, Some(kprobe), Some(kretprobe)),
    ]
}

/// kprobe/kretprobe alone: a function that only a module has, which aya
/// 0.14 cannot reach with fentry (no module BTF object fd).
const fn kprobes(kprobe: Prog, kretprobe: Prog) -> [Rung; 1] {
    [rung(Method::Kprobe, Some(kprobe), Some(kretprobe))]
}

const fn function(
    name: &'static str,
    role: Role,
    optional: bool,
    select: Select,
    rungs: &'static [Rung],
) -> Probe {
    Probe {
        target: Target::Function(name),
        role,
        optional,
        select,
        rungs,
    }
}

/// An invalidating syscall: its own entry program, the shared exit.
macro_rules! syscall {
    ($name:literal, $enter:ident) => {
        Probe {
            target: Target::Syscall($name),
            role: Role::Syscall,
            optional: false,
            select: Select::Always,
            rungs: &[rung(
                Method::Tracepoint,
                Some(Prog::$enter),
                Some(Prog::SysExit),
            )],
        }
    };
}

use Method::{Fentry, Kprobe, RawTracepoint, Tracepoint};
use Prog as P;

/// Every row, in attach order: the core functions first.
pub const PROBES: &[Probe] = &[
    function(
        "unmap_mapping_range",
        Role::Unmap,
        false,
        Select::Always,
        &pair(
            P::UnmapFentry,
            P::UnmapFexit,
            P::UnmapKprobe,
            P::UnmapKretprobe,
        ),
    ),
    function(
        "truncate_inode_pages_range",
        Role::Truncate,
        false,
        Select::Always,
        &pair(
            P::TruncateFentry,
            P::TruncateFexit,
            P::TruncateKprobe,
            P::TruncateKretprobe,
        ),
    ),
    function(
        "filemap_map_pages",
        Role::MapPages,
        false,
        Select::Always,
        &[
            rung(Fentry, Some(P::MapPagesFentry), Some(P::MapPagesFexit)),
            rung(Kprobe, Some(P::MapPagesKprobe), Some(P::MapPagesKretprobe)),
            // filemap:mm_filemap_map_pages (6.13+), a point after the PTEs.
            Rung {
                at: Some(Target::Tracepoint("filemap", "mm_filemap_map_pages")),
                ..rung(Tracepoint, Some(P::MapPagesTp), None)
            },
        ],
    ),
    syscall!("fallocate", SysEnterFallocate),
    syscall!("ftruncate", SysEnterFtruncate),
    syscall!("truncate", SysEnterTruncate),
    syscall!("madvise", SysEnterMadvise),
    syscall!("ioctl", SysEnterIoctl),
    // The PTE installer: the first of these the kernel has (6.5+, 5.12..6.4,
    // ..5.11).
    function(
        "set_pte_range",
        Role::PteInstall,
        true,
        Select::Params(&[5]),
        &[
            rung(Fentry, Some(P::SetPteRangeFentry), None),
            rung(Kprobe, Some(P::SetPteRangeKprobe), None),
        ],
    ),
    function(
        "do_set_pte",
        Role::PteInstall,
        true,
        Select::Params(&[2, 3]),
        &[
            rung(Fentry, Some(P::DoSetPteFentry), None),
            rung(Kprobe, Some(P::DoSetPteKprobe), None),
        ],
    ),
    function(
        "alloc_set_pte",
        Role::PteInstall,
        true,
        Select::Params(&[2]),
        &[
            // It may fail (VM_FAULT_NOPAGE): only its return says.
            rung(Fentry, None, Some(P::AllocSetPteFexit)),
            rung(
                Kprobe,
                Some(P::AllocSetPteKprobe),
                Some(P::AllocSetPteKretprobe),
            ),
        ],
    ),
    function(
        "do_set_pmd",
        Role::PmdInstall,
        true,
        Select::Params(&[2]),
        &[
            rung(Fentry, None, Some(P::DoSetPmdFexit)),
            rung(Kprobe, Some(P::DoSetPmdKprobe), Some(P::DoSetPmdKretprobe)),
        ],
    ),
    function(
        "do_set_pmd",
        Role::PmdInstall,
        true,
        Select::Params(&[3]),
        &[
            rung(Fentry, None, Some(P::DoSetPmd3Fexit)),
            rung(Kprobe, Some(P::DoSetPmdKprobe), Some(P::DoSetPmdKretprobe)),
        ],
    ),
    Probe {
        target: Target::Tracepoint("filemap", "mm_filemap_delete_from_page_cache"),
        role: Role::FolioDelete,
        optional: true,
        select: Select::Always,
        rungs: &[
            // The raw tracepoint reads the mapcount at removal.
            rung(RawTracepoint, Some(P::FolioDeleteRawTp), None),
            rung(Tracepoint, Some(P::FolioDeleteTp), None),
        ],
    },
    function(
        "ext4_ext_remove_space",
        Role::FsRemove,
        true,
        Select::Always,
        &pair(
            P::Ext4ExtFentry,
            P::Ext4ExtFexit,
            P::Ext4ExtKprobe,
            P::Ext4ExtKretprobe,
        ),
    ),
    function(
        "ext4_ind_remove_space",
        Role::FsRemove,
        true,
        Select::Always,
        &pair(
            P::Ext4IndFentry,
            P::Ext4IndFexit,
            P::Ext4IndKprobe,
            P::Ext4IndKretprobe,
        ),
    ),
    function(
        "xfs_free_file_space",
        Role::FsRemove,
        true,
        Select::Always,
        &pair(
            P::XfsFreeFentry,
            P::XfsFreeFexit,
            P::XfsFreeKprobe,
            P::XfsFreeKretprobe,
        ),
    ),
    function(
        "btrfs_replace_file_extents",
        Role::FsRemove,
        true,
        Select::Always,
        &pair(
            P::BtrfsReplaceFentry,
            P::BtrfsReplaceFexit,
            P::BtrfsReplaceKprobe,
            P::BtrfsReplaceKretprobe,
        ),
    ),
    function(
        "f2fs_truncate_hole",
        Role::FsRemove,
        true,
        Select::Always,
        &kprobes(P::F2fsHoleKprobe, P::F2fsHoleKretprobe),
    ),
    function(
        "attr_punch_hole",
        Role::FsRemove,
        true,
        Select::Always,
        &kprobes(P::Ntfs3PunchKprobe, P::Ntfs3PunchKretprobe),
    ),
    function(
        "ntfs_non_resident_attr_punch_hole",
        Role::FsRemove,
        true,
        Select::Always,
        &kprobes(P::NtfsPunchKprobe, P::NtfsPunchKretprobe),
    ),
    function(
        "punch_hole",
        Role::FsRemove,
        true,
        Select::Always,
        &kprobes(P::Gfs2PunchKprobe, P::Gfs2PunchKretprobe),
    ),
    function(
        "ocfs2_remove_inode_range",
        Role::FsRemove,
        true,
        Select::Always,
        &kprobes(P::Ocfs2RemoveKprobe, P::Ocfs2RemoveKretprobe),
    ),
    Probe {
        target: Target::Tracepoint("filemap", "mm_filemap_add_to_page_cache"),
        role: Role::FolioAdd,
        optional: true,
        select: Select::Always,
        rungs: &[rung(RawTracepoint, Some(P::FolioAddRawTp), None)],
    },
    function(
        "shmem_add_to_page_cache",
        Role::ShmemAdd,
        true,
        Select::Always,
        &[
            rung(Fentry, Some(P::ShmemAddFentry), None),
            rung(Kprobe, Some(P::ShmemAddKprobe), None),
        ],
    ),
    function(
        "shmem_undo_range",
        Role::ShmemUndo,
        true,
        Select::Always,
        &pair(
            P::ShmemUndoFentry,
            P::ShmemUndoFexit,
            P::ShmemUndoKprobe,
            P::ShmemUndoKretprobe,
        ),
    ),
    Probe {
        target: Target::Tracepoint("sched", "sched_process_fork"),
        role: Role::Scope,
        optional: false,
        select: Select::Always,
        rungs: &[rung(Tracepoint, Some(P::ForkTp), None)],
    },
    Probe {
        target: Target::Tracepoint("sched", "sched_process_exit"),
        role: Role::Scope,
        optional: false,
        select: Select::Always,
        rungs: &[rung(Tracepoint, Some(P::ExitTp), None)],
    },
];

/// A program that should have run because its partner did: health rules.
/// The programs of the `partner` roles ran at least `min_partner_hits`
/// times while every attached program of the `silent` roles ran never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub silent: &'static [Role],
    pub partner: &'static [Role],
    pub min_partner_hits: u64,
    pub because: &'static str,
}

pub const EXPECTATIONS: &[Expectation] = &[
    Expectation {
        silent: &[Role::PteInstall],
        partner: &[Role::MapPages],
        min_partner_hits: 1000,
        because: "fault-around installs its PTEs through the PTE installer",
    },
    Expectation {
        silent: &[Role::MapPages],
        partner: &[Role::PteInstall],
        min_partner_hits: 10_000,
        because: "most file PTEs are installed by fault-around",
    },
    Expectation {
        // tmpfs adds its folios in shmem_add_to_page_cache, which the add
        // tracepoint never sees, and deletes them through it.
        silent: &[Role::FolioAdd, Role::ShmemAdd],
        partner: &[Role::FolioDelete],
        min_partner_hits: 1000,
        because: "a page cache that loses folios by the thousand gains them too",
    },
    Expectation {
        silent: &[Role::FolioDelete],
        partner: &[Role::FolioAdd, Role::ShmemAdd],
        min_partner_hits: 10_000,
        because: "a page cache that gains folios by the ten thousand loses some",
    },
    Expectation {
        silent: &[Role::Unmap],
        partner: &[Role::Truncate],
        min_partner_hits: 100,
        because: "a punch or truncate unmaps the range before it truncates it",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program belongs to at least one rung; rungs name programs of
    /// their own method (by the suffix convention of the names).
    #[test]
    fn every_program_has_a_row() {
        for p in Prog::ALL {
            let used = PROBES
                .iter()
                .flat_map(|r| r.rungs)
                .any(|r| r.programs().any(|q| q == *p));
            assert!(used, "{} is in no rung", p.name());
        }
    }

    #[test]
    fn program_names_are_unique() {
        for (i, a) in Prog::ALL.iter().enumerate() {
            for b in &Prog::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn rungs_are_best_first_and_core_rows_first() {
        for row in PROBES {
            let methods: [Option<Method>; 4] =
                core::array::from_fn(|i| row.rungs.get(i).map(|r| r.method));
            for w in methods.windows(2) {
                if let [Some(a), Some(b)] = w {
                    assert!(a < b, "{:?}", row.target);
                }
            }
        }
        let first_optional = PROBES.iter().position(|r| r.optional).unwrap();
        assert!(PROBES[..first_optional].iter().all(|r| matches!(
            r.role,
            Role::Unmap | Role::Truncate | Role::MapPages | Role::Syscall
        )));
    }
}
