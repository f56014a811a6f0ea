//! The live agent: load and attach, then pump ring-buffer records through the
//! correlator into the sink until Ctrl-C, SIGTERM or --duration, or, for
//! `observer run`, until the command ends.

use std::{
    fs::File,
    io::{self, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use observer_abi::probes::{Prog, Role};

use crate::{
    cli::{self, Cli, Command},
    correlator::Severity,
    filter::Filter,
    health,
    loader::{self, Loaded},
    pipeline::Pipeline,
    run,
    scope::CommandCgroup,
    signals::Signals,
    sink::{self, Format, Sink},
    source::{self, Source},
    trace::{Recorder, Trailer, Wiring},
};

/// Runs the command line; the result is the process's exit code (0 but
/// for `observer run`, whose code is CMD's or the verdict's).
pub fn run(cli: Cli) -> Result<u8> {
    let filter = validate(&cli)?;
    if let Some(Command::Replay { file }) = &cli.command {
        crate::replay::run(&cli, file, filter)?;
        return Ok(0);
    }
    let run_args = match &cli.command {
        Some(Command::Run(args)) => Some(args),
        _ => None,
    };
    // A typo in CMD costs no attach.
    let program = match run_args.map(|a| run::resolve(&a.cmd[0])) {
        Some(Err(e)) => {
            eprintln!("observer: error: cannot run {}", e.reason);
            return Ok(e.code);
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("must run as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)");
    }
    // Before anything is loaded: a port in use costs no attach.
    let listener = match &cli.metrics {
        Some(m) => Some(crate::metrics::bind(crate::metrics::parse_addr(m)?)?),
        None => None,
    };
    // Before the runtime starts any thread: the signal mask and the mount
    // namespace are per thread.
    let blocked = Signals::block()?;
    let mut tracefs = loader::tracefs::ensure()?;
    let (scope, cgroup) = match run_args {
        Some(a) if a.scope == cli::Scope::Cmd => plan_scope(a.follow)?,
        _ => (loader::Scope::Host, None),
    };
    let loaded = loader::load(&loader::Options {
        btf: cli.btf.clone(),
        scope,
        ringbuf_bytes: cli.ringbuf_kib * 1024,
        full_stream: cli.full_stream,
        best_method: cli.method.method(),
        redirect: parse_redirects(&cli.redirect)?,
    })?;
    tracefs.leave()?;
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
    if !loaded.attached(Role::FolioDelete) {
        eprintln!(
            "observer: folio removals not observed (no filemap:mm_filemap_delete_from_page_cache): outcomes unknown"
        );
    }
    match (&scope, &cgroup) {
        (loader::Scope::Cgroup { id, level }, Some(cg)) => eprintln!(
            "observer: scope: the command's cgroup {} (id {id}, level {level})",
            cg.dir.display()
        ),
        (loader::Scope::Tree, _) => {
            eprintln!("observer: scope: the command's process tree (sched_process_fork/exit)")
        }
        _ => {}
    }
    let startup = startup(&loaded, kernel);
    if cli.json {
        sink.startup(&startup).with_context(|| output_name(&cli))?;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let signals = Signals::new(blocked)?;
        let metrics = match listener {
            Some(l) => {
                let m = crate::metrics::Metrics::new(startup.clone());
                let addr = l.local_addr()?;
                m.serve(l)?;
                eprintln!("observer: metrics at http://{addr}/metrics, health at /healthz");
                Some(m)
            }
            None => None,
        };
        let child = match (run_args, program) {
            (Some(args), Some(program)) => {
                let launch = run::Launch {
                    argv: &args.cmd,
                    program,
                    cgroup: cgroup.as_ref(),
                    scope_map: (scope == loader::Scope::Tree)
                        .then(|| loaded.scope_map_fd())
                        .flatten(),
                };
                Some((launch, args.fail_on))
            }
            _ => None,
        };
        pump(
            &cli,
            loaded,
            &startup,
            (sink, metrics),
            filter,
            signals,
            child,
        )
        .await
    });
    if let Some(cg) = cgroup
        && let Err(e) = cg.remove()
    {
        eprintln!("observer: {e:#} (processes the command left behind are in it)");
    }
    code
}

/// `--redirect PROGRAM=TRACEPOINT` (tests only).
fn parse_redirects(list: &[String]) -> Result<std::collections::BTreeMap<Prog, String>> {
    list.iter()
        .map(|r| {
            let (name, tp) = r
                .split_once('=')
                .with_context(|| format!("bad --redirect {r}: expected PROGRAM=TRACEPOINT"))?;
            let prog = Prog::ALL
                .iter()
                .find(|p| p.name() == name)
                .with_context(|| format!("bad --redirect {r}: no program {name}"))?;
            Ok((*prog, tp.to_owned()))
        })
        .collect()
}

/// `--scope cmd`: a cgroup of the command's own where cgroup2 is mounted,
/// else (or when asked) its process tree.
fn plan_scope(follow: cli::Follow) -> Result<(loader::Scope, Option<CommandCgroup>)> {
    if follow == cli::Follow::Tree {
        return Ok((loader::Scope::Tree, None));
    }
    match CommandCgroup::create() {
        Ok(Some(cg)) => Ok((
            loader::Scope::Cgroup {
                id: cg.id,
                level: cg.level,
            },
            Some(cg),
        )),
        Ok(None) if follow == cli::Follow::Auto => Ok((loader::Scope::Tree, None)),
        Ok(None) => anyhow::bail!("--scope cmd: no cgroup2 is mounted"),
        Err(e) if follow == cli::Follow::Auto => {
            eprintln!("observer: {e:#}: following the process tree instead");
            Ok((loader::Scope::Tree, None))
        }
        Err(e) => Err(e),
    }
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
    if let Some(m) = &cli.metrics {
        if matches!(cli.command, Some(Command::Replay { .. })) {
            anyhow::bail!("--metrics does not apply to `replay`");
        }
        crate::metrics::parse_addr(m)?;
    }
    if !(cli.metrics_linger.is_finite() && cli.metrics_linger >= 0.0) {
        anyhow::bail!(
            "bad --metrics-linger {}: must be a number of seconds ≥ 0",
            cli.metrics_linger
        );
    }
    if matches!(cli.command, Some(Command::Run(_))) && cli.duration.is_some() {
        anyhow::bail!("--duration does not apply to `run`: the command's end ends the run");
    }
    Ok(filter)
}

/// Alerts and the summary go to `--output`, else stdout; for `run`, whose
/// stdout is the command's, stderr.
pub(crate) fn open_sink(cli: &Cli, boot_to_realtime_ns: i64) -> Result<Sink> {
    let out: Box<dyn Write + Send> = match &cli.output {
        Some(path) => Box::new(
            File::create(path).with_context(|| format!("cannot write to {}", path.display()))?,
        ),
        None if matches!(cli.command, Some(Command::Run(_))) => Box::new(io::stderr()),
        None => Box::new(io::stdout()),
    };
    let view = sink::View {
        format: if cli.json { Format::Json } else { Format::Text },
        min_severity: cli.min_severity.severity(),
        per_call: cli.per_call,
    };
    Ok(Sink::new(view, out, boot_to_realtime_ns))
}

/// Why the watch ended.
enum End {
    /// Ctrl-C, SIGTERM or --duration.
    Stopped,
    /// `run`: the command ended with this exit code.
    Command(u8),
}

async fn pump(
    cli: &Cli,
    mut loaded: Loaded,
    startup: &sink::Startup,
    // Where the alerts and the summary go, and where the counts are served.
    (sink, metrics): (Sink, Option<crate::metrics::Metrics>),
    filter: Filter,
    mut signals: Signals,
    command: Option<(run::Launch<'_>, cli::FailOn)>,
) -> Result<u8> {
    let mut source = Source::new(&mut loaded.ebpf)?;
    let wiring = Wiring {
        syscall_windows: loaded.syscall_windows,
        folio_deletes: loaded.attached(Role::FolioDelete),
        pte_installs: loaded.attached(Role::PteInstall),
        no_shmem_exemption: cli.no_shmem_exemption,
        reorder_horizon_ns: cli.reorder_ms * 1_000_000,
        boot_to_realtime_ns: sink.boot_to_realtime_ns(),
    };
    let recorder = match &cli.command {
        Some(Command::Record { file }) => {
            eprintln!("observer: recording to {}", file.display());
            let mut r = Recorder::create(file, wiring)?;
            r.startup(startup).context("cannot write the recording")?;
            Some(r)
        }
        _ => None,
    };
    let mut pipeline = Pipeline::new(
        &wiring,
        filter,
        sink,
        output_name(cli),
        recorder,
        true,
        &cli.test_marker,
    )?;
    // Test markers and the kernel's own reports.
    let mut log = match &cli.kmsg_file {
        Some(path) => Some(source::KernelLog::file(path, monotonic_ns())?),
        None => match source::KernelLog::device() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("observer: {e:#}: no test markers, no kernel reports");
                None
            }
        },
    };
    let mut logged = Vec::new();
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
    let deadline = cli.duration.map(Duration::from_secs_f64);
    let stop = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(stop);
    // Reads the ring (records do not wake the agent one by one) and releases
    // held events when the stream goes quiet; twice per reorder horizon, so
    // that no record waits in the ring long enough to arrive late.
    let mut tick = tokio::time::interval(Duration::from_millis((cli.reorder_ms / 2).clamp(5, 50)));
    let started = Instant::now();
    let mut batch = source::Batch::default();
    let mut publish = tokio::time::interval(crate::metrics::UPDATE_EVERY);
    let attached: Vec<String> = loaded
        .programs()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();

    let (mut child, fail_on) = match &command {
        Some((launch, fail_on)) => {
            eprintln!(
                "observer: ready: running {}",
                launch
                    .argv
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            match launch.spawn() {
                Ok(c) => (Some(c), Some(*fail_on)),
                Err(e) => {
                    let e = run::spawn_error(&e);
                    eprintln!(
                        "observer: error: cannot run {}: {}",
                        launch.program.display(),
                        e.reason
                    );
                    return Ok(e.code);
                }
            }
        }
        None => {
            eprintln!(
                "observer: ready: watching{} (Ctrl-C to stop)",
                deadline
                    .map(|d| format!(" for {:.1}s", d.as_secs_f64()))
                    .unwrap_or_default()
            );
            (None, None)
        }
    };
    let child_pid = child.as_ref().and_then(|c| c.id());
    let end = loop {
        tokio::select! {
            r = source.next_batch(&mut batch) => {
                r?;
                batch.drain(&mut |raw| pipeline.record(raw))?;
            }
            _ = tick.tick() => {
                // Only what was already read may be declared settled by the
                // clock: drain first, or a busy host makes records look late.
                source.drain(&mut batch);
                batch.drain(&mut |raw| pipeline.record(raw))?;
                let now = monotonic_ns();
                if let Some(l) = &mut log {
                    l.read(now, &mut logged)?;
                    for (raw, ts) in logged.drain(..) {
                        pipeline.kmsg(&raw, ts)?;
                    }
                }
                pipeline.tick(now)?;
            }
            sig = signals.next() => {
                let sig = sig?;
                match child_pid {
                    // The command ends the run; it decides what a signal
                    // means. From a terminal it got the signal already.
                    Some(pid) => {
                        if !sig.from_terminal {
                            // SAFETY: kill on the child's pid.
                            unsafe { libc::kill(pid as i32, sig.signo) };
                        }
                    }
                    None => break End::Stopped,
                }
            }
            status = async { child.as_mut().expect("a child").wait().await }, if child.is_some() => {
                break End::Command(run::status_code(status.context("waiting for the command")?));
            }
            _ = publish.tick(), if metrics.is_some() => {
                let trailer = Trailer {
                    counters: source::read_counters(&loaded.ebpf)?,
                    attached: attached.clone(),
                    duration_s: started.elapsed().as_secs_f64(),
                };
                if let Some(m) = &metrics {
                    m.update(pipeline.snapshot(&trailer));
                }
            }
            _ = &mut stop => break End::Stopped,
        }
        pipeline.emit(&resolve_stack)?;
    };
    drop(child);

    source.drain(&mut batch);
    batch.drain(&mut |raw| pipeline.record(raw))?;
    if let Some(l) = &mut log {
        l.read(monotonic_ns(), &mut logged)?;
        for (raw, ts) in logged.drain(..) {
            pipeline.kmsg(&raw, ts)?;
        }
    }
    let counters = source::read_counters(&loaded.ebpf)?;
    for k in observer_abi::Kind::ALL {
        let n = counters.unresolved[k as usize];
        if n > 0 && k != observer_abi::Kind::MapPages {
            eprintln!(
                "observer: {n} {} calls had no readable file (mapping without host inode): not windows",
                k.name()
            );
        }
    }
    let trailer = Trailer {
        counters,
        attached,
        duration_s: started.elapsed().as_secs_f64(),
    };
    pipeline.set_wakeups(source.wakeups);
    let (summary, out) = pipeline.finish(Some(&trailer), &resolve_stack)?;
    for s in &summary.health.silent {
        eprintln!("observer: {}", health::warning(s));
    }
    let stream_is_stderr = cli.output.is_none() && child_pid.is_some();
    if (cli.output.is_some() || cli.json) && !stream_is_stderr {
        let text = sink::summary::text(&summary);
        eprint!("{text}{}", if text.ends_with('\n') { "" } else { "\n" });
    }
    // Dropping the object detaches and unloads every program.
    drop(source);
    drop(loaded);
    if let Some(m) = &metrics {
        m.finish(summary.clone());
        linger(cli.metrics_linger, &mut signals).await?;
    }
    Ok(match end {
        End::Stopped => 0,
        End::Command(code) => {
            let fail_on = fail_on.and_then(|f| match f {
                cli::FailOn::Never => None,
                cli::FailOn::Warning => Some(Severity::Warning),
                cli::FailOn::Critical => Some(Severity::Critical),
            });
            let exit = run::exit_code(code, out.worst, fail_on);
            if exit == run::EXIT_FAIL_ON {
                eprintln!(
                    "observer: exit {exit}: a {} alert was seen (the command exited {code})",
                    out.worst.map_or("?", Severity::as_str)
                );
            }
            exit
        }
    })
}

/// `--metrics-linger`: serve the final counts a while longer, unless a
/// signal says to go now.
async fn linger(secs: f64, signals: &mut Signals) -> Result<()> {
    if secs <= 0.0 {
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
        sig = signals.next() => { sig?; }
    }
    Ok(())
}

pub(crate) fn output_name(cli: &Cli) -> String {
    match &cli.output {
        Some(p) => format!("cannot write to {}", p.display()),
        None => "cannot write to stdout".into(),
    }
}

fn startup(loaded: &Loaded, kernel: String) -> sink::Startup {
    sink::Startup {
        kernel,
        programs: loaded
            .program_ids()
            .into_iter()
            .map(|(p, id)| observer_report::LoadedProgram {
                name: p.name().to_owned(),
                id,
            })
            .collect(),
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
