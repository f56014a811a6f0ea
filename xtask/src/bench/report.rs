//! The benchmark's table and its JSON (`--out`): one row per setup and
//! workload over the rounds, the bpf_stats rounds' per-program costs, the
//! replay's throughput, and issue 8's targets, each met or not.

use std::{fmt::Write as _, fs, thread};

use serde::Serialize;

use super::{Config, Params, Run, Workload, host::StatsRun, replay::ReplayResult, stats::ProgCost};
use crate::json::{Probe, rounded};

/// One table row: a (setup, workload) pair over all rounds.
struct Row {
    config: Config,
    workload: Workload,
    runs: usize,
    /// Median ops/s (faults/s for the fault loop, calls/s for the mix).
    median: f64,
    /// Per-round bare ops/s ÷ this setup's (empty for bare): 1.03 means 3%
    /// slower. Their median, quartiles and range.
    ratios: Vec<f64>,
    observer: Option<RowObserver>,
    /// The peer's fault-arounds counted in a window, median per run.
    peer_in_window: Option<f64>,
}

impl Row {
    fn slowdown(&self) -> f64 {
        median(&self.ratios)
    }

    fn iqr(&self) -> (f64, f64) {
        (quantile(&self.ratios, 0.25), quantile(&self.ratios, 0.75))
    }
}

struct RowObserver {
    events_per_s: f64,
    /// Summed over the runs: any loss at all is worth seeing.
    ringbuf_full: u64,
    filtered_per_run: f64,
    /// The agent's CPU seconds per million records received (median).
    cpu_s_per_m_records: f64,
    cpu_s: f64,
    records: f64,
    peak_rss_kib: u64,
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
    stats: Vec<StatsRun>,
    replay: Option<ReplayResult>,
}

/// Per-round bare ÷ `config` ops/s for one workload, in round order; a
/// round without both runs gives none.
pub(super) fn round_ratios(runs: &[Run], workload: Workload, config: Config) -> Vec<f64> {
    let rate = |round: u32, config: Config| {
        runs.iter()
            .find(|r| r.round == round && r.workload == workload && r.config == config)
            .map(|r| r.fb.ops_per_s)
    };
    runs.iter()
        .filter(|r| r.workload == workload && r.config == config)
        .filter_map(|r| Some(rate(r.round, Config::Bare)? / r.fb.ops_per_s))
        .collect()
}

/// Issue 8's binding targets, its goals, and comparisons it does not ask
/// for but that say where the time goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TargetKind {
    Binding,
    Goal,
    Info,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Binding => "binding",
            TargetKind::Goal => "goal",
            TargetKind::Info => "info",
        }
    }
}

/// Whether a target was met, and the figures that say so.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) what: String,
    /// None: not measured in this run.
    pub(crate) met: Option<bool>,
    pub(crate) measured: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        params: Params,
        observer_args: &str,
        runs: Vec<Run>,
        probes: Vec<Probe>,
        machine: Machine,
        stats: Vec<StatsRun>,
        replay: Option<ReplayResult>,
        wall_s: f64,
    ) -> Self {
        let mut rows = Vec::new();
        for &workload in params.workloads {
            for &config in params.configs {
                let mine: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.workload == workload && r.config == config)
                    .collect();
                let rates: Vec<f64> = mine.iter().map(|r| r.fb.ops_per_s).collect();
                let observer = config.observer_flags().map(|_| {
                    let eps: Vec<f64> = mine.iter().filter_map(|r| r.events_per_s()).collect();
                    let obs = || mine.iter().filter_map(|r| r.observer.as_ref());
                    let filtered: Vec<f64> = obs().map(|o| o.filtered as f64).collect();
                    let per_m: Vec<f64> = obs()
                        .filter(|o| o.events.total() > 0)
                        .map(|o| o.agent.cpu_s / o.events.total() as f64 * 1e6)
                        .collect();
                    RowObserver {
                        events_per_s: median(&eps),
                        ringbuf_full: obs().map(|o| o.lost.ringbuf_full).sum(),
                        filtered_per_run: median(&filtered),
                        cpu_s_per_m_records: median(&per_m),
                        cpu_s: median(&obs().map(|o| o.agent.cpu_s).collect::<Vec<_>>()),
                        records: median(
                            &obs().map(|o| o.events.total() as f64).collect::<Vec<_>>(),
                        ),
                        peak_rss_kib: obs().map(|o| o.agent.peak_rss_kib).max().unwrap_or(0),
                    }
                });
                let in_window: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| r.peer_in_window.map(|n| n as f64))
                    .collect();
                rows.push(Row {
                    config,
                    workload,
                    runs: mine.len(),
                    median: median(&rates),
                    ratios: if config == Config::Bare {
                        Vec::new()
                    } else {
                        round_ratios(&runs, workload, config)
                    },
                    observer,
                    peer_in_window: (!in_window.is_empty()).then(|| median(&in_window)),
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
            stats,
            replay,
        }
    }

    fn row(&self, workload: Workload, config: Config) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.workload == workload && r.config == config && !r.ratios.is_empty())
    }

    /// The fault-around program's cost in the stats run of (workload, config).
    fn map_pages(&self, workload: Workload, config: Config) -> Option<&ProgCost> {
        self.stats
            .iter()
            .find(|s| s.workload == workload && s.config == config)?
            .progs
            .iter()
            .filter(|p| p.is_map_pages())
            .max_by_key(|p| p.runs)
    }

    /// Issue 8's targets: binding ones first, then the goals.
    pub(super) fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let has_peer = self.params.configs.contains(&Config::Peer);
        let fmt_row = |r: &Row| {
            let (q1, q3) = r.iqr();
            format!("{:.3} (IQR {q1:.3}-{q3:.3})", r.slowdown())
        };
        // Issue 8 binds the fault loop, with and without punches; the mix
        // against the peer is reported beside them.
        let against_peer = |w: Workload| {
            if w == Workload::Mix {
                TargetKind::Info
            } else {
                TargetKind::Binding
            }
        };
        if has_peer {
            for w in [Workload::NoPunch, Workload::Punch, Workload::Mix] {
                let (Some(o), Some(p)) = (self.row(w, Config::Observer), self.row(w, Config::Peer))
                else {
                    continue;
                };
                let (oq1, oq3) = o.iqr();
                let (pq1, pq3) = p.iqr();
                let overlap = oq1 <= pq3 && pq1 <= oq3;
                out.push(Target {
                    kind: against_peer(w),
                    what: format!("{}: observer slowdown <= the peer's", w.name()),
                    met: Some(o.slowdown() <= p.slowdown()),
                    measured: format!(
                        "observer {} vs peer {}{}",
                        fmt_row(o),
                        fmt_row(p),
                        if overlap { "; the IQRs overlap" } else { "" }
                    ),
                });
            }
            for w in [Workload::NoPunch, Workload::Punch, Workload::Mix] {
                if let (Some(o), Some(p)) = (
                    self.map_pages(w, Config::Observer),
                    self.map_pages(w, Config::Peer),
                ) {
                    out.push(Target {
                        kind: against_peer(w),
                        what: format!("{}: mm_filemap_map_pages ns/run <= the peer's", w.name()),
                        met: Some(o.ns_per_run() <= p.ns_per_run()),
                        measured: format!(
                            "observer {:.0} ns vs peer {:.0} ns",
                            o.ns_per_run(),
                            p.ns_per_run()
                        ),
                    });
                }
            }
        }
        for (w, goal) in [
            (Workload::NoPunch, 1.02),
            (Workload::Punch, 1.05),
            (Workload::Mix, 1.03),
        ] {
            if let Some(o) = self.row(w, Config::Observer) {
                out.push(Target {
                    kind: TargetKind::Goal,
                    what: format!(
                        "{}: observer slowdown <= {goal:.2}{}",
                        w.name(),
                        if w == Workload::Mix {
                            " (the fsx goal, on faultbench --mix, not fsx)"
                        } else {
                            ""
                        }
                    ),
                    met: Some(o.slowdown() <= goal),
                    measured: fmt_row(o),
                });
            }
        }
        for w in self.params.workloads {
            if let Some(o) = self.map_pages(*w, Config::Observer) {
                out.push(Target {
                    kind: TargetKind::Goal,
                    what: format!("{}: mm_filemap_map_pages <= 150 ns/run", w.name()),
                    met: Some(o.ns_per_run() <= 150.0),
                    measured: format!("{:.0} ns over {} runs", o.ns_per_run(), o.runs),
                });
            }
        }
        out.push(Target {
            kind: TargetKind::Goal,
            what: "correlator >= 5 M records/s on one core (replayed racer, no alert written)"
                .into(),
            met: self
                .replay
                .as_ref()
                .map(|r| r.marginal_records_per_s() >= 5e6),
            measured: match &self.replay {
                Some(r) => format!(
                    "{} records/s marginal writing every alert as JSON, {} writing none",
                    group(r.marginal_records_per_s()),
                    group(r.quiet_records_per_s())
                ),
                None => "not measured (--replay)".into(),
            },
        });
        let rss = self
            .rows
            .iter()
            .filter_map(|r| r.observer.as_ref())
            .map(|o| o.peak_rss_kib)
            .max();
        out.push(Target {
            kind: TargetKind::Goal,
            what: "agent peak RSS <= 32 MB (live runs)".into(),
            met: rss.map(|k| k * 1024 <= 32_000_000),
            measured: match (rss, &self.replay) {
                (Some(k), Some(r)) => format!(
                    "{:.1} MB live; replay {:.1} MB",
                    k as f64 * 1024.0 / 1e6,
                    r.peak_rss_kib() as f64 * 1024.0 / 1e6
                ),
                (Some(k), None) => format!("{:.1} MB", k as f64 * 1024.0 / 1e6),
                (None, _) => "no observer run".into(),
            },
        });
        out
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
        let p = &self.params;
        let mix = if p.workloads.contains(&Workload::Mix) {
            format!("; mix {} ops", p.mix_ops)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "\nobserver overhead on faultbench: {} pages x {} fault rounds{}{mix}; {} round(s), setups interleaved",
            p.pages,
            p.fault_rounds,
            match &self.machine.guest {
                Some(g) if g.fault_rounds_requested != p.fault_rounds =>
                    format!(" (down from {}: slow kernel)", g.fault_rounds_requested),
                _ => String::new(),
            },
            p.rounds
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
            "{:<9} {:<13} {:>11} {:>9} {:>13} {:>11} {:>10} {:>8} {:>12} {:>10}",
            "workload",
            "setup",
            "ops/s",
            "slowdown",
            "IQR",
            "range",
            "events/s",
            "rb_full",
            "filtered/run",
            "in-window"
        );
        for r in &self.rows {
            let (slow, iqr, range) = if r.ratios.is_empty() {
                ("-".into(), "-".into(), "-".into())
            } else {
                let (q1, q3) = r.iqr();
                let lo = r.ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = r.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (
                    format!("{:.3}", r.slowdown()),
                    format!("{q1:.3}-{q3:.3}"),
                    format!("{lo:.2}-{hi:.2}"),
                )
            };
            let (eps, lost, filtered) = match &r.observer {
                Some(o) => (
                    group(o.events_per_s),
                    o.ringbuf_full.to_string(),
                    group(o.filtered_per_run),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "{:<9} {:<13} {:>11} {:>9} {:>13} {:>11} {:>10} {:>8} {:>12} {:>10}",
                r.workload.name(),
                r.config.name(),
                group(r.median),
                slow,
                iqr,
                range,
                eps,
                lost,
                filtered,
                r.peer_in_window.map_or("-".into(), group)
            );
        }
        let _ = writeln!(
            s,
            "\nops/s: faults/s (fault loop) or calls/s (mix), median over the runs; slowdown:\n\
             median over the rounds of bare ops/s / the setup's ops/s in the same round\n\
             (1.030 = 3% slower); IQR: its quartiles; range: lowest-highest; events/s:\n\
             records the correlator received / faultbench elapsed_s; rb_full: records\n\
             dropped (ring buffer full), summed; in-window: the peer's fault-around calls\n\
             counted inside a window, median per run."
        );
        let agent: Vec<&Row> = self.rows.iter().filter(|r| r.observer.is_some()).collect();
        if !agent.is_empty() {
            let _ = writeln!(
                s,
                "\nagent CPU (user+sys, startup included), medians per run:"
            );
            for r in agent {
                let o = r.observer.as_ref().expect("filtered");
                let _ = writeln!(
                    s,
                    "  {:<9} {:<13} {:.3} s for {} records: {} s per million records; peak RSS {:.1} MB",
                    r.workload.name(),
                    r.config.name(),
                    o.cpu_s,
                    group(o.records),
                    if o.cpu_s_per_m_records.is_finite() {
                        format!("{:.2}", o.cpu_s_per_m_records)
                    } else {
                        "-".into()
                    },
                    o.peak_rss_kib as f64 * 1024.0 / 1e6
                );
            }
        }
        if !self.stats.is_empty() {
            let _ = writeln!(
                s,
                "\nper program, in separate runs with kernel.bpf_stats_enabled=1 (one per workload and setup):\n\
                 {:<9} {:<13} {:<34} {:>10} {:>8} {:>9} {:>7}",
                "workload", "setup", "program", "runs", "ns/run", "CPU ms", "% wall"
            );
            for st in &self.stats {
                let total: u64 = st.progs.iter().map(|p| p.run_time_ns).sum();
                for pr in &st.progs {
                    let _ = writeln!(
                        s,
                        "{:<9} {:<13} {:<34} {:>10} {:>8.0} {:>9.1} {:>6.1}%",
                        st.workload.name(),
                        st.config.name(),
                        format!("{} [{}]", pr.name, pr.id),
                        group(pr.runs as f64),
                        pr.ns_per_run(),
                        pr.run_time_ns as f64 / 1e6,
                        pct(pr.run_time_ns, st.elapsed_s)
                    );
                }
                let _ = writeln!(
                    s,
                    "{:<9} {:<13} {:<34} {:>10} {:>8} {:>9.1} {:>6.1}%",
                    st.workload.name(),
                    st.config.name(),
                    "(all programs)",
                    "",
                    "",
                    total as f64 / 1e6,
                    pct(total, st.elapsed_s)
                );
            }
            let _ = writeln!(
                s,
                "% wall: program run time / faultbench elapsed_s (of one CPU); the programs\n\
                 also ran while faultbench wrote its file, outside elapsed_s."
            );
        }
        if let Some(r) = &self.replay {
            let cpu: Vec<f64> = r.replays.iter().map(|x| x.cpu_s).collect();
            let _ = writeln!(
                s,
                "\nreplay: the racer recorded {} s ({} records, {:.1} MB), replayed {} times on one CPU:\n\
                 {} records/s marginal (the second half's records over the time they add to\n\
                 replaying the first half {} times), {} records/s over the whole replay\n\
                 proper; with no alert written (--min-severity critical): {} records/s\n\
                 marginal; startup {:.3} s (median: exec and reading the recording), CPU\n\
                 {:.3} s per replay (median), peak RSS {:.1} MB",
                super::replay::RECORD_S,
                group(r.records as f64),
                r.recording_bytes as f64 / 1e6,
                r.replays.len(),
                group(r.marginal_records_per_s()),
                r.half_replays.len(),
                group(r.records_per_s()),
                group(r.quiet_records_per_s()),
                r.startup_s(),
                median(&cpu),
                r.peak_rss_kib() as f64 * 1024.0 / 1e6
            );
        }
        let targets = self.targets();
        let _ = writeln!(s, "\ntargets (issue 8):");
        for t in &targets {
            let _ = writeln!(
                s,
                "  [{}] {:<9} {}: {}",
                match t.met {
                    Some(true) => "met",
                    Some(false) => "NOT met",
                    None => "not measured",
                },
                t.kind.name(),
                t.what,
                t.measured
            );
        }
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
                mix_ops: self.params.mix_ops,
                observer_args: &self.observer_args,
            },
            wall_s: rounded(self.wall_s, 3),
            results: self.rows.iter().map(RowJson::of).collect(),
            bpf_stats: self
                .stats
                .iter()
                .map(|st| StatsJson {
                    workload: st.workload.name(),
                    setup: st.config.name(),
                    elapsed_s: rounded(st.elapsed_s, 6),
                    programs: &st.progs,
                })
                .collect(),
            replay: self.replay.as_ref(),
            targets: self.targets(),
            runs: self.runs.iter().map(RunJson::of).collect(),
        };
        serde_json::to_string(&doc).expect("the bench always serializes") + "\n"
    }
}

fn pct(ns: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        ns as f64 / (elapsed_s * 1e9) * 100.0
    } else {
        f64::NAN
    }
}

#[derive(Serialize)]
struct BenchJson<'a> {
    machine: MachineJson<'a>,
    params: ParamsJson<'a>,
    wall_s: Option<f64>,
    results: Vec<RowJson>,
    bpf_stats: Vec<StatsJson<'a>>,
    replay: Option<&'a ReplayResult>,
    targets: Vec<Target>,
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
    mix_ops: u64,
    observer_args: &'a [String],
}

#[derive(Serialize)]
struct StatsJson<'a> {
    workload: &'static str,
    setup: &'static str,
    elapsed_s: Option<f64>,
    programs: &'a [ProgCost],
}

#[derive(Serialize)]
struct RowJson {
    setup: &'static str,
    workload: &'static str,
    runs: usize,
    ops_per_s_median: Option<f64>,
    slowdown: Option<f64>,
    slowdown_q1: Option<f64>,
    slowdown_q3: Option<f64>,
    round_slowdowns: Vec<f64>,
    events_per_s_median: Option<f64>,
    ringbuf_full: Option<u64>,
    filtered_per_run_median: Option<f64>,
    agent_cpu_s_per_m_records: Option<f64>,
    agent_peak_rss_kib: Option<u64>,
    peer_in_window_median: Option<f64>,
}

impl RowJson {
    fn of(r: &Row) -> Self {
        let o = r.observer.as_ref();
        let (q1, q3) = r.iqr();
        RowJson {
            setup: r.config.name(),
            workload: r.workload.name(),
            runs: r.runs,
            ops_per_s_median: rounded(r.median, 1),
            slowdown: rounded(r.slowdown(), 4),
            slowdown_q1: rounded(q1, 4),
            slowdown_q3: rounded(q3, 4),
            round_slowdowns: r.ratios.iter().filter_map(|x| rounded(*x, 4)).collect(),
            events_per_s_median: o.and_then(|o| rounded(o.events_per_s, 1)),
            ringbuf_full: o.map(|o| o.ringbuf_full),
            filtered_per_run_median: o.and_then(|o| rounded(o.filtered_per_run, 1)),
            agent_cpu_s_per_m_records: o.and_then(|o| rounded(o.cpu_s_per_m_records, 3)),
            agent_peak_rss_kib: o.map(|o| o.peak_rss_kib),
            peer_in_window_median: r.peer_in_window.and_then(|x| rounded(x, 1)),
        }
    }
}

#[derive(Serialize)]
struct RunJson {
    round: u32,
    workload: &'static str,
    setup: &'static str,
    faults: u64,
    ops: u64,
    elapsed_s: Option<f64>,
    ops_per_s: Option<f64>,
    observer: Option<RunObserverJson>,
    peer_in_window: Option<u64>,
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
    agent_cpu_s: Option<f64>,
    agent_peak_rss_kib: u64,
}

impl RunJson {
    fn of(r: &Run) -> Self {
        RunJson {
            round: r.round,
            workload: r.workload.name(),
            setup: r.config.name(),
            faults: r.fb.faults,
            ops: r.fb.ops,
            elapsed_s: rounded(r.fb.elapsed_s, 6),
            ops_per_s: rounded(r.fb.ops_per_s, 1),
            observer: r.observer.as_ref().map(|s| RunObserverJson {
                events: s.events.total(),
                events_per_s: r.events_per_s().and_then(|e| rounded(e, 1)),
                ringbuf_full: s.lost.ringbuf_full,
                unresolved: s.lost.unresolved,
                late: s.lost.late,
                filtered: s.filtered,
                windows: s.windows,
                alerts: s.alerts,
                agent_cpu_s: rounded(s.agent.cpu_s, 3),
                agent_peak_rss_kib: s.agent.peak_rss_kib,
            }),
            peer_in_window: r.peer_in_window,
        }
    }
}

/// The `q` quantile (0..=1) by linear interpolation between the closest
/// ranks (R's type 7); NaN when empty.
pub(super) fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let h = (v.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (h - lo as f64)
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
