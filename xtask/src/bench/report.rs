//! The benchmark's table and its JSON (`--out`): one row per configuration
//! and workload, over the rounds.

use std::{fmt::Write as _, fs, thread};

use serde::Serialize;

use super::{CONFIGS, Config, Params, Run, workload_name};
use crate::json::{Probe, rounded};

/// One table row: a (configuration, workload) pair over all rounds.
struct Row {
    config: Config,
    punch: bool,
    runs: usize,
    median: f64,
    min: f64,
    max: f64,
    /// bare median / this median: 1.03 means 3% fewer faults per second.
    slowdown: f64,
    /// Lowest and highest bare / this within one round (None for bare):
    /// how far the ratio moves from round to round.
    round_slowdowns: Option<(f64, f64)>,
    observer: Option<RowObserver>,
}

struct RowObserver {
    events_per_s: f64,
    /// Summed over the runs: any loss at all is worth seeing.
    ringbuf_full: u64,
    filtered_per_run: f64,
}

/// Where the bench ran.
pub(super) struct Machine {
    pub(super) kernel: String,
    pub(super) nproc: usize,
    /// Some when in a qemu guest.
    pub(super) guest: Option<Guest>,
}

pub(super) struct Guest {
    pub(super) host_kernel: String,
    /// The bench alone in the guest's clock (warm-up included, boot not).
    pub(super) bench_s: Option<f64>,
    /// What the guest was asked for; it runs fewer on a slow kernel.
    pub(super) fault_rounds_requested: u64,
}

impl Machine {
    pub(super) fn host() -> Self {
        Self {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            nproc: thread::available_parallelism().map_or(0, |n| n.get()),
            guest: None,
        }
    }
}

pub(super) struct Report {
    machine: Machine,
    /// --observer-args, split.
    observer_args: Vec<String>,
    probes: Vec<Probe>,
    params: Params,
    wall_s: f64,
    rows: Vec<Row>,
    runs: Vec<Run>,
}

/// Lowest and highest per-round bare / `config` rate ratio.
pub(super) fn round_slowdowns(runs: &[Run], punch: bool, config: Config) -> Option<(f64, f64)> {
    let rate = |round: u32, config: Config| {
        runs.iter()
            .find(|r| r.round == round && r.punch == punch && r.config == config)
            .map(|r| r.fb.faults_per_s)
    };
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.punch == punch && r.config == config)
        .filter_map(|r| Some(rate(r.round, Config::Bare)? / r.fb.faults_per_s))
        .collect();
    (!ratios.is_empty()).then(|| {
        (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    })
}

impl Report {
    pub(super) fn new(
        params: Params,
        observer_args: &str,
        runs: Vec<Run>,
        probes: Vec<Probe>,
        machine: Machine,
        wall_s: f64,
    ) -> Self {
        let mut rows = Vec::new();
        for punch in [false, true] {
            let mut bare = f64::NAN;
            for config in CONFIGS {
                let mine: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.punch == punch && r.config == config)
                    .collect();
                let rates: Vec<f64> = mine.iter().map(|r| r.fb.faults_per_s).collect();
                let mid = median(&rates);
                if config == Config::Bare {
                    bare = mid;
                }
                let observer = (config != Config::Bare).then(|| {
                    let eps: Vec<f64> = mine.iter().filter_map(|r| r.events_per_s()).collect();
                    let obs = || mine.iter().filter_map(|r| r.observer.as_ref());
                    let filtered: Vec<f64> = obs().map(|o| o.filtered as f64).collect();
                    RowObserver {
                        events_per_s: median(&eps),
                        ringbuf_full: obs().map(|o| o.lost.ringbuf_full).sum(),
                        filtered_per_run: median(&filtered),
                    }
                });
                rows.push(Row {
                    config,
                    punch,
                    runs: mine.len(),
                    median: mid,
                    min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                    max: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    slowdown: bare / mid,
                    round_slowdowns: (config != Config::Bare)
                        .then(|| round_slowdowns(&runs, punch, config))
                        .flatten(),
                    observer,
                });
            }
        }
        Self {
            machine,
            observer_args: observer_args
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            probes,
            params,
            wall_s,
            rows,
            runs,
        }
    }

    fn probes_text(&self) -> String {
        if self.probes.is_empty() {
            return "unknown (no startup record)".into();
        }
        self.probes
            .iter()
            .map(|p| format!("{}={}", p.function, p.method.as_deref().unwrap_or("none")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(super) fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nobserver overhead on faultbench: {} pages x {} fault rounds{}, {} run(s) per row, interleaved",
            self.params.pages,
            self.params.fault_rounds,
            match &self.machine.guest {
                Some(g) if g.fault_rounds_requested != self.params.fault_rounds =>
                    format!(" (down from {}: slow kernel)", g.fault_rounds_requested),
                _ => String::new(),
            },
            self.params.rounds
        );
        let m = &self.machine;
        match &m.guest {
            None => {
                let _ = writeln!(s, "kernel {}, {} CPUs", m.kernel, m.nproc);
            }
            Some(g) => {
                let _ = writeln!(
                    s,
                    "kernel {} in a qemu TCG guest ({} vCPUs) on host kernel {}",
                    m.kernel, m.nproc, g.host_kernel
                );
            }
        }
        if !self.observer_args.is_empty() {
            let _ = writeln!(s, "observer flags: {}", self.observer_args.join(" "));
        }
        let _ = writeln!(s, "probe methods: {}\n", self.probes_text());
        let _ = writeln!(
            s,
            "{:<9} {:<12} {:>12} {:>7} {:>9} {:>11} {:>12} {:>13} {:>13}",
            "workload",
            "config",
            "faults/s",
            "spread",
            "slowdown",
            "per-round",
            "events/s",
            "ringbuf_full",
            "filtered/run"
        );
        for r in &self.rows {
            let spread = (r.max - r.min) / r.median * 100.0;
            let (eps, lost, filtered) = match &r.observer {
                Some(o) => (
                    group(o.events_per_s),
                    o.ringbuf_full.to_string(),
                    group(o.filtered_per_run),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let per_round = r
                .round_slowdowns
                .map_or("-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"));
            let _ = writeln!(
                s,
                "{:<9} {:<12} {:>12} {:>6.1}% {:>9.3} {:>11} {:>12} {:>13} {:>13}",
                workload_name(r.punch),
                r.config.name(),
                group(r.median),
                spread,
                r.slowdown,
                per_round,
                eps,
                lost,
                filtered
            );
        }
        let _ = writeln!(
            s,
            "\nfaults/s, events/s, filtered/run: medians over the runs; spread: (max - min) / median;\n\
             slowdown: bare median / median (1.030 = 3% slower); per-round: lowest-highest\n\
             bare / config within one round; events/s: records the correlator received /\n\
             faultbench elapsed_s; ringbuf_full: records dropped, summed over the runs."
        );
        match self.machine.guest.as_ref().and_then(|g| g.bench_s) {
            Some(bench_s) => {
                let _ = writeln!(
                    s,
                    "total wall time: {:.1} s (the bench itself: {bench_s:.1} s in the guest)",
                    self.wall_s
                );
            }
            None => {
                let _ = writeln!(s, "total wall time: {:.1} s", self.wall_s);
            }
        }
        s
    }

    pub(super) fn json(&self) -> String {
        let m = &self.machine;
        let doc = BenchJson {
            machine: MachineJson {
                kernel: &m.kernel,
                nproc: m.nproc,
                // null on the host; else what the guest ran on.
                vm: m.guest.as_ref().map(|g| GuestJson {
                    accel: "tcg",
                    host_kernel: &g.host_kernel,
                    bench_s: g.bench_s.and_then(|t| rounded(t, 3)),
                    fault_rounds_requested: g.fault_rounds_requested,
                }),
                probes: &self.probes,
            },
            params: ParamsJson {
                rounds: self.params.rounds,
                pages: self.params.pages,
                fault_rounds: self.params.fault_rounds,
                observer_args: &self.observer_args,
            },
            wall_s: rounded(self.wall_s, 3),
            results: self.rows.iter().map(RowJson::of).collect(),
            runs: self.runs.iter().map(RunJson::of).collect(),
        };
        serde_json::to_string(&doc).expect("the bench always serializes") + "\n"
    }
}

#[derive(Serialize)]
struct BenchJson<'a> {
    machine: MachineJson<'a>,
    params: ParamsJson<'a>,
    wall_s: Option<f64>,
    results: Vec<RowJson>,
    runs: Vec<RunJson>,
}

#[derive(Serialize)]
struct MachineJson<'a> {
    kernel: &'a str,
    nproc: usize,
    vm: Option<GuestJson<'a>>,
    probes: &'a [Probe],
}

#[derive(Serialize)]
struct GuestJson<'a> {
    accel: &'static str,
    host_kernel: &'a str,
    bench_s: Option<f64>,
    fault_rounds_requested: u64,
}

#[derive(Serialize)]
struct ParamsJson<'a> {
    rounds: u32,
    pages: u64,
    fault_rounds: u64,
    observer_args: &'a [String],
}

#[derive(Serialize)]
struct RowJson {
    config: &'static str,
    punch: bool,
    runs: usize,
    faults_per_s_median: Option<f64>,
    faults_per_s_min: Option<f64>,
    faults_per_s_max: Option<f64>,
    slowdown: Option<f64>,
    round_slowdown_min: Option<f64>,
    round_slowdown_max: Option<f64>,
    events_per_s_median: Option<f64>,
    ringbuf_full: Option<u64>,
    filtered_per_run_median: Option<f64>,
}

impl RowJson {
    fn of(r: &Row) -> Self {
        let o = r.observer.as_ref();
        RowJson {
            config: r.config.name(),
            punch: r.punch,
            runs: r.runs,
            faults_per_s_median: rounded(r.median, 1),
            faults_per_s_min: rounded(r.min, 1),
            faults_per_s_max: rounded(r.max, 1),
            slowdown: rounded(r.slowdown, 4),
            round_slowdown_min: r.round_slowdowns.and_then(|(lo, _)| rounded(lo, 4)),
            round_slowdown_max: r.round_slowdowns.and_then(|(_, hi)| rounded(hi, 4)),
            events_per_s_median: o.and_then(|o| rounded(o.events_per_s, 1)),
            ringbuf_full: o.map(|o| o.ringbuf_full),
            filtered_per_run_median: o.and_then(|o| rounded(o.filtered_per_run, 1)),
        }
    }
}

#[derive(Serialize)]
struct RunJson {
    round: u32,
    punch: bool,
    config: &'static str,
    faults: u64,
    elapsed_s: Option<f64>,
    faults_per_s: Option<f64>,
    observer: Option<RunObserverJson>,
}

/// What the benchmark keeps of an observer run's summary.
#[derive(Serialize)]
struct RunObserverJson {
    /// Records the correlator received, all kinds together.
    events: u64,
    events_per_s: Option<f64>,
    ringbuf_full: u64,
    unresolved: u64,
    late: u64,
    filtered: u64,
    windows: u64,
    alerts: u64,
}

impl RunJson {
    fn of(r: &Run) -> Self {
        RunJson {
            round: r.round,
            punch: r.punch,
            config: r.config.name(),
            faults: r.fb.faults,
            elapsed_s: rounded(r.fb.elapsed_s, 6),
            faults_per_s: rounded(r.fb.faults_per_s, 1),
            observer: r.observer.as_ref().map(|s| RunObserverJson {
                events: s.events.total(),
                events_per_s: r.events_per_s().and_then(|e| rounded(e, 1)),
                ringbuf_full: s.lost.ringbuf_full,
                unresolved: s.lost.unresolved,
                late: s.lost.late,
                filtered: s.filtered,
                windows: s.windows,
                alerts: s.alerts,
            }),
        }
    }
}

/// Median; the mean of the middle two for an even count, NaN when empty.
pub(super) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Rounds to an integer and groups digits by thousands: 1234567.8 → "1,234,568".
pub(super) fn group(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}
