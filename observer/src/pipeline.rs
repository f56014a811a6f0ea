//! One pipeline for the live run and for replay: raw records are decoded,
//! correlated, filtered and written, and the summary is made from what went
//! through. The live agent feeds it from the ring buffer and the clock;
//! replay feeds it a recording of exactly those inputs, so both print the
//! same alerts and the same summary.

use anyhow::{Context, Result};
use observer_abi::{self as abi, probes::Prog};

use crate::{
    correlator::{self, Alert, Correlator, JoinedReport, Severity},
    event::{Body, Event},
    filter::Filter,
    health, kmsg,
    paths::PathCache,
    record,
    sink::{self, Sink, Summary},
    source::KernelCounters,
    trace::{Recorder, Trailer, Wiring},
};

/// Kernel stack id → symbolized frames, innermost first; None when it
/// cannot be read (replay has no STACKS map).
pub type StackResolver<'a> = &'a dyn Fn(u32) -> Option<Vec<String>>;

pub struct Pipeline {
    correlator: Correlator,
    filter: Filter,
    sink: Sink,
    /// `observer record`: every input also goes here.
    recorder: Option<Recorder>,
    /// Live runs name files from the faulting process's mappings; replayed
    /// pids no longer name the same processes.
    paths: Option<PathCache>,
    /// The destination's name, for write errors.
    output: String,
    received: [u64; abi::KIND_MAX],
    undecodable: u64,
    alerts: Vec<Alert>,
    /// Test markers and kernel reports, from the kernel log.
    kmsg: kmsg::Reader,
    findings: Vec<kmsg::Finding>,
    shown: u64,
    worst: Option<Severity>,
    wakeups: u64,
}

/// What went to the sinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Alerts that passed the filter.
    pub shown: u64,
    /// The worst severity among all alerts, filtered or not (the verdict
    /// ignores filters).
    pub worst: Option<Severity>,
}

impl Pipeline {
    pub fn new(
        wiring: &Wiring,
        filter: Filter,
        sink: Sink,
        output: String,
        recorder: Option<Recorder>,
        live: bool,
        marker: &str,
    ) -> Result<Pipeline> {
        let mut correlator = Correlator::new(correlator::Config {
            reorder_horizon_ns: wiring.reorder_horizon_ns,
            syscall_windows: wiring.syscall_windows,
            shmem_eof_exempt: !wiring.no_shmem_exemption,
            ..correlator::Config::default()
        });
        if wiring.folio_deletes {
            correlator.expect_folio_deletes();
        }
        if wiring.pte_installs {
            correlator.expect_pte_installs();
        }
        Ok(Pipeline {
            correlator,
            filter,
            sink,
            recorder,
            paths: live.then(PathCache::default),
            output,
            received: [0; abi::KIND_MAX],
            undecodable: 0,
            alerts: Vec::new(),
            kmsg: kmsg::Reader::new(marker)?,
            findings: Vec::new(),
            shown: 0,
            worst: None,
            wakeups: 0,
        })
    }

    /// One kernel-log record (`ts` is when it counts, in the events' clock).
    pub fn kmsg(&mut self, raw: &str, ts: u64) -> Result<()> {
        if let Some(r) = &mut self.recorder {
            r.kmsg(raw, ts).context("cannot write the recording")?;
        }
        let Some(mut rec) = kmsg::KmsgRecord::parse(raw) else {
            return Ok(());
        };
        rec.usec = ts / 1000;
        self.kmsg.push(&rec, &mut self.findings);
        self.take_findings(ts);
        Ok(())
    }

    /// A report comes whole at `now`, later than its own time: it goes to
    /// the correlator then, and joins the windows its header held.
    fn take_findings(&mut self, now: u64) {
        for f in self.findings.drain(..) {
            let (ts, body) = match f {
                kmsg::Finding::TestStart { ts, name } => (ts, Body::TestStart { name }),
                kmsg::Finding::ReportBegins { ts } => (ts, Body::ReportBegins),
                kmsg::Finding::Report(r) => (now.max(r.last), Body::KernelReport(r)),
            };
            self.correlator
                .push(Event::from_log(ts, body), &mut self.alerts);
        }
    }

    /// How often the ring buffer woke the live agent, for the summary.
    pub fn set_wakeups(&mut self, n: u64) {
        self.wakeups = n;
    }

    /// One raw ring-buffer record.
    pub fn record(&mut self, raw: &[u8]) -> Result<()> {
        if let Some(r) = &mut self.recorder {
            r.record(raw).context("cannot write the recording")?;
        }
        match (record::kind_of(raw), record::decode(raw)) {
            (Some(kind), Some(ev)) => {
                self.received[kind as usize] += 1;
                self.correlator.push(ev, &mut self.alerts);
            }
            _ => self.undecodable += 1,
        }
        Ok(())
    }

    /// The clock reached `now` (CLOCK_MONOTONIC ns): held records that can
    /// no longer be overtaken are processed, and quiet windows close.
    pub fn tick(&mut self, now: u64) -> Result<()> {
        if let Some(r) = &mut self.recorder {
            r.tick(now).context("cannot write the recording")?;
        }
        self.kmsg.quiet(now, &mut self.findings);
        self.take_findings(now);
        self.correlator.advance(now, &mut self.alerts);
        Ok(())
    }

    /// Writes the alerts made so far that pass the filter, and the kernel
    /// reports.
    pub fn emit(&mut self, stacks: StackResolver) -> Result<()> {
        for r in self.correlator.take_reports() {
            self.report(&r)?;
        }
        for alert in self.alerts.drain(..) {
            self.worst = self.worst.max(Some(alert.severity));
            if !self.filter.matches(&alert) {
                continue;
            }
            let path = self
                .paths
                .as_mut()
                .and_then(|p| p.resolve(alert.file, alert.task.pid))
                .map(str::to_owned);
            let frames = sink::Frames::of(&alert, stacks);
            if self
                .sink
                .alert(&alert, path.as_deref(), &frames)
                .with_context(|| self.output.clone())?
            {
                self.shown += 1;
            }
        }
        Ok(())
    }

    fn report(&mut self, r: &JoinedReport) -> Result<()> {
        self.worst = self.worst.max(Some(r.severity));
        self.sink.report(r).with_context(|| self.output.clone())
    }

    /// The summary of what went through so far, as if the run ended now
    /// (`--metrics` exports it live; `finish` writes the last one). Windows
    /// still open and alerts still held are not in it yet.
    pub fn snapshot(&self, t: &Trailer) -> Summary {
        let mut summary = summarize(
            &self.correlator,
            &t.counters,
            &self.received,
            self.undecodable,
            t.duration_s,
            self.shown,
        );
        summary.health = health::assess(&ran(&t.attached, &t.counters));
        summary.agent.wakeups = self.wakeups;
        summary
    }

    /// End of input: every window closes, the last alerts go out, and the
    /// summary is written (and returned). `trailer` holds what only the end
    /// of a live run knows; a recording cut short has none.
    pub fn finish(
        mut self,
        trailer: Option<&Trailer>,
        stacks: StackResolver,
    ) -> Result<(Summary, Output)> {
        self.kmsg.flush(&mut self.findings);
        self.take_findings(self.correlator.clock());
        self.correlator.flush(&mut self.alerts);
        self.emit(stacks)?;
        let none = Trailer::default();
        let t = trailer.unwrap_or(&none);
        let summary = self.snapshot(t);
        self.sink
            .summary(&summary)
            .with_context(|| self.output.clone())?;
        if let Some(r) = self.recorder.take() {
            r.finish(t).context("cannot write the recording")?;
        }
        Ok((
            summary,
            Output {
                shown: self.shown,
                worst: self.worst,
            },
        ))
    }
}

fn summarize(
    correlator: &Correlator,
    counters: &KernelCounters,
    received: &[u64; abi::KIND_MAX],
    undecodable: u64,
    duration_s: f64,
    shown: u64,
) -> Summary {
    let stats = correlator.stats();
    let by_kind = |v: &[u64; abi::KIND_MAX]| -> observer_report::Counts {
        abi::Kind::ALL
            .iter()
            .map(|k| (k.name(), v[*k as usize]))
            .collect()
    };
    let lost = sink::Lost {
        ringbuf_full: counters.lost.iter().sum(),
        // An invalidation whose mapping has no readable host inode cannot be
        // a window on a mapped file; only an unreadable fault-around can
        // hide a race.
        unresolved: counters.unresolved[abi::Kind::MapPages as usize],
        late: stats.late_events,
        undecodable,
        no_entry: counters.no_entry.iter().sum(),
    };
    Summary {
        duration_s: observer_report::round_ms(duration_s),
        events: by_kind(received),
        kernel_emitted: by_kind(&counters.emitted),
        kernel_dropped: by_kind(&counters.lost),
        lost,
        filtered: counters.filtered,
        filtered_outside_range: counters.filtered_outside_range,
        pte_installs_filtered: counters.pte_filtered,
        folios_removed: stats.folios_removed,
        windows: stats.windows_opened,
        windows_by_op: stats.windows_by_op.by_op().into_iter().collect(),
        failed_calls: stats.failed_calls.by_op().into_iter().collect(),
        alerts: stats.alerts,
        alerts_shown: shown,
        classes: stats.classes,
        alerts_by_severity: by_severity(&stats.alerts_by_severity),
        alerts_by_kind: correlator::AlertKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str().to_owned(),
                    by_severity(&stats.alerts_by_kind[*k as usize]),
                )
            })
            .collect(),
        kernel_reports: stats.kernel_reports,
        tests: stats
            .tests
            .iter()
            .map(|(name, t)| observer_report::TestRow {
                test: name.clone(),
                windows_by_op: t.windows_by_op.by_op().into_iter().collect(),
                alerts: by_severity(&t.alerts),
                kernel_reports: t.kernel_reports,
            })
            .collect(),
        health: observer_report::Health::default(),
        agent: usage(),
        verdict: sink::Verdict::with_critical(
            stats.alerts_by_severity[Severity::Critical as usize] + stats.critical_reports,
            stats.alerts,
            &lost,
            stats.windows_opened,
        ),
    }
}

fn by_severity(v: &[u64; 3]) -> observer_report::BySeverity {
    observer_report::BySeverity {
        info: v[Severity::Info as usize],
        warning: v[Severity::Warning as usize],
        critical: v[Severity::Critical as usize],
    }
}

/// Each attached program with its row's role and its runs.
fn ran(attached: &[String], counters: &KernelCounters) -> Vec<health::Ran> {
    attached
        .iter()
        .filter_map(|name| Prog::ALL.iter().find(|p| p.name() == name))
        .map(|&prog| health::Ran {
            prog,
            role: prog.role(),
            hits: counters.hits.get(prog as usize).copied().unwrap_or(0),
        })
        .collect()
}

/// The agent's peak RSS and CPU time so far. The peak is VmHWM of this
/// process's memory: getrusage's ru_maxrss carries over the parent's peak
/// across fork and exec.
pub fn usage() -> observer_report::AgentUsage {
    let peak_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    observer_report::AgentUsage {
        peak_rss_kib,
        cpu_s: observer_report::round_ms(secs(ru.ru_utime) + secs(ru.ru_stime)),
        wakeups: 0,
    }
}
