//! The attach ladder: for each kernel function, the best probe mechanism the
//! running kernel accepts (fentry/fexit, then kprobe/kretprobe, then
//! tracepoints), with the reason every better rung was refused.

pub mod btf;
mod offsets;
pub mod tracefs;

use std::{fmt, path::PathBuf};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{FEntry, FExit, KProbe, ProgramError, TracePoint},
};
use observer_abi::Config;

/// The eBPF object, built by build.rs from observer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fentry => "fentry",
            Method::Kprobe => "kprobe",
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
            "tracepoint" => Ok(Method::Tracepoint),
            _ => bail!("bad method '{s}': expected fentry, kprobe or tracepoint"),
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
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            Some(_) => write!(f, "{}: {}", self.function, self.via)?,
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
    pub probes: Vec<ProbeReport>,
    /// No function probe bounds windows: whole syscalls do.
    pub syscall_windows: bool,
    /// Folio removals are reported (mm_filemap_delete_from_page_cache).
    pub folio_deletes: bool,
    pub names: Vec<String>,
}

const MAP_PAGES: &str = "filemap_map_pages";
const UNMAP: &str = "unmap_mapping_range";
const TRUNCATE: &str = "truncate_inode_pages_range";
const SYSCALLS: [&str; 3] = ["fallocate", "ftruncate", "truncate"];

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

    let mut ebpf = EbpfLoader::new()
        .btf(Some(&aya_btf))
        .map_max_entries("EVENTS", opts.ringbuf_bytes)
        .load(OBJECT)
        .context("cannot load the eBPF object")?;
    let mut names = Vec::new();

    let mut probes = Vec::new();
    for function in [UNMAP, TRUNCATE, MAP_PAGES] {
        let mut report = ProbeReport {
            function,
            method: None,
            via: String::new(),
            refused: Vec::new(),
        };
        for method in [Method::Fentry, Method::Kprobe] {
            if method < opts.best_method {
                report.refused.push(skipped(method));
                continue;
            }
            let attempt = match method {
                Method::Fentry => attach_fentry(&mut ebpf, function, &aya_btf, &btf),
                _ => attach_kprobe(&mut ebpf, function),
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
    let folio_deletes = offsets::delete_fields(&mut config)
        .and_then(|_| attach_tracepoint(&mut ebpf, "filemap", "mm_filemap_delete_from_page_cache"))
        .map(|n| names.push(n))
        .is_ok();

    let mut cfg_map: Array<_, Config> = Array::try_from(
        ebpf.map_mut("CONFIG")
            .context("eBPF object has no CONFIG map")?,
    )?;
    cfg_map.set(0, config, 0).context("cannot write CONFIG")?;

    if let Some(p) = probes.iter().find(|p| p.method.is_none()) {
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
        names,
    })
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

fn attach_fentry(
    ebpf: &mut Ebpf,
    function: &'static str,
    aya_btf: &aya::Btf,
    btf: &btf::Btf,
) -> std::result::Result<Vec<String>, Refusal> {
    let fail = |e| refusal(Method::Fentry, e);
    if !btf.has_function(function) {
        return Err(fail(anyhow::anyhow!(
            "not in the kernel's BTF (inlined or missing)"
        )));
    }
    let entry = format!("{function}_fentry");
    let exit = format!("{function}_fexit");
    let result = (|| -> Result<()> {
        let p: &mut FEntry = program(ebpf, &entry)?;
        p.load(function, aya_btf).context("load fentry")?;
        p.attach().context("attach fentry")?;
        let p: &mut FExit = program(ebpf, &exit)?;
        p.load(function, aya_btf).context("load fexit")?;
        p.attach().context("attach fexit")?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(vec![entry, exit]),
        Err(e) => {
            unload::<FEntry>(ebpf, &entry);
            unload::<FExit>(ebpf, &exit);
            Err(fail(e))
        }
    }
}

fn attach_kprobe(
    ebpf: &mut Ebpf,
    function: &'static str,
) -> std::result::Result<Vec<String>, Refusal> {
    let fail = |e| refusal(Method::Kprobe, e);
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Err(fail(anyhow::anyhow!(
            "the kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe missing: CONFIG_KPROBES off?)"
        )));
    }
    if !tracefs::in_kallsyms(function) {
        return Err(fail(anyhow::anyhow!(
            "not in /proc/kallsyms (inlined or missing)"
        )));
    }
    let entry = format!("{function}_kprobe");
    let exit = format!("{function}_kretprobe");
    let result = (|| -> Result<()> {
        for name in [&entry, &exit] {
            let p: &mut KProbe = program(ebpf, name)?;
            p.load().with_context(|| format!("load {name}"))?;
            p.attach(function, 0)
                .with_context(|| format!("attach {name}"))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(vec![entry, exit]),
        Err(e) => {
            unload::<KProbe>(ebpf, &entry);
            unload::<KProbe>(ebpf, &exit);
            Err(fail(e))
        }
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, category: &str, name: &str) -> Result<String> {
    if !tracefs::exists(category, name) {
        bail!("tracepoint {category}:{name} does not exist on this kernel");
    }
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
impl_unload!(FEntry, FExit, KProbe);
