//! The attach ladder: for each kernel function, the best probe mechanism the
//! running kernel accepts (fentry/fexit, then kprobe/kretprobe, then
//! tracepoints), with the reason every better rung was refused.
//!
//! The three core functions are required. The optional sources of truth
//! follow them in [`Loaded::probes`] (never fatal; their lines say what was
//! attached or why not): the PTE installer chosen from BTF/kallsyms
//! (PteInstall), folio removal and insertion as raw tracepoints (mapcount,
//! size, uptodate), the filesystems' block removal (FsRemove*), tmpfs's
//! shmem_undo_range and shmem_add_to_page_cache.

pub mod btf;
mod offsets;
pub mod tracefs;

use std::{fmt, path::PathBuf};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use observer_abi::Config;

/// The eBPF object, built by build.rs from observer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Fentry,
    Kprobe,
    /// A tracepoint's raw arguments (the folio probes only).
    RawTracepoint,
    Tracepoint,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
            Method::RawTracepoint => "raw_tracepoint",
            Method::Tracepoint => "tracepoint",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fentry" => Ok(Method::Fentry),
            "kprobe" => Ok(Method::Kprobe),
            "raw_tracepoint" => Ok(Method::RawTracepoint),
            "tracepoint" => Ok(Method::Tracepoint),
            _ => bail!("bad method '{s}': expected fentry, kprobe, raw_tracepoint or tracepoint"),
        }
    }
}

pub struct Refusal {
    pub method: Method,
    pub reason: String,
    /// The verifier's log, when the verifier was the one that refused.
    pub verifier_log: Option<String>,
}

/// How one kernel function ended up being watched.
pub struct ProbeReport {
    pub function: &'static str,
    pub method: Option<Method>,
    pub via: String,
    pub refused: Vec<Refusal>,
    /// An optional source of truth (PteInstall, folio add/delete, block
    /// removal, shmem): the observer runs without it.
    pub optional: bool,
}

impl ProbeReport {
    fn new(function: &'static str, optional: bool) -> Self {
        ProbeReport {
            function,
            method: None,
            via: String::new(),
            refused: Vec::new(),
            optional,
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

pub struct Options {
    pub btf: PathBuf,
    pub ringbuf_bytes: u32,
    pub full_stream: bool,
    /// Rungs better than this are skipped (for testing the fallbacks).
    pub best_method: Method,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    /// The three core functions first, then the optional probes.
    pub probes: Vec<ProbeReport>,
    /// No function probe bounds windows: whole syscalls do.
    pub syscall_windows: bool,
    /// Folio removals are reported (mm_filemap_delete_from_page_cache).
    pub folio_deletes: bool,
    /// Which optional sources of truth are attached.
    pub sources: Sources,
    pub names: Vec<String>,
}

/// The optional probes that made it, for consumers that must tell "none
/// happened" from "not watched".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// PteInstall records (the kernel's PTE installer).
    pub pte_install: bool,
    /// FolioDelete records carry the mapcount (raw tracepoint).
    pub folio_mapcount: bool,
    /// FolioAdd records (mm_filemap_add_to_page_cache).
    pub folio_add: bool,
    /// FolioAdd records for tmpfs (shmem_add_to_page_cache).
    pub shmem_add: bool,
    /// FsRemoveEnter/Exit records, per filesystem.
    pub fs_remove_ext4: bool,
    pub fs_remove_xfs: bool,
    pub fs_remove_btrfs: bool,
    /// ShmemUndoEnter/Exit records.
    pub shmem_undo: bool,
}

const MAP_PAGES: &str = "filemap_map_pages";
const UNMAP: &str = "unmap_mapping_range";
const TRUNCATE: &str = "truncate_inode_pages_range";
/// Invalidating syscalls: windows in tracepoint mode, operation labels in
/// every mode.
const SYSCALLS: [&str; 5] = ["fallocate", "ftruncate", "truncate", "madvise", "ioctl"];
const FOLIO_DELETE: &str = "mm_filemap_delete_from_page_cache";
const FOLIO_ADD: &str = "mm_filemap_add_to_page_cache";

pub fn load(opts: &Options) -> Result<Loaded> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)");
    }
    if OBJECT.is_empty() {
        bail!(
            "this binary was built with AYA_BUILD_SKIP: no eBPF object inside (build with `cargo xtask build`)"
        );
    }
    let btf = btf::Btf::from_file(&opts.btf)?;
    let aya_btf = aya::Btf::parse_file(&opts.btf, aya::Endianness::default())
        .with_context(|| format!("cannot parse BTF at {}", opts.btf.display()))?;
    let mut config = offsets::resolve(&btf)?;
    config.full_stream = opts.full_stream as u32;
    // Without kallsyms, kprobes cannot be placed (and pfns not computed);
    // fentry and tracepoints do not need it.
    let ksyms = crate::symbols::Kallsyms::load().map_err(|e| format!("{e:#}"));

    // Everything the programs read that does not depend on what attaches,
    // so that CONFIG is complete before the first program can fire.
    let folio = offsets::folio_layout(&btf, &mut config).map_err(|e| format!("{e:#}"));
    let fault = offsets::fault_layout(&btf, &mut config).map_err(|e| format!("{e:#}"));
    if let Ok(k) = &ksyms {
        config.vmemmap_base_addr = k.address("vmemmap_base").unwrap_or(0);
    }
    let (xfs_off, xfs_note) = fs_inode_offset(&btf, "xfs_free_file_space", "xfs");
    let (btrfs_off, btrfs_note) = fs_inode_offset(&btf, "btrfs_replace_file_extents", "btrfs");
    config.xfs_inode_vnode = xfs_off;
    config.btrfs_inode_vnode = btrfs_off;
    let pte = choose_pte_installer(&btf, ksyms.as_ref().ok(), &fault);
    if let Ok(p) = &pte {
        config.pte_addr_arg = p.addr_arg;
    }

    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .load(OBJECT)
        .context("cannot load the eBPF object")?;
    write_config(&mut ebpf, &config)?;
    let mut names = Vec::new();
    let mut ctx = Ladder {
        btf: &btf,
        aya_btf: &aya_btf,
        ksyms: ksyms.as_ref(),
        best: opts.best_method,
    };

    let mut probes = Vec::new();
    for function in [UNMAP, TRUNCATE, MAP_PAGES] {
        let mut report = ProbeReport::new(function, false);
        for method in [Method::Fentry, Method::Kprobe] {
            if method < opts.best_method {
                report.refused.push(skipped(method));
                continue;
            }
            let attempt = match method {
                Method::Fentry => ctx.attach_fentry(&mut ebpf, function, function, &[Entry, Exit]),
                _ => ctx.attach_kprobe(&mut ebpf, function, function, &[Entry, Exit]),
            };
            match attempt {
                Ok(progs) => {
                    report.method = Some(method);
                    report.via = match method {
                        Method::Fentry => "fentry/fexit".into(),
                        _ => "kprobe/kretprobe".into(),
                    };
                    names.extend(progs);
                    break;
                }
                Err(r) => report.refused.push(r),
            }
        }
        probes.push(report);
    }

    // Tracepoints: the fallback for what is still unattached, and always the
    // syscalls (they name the operation behind a window) and folio removals.
    if probes[2].method.is_none() {
        match offsets::check_map_pages_layout()
            .and_then(|_| attach_tracepoint(&mut ebpf, "filemap", "mm_filemap_map_pages"))
        {
            Ok(n) => {
                probes[2].method = Some(Method::Tracepoint);
                probes[2].via =
                    "tracepoint filemap:mm_filemap_map_pages (a point after the PTEs went in)"
                        .into();
                names.push(n);
            }
            Err(e) => probes[2].refused.push(refusal(Method::Tracepoint, e)),
        }
    }
    let mut syscalls = Vec::new();
    let mut syscall_errors = Vec::new();
    for sc in SYSCALLS {
        for dir in ["enter", "exit"] {
            let tp = format!("sys_{dir}_{sc}");
            match attach_tracepoint(&mut ebpf, "syscalls", &tp) {
                Ok(n) => {
                    names.push(n);
                    if dir == "enter" {
                        syscalls.push(sc);
                    }
                }
                Err(e) => syscall_errors.push(format!("{tp}: {e:#}")),
            }
        }
    }
    let syscall_windows = probes[0].method.is_none() && probes[1].method.is_none();
    if syscall_windows {
        for p in &mut probes[..2] {
            if syscalls.is_empty() {
                p.refused.push(Refusal {
                    method: Method::Tracepoint,
                    reason: syscall_errors.join("; "),
                    verifier_log: None,
                });
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

    // The optional sources of truth.
    let mut sources = Sources::default();

    // 1. PteInstall: the per-version PTE installer.
    let pte = match pte {
        Ok(p) => ctx.ladder(
            &mut ebpf,
            p.function,
            p.fentry,
            p.kprobe,
            " (pte_install: page-exact, windowed files only)",
            &mut names,
        ),
        Err((function, reason)) => {
            let mut r = ProbeReport::new(function, true);
            r.refused.push(Refusal {
                method: Method::Fentry,
                reason,
                verifier_log: None,
            });
            r
        }
    };
    sources.pte_install = pte.method.is_some();
    probes.push(pte);
    // PMD mappings of large folios (filemap_map_pmd, finish_fault), 6.1+.
    // 5.10 maps them inside alloc_set_pte, which reports one page then.
    if btf.has_function("do_set_pmd") || ksyms.as_ref().is_ok_and(|k| k.has_function("do_set_pmd"))
    {
        // do_set_pmd(vmf, page) until 6.12, (vmf, folio, page) since 6.13:
        // the fexit programs differ in where the return value sits.
        let pmd = match (&fault, btf.param_count("do_set_pmd")) {
            (Err(e), _) => Err(format!("vm_fault layout: {e}")),
            (_, Some(3)) => Ok("do_set_pmd3"),
            (_, Some(n)) if n != 2 => Err(format!(
                "do_set_pmd has {n} parameters in BTF, the probe expects 2 or 3"
            )),
            _ => Ok("do_set_pmd"),
        };
        let r = match pmd {
            Ok(prefix) => ctx.ladder_as(
                &mut ebpf,
                "do_set_pmd",
                prefix,
                &[Exit],
                &[Entry, Exit],
                " (pte_install for PMD mappings: 512 pages)",
                &mut names,
            ),
            Err(reason) => {
                let mut r = ProbeReport::new("do_set_pmd", true);
                r.refused.push(Refusal {
                    method: Method::Fentry,
                    reason,
                    verifier_log: None,
                });
                r
            }
        };
        probes.push(r);
    }

    // 2. FolioDelete: raw tracepoint (mapcount), else the classic one.
    let mut del = ProbeReport::new(FOLIO_DELETE, true);
    match ctx.raw_tracepoint(&mut ebpf, "folio_delete_raw_tp", FOLIO_DELETE, &folio) {
        Ok(n) => {
            names.push(n);
            del.method = Some(Method::RawTracepoint);
            del.via = format!(
                "raw_tracepoint (folio_delete: index, size, mapcount at removal{})",
                if config.vmemmap_base_addr != 0 {
                    ", pfn"
                } else {
                    "; pfn 0: no vmemmap_base in kallsyms"
                }
            );
            sources.folio_mapcount = true;
        }
        Err(r) => {
            del.refused.push(r);
            match offsets::delete_fields(&mut config)
                .and_then(|_| attach_tracepoint(&mut ebpf, "filemap", FOLIO_DELETE))
            {
                Ok(n) => {
                    names.push(n);
                    del.method = Some(Method::Tracepoint);
                    del.via = format!("tracepoint filemap:{FOLIO_DELETE} (no mapcount)");
                }
                Err(e) => del.refused.push(refusal(Method::Tracepoint, e)),
            }
        }
    }
    let folio_deletes = del.method.is_some();
    probes.push(del);

    // 3. FsRemoveEnter/Exit: the filesystems' block removal.
    for (function, note) in [
        ("ext4_ext_remove_space", String::new()),
        ("ext4_ind_remove_space", String::new()),
        ("xfs_free_file_space", format!(" ({xfs_note})")),
        ("btrfs_replace_file_extents", format!(" ({btrfs_note})")),
    ] {
        let r = ctx.ladder(
            &mut ebpf,
            function,
            &[Entry, Exit],
            &[Entry, Exit],
            &note,
            &mut names,
        );
        let on = r.method.is_some();
        match function {
            "xfs_free_file_space" => sources.fs_remove_xfs = on,
            "btrfs_replace_file_extents" => sources.fs_remove_btrfs = on,
            _ => sources.fs_remove_ext4 |= on,
        }
        probes.push(r);
    }

    // 4. FolioAdd: raw tracepoint; tmpfs through shmem_add_to_page_cache.
    let mut add = ProbeReport::new(FOLIO_ADD, true);
    match ctx.raw_tracepoint(&mut ebpf, "folio_add_raw_tp", FOLIO_ADD, &folio) {
        Ok(n) => {
            names.push(n);
            add.method = Some(Method::RawTracepoint);
            add.via = "raw_tracepoint (folio_add: index, size, uptodate)".into();
            sources.folio_add = true;
        }
        Err(r) => add.refused.push(r),
    }
    probes.push(add);
    let shmem_add = match &folio {
        Ok(()) => ctx.ladder(
            &mut ebpf,
            "shmem_add_to_page_cache",
            &[Entry],
            &[Entry],
            " (folio_add for tmpfs, at entry)",
            &mut names,
        ),
        Err(e) => {
            let mut r = ProbeReport::new("shmem_add_to_page_cache", true);
            r.refused.push(Refusal {
                method: Method::Fentry,
                reason: format!("struct page/folio layout: {e}"),
                verifier_log: None,
            });
            r
        }
    };
    sources.shmem_add = shmem_add.method.is_some();
    probes.push(shmem_add);

    // 5. ShmemUndoEnter/Exit.
    let undo = ctx.ladder(
        &mut ebpf,
        "shmem_undo_range",
        &[Entry, Exit],
        &[Entry, Exit],
        "",
        &mut names,
    );
    sources.shmem_undo = undo.method.is_some();
    probes.push(undo);

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
        folio_deletes,
        sources,
        names,
    })
}

/// Where a module filesystem's block-removal function finds the VFS inode:
/// the offset of the embedded `struct inode` in its first argument's type,
/// from the module's split BTF (or vmlinux BTF when built in). UNKNOWN: the
/// probe falls back to the task's most recent invalidation's file.
fn fs_inode_offset(vmlinux: &btf::Btf, function: &str, module: &str) -> (u32, String) {
    let path = std::path::Path::new("/sys/kernel/btf").join(module);
    let module_btf;
    let btf = if vmlinux.has_function(function) {
        vmlinux
    } else if path.exists() {
        match btf::Btf::module_from_file(&path, vmlinux) {
            Ok(b) => {
                module_btf = b;
                &module_btf
            }
            Err(e) => {
                return (
                    Config::UNKNOWN,
                    format!("file: the task's last invalidation; {e:#}"),
                );
            }
        }
    } else {
        return (
            Config::UNKNOWN,
            format!(
                "file: the task's last invalidation; no BTF for module {module} ({} missing)",
                path.display()
            ),
        );
    };
    let found = match btf.param_struct(function, 0) {
        Some("inode") => Ok((0, "struct inode".to_owned())),
        Some(s @ ("xfs_inode" | "btrfs_inode")) => {
            let member = if s == "xfs_inode" {
                "i_vnode"
            } else {
                "vfs_inode"
            };
            btf.member_offset(s, member)
                .map(|o| (o.0, format!("{s}.{member}")))
                .map_err(|e| format!("{e:#}"))
        }
        Some(other) => Err(format!("unexpected first argument struct {other}")),
        None => Err(format!("{function} has no BTF prototype")),
    };
    match found {
        Ok((off, what)) => (off, format!("file from {what} at +{off}, BTF")),
        Err(e) => (
            Config::UNKNOWN,
            format!("file: the task's last invalidation; {e}"),
        ),
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

/// The PTE installer to probe, and how.
struct PteInstaller {
    function: &'static str,
    fentry: &'static [Half],
    kprobe: &'static [Half],
    /// `Config::pte_addr_arg`.
    addr_arg: u32,
}

/// PteInstall: the first PTE installer this kernel has, with the signature
/// the program expects: set_pte_range (6.5+), do_set_pte (5.12..6.4),
/// alloc_set_pte (..5.11). Err: the function named in the report and why.
fn choose_pte_installer(
    btf: &btf::Btf,
    ksyms: Option<&crate::symbols::Kallsyms>,
    fault: &std::result::Result<(), String>,
) -> std::result::Result<PteInstaller, (&'static str, String)> {
    let known = |f: &str| btf.has_function(f) || ksyms.is_some_and(|k| k.has_function(f));
    let Some(function) = ["set_pte_range", "do_set_pte", "alloc_set_pte"]
        .into_iter()
        .find(|f| known(f))
    else {
        return Err((
            "set_pte_range",
            "none of set_pte_range, do_set_pte, alloc_set_pte is in BTF or kallsyms".into(),
        ));
    };
    if let Err(e) = fault {
        return Err((function, format!("vm_fault layout: {e}")));
    }
    let params = btf.param_count(function);
    let (fentry, kprobe, expected): (&'static [Half], &'static [Half], &[usize]) = match function {
        "set_pte_range" => (&[Entry], &[Entry], &[5]),
        "do_set_pte" => (&[Entry], &[Entry], &[2, 3]),
        _ => (&[Exit], &[Entry, Exit], &[2]),
    };
    if let Some(n) = params
        && !expected.contains(&n)
    {
        return Err((
            function,
            format!("{function} has {n} parameters in BTF, the probe expects {expected:?}"),
        ));
    }
    let addr_arg = match (function, params) {
        ("set_pte_range", _) => 4,
        ("do_set_pte", Some(2)) => 0,
        ("do_set_pte", _) => 2,
        _ => 0,
    };
    Ok(PteInstaller {
        function,
        fentry,
        kprobe,
        addr_arg,
    })
}

/// Entry or exit half of a probe pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Entry,
    Exit,
}
use Half::{Entry, Exit};

/// What the attach ladders share.
struct Ladder<'a> {
    btf: &'a btf::Btf,
    aya_btf: &'a aya::Btf,
    ksyms: std::result::Result<&'a crate::symbols::Kallsyms, &'a String>,
    best: Method,
}

impl Ladder<'_> {
    /// fentry/fexit, then kprobe/kretprobe, for an optional probe. Programs
    /// are named `{function}_{fentry,fexit,kprobe,kretprobe}`; `fentry` and
    /// `kprobe` list the halves each rung has. `note` follows the method.
    fn ladder(
        &mut self,
        ebpf: &mut Ebpf,
        function: &'static str,
        fentry: &[Half],
        kprobe: &[Half],
        note: &str,
        names: &mut Vec<String>,
    ) -> ProbeReport {
        self.ladder_as(ebpf, function, function, fentry, kprobe, note, names)
    }

    /// [`Self::ladder`] with programs named after `prefix` (a variant of
    /// the function's programs for another prototype).
    #[allow(clippy::too_many_arguments)]
    fn ladder_as(
        &mut self,
        ebpf: &mut Ebpf,
        function: &'static str,
        prefix: &str,
        fentry: &[Half],
        kprobe: &[Half],
        note: &str,
        names: &mut Vec<String>,
    ) -> ProbeReport {
        let mut report = ProbeReport::new(function, true);
        for method in [Method::Fentry, Method::Kprobe] {
            if method < self.best {
                report.refused.push(skipped(method));
                continue;
            }
            let (halves, attempt) = match method {
                Method::Fentry => (fentry, self.attach_fentry(ebpf, function, prefix, fentry)),
                _ => (kprobe, self.attach_kprobe(ebpf, function, prefix, kprobe)),
            };
            match attempt {
                Ok(progs) => {
                    names.extend(progs);
                    report.method = Some(method);
                    let base = match (method, halves.len()) {
                        (Method::Fentry, 2) => "fentry/fexit",
                        (Method::Fentry, _) if halves[0] == Exit => "fexit",
                        (Method::Fentry, _) => "fentry",
                        (_, 2) => "kprobe/kretprobe",
                        _ => "kprobe",
                    };
                    report.via = format!("{base}{note}");
                    return report;
                }
                Err(r) => report.refused.push(r),
            }
        }
        report
    }

    fn attach_fentry(
        &mut self,
        ebpf: &mut Ebpf,
        function: &str,
        prefix: &str,
        halves: &[Half],
    ) -> std::result::Result<Vec<String>, Refusal> {
        let fail = |e| refusal(Method::Fentry, e);
        if !self.btf.has_function(function) {
            if let Ok(k) = self.ksyms
                && let Some(m) = k.module_of(function)
            {
                return Err(fail(anyhow::anyhow!(
                    "in module {m}: aya 0.14 cannot load fentry against a module's BTF (no attach_btf_obj_fd)"
                )));
            }
            return Err(fail(anyhow::anyhow!(
                "not in the kernel's BTF (inlined or missing)"
            )));
        }
        let progs: Vec<(String, Half)> = halves
            .iter()
            .map(|&h| match h {
                Entry => (format!("{prefix}_fentry"), h),
                Exit => (format!("{prefix}_fexit"), h),
            })
            .collect();
        let result = (|| -> Result<()> {
            for (name, half) in &progs {
                match half {
                    Entry => {
                        let p: &mut FEntry = program(ebpf, name)?;
                        p.load(function, self.aya_btf).context("load fentry")?;
                        p.attach().context("attach fentry")?;
                    }
                    Exit => {
                        let p: &mut FExit = program(ebpf, name)?;
                        p.load(function, self.aya_btf).context("load fexit")?;
                        p.attach().context("attach fexit")?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(progs.into_iter().map(|(n, _)| n).collect()),
            Err(e) => {
                for (name, half) in &progs {
                    match half {
                        Entry => unload::<FEntry>(ebpf, name),
                        Exit => unload::<FExit>(ebpf, name),
                    }
                }
                Err(fail(e))
            }
        }
    }

    fn attach_kprobe(
        &mut self,
        ebpf: &mut Ebpf,
        function: &str,
        prefix: &str,
        halves: &[Half],
    ) -> std::result::Result<Vec<String>, Refusal> {
        let fail = |e| refusal(Method::Kprobe, e);
        if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            return Err(fail(anyhow::anyhow!(
                "the kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe missing: CONFIG_KPROBES off?)"
            )));
        }
        match self.ksyms {
            Err(e) => return Err(fail(anyhow::anyhow!("{e}"))),
            Ok(k) if !k.has_function(function) => {
                return Err(fail(anyhow::anyhow!(
                    "not in /proc/kallsyms (inlined, missing, or its module is not loaded)"
                )));
            }
            Ok(_) => {}
        }
        let progs: Vec<String> = halves
            .iter()
            .map(|h| match h {
                Entry => format!("{prefix}_kprobe"),
                Exit => format!("{prefix}_kretprobe"),
            })
            .collect();
        let result = (|| -> Result<()> {
            for name in &progs {
                let p: &mut KProbe = program(ebpf, name)?;
                p.load().with_context(|| format!("load {name}"))?;
                p.attach(function, 0)
                    .with_context(|| format!("attach {name}"))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(progs),
            Err(e) => {
                for name in &progs {
                    unload::<KProbe>(ebpf, name);
                }
                Err(fail(e))
            }
        }
    }

    /// A raw tracepoint program `prog` on filemap:`tp`, which reads the
    /// folio through the BTF layout in `layout`.
    fn raw_tracepoint(
        &mut self,
        ebpf: &mut Ebpf,
        prog: &str,
        tp: &str,
        layout: &std::result::Result<(), String>,
    ) -> std::result::Result<String, Refusal> {
        let fail = |e| refusal(Method::RawTracepoint, e);
        if Method::RawTracepoint < self.best {
            return Err(skipped(Method::RawTracepoint));
        }
        if let Err(e) = layout {
            return Err(fail(anyhow::anyhow!("struct page/folio layout: {e}")));
        }
        if let Err(e) = tracefs::check("filemap", tp) {
            return Err(fail(e));
        }
        let result = (|| -> Result<()> {
            let p: &mut RawTracePoint = program(ebpf, prog)?;
            p.load()
                .with_context(|| format!("load raw_tracepoint {tp}"))?;
            p.attach(tp)
                .with_context(|| format!("attach raw_tracepoint {tp}"))?;
            Ok(())
        })();
        match result {
            Ok(()) => Ok(prog.to_owned()),
            Err(e) => {
                unload::<RawTracePoint>(ebpf, prog);
                Err(fail(e))
            }
        }
    }
}

fn skipped(method: Method) -> Refusal {
    Refusal {
        method,
        reason: "skipped by --method".into(),
        verifier_log: None,
    }
}

fn refusal(method: Method, e: anyhow::Error) -> Refusal {
    let verifier_log = e
        .chain()
        .find_map(|c| match c.downcast_ref::<ProgramError>() {
            Some(ProgramError::LoadError { verifier_log, .. }) => {
                let log = verifier_log.to_string();
                (!log.trim().is_empty()).then_some(log)
            }
            _ => None,
        });
    // aya's LoadError prints the whole verifier log; keep the reason to one
    // line and carry the log separately.
    let mut parts = Vec::new();
    for c in e.chain() {
        if let Some(ProgramError::LoadError { io_error, .. }) = c.downcast_ref::<ProgramError>() {
            parts.push(format!("BPF_PROG_LOAD: {io_error}"));
            break;
        }
        parts.push(c.to_string());
    }
    let reason = parts.join(": ");
    Refusal {
        method,
        reason,
        verifier_log,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("eBPF object has no program {name}"))?;
    Ok(p.try_into()?)
}

fn attach_tracepoint(ebpf: &mut Ebpf, category: &str, name: &str) -> Result<String> {
    tracefs::check(category, name)?;
    let p: &mut TracePoint = program(ebpf, name)?;
    p.load()
        .with_context(|| format!("load {category}:{name}"))?;
    p.attach(category, name)
        .with_context(|| format!("attach {category}:{name}"))?;
    Ok(name.to_owned())
}

/// A half-attached rung must not stay loaded: the next rung takes over.
fn unload<'a, T>(ebpf: &'a mut Ebpf, name: &str)
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    T: Unload + 'a,
{
    if let Ok(p) = program::<T>(ebpf, name) {
        let _ = p.unload_program();
    }
}

trait Unload {
    fn unload_program(&mut self) -> Result<(), ProgramError>;
}

macro_rules! impl_unload {
    ($($t:ty),*) => {$(
        impl Unload for $t {
            fn unload_program(&mut self) -> Result<(), ProgramError> {
                self.unload()
            }
        }
    )*};
}
impl_unload!(FEntry, FExit, KProbe, RawTracePoint);
