//! `cargo xtask bench`: what the observer costs, beside what a hand-written
//! bpftrace script (the peer, peer.bt) costs.
//!
//! On the host every setup (bare, observer, bpftrace peer) runs every
//! workload (the fault loop without and with a concurrent hole puncher, and
//! the fsx-like op mix) once per round, in a fixed interleaved order, on one
//! freshly made XFS loop mount. Interleaving keeps slow drifts of the
//! machine (page cache, thermal, noisy neighbours) from landing on one setup
//! only; each round gives a ratio bare ÷ setup, and the table shows their
//! median and quartiles. Separate runs with `kernel.bpf_stats_enabled=1`
//! (which costs time itself) then give every program's runs and ns per run,
//! and `--replay` times the correlator alone on a recorded racer trace.
//!
//! With `--kernel` the fault loop runs inside a Debian cloud kernel under
//! qemu (the `cargo xtask vm` harness, whose init.sh has a bench mode), bare,
//! under the observer and under `--full-stream` (the peer's tracepoint
//! only exists from 6.13); the guest brings every faultbench report and
//! observer summary back, and they go through the same aggregation and
//! table as the host's.

mod host;
mod peer;
mod replay;
mod report;
mod stats;
#[cfg(test)]
mod tests;
mod vm;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use observer_report::{Startup, Summary};
use observer_tests::FaultbenchReport;

use self::report::Report;
use crate::{
    json::Probe,
    util::{Workspace, say},
};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Run the benchmark in this Debian cloud kernel under qemu (TCG), as
    /// `cargo xtask vm --kernel` does (6.12, 6.1, or an exact release),
    /// instead of on the host; there the observer uses fentry/fexit, and the
    /// setups are bare, observer and observer --full-stream (the peer's
    /// tracepoint only exists from 6.13).
    #[arg(long, value_name = "SERIES")]
    pub kernel: Option<String>,
    /// Timed rounds; every setup runs every workload once per round, in a
    /// fixed interleaved order [default: 7].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Size of the faultbench file, in pages [default: 4096].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(16..=1 << 28))]
    pub pages: Option<u64>,
    /// faultbench rounds (MADV_DONTNEED, then touch every page) per run
    /// [default: 2000; with --kernel: 400, or fewer when the kernel is slow
    /// under TCG].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub fault_rounds: Option<u64>,
    /// Operations per run of the fsx-like mix (`faultbench --mix`) [default: 5000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub mix_ops: Option<u64>,
    /// Skip the rounds with `kernel.bpf_stats_enabled=1` (per-program runs
    /// and ns per run).
    #[arg(long)]
    pub no_stats: bool,
    /// Also record the racer for a few seconds and replay the recording N
    /// times on one core: the correlator's records/s and peak RSS [N: 5].
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "5",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub replay: Option<u32>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE.json")]
    pub out: Option<PathBuf>,
    /// Directory holding the observer and faultbench binaries
    /// [default: <workspace>/target/release].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// More observer flags for every observer run, split at whitespace
    /// (e.g. "--method kprobe").
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub observer_args: String,
}

/// The workload's size and the number of rounds, defaults filled in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) rounds: u32,
    pub(crate) pages: u64,
    pub(crate) fault_rounds: u64,
    pub(crate) mix_ops: u64,
    /// fault_rounds is the VM default, which the guest lowers on a kernel
    /// too slow for it (see VM_BUDGET_MS).
    pub(crate) scalable: bool,
    /// What runs: the host's three workloads and setups, or the VM's.
    pub(crate) workloads: &'static [Workload],
    pub(crate) configs: &'static [Config],
}

/// The default VM fault rounds make the two warm-up runs (bare, without and
/// with punching) take ~2.8 s on 6.12. A kernel that is slower under TCG
/// (6.1 takes ~14 s) gets fewer fault rounds, so that the warm-up would
/// have fit in this budget and the whole bench stays near 3-4 minutes.
const VM_BUDGET_MS: u64 = 3500;

impl Params {
    fn new(args: &BenchArgs) -> Self {
        // On the host 2000 fault rounds are ~512k faults, about a second
        // bare. Under TCG faults are ~5x slower, and each observer start and
        // stop costs ~2 s; 400 fault rounds keep a VM round near 25 s.
        let host = args.kernel.is_none();
        Self {
            rounds: args.rounds.unwrap_or(7),
            pages: args.pages.unwrap_or(4096),
            fault_rounds: args.fault_rounds.unwrap_or(if host { 2000 } else { 400 }),
            mix_ops: args.mix_ops.unwrap_or(5000),
            scalable: !host && args.fault_rounds.is_none(),
            workloads: if host { &HOST_WORKLOADS } else { &VM_WORKLOADS },
            configs: if host { &HOST_CONFIGS } else { &VM_CONFIGS },
        }
    }

    /// Every run in order: per round, each workload, each configuration in
    /// `configs` order.
    fn schedule(self) -> impl Iterator<Item = (u32, Workload, Config)> {
        (1..=self.rounds).flat_map(move |round| {
            self.workloads
                .iter()
                .flat_map(move |&w| self.configs.iter().map(move |&config| (round, w, config)))
        })
    }

    fn total_runs(self) -> usize {
        self.rounds as usize * self.workloads.len() * self.configs.len()
    }
}

pub fn run(ws: &Workspace, args: BenchArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let mut params = Params::new(&args);
    let bins = Binaries::locate(ws, args.bin_dir.as_deref())?;
    let host::Measured {
        runs,
        probes,
        machine,
        stats,
        replay,
    } = match &args.kernel {
        Some(kernel) => {
            if args.replay.is_some() {
                bail!("--replay runs on the host only");
            }
            let (runs, probes, machine) =
                vm::run(ws, kernel, &mut params, &bins, &args.observer_args)?;
            host::Measured {
                runs,
                probes,
                machine,
                stats: Vec::new(),
                replay: None,
            }
        }
        None => host::run(
            params,
            &bins,
            &args.observer_args,
            !args.no_stats,
            args.replay,
        )?,
    };
    let report = Report::new(
        params,
        &args.observer_args,
        runs,
        probes,
        machine,
        stats,
        replay,
        started.elapsed().as_secs_f64(),
    );
    print!("{}", report.table());
    if let Some(path) = &args.out {
        std::fs::write(path, report.json())
            .with_context(|| format!("cannot write {}", path.display()))?;
        say(format!("wrote {}", path.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Configurations, workloads and one run of each
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Config {
    Bare,
    Observer,
    FullStream,
    /// The project's bpftrace script (peer.bt).
    Peer,
}

/// Also the order of the runs inside a round and of the table rows.
const HOST_CONFIGS: [Config; 3] = [Config::Bare, Config::Observer, Config::Peer];
const VM_CONFIGS: [Config; 3] = [Config::Bare, Config::Observer, Config::FullStream];

impl Config {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Observer => "observer",
            Config::FullStream => "full-stream",
            Config::Peer => "bpftrace-peer",
        }
    }

    /// Extra observer flags, or None when no observer runs.
    fn observer_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Bare | Config::Peer => None,
            Config::Observer => Some(&[]),
            Config::FullStream => Some(&["--full-stream"]),
        }
    }
}

/// What faultbench does in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// The fault loop alone: windows never open.
    NoPunch,
    /// The fault loop beside a thread that punches and refills.
    Punch,
    /// The fsx-like op mix (`--mix`), one process.
    Mix,
}

const HOST_WORKLOADS: [Workload; 3] = [Workload::NoPunch, Workload::Punch, Workload::Mix];
const VM_WORKLOADS: [Workload; 2] = [Workload::NoPunch, Workload::Punch];

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::NoPunch => "no punch",
            Workload::Punch => "punch",
            Workload::Mix => "mix",
        }
    }

    /// In file names (the VM guest's results).
    fn tag(self) -> &'static str {
        match self {
            Workload::NoPunch => "nopunch",
            Workload::Punch => "punch",
            Workload::Mix => "mix",
        }
    }

    /// faultbench's flags for it, beside --file and --pages.
    fn faultbench_args(self, params: Params) -> Vec<String> {
        match self {
            Workload::NoPunch => vec!["--rounds".into(), params.fault_rounds.to_string()],
            Workload::Punch => vec![
                "--rounds".into(),
                params.fault_rounds.to_string(),
                "--punch".into(),
            ],
            Workload::Mix => vec![
                "--rounds".into(),
                params.mix_ops.to_string(),
                "--mix".into(),
            ],
        }
    }
}

struct Binaries {
    observer: PathBuf,
    faultbench: PathBuf,
    /// For --replay's recording (checked there: only it needs the racer).
    racer: PathBuf,
}

impl Binaries {
    fn locate(ws: &Workspace, bin_dir: Option<&Path>) -> Result<Self> {
        let dir = match bin_dir {
            Some(dir) => dir.to_path_buf(),
            None => ws.target.join("release"),
        };
        let bins = Self {
            observer: dir.join("observer"),
            faultbench: dir.join("faultbench"),
            racer: dir.join("racer"),
        };
        for path in [&bins.observer, &bins.faultbench] {
            if !path.is_file() {
                let hint = if bin_dir.is_some() {
                    "check --bin-dir"
                } else {
                    "run `cargo xtask build` first"
                };
                bail!("{} not found: {hint}", path.display());
            }
        }
        Ok(bins)
    }
}

/// One measured run: faultbench's report, and the observer's summary when
/// one watched.
pub(crate) struct Run {
    round: u32,
    workload: Workload,
    config: Config,
    fb: FaultbenchReport,
    observer: Option<Summary>,
    /// The peer's fault-around calls inside a window (its @in_window).
    peer_in_window: Option<u64>,
}

impl Run {
    /// Records the correlator received per second of faultbench.
    fn events_per_s(&self) -> Option<f64> {
        let obs = self.observer.as_ref()?;
        (self.fb.elapsed_s > 0.0).then(|| obs.events.total() as f64 / self.fb.elapsed_s)
    }

    /// What it was and what it measured, in a line.
    fn line(&self, rounds: u32) -> String {
        let mut line = format!(
            "{}: {} ops/s",
            describe(self.round, rounds, self.workload, self.config),
            report::group(self.fb.ops_per_s)
        );
        if let (Some(eps), Some(obs)) = (self.events_per_s(), &self.observer) {
            let _ = write!(
                line,
                ", {} events/s, ringbuf_full {}, filtered {}",
                report::group(eps),
                obs.lost.ringbuf_full,
                obs.filtered
            );
        }
        if let Some(n) = self.peer_in_window {
            let _ = write!(line, ", {n} fault-arounds in a window");
        }
        line
    }
}

fn describe(round: u32, rounds: u32, workload: Workload, config: Config) -> String {
    format!(
        "round {round}/{rounds}, {}, {}",
        workload.name(),
        config.name()
    )
}

/// The summary and the startup record from an observer's output. The
/// startup record is context, not a measurement: missing it is no failure
/// (an empty one stands in). The summary must be there.
fn read_observer_output(text: &str) -> Result<(Summary, Startup)> {
    let ends = observer_tests::Ends::parse(text);
    let summary = ends
        .summary
        .context("no summary at the end of the observer's output")?;
    Ok((summary, ends.startup.unwrap_or_default()))
}

/// The probe methods of a startup record.
fn probes_of(startup: &Startup) -> Vec<Probe> {
    startup.probes.iter().map(Probe::from).collect()
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}
