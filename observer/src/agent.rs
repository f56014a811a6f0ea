//! The live agent: load and attach, then pump ring-buffer records through the
//! correlator into the sink until Ctrl-C, SIGTERM or --duration.

use std::{
    fs::File,
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Cli, Command},
    correlator::{self, Correlator},
    filter::Filter,
    loader::{self, Loaded},
    paths::PathCache,
    sink::{self, Format, Sink, Summary},
    source::{self, Source},
};

pub fn run(cli: Cli) -> Result<()> {
    let filter = validate(&cli)?;
    if let Some(Command::Replay { file }) = &cli.command {
        return crate::replay::run(&cli, file, filter);
    }
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)");
    }
    // Before the runtime starts any thread: a namespace is per thread.
    let tracefs = loader::tracefs::ensure()?;
    let loaded = loader::load(&loader::Options {
        btf: cli.btf.clone(),
        ringbuf_bytes: cli.ringbuf_kib * 1024,
        full_stream: cli.full_stream,
        best_method: cli.method,
    })?;
    // Opened only now: a run that could not start must not have emptied the
    // user's file.
    let mut sink = open_sink(&cli, boot_to_realtime_ns())?;

    let kernel = kernel_release();
    eprintln!("observer: kernel {kernel}, BTF {}", cli.btf.display());
    if let Some(note) = tracefs.note() {
        eprintln!("observer: {note}");
    }
    for p in &loaded.probes {
        eprintln!("observer: {p}");
        if cli.verbose {
            for r in &p.refused {
                if let Some(log) = &r.verifier_log {
                    eprintln!(
                        "--- verifier log ({} on {}) ---\n{log}",
                        r.method.as_str(),
                        p.function
                    );
                }
            }
        }
    }
    if !loaded.folio_deletes {
        eprintln!(
            "observer: folio removals not observed (no filemap:mm_filemap_delete_from_page_cache): outcomes unknown"
        );
    }
    if cli.json {
        sink.startup(&startup(&loaded, kernel))
            .with_context(|| output_name(&cli))?;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(pump(cli, loaded, sink, filter))
}

/// Everything the user typed is checked before anything is loaded.
pub(crate) fn validate(cli: &Cli) -> Result<Filter> {
    let filter = Filter::new(
        cli.pid.clone(),
        cli.comm.clone(),
        cli.dev.clone(),
        cli.ino.clone(),
    )?;
    if !cli.ringbuf_kib.is_power_of_two() || cli.ringbuf_kib < 4 {
        anyhow::bail!(
            "bad --ringbuf-kib {}: must be a power of two ≥ 4",
            cli.ringbuf_kib
        );
    }
    if let Some(d) = cli.duration
        && !(d.is_finite() && d > 0.0)
    {
        anyhow::bail!("bad --duration {d}: must be a positive number of seconds");
    }
    Ok(filter)
}

pub(crate) fn open_sink(cli: &Cli, boot_to_realtime_ns: i64) -> Result<Sink> {
    let out: Box<dyn Write + Send> = match &cli.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot write to {}", path.display()))?,
        ),
        None => Box::new(io::stdout()),
    };
    let format = if cli.json { Format::Json } else { Format::Text };
    Ok(Sink::new(format, out, boot_to_realtime_ns))
}

async fn pump(cli: Cli, mut loaded: Loaded, mut sink: Sink, filter: Filter) -> Result<()> {
    let mut source = Source::new(&mut loaded.ebpf)?;
    if let Some(Command::Record { file }) = &cli.command {
        let wiring = crate::trace::Wiring {
            syscall_windows: loaded.syscall_windows,
            folio_deletes: loaded.folio_deletes,
            boot_to_realtime_ns: sink.boot_to_realtime_ns(),
        };
        source.recorder = Some(crate::trace::Recorder::create(file, wiring)?);
        eprintln!("observer: recording raw records to {}", file.display());
    }
    let mut correlator = Correlator::new(correlator::Config {
        reorder_horizon_ns: cli.reorder_ms * 1_000_000,
        syscall_windows: loaded.syscall_windows,
        ..correlator::Config::default()
    });
    if loaded.folio_deletes {
        correlator.expect_folio_deletes();
    }
    if loaded.sources.pte_install {
        correlator.expect_pte_installs();
    }
    // Stacks of critical alerts, read from the STACKS map and symbolized;
    // kallsyms is read the first time one is needed.
    let kallsyms = std::cell::OnceCell::new();
    let resolve_stack = |id: u32| -> Option<Vec<String>> {
        let addrs = source::stack(&loaded.ebpf, id)?;
        let ksyms = kallsyms
            .get_or_init(|| crate::symbols::Kallsyms::load().ok())
            .as_ref()?;
        Some(addrs.iter().map(|&a| ksyms.symbolize(a)).collect())
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = cli.duration.map(Duration::from_secs_f64);
    let stop = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(stop);
    // Releases held events when the stream goes quiet.
    let mut tick = tokio::time::interval(Duration::from_millis(cli.reorder_ms.max(10)));
    let started = Instant::now();
    let mut paths = PathCache::default();
    let mut shown = 0u64;
    let mut events = Vec::new();
    let mut alerts = Vec::new();

    eprintln!(
        "observer: ready: watching{} (Ctrl-C to stop)",
        deadline
            .map(|d| format!(" for {:.1}s", d.as_secs_f64()))
            .unwrap_or_default()
    );
    loop {
        tokio::select! {
            r = source.next_batch(&mut events) => {
                r?;
                for ev in events.drain(..) {
                    correlator.push(ev, &mut alerts);
                }
            }
            _ = tick.tick() => {
                // Only what was already read may be declared settled by the
                // clock: drain first, or a busy host makes records look late.
                source.drain(&mut events)?;
                for ev in events.drain(..) {
                    correlator.push(ev, &mut alerts);
                }
                correlator.advance(monotonic_ns(), &mut alerts);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut stop => break,
        }
        shown += emit(
            &mut sink,
            &filter,
            Some(&mut paths),
            &mut alerts,
            &cli,
            &resolve_stack,
        )?;
    }

    source.drain(&mut events)?;
    for ev in events.drain(..) {
        correlator.push(ev, &mut alerts);
    }
    correlator.flush(&mut alerts);
    shown += emit(
        &mut sink,
        &filter,
        Some(&mut paths),
        &mut alerts,
        &cli,
        &resolve_stack,
    )?;
    let counters = source::read_counters(&loaded.ebpf)?;
    for k in 1..counters.unresolved.len() {
        if counters.unresolved[k] > 0 && k != observer_abi::Kind::MapPages as usize {
            eprintln!(
                "observer: {} {} calls had no readable file (mapping without host inode): not windows",
                counters.unresolved[k],
                source::kind_name(k)
            );
        }
    }
    let summary = summarize(
        &correlator,
        &counters,
        source.undecodable,
        started.elapsed(),
        shown,
    );
    sink.summary(&summary).with_context(|| output_name(&cli))?;
    if cli.output.is_some() || cli.json {
        let text = sink::summary::text(&summary);
        eprint!("{text}{}", if text.ends_with('\n') { "" } else { "\n" });
    }
    if let Some(r) = source.recorder.take() {
        r.finish().context("cannot write the recording")?;
    }
    // Dropping the object detaches and unloads every program.
    drop(source);
    drop(loaded);
    Ok(())
}

/// Writes the alerts that pass the filter; `paths` is None on replay, where
/// the recorded pids no longer name the same processes. `resolve_stack` turns
/// a kernel stack id of a critical alert into symbolized frames (innermost
/// first), or `None`: [`sink::no_stacks`] where no stack can be read.
pub(crate) fn emit(
    sink: &mut Sink,
    filter: &Filter,
    mut paths: Option<&mut PathCache>,
    alerts: &mut Vec<correlator::Alert>,
    cli: &Cli,
    resolve_stack: &dyn Fn(u32) -> Option<Vec<String>>,
) -> Result<u64> {
    let mut shown = 0;
    for alert in alerts.drain(..) {
        if !filter.matches(&alert) {
            continue;
        }
        let path = paths
            .as_deref_mut()
            .and_then(|p| p.resolve(alert.file, alert.task.pid))
            .map(str::to_owned);
        let frames = sink::Frames::of(&alert, resolve_stack);
        sink.alert(&alert, path.as_deref(), &frames)
            .with_context(|| output_name(cli))?;
        shown += 1;
    }
    Ok(shown)
}

pub(crate) fn output_name(cli: &Cli) -> String {
    match &cli.output {
        Some(p) => format!("cannot write to {}", p.display()),
        None => "cannot write to stdout".into(),
    }
}

pub(crate) fn summarize(
    correlator: &Correlator,
    counters: &source::KernelCounters,
    undecodable: u64,
    elapsed: Duration,
    shown: u64,
) -> Summary {
    let stats = correlator.stats();
    let named = |v: &[u64]| -> observer_report::Counts {
        (1..v.len()).map(|k| (source::kind_name(k), v[k])).collect()
    };
    let lost = sink::Lost {
        ringbuf_full: counters.lost.iter().sum(),
        // An invalidation whose mapping has no readable host inode cannot be
        // a window on a mapped file; only an unreadable fault-around can
        // hide a race.
        unresolved: counters.unresolved[observer_abi::Kind::MapPages as usize],
        late: stats.late_events,
        undecodable,
    };
    Summary {
        duration_s: observer_report::round_ms(elapsed.as_secs_f64()),
        events: stats.events.by_kind().into_iter().collect(),
        kernel_emitted: named(&counters.emitted),
        lost,
        filtered: counters.filtered,
        windows: stats.windows_opened,
        windows_by_op: stats.windows_by_op.by_op().into_iter().collect(),
        failed_calls: stats.failed_calls.by_op().into_iter().collect(),
        alerts: stats.alerts,
        alerts_shown: shown,
        classes: stats.classes,
        health: observer_report::Health::default(),
        agent: usage(),
        verdict: sink::Verdict::of(&stats.classes, stats.alerts, &lost, stats.windows_opened),
    }
}

/// The agent's peak RSS and CPU time so far.
pub(crate) fn usage() -> observer_report::AgentUsage {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    observer_report::AgentUsage {
        peak_rss_kib: ru.ru_maxrss.max(0) as u64,
        cpu_s: observer_report::round_ms(secs(ru.ru_utime) + secs(ru.ru_stime)),
    }
}

fn startup(loaded: &Loaded, kernel: String) -> sink::Startup {
    sink::Startup {
        kernel,
        probes: loaded
            .probes
            .iter()
            .map(|p| sink::StartupProbe {
                function: p.function.to_owned(),
                method: p.method.map(|m| m.as_str().to_owned()),
                refused: p
                    .refused
                    .iter()
                    .map(|r| sink::StartupRefusal {
                        method: r.method.as_str().to_owned(),
                        reason: r.reason.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// bpf_ktime_get_ns is CLOCK_MONOTONIC.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn boot_to_realtime_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
