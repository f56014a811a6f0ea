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
use observer_report::{Startup, Summary};
use observer_tests::{FaultbenchReport, FsType, LoopMount, ObserverProcess};

use super::{
    Binaries, Config, Params, Run, Workload, describe,
    peer::{self, Peer},
    read_observer_output,
    replay::{self, ReplayResult},
    report::Machine,
    stats::{self, BpfStats, ProgCost},
};
use crate::{json::Probe, progress::Progress, util::say};

/// Everything one bench measured.
pub(super) struct Measured {
    pub(super) runs: Vec<Run>,
    pub(super) probes: Vec<Probe>,
    pub(super) machine: Machine,
    pub(super) stats: Vec<StatsRun>,
    pub(super) replay: Option<ReplayResult>,
}

/// One run with `kernel.bpf_stats_enabled=1`: what each program of the
/// setup cost during the workload.
pub(crate) struct StatsRun {
    pub(crate) workload: Workload,
    pub(crate) config: Config,
    pub(crate) elapsed_s: f64,
    pub(crate) progs: Vec<ProgCost>,
}

/// The observer can take a while to load and verify its programs on a slow
/// or loaded machine; a minute means something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Draining the ring buffer and writing the summary takes well under a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn run(
    params: Params,
    bins: &Binaries,
    observer_args: &str,
    with_stats: bool,
    replays: Option<u32>,
) -> Result<Measured> {
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
    let outcome = measure(params, bins, &extra, &mount, with_stats, replays).map_err(|e| {
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
    let (runs, probes, stats, replay) = outcome?;
    cleaned?;
    Ok(Measured {
        runs,
        probes,
        machine: Machine::host(),
        stats,
        replay,
    })
}

fn faultbench(
    bins: &Binaries,
    file: &Path,
    params: Params,
    workload: Workload,
) -> Result<FaultbenchReport> {
    let mut cmd = Command::new(&bins.faultbench);
    cmd.arg("--file")
        .arg(file)
        .args(["--pages", &params.pages.to_string()])
        .args(workload.faultbench_args(params))
        .stdin(Stdio::null());
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
fn observed<T>(
    bins: &Binaries,
    flags: &[&str],
    out: &Path,
    workload: impl FnOnce(u32) -> Result<T>,
) -> Result<(T, Summary, Startup)> {
    // A stale file would let a crashed run pass for a good one.
    let _ = fs::remove_file(out);
    let mut args: Vec<OsString> = vec!["--json".into(), "--output".into(), out.into()];
    args.extend(flags.iter().map(OsString::from));
    // On any error below, its Drop stops it.
    let observer = ObserverProcess::start(&bins.observer, &args, READY_TIMEOUT)?;
    let fb = workload(observer.pid())?;
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
    let (summary, startup) =
        read_observer_output(&text).with_context(|| format!("in {}", out.display()))?;
    // Alert records can pile up under --punch; nothing else needs them.
    let _ = fs::remove_file(out);
    Ok((fb, summary, startup))
}

/// The peer's script, written where bpftrace can read it.
fn peer_script(mount: &LoopMount) -> Result<std::path::PathBuf> {
    let path = mount.dir().join("peer.bt");
    fs::write(&path, peer::SCRIPT).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The workload under the bpftrace peer; also the peer's in-window count.
fn under_peer<T>(
    script: &Path,
    mount: &LoopMount,
    workload: impl FnOnce(u32) -> Result<T>,
) -> Result<(T, u64)> {
    let peer = Peer::start(script, &mount.dir().join("peer.stderr"), READY_TIMEOUT)?;
    let out = workload(peer.pid())?;
    let in_window = peer.stop(STOP_TIMEOUT)?;
    Ok((out, in_window))
}

/// The workload between two snapshots of `pid`'s programs' counters.
fn costed(
    pid: u32,
    workload: impl FnOnce() -> Result<FaultbenchReport>,
) -> Result<(FaultbenchReport, Vec<ProgCost>)> {
    let before = stats::snapshot(pid)?;
    let fb = workload()?;
    let after = stats::snapshot(pid)?;
    Ok((fb, stats::diff(&before, &after, &stats::names())))
}

type Outcome = (Vec<Run>, Vec<Probe>, Vec<StatsRun>, Option<ReplayResult>);

fn measure(
    params: Params,
    bins: &Binaries,
    extra: &[&str],
    mount: &LoopMount,
    with_stats: bool,
    replays: Option<u32>,
) -> Result<Outcome> {
    let file = mount.path().join("faultbench.dat");
    let observer_out = mount.dir().join("observer.json");
    let script = peer_script(mount)?;
    // The very first run on a fresh file system pays for allocating its
    // blocks and warming caches; keep that out of round 1's bare numbers.
    say("warm-up run");
    faultbench(bins, &file, params, Workload::NoPunch).context("warm-up run")?;

    let total = params.total_runs();
    let progress = Progress::start(total);
    let mut runs = Vec::with_capacity(total);
    let mut probes = Vec::new();
    for (round, workload, config) in params.schedule() {
        check_interrupted()?;
        let what = describe(round, params.rounds, workload, config);
        progress.working_on(&what);
        let run_it = |_pid: u32| faultbench(bins, &file, params, workload);
        let (fb, observer, peer_in_window) = match (config, config.observer_flags()) {
            (Config::Peer, _) => {
                let (fb, n) = under_peer(&script, mount, run_it).with_context(|| what.clone())?;
                (fb, None, Some(n))
            }
            (_, None) => (run_it(0).with_context(|| what.clone())?, None, None),
            (_, Some(flags)) => {
                let flags = [flags, extra].concat();
                let (fb, summary, startup) =
                    observed(bins, &flags, &observer_out, run_it).with_context(|| what.clone())?;
                if probes.is_empty() {
                    probes = super::probes_of(&startup);
                }
                (fb, Some(summary), None)
            }
        };
        let run = Run {
            round,
            workload,
            config,
            fb,
            observer,
            peer_in_window,
        };
        progress.finished(&run.line(params.rounds));
        runs.push(run);
    }
    drop(progress);

    let mut costs = Vec::new();
    if with_stats {
        let _stats = BpfStats::enable()?;
        for &workload in params.workloads {
            for &config in params.configs.iter().filter(|&&c| c != Config::Bare) {
                check_interrupted()?;
                let what = format!("bpf_stats, {}, {}", workload.name(), config.name());
                say(&what);
                let run_it = |pid: u32| costed(pid, || faultbench(bins, &file, params, workload));
                let (fb, mut progs) = match config.observer_flags() {
                    None => {
                        under_peer(&script, mount, run_it)
                            .with_context(|| what.clone())?
                            .0
                    }
                    Some(flags) => {
                        let flags = [flags, extra].concat();
                        let (out, _, startup) = observed(bins, &flags, &observer_out, run_it)
                            .with_context(|| what.clone())?;
                        let (fb, mut progs) = out;
                        // The startup record has the names the kernel cut.
                        for p in &mut progs {
                            if let Some(l) = startup.programs.iter().find(|l| l.id == p.id) {
                                p.name.clone_from(&l.name);
                            }
                        }
                        (fb, progs)
                    }
                };
                progs.retain(|p| p.runs > 0);
                costs.push(StatsRun {
                    workload,
                    config,
                    elapsed_s: fb.elapsed_s,
                    progs,
                });
            }
        }
    }

    let replay = match replays {
        Some(n) => Some(replay::measure(bins, mount, n).context("--replay")?),
        None => None,
    };
    Ok((runs, probes, costs, replay))
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
