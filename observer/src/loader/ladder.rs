//! Attaching one rung of a probe-table row: the programs of one method for
//! one target, all or none. Which rung to try is the loader's business.

use std::{
    cell::OnceCell,
    collections::{BTreeMap, HashSet},
    path::Path,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use observer_abi::probes::{Method, Prog, Rung, Target};

use super::{btf::Btf, tracefs};
use crate::symbols::Kallsyms;

/// Why a rung did not attach.
pub struct Refusal {
    pub method: Method,
    pub reason: String,
    /// The verifier's log, when the verifier was the one that refused.
    pub verifier_log: Option<String>,
}

impl Refusal {
    pub fn new(method: Method, reason: impl Into<String>) -> Refusal {
        Refusal {
            method,
            reason: reason.into(),
            verifier_log: None,
        }
    }

    pub fn skipped(method: Method) -> Refusal {
        Refusal::new(method, "skipped by --method")
    }

    /// One line of reason; aya's LoadError would print the whole verifier
    /// log, which is carried separately.
    pub fn of(method: Method, e: anyhow::Error) -> Refusal {
        let verifier_log = e
            .chain()
            .find_map(|c| match c.downcast_ref::<ProgramError>() {
                Some(ProgramError::LoadError { verifier_log, .. }) => {
                    let log = verifier_log.to_string();
                    (!log.trim().is_empty()).then_some(log)
                }
                _ => None,
            });
        let mut parts = Vec::new();
        for c in e.chain() {
            if let Some(ProgramError::LoadError { io_error, .. }) = c.downcast_ref::<ProgramError>()
            {
                parts.push(format!("BPF_PROG_LOAD: {io_error}"));
                break;
            }
            parts.push(c.to_string());
        }
        Refusal {
            method,
            reason: parts.join(": "),
            verifier_log,
        }
    }
}

/// What attaching needs to know about the kernel, and what it did so far.
pub struct Attacher<'a> {
    pub btf: &'a Btf,
    /// The kernel's BTF as aya reads it, for fentry/fexit loads only: parsed
    /// at the first such load, never where the kernel refuses them all.
    aya_btf: OnceCell<std::result::Result<aya::Btf, String>>,
    btf_path: &'a Path,
    /// Why the kernel refuses every fentry/fexit program, if it does.
    fentry_refused: Option<String>,
    pub ksyms: std::result::Result<&'a Kallsyms, &'a String>,
    /// Programs attached somewhere already (the shared syscall exit): not
    /// loaded twice.
    loaded: HashSet<Prog>,
    /// Tests only: a program attached at another tracepoint than its row's.
    redirect: &'a BTreeMap<Prog, String>,
}

impl<'a> Attacher<'a> {
    pub fn new(
        btf: &'a Btf,
        btf_path: &'a Path,
        fentry_refused: Option<String>,
        ksyms: std::result::Result<&'a Kallsyms, &'a String>,
        redirect: &'a BTreeMap<Prog, String>,
    ) -> Self {
        Attacher {
            btf,
            aya_btf: OnceCell::new(),
            btf_path,
            fentry_refused,
            ksyms,
            loaded: HashSet::new(),
            redirect,
        }
    }

    fn aya_btf(&self) -> Result<&aya::Btf> {
        self.aya_btf
            .get_or_init(|| {
                aya::Btf::parse_file(self.btf_path, aya::Endianness::default())
                    .map_err(|e| format!("cannot parse BTF at {}: {e}", self.btf_path.display()))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Whether the kernel has `function` at all (BTF, or kallsyms for
    /// module functions without BTF).
    pub fn knows(&self, function: &str) -> bool {
        self.btf.has_function(function) || self.ksyms.is_ok_and(|k| k.has_function(function))
    }

    /// Loads and attaches every program of `rung` on `target`, or none: a
    /// half-attached rung is unloaded so that the next one takes over.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        target: Target,
        rung: &Rung,
    ) -> std::result::Result<Vec<Prog>, Refusal> {
        let method = rung.method;
        let target = rung.at.unwrap_or(target);
        self.precheck(target, method)?;
        let mut fresh = Vec::new();
        let mut result = Ok(());
        for (prog, exit) in rung
            .entry
            .map(|p| (p, false))
            .into_iter()
            .chain(rung.exit.map(|p| (p, true)))
        {
            let first = self.loaded.insert(prog);
            if first {
                fresh.push(prog);
            }
            result = self.attach_one(ebpf, target, method, prog, exit, first);
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => Ok(rung.programs().collect()),
            Err(e) => {
                for prog in fresh {
                    self.loaded.remove(&prog);
                    unload(ebpf, prog, method);
                }
                Err(Refusal::of(method, e))
            }
        }
    }

    /// Refusals that need no load attempt, with a reason a person can act on.
    fn precheck(&self, target: Target, method: Method) -> std::result::Result<(), Refusal> {
        let fail = |reason: String| Err(Refusal::new(method, reason));
        match (method, target) {
            (Method::Fentry, Target::Function(f)) if !self.btf.has_function(f) => {
                if let Ok(k) = self.ksyms
                    && let Some(m) = k.module_of(f)
                {
                    return fail(format!(
                        "in module {m}: aya 0.14 cannot load fentry against a module's BTF (no attach_btf_obj_fd)"
                    ));
                }
                fail("not in the kernel's BTF (inlined or missing)".into())
            }
            (Method::Fentry, _) if self.fentry_refused.is_some() => {
                fail(self.fentry_refused.clone().unwrap_or_default())
            }
            (Method::Kprobe, Target::Function(f)) => {
                if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                    return fail(
                        "the kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe missing: CONFIG_KPROBES off?)"
                            .into(),
                    );
                }
                match self.ksyms {
                    Err(e) => fail(e.clone()),
                    Ok(k) if !k.has_function(f) => fail(
                        "not in /proc/kallsyms (inlined, missing, or its module is not loaded)"
                            .into(),
                    ),
                    Ok(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn attach_one(
        &mut self,
        ebpf: &mut Ebpf,
        target: Target,
        method: Method,
        prog: Prog,
        exit: bool,
        load: bool,
    ) -> Result<()> {
        let name = prog.name();
        match (method, target) {
            (Method::Fentry, Target::Function(f)) if exit => {
                let p: &mut FExit = program(ebpf, name)?;
                if load {
                    p.load(f, self.aya_btf()?).context("load fexit")?;
                }
                p.attach().context("attach fexit")?;
            }
            (Method::Fentry, Target::Function(f)) => {
                let p: &mut FEntry = program(ebpf, name)?;
                if load {
                    p.load(f, self.aya_btf()?).context("load fentry")?;
                }
                p.attach().context("attach fentry")?;
            }
            (Method::Kprobe, Target::Function(f)) => {
                let p: &mut KProbe = program(ebpf, name)?;
                if load {
                    p.load().with_context(|| format!("load {name}"))?;
                }
                p.attach(f, 0).with_context(|| format!("attach {name}"))?;
            }
            (Method::RawTracepoint, Target::Tracepoint(category, tp)) => {
                let tp = self.redirect.get(&prog).map_or(tp, String::as_str);
                if !self.redirect.contains_key(&prog) {
                    tracefs::check(category, tp)?;
                }
                let p: &mut RawTracePoint = program(ebpf, name)?;
                if load {
                    p.load()
                        .with_context(|| format!("load raw_tracepoint {tp}"))?;
                }
                p.attach(tp)
                    .with_context(|| format!("attach raw_tracepoint {tp}"))?;
            }
            (Method::Tracepoint, Target::Tracepoint(category, tp)) => {
                attach_tracepoint(ebpf, prog, category, tp, load)?;
            }
            (Method::Tracepoint, Target::Syscall(sc)) => {
                let tp = format!("sys_{}_{sc}", if exit { "exit" } else { "enter" });
                attach_tracepoint(ebpf, prog, "syscalls", &tp, load)?;
            }
            (m, t) => return Err(anyhow!("no way to attach {} to {t:?}", m.as_str())),
        }
        Ok(())
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: Prog,
    category: &str,
    name: &str,
    load: bool,
) -> Result<()> {
    tracefs::check(category, name)?;
    let p: &mut TracePoint = program(ebpf, prog.name())?;
    if load {
        p.load()
            .with_context(|| format!("load {category}:{name}"))?;
    }
    p.attach(category, name)
        .with_context(|| format!("attach {category}:{name}"))?;
    Ok(())
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

/// Unloads a program this rung loaded; its links go with it.
fn unload(ebpf: &mut Ebpf, prog: Prog, method: Method) {
    let Some(p) = ebpf.program_mut(prog.name()) else {
        return;
    };
    use aya::programs::Program as P;
    let _ = match (method, p) {
        (_, P::FEntry(p)) => p.unload(),
        (_, P::FExit(p)) => p.unload(),
        (_, P::KProbe(p)) => p.unload(),
        (_, P::RawTracePoint(p)) => p.unload(),
        (_, P::TracePoint(p)) => p.unload(),
        _ => Ok(()),
    };
}
