//! The benchmark on the host: every run on one fresh XFS loop mount.

use std::{
    ffi::OsString,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use observer_report::Summary;
use observer_tests::{FaultbenchReport, FsType, LoopMount, ObserverProcess};

use super::{Binaries, Params, Run, describe, read_observer_output, report::Machine};
use crate::{json::Probe, progress::Progress, util::say};

/// The observer can take a while to load and verify its programs on a slow
/// or loaded machine; a minute means something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Draining the ring buffer and writing the summary takes well under a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn run(
    params: Params,
    bins: &Binaries,
    observer_args: &str,
) -> Result<(Vec<Run>, Vec<Probe>, Machine)> {
    if !crate::util::is_root() {
        bail!(
            "`cargo xtask bench` must run as root: it loop-mounts an XFS image and the \
             observer loads eBPF programs; try `sudo -E cargo xtask bench`"
        );
    }
    let signals = SignalGuard::install();
    // Sparse, so 1 GiB costs nothing; grown for big --pages so the
    // workload never hits ENOSPC.
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let size_mib = 1024u64.max(((params.pages * page) >> 20) + 256);
    let mount = LoopMount::new(FsType::Xfs, size_mib)
        .context("the XFS loop mount (mkfs.xfs: `cargo xtask setup` installs it)")?;
    say(format!("XFS loop mount at {}", mount.path().display()));
    let extra: Vec<&str> = observer_args.split_whitespace().collect();
    let outcome = measure(params, bins, &extra, &mount).map_err(|e| {
        // A Ctrl-C also kills faultbench, whose failure would otherwise hide
        // the real reason.
        if interrupted() {
            e.context("interrupted")
        } else {
            e
        }
    });
    let cleaned = mount.unmount();
    drop(signals);
    let (runs, probes) = outcome?;
    cleaned?;
    Ok((runs, probes, Machine::host()))
}

fn faultbench(
    bins: &Binaries,
    file: &Path,
    params: Params,
    punch: bool,
) -> Result<FaultbenchReport> {
    let mut cmd = Command::new(&bins.faultbench);
    cmd.arg("--file")
        .arg(file)
        .args(["--pages", &params.pages.to_string()])
        .args(["--rounds", &params.fault_rounds.to_string()])
        .stdin(Stdio::null());
    if punch {
        cmd.arg("--punch");
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", bins.faultbench.display()))?;
    if !out.status.success() {
        bail!(
            "faultbench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = super::last_line(&stdout).context("faultbench printed nothing")?;
    FaultbenchReport::parse(line).with_context(|| format!("bad faultbench report {line:?}"))
}

/// faultbench under `observer --json --output OUT FLAGS...`: the observer
/// starts first so that its probes see the whole workload.
fn observed(
    bins: &Binaries,
    flags: &[&str],
    out: &Path,
    workload: impl FnOnce() -> Result<FaultbenchReport>,
) -> Result<(FaultbenchReport, Summary, Vec<Probe>)> {
    // A stale file would let a crashed run pass for a good one.
    let _ = fs::remove_file(out);
    let mut args: Vec<OsString> = vec!["--json".into(), "--output".into(), out.into()];
    args.extend(flags.iter().map(OsString::from));
    // On any error below, its Drop stops it.
    let observer = ObserverProcess::start(&bins.observer, &args, READY_TIMEOUT)?;
    let fb = workload()?;
    let exit = observer.stop(STOP_TIMEOUT)?;
    if !exit.status.success() {
        let lines: Vec<&str> = exit.stderr.lines().collect();
        bail!(
            "observer failed ({}); its stderr:\n  {}",
            exit.status,
            lines[lines.len().saturating_sub(15)..].join("\n  ")
        );
    }
    let text = fs::read_to_string(out).with_context(|| format!("cannot read {}", out.display()))?;
    let (summary, probes) =
        read_observer_output(&text).with_context(|| format!("in {}", out.display()))?;
    // Alert records can pile up under --punch; nothing else needs them.
    let _ = fs::remove_file(out);
    Ok((fb, summary, probes))
}

fn measure(
    params: Params,
    bins: &Binaries,
    extra: &[&str],
    mount: &LoopMount,
) -> Result<(Vec<Run>, Vec<Probe>)> {
    let file = mount.path().join("faultbench.dat");
    let observer_out = mount.dir().join("observer.json");
    // The very first run on a fresh file system pays for allocating its
    // blocks and warming caches; keep that out of round 1's bare numbers.
    say("warm-up run");
    faultbench(bins, &file, params, false).context("warm-up run")?;

    let total = params.total_runs();
    let progress = Progress::start(total);
    let mut runs = Vec::with_capacity(total);
    let mut probes = Vec::new();
    for (round, punch, config) in params.schedule() {
        check_interrupted()?;
        let what = describe(round, params.rounds, punch, config);
        progress.working_on(&what);
        let workload = || faultbench(bins, &file, params, punch);
        let (fb, observer) = match config.observer_flags() {
            None => (workload(), None),
            Some(flags) => {
                let flags = [flags, extra].concat();
                let (fb, summary, startup) = observed(bins, &flags, &observer_out, workload)
                    .with_context(|| what.clone())?;
                if probes.is_empty() {
                    probes = startup;
                }
                (Ok(fb), Some(summary))
            }
        };
        let run = Run {
            round,
            punch,
            config,
            fb: fb.with_context(|| what.clone())?,
            observer,
        };
        progress.finished(&run.line(params.rounds));
        runs.push(run);
    }
    Ok((runs, probes))
}

// ---------------------------------------------------------------------------
// Ctrl-C
// ---------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Catches SIGINT/SIGTERM while installed, so that a Ctrl-C ends the bench
/// through the normal error path and the loop mount still gets unmounted.
/// The children are not shielded: a terminal Ctrl-C reaches them too, so
/// faultbench dies and the observer exits on its own. Restores the previous
/// handlers when dropped.
struct SignalGuard {
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    fn install() -> Self {
        let mut saved = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; the structs are fully initialised.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) == 0 {
                    saved.push((sig, old));
                }
            }
        }
        Self { saved }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.saved {
            // SAFETY: restores an action the kernel handed back to us.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}
