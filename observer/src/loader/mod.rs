//! The attach ladder: for each row of the probe table
//! (`observer_abi::probes`), the best rung the running kernel accepts
//! (fentry/fexit, then kprobe/kretprobe, then tracepoints), with the reason
//! every better rung was refused.
//!
//! The three core functions and the invalidating syscalls are required.
//! The optional sources of truth follow them in [`Loaded::probes`] (never
//! fatal; their lines say what was attached or why not): the PTE installer
//! chosen from BTF/kallsyms, folio removal and insertion as raw tracepoints
//! (mapcount, size, uptodate), the filesystems' block removal, tmpfs's
//! shmem_undo_range and shmem_add_to_page_cache.

pub mod btf;
mod features;
mod ladder;
mod offsets;
pub mod tracefs;

use std::{collections::BTreeMap, fmt, path::PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, EbpfLoader, maps::Array};
use observer_abi::{
    Config,
    filesystems::{InodeArg, Remover},
    probes::{PROBES, Probe, Prog, Role, Rung, Select, Target},
};

use ladder::Attacher;
pub use ladder::Refusal;
pub use observer_abi::probes::Method;

/// The eBPF object, built by build.rs from observer-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf"));

/// How one row of the probe table ended up being watched.
pub struct ProbeReport {
    pub row: &'static Probe,
    pub function: &'static str,
    pub method: Option<Method>,
    pub via: String,
    pub refused: Vec<Refusal>,
    /// An optional source of truth: the observer runs without it.
    pub optional: bool,
    /// The programs attached for it.
    pub programs: Vec<Prog>,
}

impl ProbeReport {
    fn new(row: &'static Probe) -> Self {
        ProbeReport {
            row,
            function: row.target.name(),
            method: None,
            via: String::new(),
            refused: Vec::new(),
            optional: row.optional,
            programs: Vec::new(),
        }
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            Some(_) => write!(f, "{}: {}", self.function, self.via)?,
            None if self.optional => write!(f, "{}: not attached (optional)", self.function)?,
            None => write!(f, "{}: NOT ATTACHED", self.function)?,
        }
        for r in &self.refused {
            write!(f, "; {} refused: {}", r.method.as_str(), r.reason)?;
        }
        Ok(())
    }
}

/// Which tasks the programs report (`observer run --scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Host,
    /// The tasks of the cgroup2 cgroup `id` (at `level`).
    Cgroup {
        id: u64,
        level: u32,
    },
    /// The process tree of the tgids in the SCOPE_TASKS map.
    Tree,
}

pub struct Options {
    pub btf: PathBuf,
    pub scope: Scope,
    pub ringbuf_bytes: u32,
    pub full_stream: bool,
    /// Rungs better than this are skipped (for testing the fallbacks).
    pub best_method: Method,
    /// Tests only: raw tracepoint programs attached at another tracepoint
    /// (one the workload never reaches), to make a probe silent on purpose.
    pub redirect: BTreeMap<Prog, String>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    /// The core functions and syscalls first, then the optional probes.
    pub probes: Vec<ProbeReport>,
    /// No function probe bounds windows: whole syscalls do.
    pub syscall_windows: bool,
}

impl Loaded {
    /// Whether some program of `role` is attached.
    pub fn attached(&self, role: Role) -> bool {
        self.probes
            .iter()
            .any(|p| p.row.role == role && p.method.is_some())
    }

    /// Every attached program, once.
    pub fn programs(&self) -> Vec<Prog> {
        let mut all: Vec<Prog> = self
            .probes
            .iter()
            .flat_map(|p| p.programs.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The kernel's id of each attached program.
    pub fn program_ids(&self) -> Vec<(Prog, u32)> {
        self.programs()
            .into_iter()
            .filter_map(|p| {
                let info = self.ebpf.program(p.name())?.info().ok()?;
                Some((p, info.id()))
            })
            .collect()
    }

    /// The fd of the SCOPE_TASKS map, for a child that adds itself.
    pub fn scope_map_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        match self.ebpf.map("SCOPE_TASKS")? {
            aya::maps::Map::LruHashMap(m) => Some(m.fd().as_fd().as_raw_fd()),
            _ => None,
        }
    }
}

fn rows(role: Role) -> impl Iterator<Item = &'static Probe> {
    PROBES.iter().filter(move |r| r.role == role)
}

/// "fentry/fexit", "kretprobe", "tracepoint filemap:x"...: what attached.
fn describe(row: &Probe, rung: &Rung) -> String {
    let both = rung.entry.is_some() && rung.exit.is_some();
    match rung.method {
        Method::Fentry if both => "fentry/fexit".into(),
        Method::Fentry if rung.entry.is_none() => "fexit".into(),
        Method::Fentry => "fentry".into(),
        Method::Kprobe if both => "kprobe/kretprobe".into(),
        Method::Kprobe if rung.entry.is_none() => "kretprobe".into(),
        Method::Kprobe => "kprobe".into(),
        Method::RawTracepoint => "raw_tracepoint".into(),
        Method::Tracepoint => match rung.at.unwrap_or(row.target) {
            Target::Tracepoint(c, n) => format!("tracepoint {c}:{n}"),
            Target::Syscall(s) => format!("tracepoints syscalls:sys_{{enter,exit}}_{s}"),
            Target::Function(f) => format!("tracepoint for {f}"),
        },
    }
}

/// Walks one row's ladder from `best` down: the first rung that attaches
/// wins. `pre` may refuse a method before anything is loaded (a layout the
/// program needs is missing); `note` follows the method in the report.
fn ladder(
    att: &mut Attacher,
    ebpf: &mut Ebpf,
    row: &'static Probe,
    best: Method,
    mut pre: impl FnMut(Method) -> std::result::Result<(), String>,
    note: &dyn Fn(Method) -> String,
) -> ProbeReport {
    let mut report = ProbeReport::new(row);
    for rung in row.rungs {
        if rung.method < best {
            report.refused.push(Refusal::skipped(rung.method));
            continue;
        }
        if let Err(reason) = pre(rung.method) {
            report.refused.push(Refusal::new(rung.method, reason));
            continue;
        }
        match att.attach(ebpf, row.target, rung) {
            Ok(progs) => {
                report.method = Some(rung.method);
                report.via = format!("{}{}", describe(row, rung), note(rung.method));
                report.programs = progs;
                return report;
            }
            Err(r) => report.refused.push(r),
        }
    }
    report
}

fn no_note(_: Method) -> String {
    String::new()
}

fn ok(_: Method) -> std::result::Result<(), String> {
    Ok(())
}

/// The kernel symbols the loader asks kallsyms about: the probe table's
/// functions and the variables CONFIG needs.
fn symbol_names() -> Vec<&'static str> {
    let mut names = vec!["vmemmap_base"];
    for p in PROBES {
        for t in std::iter::once(p.target).chain(p.rungs.iter().filter_map(|r| r.at)) {
            if let Target::Function(f) = t {
                names.push(f);
            }
        }
    }
    names
}

pub fn load(opts: &Options) -> Result<Loaded> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)");
    }
    if OBJECT.is_empty() {
        bail!(
            "this binary was built with AYA_BUILD_SKIP: no eBPF object inside (build with `cargo xtask build`)"
        );
    }
    // aya's loader parses the kernel's BTF for itself as it is made, and
    // drops it at .btf(None): made first, while nothing else is held, that
    // parse does not add to the agent's peak memory. No target BTF: there
    // are no CO-RE relocations to resolve (every offset is in CONFIG), and
    // fentry loads get theirs from the Attacher.
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .map_max_entries("EVENTS", opts.ringbuf_bytes);
    let btf = btf::Btf::from_file(&opts.btf)?;
    let mut config = offsets::resolve(&btf)?;
    config.full_stream = opts.full_stream as u32;
    // An eighth of the ring: a burst wakes the agent long before the ring
    // is full; a trickle waits for its poll.
    config.wakeup_bytes = opts.ringbuf_bytes / 8;
    match opts.scope {
        Scope::Host => {}
        Scope::Cgroup { id, level } => {
            config.scope = observer_abi::SCOPE_CGROUP;
            config.scope_cgroup_id = id;
            config.scope_cgroup_level = level;
        }
        Scope::Tree => {
            config.scope = observer_abi::SCOPE_TREE;
            offsets::fork_fields(&mut config).context("--scope cmd follows the process tree")?;
        }
    }
    // Without kallsyms, kprobes cannot be placed (and pfns not computed);
    // fentry and tracepoints do not need it.
    let ksyms = crate::symbols::Kallsyms::load_only(&symbol_names()).map_err(|e| format!("{e:#}"));

    // Everything the programs read that does not depend on what attaches,
    // so that CONFIG is complete before the first program can fire.
    let folio = offsets::folio_layout(&btf, &mut config).map_err(|e| format!("{e:#}"));
    let fault = offsets::fault_layout(&btf, &mut config).map_err(|e| format!("{e:#}"));
    if let Ok(k) = &ksyms {
        config.vmemmap_base_addr = k.address("vmemmap_base").unwrap_or(0);
    }
    let mut remover_notes = Vec::new();
    for r in observer_abi::filesystems::FILESYSTEMS
        .iter()
        .flat_map(|f| f.removers)
    {
        let (off, note) = remover_inode_offset(&btf, r);
        config.remover_inode[r.code as usize] = off;
        remover_notes.push((r.function, note));
    }
    let fentry_refused = match opts.best_method {
        Method::Fentry => features::fentry(&btf, "filemap_map_pages").err(),
        _ => None,
    };
    let mut att = Attacher::new(
        &btf,
        &opts.btf,
        fentry_refused,
        ksyms.as_ref(),
        &opts.redirect,
    );
    let pte = choose_pte_installer(&att, &btf, &fault);
    if let Ok((_, addr_arg)) = &pte {
        config.pte_addr_arg = *addr_arg;
    }

    let mut ebpf = loader.load(OBJECT).context("cannot load the eBPF object")?;
    write_config(&mut ebpf, &config)?;
    let best = opts.best_method;

    // The core functions.
    let mut probes = Vec::new();
    for role in [Role::Unmap, Role::Truncate, Role::MapPages] {
        for row in rows(role) {
            let pre = |m: Method| match (role, m) {
                (Role::MapPages, Method::Tracepoint) => {
                    offsets::check_map_pages_layout().map_err(|e| format!("{e:#}"))
                }
                _ => Ok(()),
            };
            let note = |m: Method| match m {
                Method::Tracepoint => " (a point after the PTEs went in)".to_string(),
                _ => String::new(),
            };
            probes.push(ladder(&mut att, &mut ebpf, row, best, pre, &note));
        }
    }

    // The invalidating syscalls: windows when no function probe bounds them,
    // and in every mode the name of the operation behind a window.
    let mut syscalls = Vec::new();
    let mut syscall_errors = Vec::new();
    for row in rows(Role::Syscall) {
        let report = ladder(&mut att, &mut ebpf, row, Method::Fentry, ok, &no_note);
        match report.method {
            Some(_) => syscalls.push(row.target.name()),
            None => syscall_errors.extend(
                report
                    .refused
                    .iter()
                    .map(|r| format!("{}: {}", row.target.name(), r.reason)),
            ),
        }
        probes.push(report);
    }
    let syscall_windows = probes[0].method.is_none() && probes[1].method.is_none();
    if syscall_windows {
        for p in &mut probes[..2] {
            if syscalls.is_empty() {
                p.refused
                    .push(Refusal::new(Method::Tracepoint, syscall_errors.join("; ")));
            } else {
                p.method = Some(Method::Tracepoint);
                p.via = format!(
                    "tracepoints syscalls:sys_{{enter,exit}}_{{{}}} (the whole syscall is the window)",
                    syscalls.join(",")
                );
            }
        }
    }
    config.syscall_windows = syscall_windows as u32;
    if opts.scope == Scope::Tree {
        for row in rows(Role::Scope) {
            let r = ladder(&mut att, &mut ebpf, row, Method::Fentry, ok, &no_note);
            if r.method.is_none() {
                bail!("--scope cmd follows the process tree, but {r}");
            }
            probes.push(r);
        }
    }

    // 1. The PTE installer of this kernel, and PMD mappings of large folios.
    match pte {
        Ok((row, _)) => probes.push(ladder(&mut att, &mut ebpf, row, best, ok, &|_| {
            " (pte_install: page-exact, windowed files only)".into()
        })),
        Err((row, reason)) => {
            let mut r = ProbeReport::new(row);
            r.refused.push(Refusal::new(Method::Fentry, reason));
            probes.push(r);
        }
    }
    if att.knows("do_set_pmd") {
        // Since 6.13 do_set_pmd(vmf, folio, page): the fexit programs differ
        // in where the return value sits.
        let params = btf.param_count("do_set_pmd");
        let row = rows(Role::PmdInstall).find(|r| match (r.select, params) {
            (Select::Params(ns), Some(n)) => ns.contains(&(n as u8)),
            // No prototype in BTF (a module): the kprobes serve both.
            (_, None) => true,
            (Select::Always, _) => true,
        });
        match (row, &fault) {
            (Some(row), Ok(())) => probes.push(ladder(&mut att, &mut ebpf, row, best, ok, &|_| {
                " (pte_install for PMD mappings: 512 pages)".into()
            })),
            (Some(row), Err(e)) => {
                let mut r = ProbeReport::new(row);
                r.refused.push(Refusal::new(
                    Method::Fentry,
                    format!("vm_fault layout: {e}"),
                ));
                probes.push(r);
            }
            (None, _) => {
                let mut r = ProbeReport::new(rows(Role::PmdInstall).next().expect("a PMD row"));
                r.refused.push(Refusal::new(
                    Method::Fentry,
                    format!(
                        "do_set_pmd has {} parameters in BTF, the probes expect 2 or 3",
                        params.unwrap_or(0)
                    ),
                ));
                probes.push(r);
            }
        }
    }

    // 2. Folio removals: the raw tracepoint (mapcount), else the classic one.
    let pfn = config.vmemmap_base_addr != 0;
    for row in rows(Role::FolioDelete) {
        let pre = |m: Method| match m {
            Method::RawTracepoint => folio
                .clone()
                .map_err(|e| format!("struct page/folio layout: {e}")),
            _ => offsets::delete_fields(&mut config).map_err(|e| format!("{e:#}")),
        };
        let note = |m: Method| {
            match m {
            Method::RawTracepoint if pfn => {
                " (folio_delete: index, size, mapcount at removal, pfn)".to_string()
            }
            Method::RawTracepoint => {
                " (folio_delete: index, size, mapcount at removal; pfn 0: no vmemmap_base in kallsyms)"
                    .to_string()
            }
            _ => " (no mapcount)".to_string(),
        }
        };
        probes.push(ladder(&mut att, &mut ebpf, row, best, pre, &note));
    }

    // 3. The filesystems' block removal.
    for row in rows(Role::FsRemove) {
        let note = remover_notes
            .iter()
            .find(|(f, _)| *f == row.target.name())
            .map_or_else(String::new, |(_, n)| format!(" ({n})"));
        probes.push(ladder(&mut att, &mut ebpf, row, best, ok, &|_| {
            note.clone()
        }));
    }

    // 4. Page-cache insertions, and tmpfs's own.
    let folio_pre = |_: Method| {
        folio
            .clone()
            .map_err(|e| format!("struct page/folio layout: {e}"))
    };
    for row in rows(Role::FolioAdd) {
        probes.push(ladder(&mut att, &mut ebpf, row, best, folio_pre, &|_| {
            " (folio_add: index, size, uptodate)".into()
        }));
    }
    for row in rows(Role::ShmemAdd) {
        probes.push(ladder(&mut att, &mut ebpf, row, best, folio_pre, &|_| {
            " (folio_add for tmpfs, at entry)".into()
        }));
    }
    for row in rows(Role::ShmemUndo) {
        probes.push(ladder(&mut att, &mut ebpf, row, best, ok, &no_note));
    }

    // Again, with what the attach results decided (syscall windows, the
    // classic folio-delete fallback's fields).
    write_config(&mut ebpf, &config)?;

    if let Some(p) = probes.iter().find(|p| p.method.is_none() && !p.optional) {
        let mut msg = format!("cannot watch {p}");
        for r in &p.refused {
            if let Some(log) = &r.verifier_log {
                msg.push_str(&format!(
                    "\n--- verifier log ({}) ---\n{log}",
                    r.method.as_str()
                ));
            }
        }
        bail!(msg);
    }
    Ok(Loaded {
        ebpf,
        probes,
        syscall_windows,
    })
}

/// Where a remover's first argument keeps the VFS inode (see
/// `filesystems::InodeArg`), from the BTF of the vmlinux or module that has
/// the function, and what the startup line says of it. UNKNOWN (the probe
/// then takes the file of the task's last invalidation) when that BTF is
/// missing or says otherwise.
fn remover_inode_offset(vmlinux: &btf::Btf, r: &Remover) -> (u32, String) {
    // A `struct inode *` needs no BTF to be read (5.10's modules have none).
    let (container, member) = match r.inode {
        InodeArg::Vfs => return (0, "file from struct inode at +0".to_owned()),
        InodeArg::Within { container, member } => (container, member),
    };
    let fallback = "file: the task's last invalidation";
    let path = std::path::Path::new("/sys/kernel/btf").join(r.module);
    let module_btf;
    let btf = if vmlinux.has_function(r.function) {
        vmlinux
    } else if path.exists() {
        match btf::Btf::module_from_file(&path, vmlinux) {
            Ok(b) => {
                module_btf = b;
                &module_btf
            }
            Err(e) => return (Config::UNKNOWN, format!("{fallback}; {e:#}")),
        }
    } else {
        return (
            Config::UNKNOWN,
            format!(
                "{fallback}; no BTF for module {} ({} missing)",
                r.module,
                path.display()
            ),
        );
    };
    let found = match btf.param_struct(r.function, 0) {
        Some("inode") => Ok((0, "struct inode".to_owned())),
        Some(s) => {
            // The argument is the container, or the first member of it
            // (named after its struct, as big_ntfs_inode.ntfs_inode).
            let opens = s == container || btf.member_offset(container, s).is_ok_and(|o| o.0 == 0);
            if opens {
                btf.member_offset(container, member)
                    .map(|o| (o.0, format!("{container}.{member}")))
                    .map_err(|e| format!("{e:#}"))
            } else {
                Err(format!("{s} is not {container}, nor at its start"))
            }
        }
        None => Err(format!("{} has no BTF prototype", r.function)),
    };
    match found {
        Ok((off, what)) => (off, format!("file from {what} at +{off}, BTF")),
        Err(e) => (Config::UNKNOWN, format!("{fallback}; {e}")),
    }
}

fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<()> {
    let mut cfg_map: Array<_, Config> = Array::try_from(
        ebpf.map_mut("CONFIG")
            .context("eBPF object has no CONFIG map")?,
    )?;
    cfg_map.set(0, *config, 0).context("cannot write CONFIG")?;
    Ok(())
}

/// PteInstall: the first PTE installer this kernel has, with a prototype
/// its programs read: set_pte_range (6.5+), do_set_pte (5.12..6.4),
/// alloc_set_pte (..5.11); and `Config::pte_addr_arg` for it. Err: the row
/// to report and why.
fn choose_pte_installer(
    att: &Attacher,
    btf: &btf::Btf,
    fault: &std::result::Result<(), String>,
) -> std::result::Result<(&'static Probe, u32), (&'static Probe, String)> {
    let first = rows(Role::PteInstall).next().expect("a PTE installer row");
    let mut candidates = rows(Role::PteInstall);
    let Some(row) = candidates.find(|r| att.knows(r.target.name())) else {
        let names: Vec<&str> = rows(Role::PteInstall).map(|r| r.target.name()).collect();
        return Err((
            first,
            format!("none of {} is in BTF or kallsyms", names.join(", ")),
        ));
    };
    let function = row.target.name();
    if let Err(e) = fault {
        return Err((row, format!("vm_fault layout: {e}")));
    }
    let params = btf.param_count(function);
    if let (Select::Params(ns), Some(n)) = (row.select, params)
        && !ns.contains(&(n as u8))
    {
        return Err((
            row,
            format!("{function} has {n} parameters in BTF, the probe expects {ns:?}"),
        ));
    }
    // Where the user address is: an argument (set_pte_range's 5th, the
    // 3-argument do_set_pte's 3rd) or vmf->address.
    let addr_arg = match (function, params) {
        ("set_pte_range", _) => 4,
        ("do_set_pte", Some(2)) => 0,
        ("do_set_pte", _) => 2,
        _ => 0,
    };
    Ok((row, addr_arg))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use observer_abi::probes::{PROBES, Prog};

    use super::OBJECT;

    /// The probe table and the built eBPF object name the same programs: a
    /// row without a program, or a program without a row, fails here and
    /// not at attach time on some kernel.
    #[test]
    fn the_object_has_exactly_the_tables_programs() {
        assert!(
            !OBJECT.is_empty(),
            "built with AYA_BUILD_SKIP: no eBPF object to check (build with `cargo xtask build`)"
        );
        let obj = aya_obj::Object::parse(OBJECT).expect("the eBPF object parses");
        let in_object: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let in_table: BTreeSet<&str> = PROBES
            .iter()
            .flat_map(|r| r.rungs)
            .flat_map(|r| r.programs())
            .map(Prog::name)
            .collect();
        let missing: Vec<_> = in_table.difference(&in_object).collect();
        let unlisted: Vec<_> = in_object.difference(&in_table).collect();
        assert!(
            missing.is_empty(),
            "rows whose program is not in the object: {missing:?}"
        );
        assert!(
            unlisted.is_empty(),
            "programs in the object without a row: {unlisted:?}"
        );
        let all: BTreeSet<&str> = Prog::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(all, in_table, "Prog variants and rows disagree");
    }
}
