//! `cargo xtask bench`: what the observer costs a fault-around-heavy workload.
//!
//! Every configuration (bare, observer, observer --full-stream; each without
//! and with concurrent hole punching) runs once per round, in a fixed
//! interleaved order, on one freshly made XFS loop mount. Interleaving keeps
//! slow drifts of the machine (page cache, thermal, noisy neighbours) from
//! landing on one configuration only; the median over the rounds then takes
//! out the odd outlier.
//!
//! With `--kernel` the same schedule runs inside a Debian cloud kernel under
//! qemu (the `cargo xtask vm` harness, whose init.sh has a bench mode), where
//! the observer attaches with fentry/fexit instead of the host's fallback;
//! the guest brings every faultbench report and observer summary back, and
//! they go through the same aggregation and table as the host's.

mod host;
mod report;
#[cfg(test)]
mod tests;
mod vm;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use observer_report::Summary;
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
    /// instead of on the host; there the observer uses fentry/fexit.
    #[arg(long, value_name = "SERIES")]
    pub kernel: Option<String>,
    /// Runs of each configuration; configurations alternate within a round
    /// [default: 3; with --kernel: 7].
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
    /// fault_rounds is the VM default, which the guest lowers on a kernel
    /// too slow for it (see VM_BUDGET_MS).
    pub(crate) scalable: bool,
}

/// The default VM fault rounds make the two warm-up runs (bare, without and
/// with punching) take ~2.8 s on 6.12. A kernel that is slower under TCG
/// (6.1 takes ~14 s) gets fewer fault rounds, so that the warm-up would
/// have fit in this budget and the whole bench stays near 3-4 minutes.
const VM_BUDGET_MS: u64 = 3500;

impl Params {
    fn new(args: &BenchArgs) -> Self {
        // Under TCG faults are ~5x slower than on the host, and each
        // observer start and stop costs ~2 s. 400 fault rounds (~100k faults:
        // ~0.8 s bare, ~2 s punching, up to ~4 s under --full-stream) keep a
        // round near 25 s; 7 rounds keep the whole VM bench (boot included)
        // near 3 minutes, and give the medians enough runs to shrug off the
        // odd round that the host's neighbours slow down.
        let (rounds, pages, fault_rounds) = match args.kernel {
            None => (3, 4096, 2000),
            Some(_) => (7, 4096, 400),
        };
        Self {
            rounds: args.rounds.unwrap_or(rounds),
            pages: args.pages.unwrap_or(pages),
            fault_rounds: args.fault_rounds.unwrap_or(fault_rounds),
            scalable: args.kernel.is_some() && args.fault_rounds.is_none(),
        }
    }

    /// Every run in order: per round, without then with punching, each
    /// configuration in CONFIGS order.
    fn schedule(self) -> impl Iterator<Item = (u32, bool, Config)> {
        (1..=self.rounds).flat_map(|round| {
            [false, true]
                .into_iter()
                .flat_map(move |punch| CONFIGS.map(|config| (round, punch, config)))
        })
    }

    fn total_runs(self) -> usize {
        self.rounds as usize * 2 * CONFIGS.len()
    }
}

pub fn run(ws: &Workspace, args: BenchArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let mut params = Params::new(&args);
    let bins = Binaries::locate(ws, args.bin_dir.as_deref())?;
    let (runs, probes, machine) = match &args.kernel {
        Some(kernel) => vm::run(ws, kernel, &mut params, &bins, &args.observer_args)?,
        None => host::run(params, &bins, &args.observer_args)?,
    };
    let report = Report::new(
        params,
        &args.observer_args,
        runs,
        probes,
        machine,
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
// Configurations and one run of each
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Config {
    Bare,
    Observer,
    FullStream,
}

/// Also the order of the runs inside a round and of the table rows.
const CONFIGS: [Config; 3] = [Config::Bare, Config::Observer, Config::FullStream];

impl Config {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::Observer => "observer",
            Config::FullStream => "full-stream",
        }
    }

    /// Extra observer flags, or None when no observer runs.
    fn observer_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Bare => None,
            Config::Observer => Some(&[]),
            Config::FullStream => Some(&["--full-stream"]),
        }
    }
}

fn workload_name(punch: bool) -> &'static str {
    if punch { "punch" } else { "no punch" }
}

struct Binaries {
    observer: PathBuf,
    faultbench: PathBuf,
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
    punch: bool,
    config: Config,
    fb: FaultbenchReport,
    observer: Option<Summary>,
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
            "{}: {} faults/s",
            describe(self.round, rounds, self.punch, self.config),
            report::group(self.fb.faults_per_s)
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
        line
    }
}

fn describe(round: u32, rounds: u32, punch: bool, config: Config) -> String {
    format!(
        "round {round}/{rounds}, {}, {}",
        workload_name(punch),
        config.name()
    )
}

/// The probe methods from an observer's startup record, if there is one:
/// they are context, not a measurement, and missing them is no failure.
/// The summary must be there.
fn read_observer_output(text: &str) -> Result<(Summary, Vec<Probe>)> {
    let ends = observer_tests::Ends::parse(text);
    let summary = ends
        .summary
        .context("no summary at the end of the observer's output")?;
    let probes = ends
        .startup
        .map(|s| s.probes.iter().map(Probe::from).collect())
        .unwrap_or_default();
    Ok((summary, probes))
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}
