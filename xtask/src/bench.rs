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

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    util::{Workspace, detach, output, temp_dir, unmount},
    vm,
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

/// The observer can take a while to load and verify its programs on a slow
/// or loaded machine; a minute means something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Draining the ring buffer and writing the summary takes well under a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const READY_PREFIX: &str = "observer: ready:";

/// The workload's size and the number of rounds, defaults filled in.
#[derive(Clone, Copy, Debug)]
struct Params {
    rounds: u32,
    pages: u64,
    fault_rounds: u64,
    /// fault_rounds is the VM default, which the guest lowers on a kernel
    /// too slow for it (see VM_BUDGET_MS).
    scalable: bool,
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

pub fn run(args: BenchArgs) -> Result<()> {
    let started = Instant::now();
    let mut params = Params::new(&args);
    let bins = Binaries::locate(args.bin_dir.as_deref())?;
    let (runs, probes, machine) = match &args.kernel {
        Some(kernel) => in_vm(kernel, &mut params, &bins, &args.observer_args)?,
        None => on_host(params, &bins, &args.observer_args)?,
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
        fs::write(path, report.json())
            .with_context(|| format!("cannot write {}", path.display()))?;
        say(format!("wrote {}", path.display()));
    }
    Ok(())
}

fn on_host(
    params: Params,
    bins: &Binaries,
    observer_args: &str,
) -> Result<(Vec<Run>, Probes, Machine)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask bench` must run as root: it loop-mounts an XFS image and the \
             observer loads eBPF programs; try `sudo -E cargo xtask bench`"
        );
    }
    let signals = SignalGuard::install();
    let scratch = Scratch::create(params.pages)?;
    let extra: Vec<&str> = observer_args.split_whitespace().collect();
    let outcome = measure(params, bins, &extra, &scratch).map_err(|e| {
        // A Ctrl-C also kills faultbench, whose failure would otherwise hide
        // the real reason.
        if interrupted() {
            e.context("interrupted")
        } else {
            e
        }
    });
    let cleaned = scratch.remove();
    drop(signals);
    let (runs, probes) = outcome?;
    cleaned?;
    Ok((runs, probes, Machine::host()))
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[xtask] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// Configurations and one run of each
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Bare,
    Observer,
    FullStream,
}

/// Also the order of the runs inside a round and of the table rows.
const CONFIGS: [Config; 3] = [Config::Bare, Config::Observer, Config::FullStream];

impl Config {
    fn name(self) -> &'static str {
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
    fn locate(bin_dir: Option<&Path>) -> Result<Self> {
        let dir = match bin_dir {
            Some(dir) => dir.to_path_buf(),
            None => default_target_dir()?.join("release"),
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

/// Where `cargo xtask build` puts its output: like cargo, it follows
/// CARGO_TARGET_DIR when set, else `<workspace>/target`.
fn default_target_dir() -> Result<PathBuf> {
    // Fixed at compile time so the bench works from any cwd.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask manifest dir has no parent")?;
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        // Relative to the cwd, as cargo reads it.
        Some(dir) if !dir.is_empty() => std::env::current_dir()?.join(dir),
        _ => root.join("target"),
    })
}

/// One faultbench report line.
#[derive(Debug, Clone, PartialEq)]
struct Faultbench {
    faults: u64,
    elapsed_s: f64,
    faults_per_s: f64,
}

impl Faultbench {
    fn parse(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line)?;
        Ok(Self {
            faults: get_u64(&v, &["faults"])?,
            elapsed_s: get_f64(&v, &["elapsed_s"])?,
            faults_per_s: get_f64(&v, &["faults_per_s"])?,
        })
    }
}

fn faultbench(bins: &Binaries, file: &Path, params: Params, punch: bool) -> Result<Faultbench> {
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
    let line = last_line(&stdout).context("faultbench printed nothing")?;
    Faultbench::parse(line).with_context(|| format!("bad faultbench report {line:?}"))
}

/// What one observer run reported in its summary.
#[derive(Debug, Clone, PartialEq)]
struct ObserverStats {
    /// Records the correlator saw, all kinds together.
    events: u64,
    ringbuf_full: u64,
    unresolved: u64,
    late: u64,
    filtered: u64,
    windows: u64,
    alerts: u64,
}

impl ObserverStats {
    fn parse(summary: &Value) -> Result<Self> {
        if summary.get("type").and_then(Value::as_str) != Some("summary") {
            bail!("not a summary record");
        }
        let mut events = 0;
        for (kind, n) in summary
            .get("events")
            .and_then(Value::as_object)
            .context("no \"events\" object")?
        {
            events += n
                .as_u64()
                .with_context(|| format!("events.{kind} is not a count"))?;
        }
        Ok(Self {
            events,
            ringbuf_full: get_u64(summary, &["lost", "ringbuf_full"])?,
            unresolved: get_u64(summary, &["lost", "unresolved"])?,
            late: get_u64(summary, &["lost", "late"])?,
            filtered: get_u64(summary, &["filtered"])?,
            windows: get_u64(summary, &["windows"])?,
            alerts: get_u64(summary, &["alerts"])?,
        })
    }
}

/// Probe function → attach method (None: not attached), from the startup record.
type Probes = Vec<(String, Option<String>)>;

fn parse_probes(startup: &Value) -> Option<Probes> {
    if startup.get("type")?.as_str()? != "startup" {
        return None;
    }
    startup
        .get("probes")?
        .as_array()?
        .iter()
        .map(|p| {
            let function = p.get("function")?.as_str()?.to_owned();
            let method = p.get("method")?.as_str().map(str::to_owned);
            Some((function, method))
        })
        .collect()
}

/// The observer's --json output: the summary from its last line, the probe
/// methods from the startup record on its first.
fn parse_observer_output(text: &str) -> Result<(ObserverStats, Probes)> {
    let first = text.lines().find(|l| !l.trim().is_empty());
    let summary = last_line(text).context("the observer wrote nothing")?;
    let stats = serde_json::from_str::<Value>(summary)
        .map_err(anyhow::Error::from)
        .and_then(|v| ObserverStats::parse(&v))
        .context("no summary at the end of the observer's output")?;
    // The method is context, not a measurement: missing it is no failure.
    let probes = first
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| parse_probes(&v))
        .unwrap_or_default();
    Ok((stats, probes))
}

struct Run {
    round: u32,
    punch: bool,
    config: Config,
    fb: Faultbench,
    observer: Option<ObserverStats>,
}

impl Run {
    fn events_per_s(&self) -> Option<f64> {
        let obs = self.observer.as_ref()?;
        (self.fb.elapsed_s > 0.0).then(|| obs.events as f64 / self.fb.elapsed_s)
    }
}

impl Run {
    fn what(&self, rounds: u32) -> String {
        describe(self.round, rounds, self.punch, self.config)
    }

    /// One progress line, as `say` prints them.
    fn progress(&self, n: usize, total: usize, rounds: u32) -> String {
        let mut line = format!(
            "[{n:>2}/{total}] {}: {} faults/s",
            self.what(rounds),
            group(self.fb.faults_per_s)
        );
        if let (Some(eps), Some(obs)) = (self.events_per_s(), &self.observer) {
            let _ = write!(
                line,
                ", {} events/s, ringbuf_full {}, filtered {}",
                group(eps),
                obs.ringbuf_full,
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

fn measure(
    params: Params,
    bins: &Binaries,
    extra: &[&str],
    scratch: &Scratch,
) -> Result<(Vec<Run>, Probes)> {
    let file = scratch.mnt.join("faultbench.dat");
    let observer_out = scratch.dir.join("observer.json");
    // The very first run on a fresh file system pays for allocating its
    // blocks and warming caches; keep that out of round 1's bare numbers.
    say("warm-up run");
    faultbench(bins, &file, params, false).context("warm-up run")?;

    let total = params.total_runs();
    let mut runs = Vec::with_capacity(total);
    let mut probes = Probes::new();
    for (round, punch, config) in params.schedule() {
        check_interrupted()?;
        let what = describe(round, params.rounds, punch, config);
        let (fb, observer) = match config.observer_flags() {
            None => (faultbench(bins, &file, params, punch), None),
            Some(flags) => {
                // Started first so its probes see the whole workload;
                // on any error below its Drop stops it.
                let flags = [flags, extra].concat();
                let obs = Observer::start(&bins.observer, &flags, &observer_out)
                    .with_context(|| what.clone())?;
                let fb = faultbench(bins, &file, params, punch).with_context(|| what.clone())?;
                let (stats, startup) = obs.stop().with_context(|| what.clone())?;
                if probes.is_empty() {
                    probes = startup;
                }
                (Ok(fb), Some(stats))
            }
        };
        let run = Run {
            round,
            punch,
            config,
            fb: fb.with_context(|| what.clone())?,
            observer,
        };
        say(run.progress(runs.len() + 1, total, params.rounds));
        runs.push(run);
    }
    Ok((runs, probes))
}

// ---------------------------------------------------------------------------
// In a VM
// ---------------------------------------------------------------------------

/// Runs the bench in a guest; updates `params.fault_rounds` to what the
/// guest used.
fn in_vm(
    kernel: &str,
    params: &mut Params,
    bins: &Binaries,
    observer_args: &str,
) -> Result<(Vec<Run>, Probes, Machine)> {
    let ws = Workspace::locate()?;
    let out = ws.target.join("vm").join(format!("bench-{kernel}"));
    // A bound for a hung guest, not an estimate: boot, plus every run at a
    // pessimistic 5,000 faults/s plus 15 s of observer start and stop.
    let faults = params.pages.div_ceil(16) * params.fault_rounds;
    let per_run = faults / 5000 + 15;
    let timeout = 180 + (params.total_runs() as u64 + 1) * per_run;
    say(format!(
        "VM bench on kernel {kernel}: {} round(s) of faultbench --pages {} --rounds {}{}",
        params.rounds,
        params.pages,
        params.fault_rounds,
        if params.scalable {
            " (fewer if the kernel is slow)"
        } else {
            ""
        }
    ));
    let dir = vm::bench(
        &ws,
        &vm::BenchGuest {
            kernel,
            observer: &bins.observer,
            faultbench: &bins.faultbench,
            rounds: params.rounds,
            pages: params.pages,
            fault_rounds: params.fault_rounds,
            budget_ms: if params.scalable { VM_BUDGET_MS } else { 0 },
            observer_args,
            out: &out,
            timeout: Duration::from_secs(timeout),
            watch: &|_| {},
        },
    )?;
    say(format!("guest results in {}", dir.display()));
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .ok()
    };
    let requested = params.fault_rounds;
    params.fault_rounds = read("bench/fault_rounds")
        .and_then(|n| n.parse().ok())
        .context("the guest did not say how many fault rounds it ran")?;
    let (runs, probes) = guest_runs(&dir.join("bench"), *params)?;
    // "T0 T1": the guest's uptime around the bench, warm-up included.
    let bench_s = read("bench/uptime").and_then(|s| {
        let (t0, t1) = s.split_once(' ')?;
        Some(t1.parse::<f64>().ok()? - t0.parse::<f64>().ok()?)
    });
    let machine = Machine {
        kernel: read("uname").unwrap_or_else(|| "unknown".into()),
        nproc: read("nproc").and_then(|n| n.parse().ok()).unwrap_or(0),
        guest: Some(Guest {
            host_kernel: Machine::host().kernel,
            bench_s,
            fault_rounds_requested: requested,
        }),
    };
    Ok((runs, probes, machine))
}

/// Reads the runs the guest's bench() left in `dir`, in schedule order.
fn guest_runs(dir: &Path, params: Params) -> Result<(Vec<Run>, Probes)> {
    let total = params.total_runs();
    let mut runs = Vec::with_capacity(total);
    let mut probes = Probes::new();
    for (round, punch, config) in params.schedule() {
        let what = describe(round, params.rounds, punch, config);
        let prefix = dir.join(format!(
            "{round}.{}.{}",
            if punch { "punch" } else { "nopunch" },
            config.name()
        ));
        let file = |ext: &str| {
            let mut p = prefix.clone().into_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        let read = |ext: &str| {
            let path = file(ext);
            fs::read_to_string(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))
        };
        let report = read(".faultbench.json")?;
        let line = last_line(&report).with_context(|| {
            format!(
                "{what}: faultbench printed nothing; see {}",
                file(".faultbench.log").display()
            )
        })?;
        let fb = Faultbench::parse(line)
            .with_context(|| format!("{what}: bad faultbench report {line:?}"))?;
        let observer = match config.observer_flags() {
            None => None,
            Some(_) => {
                let rc = read(".observer.rc")?;
                if rc.trim() != "0" {
                    bail!(
                        "{what}: the observer exited with status {}; see {}",
                        rc.trim(),
                        file(".observer.log").display()
                    );
                }
                let (stats, startup) = parse_observer_output(&read(".observer.json")?)
                    .with_context(|| format!("{what}: {}", file(".observer.json").display()))?;
                if probes.is_empty() {
                    probes = startup;
                }
                Some(stats)
            }
        };
        let run = Run {
            round,
            punch,
            config,
            fb,
            observer,
        };
        say(run.progress(runs.len() + 1, total, params.rounds));
        runs.push(run);
    }
    Ok((runs, probes))
}

// ---------------------------------------------------------------------------
// The observer process
// ---------------------------------------------------------------------------

pub(crate) struct Observer {
    /// None once reaped, so Drop knows there is nothing left to stop.
    child: Option<Child>,
    stderr: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// What it printed so far, for error messages.
    log: Vec<String>,
    out: PathBuf,
}

impl Observer {
    /// Starts `bin --json --output OUT FLAGS...` and waits until it is
    /// ready (or fails).
    pub(crate) fn start(bin: &Path, flags: &[&str], out: &Path) -> Result<Self> {
        // A stale file would let a crashed run pass for a good one.
        let _ = fs::remove_file(out);
        let mut child = Command::new(bin)
            .args(["--json", "--output"])
            .arg(out)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pipe = child.stderr.take().context("observer stderr not piped")?;
        let (tx, rx) = mpsc::channel();
        // Read on a thread: it gives the ready wait a timeout, and keeps the
        // pipe drained so the observer never blocks writing to it.
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut obs = Self {
            child: Some(child),
            stderr: rx,
            reader: Some(reader),
            log: Vec::new(),
            out: out.to_path_buf(),
        };
        obs.wait_ready()?;
        Ok(obs)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with(READY_PREFIX);
                    self.log.push(line);
                    if ready {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "observer not ready after {} s{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.reap(STOP_TIMEOUT)?;
                    bail!("observer exited ({status}) before ready{}", self.log_tail());
                }
            }
        }
    }

    /// SIGINTs the observer (its normal way to stop), waits for it and reads
    /// its startup and summary records.
    fn stop(mut self) -> Result<(ObserverStats, Probes)> {
        self.signal(libc::SIGINT);
        let status = self.reap(STOP_TIMEOUT)?;
        if !status.success() {
            bail!("observer failed ({status}){}", self.log_tail());
        }
        let text = fs::read_to_string(&self.out)
            .with_context(|| format!("cannot read {}", self.out.display()))?;
        let parsed =
            parse_observer_output(&text).with_context(|| format!("in {}", self.out.display()))?;
        // Alert records can pile up under --punch; nothing else needs them.
        let _ = fs::remove_file(&self.out);
        Ok(parsed)
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child
            && let Ok(pid) = libc::pid_t::try_from(child.id())
        {
            // SAFETY: plain syscall; the child is not reaped yet, so the pid
            // cannot have been reused.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits up to `timeout` for the observer to exit, then kills it. Also
    /// collects the rest of its stderr.
    fn reap(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("observer already reaped")?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "observer did not exit within {} s; killed{}",
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log.extend(self.stderr.try_iter());
        Ok(status)
    }

    fn log_tail(&self) -> String {
        let tail = &self.log[self.log.len().saturating_sub(15)..];
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its stderr:\n  {}", tail.join("\n  "))
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGINT);
            let _ = self.reap(Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// Scratch directory with the XFS loop mount
// ---------------------------------------------------------------------------

/// A temporary directory holding an XFS image mounted on `mnt`, plus the
/// observer's output file. Dropping it unmounts and removes everything;
/// `remove` does the same but reports failure.
struct Scratch {
    dir: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

impl Scratch {
    fn create(pages: u64) -> Result<Self> {
        let dir = temp_dir("xtask-bench")?;
        let mut scratch = Self {
            mnt: dir.join("mnt"),
            dir,
            mounted: false,
        };
        // From here on Drop undoes whatever got done.
        let image = scratch.dir.join("xfs.img");
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // Sparse, so 1 GiB costs nothing; grown for big --pages so the
        // workload never hits ENOSPC.
        let size = (1u64 << 30).max(pages * page + (256 << 20));
        fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("cannot create {}", image.display()))?;
        fs::create_dir(&scratch.mnt)
            .with_context(|| format!("cannot create {}", scratch.mnt.display()))?;
        output(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&image))
            .context("mkfs.xfs failed (is xfsprogs installed? `cargo xtask setup`)")?;
        output(
            Command::new("mount")
                .args(["-t", "xfs", "-o", "loop"])
                .arg(&image)
                .arg(&scratch.mnt),
        )?;
        scratch.mounted = true;
        say(format!("XFS loop mount at {}", scratch.mnt.display()));
        Ok(scratch)
    }

    fn remove(mut self) -> Result<()> {
        if self.mounted {
            self.unmount()?;
        }
        fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    fn unmount(&mut self) -> Result<()> {
        unmount(&self.mnt)?;
        self.mounted = false;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = self.unmount()
        {
            say(format!("{e:#}; detaching lazily"));
            detach(&self.mnt);
            self.mounted = false;
        }
        // Never remove_dir_all under a mount that is still there.
        if !self.mounted {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
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

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

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
struct Machine {
    kernel: String,
    nproc: usize,
    /// Some when in a qemu guest.
    guest: Option<Guest>,
}

struct Guest {
    host_kernel: String,
    /// The bench alone in the guest's clock (warm-up included, boot not).
    bench_s: Option<f64>,
    /// What the guest was asked for; it runs fewer on a slow kernel.
    fault_rounds_requested: u64,
}

impl Machine {
    fn host() -> Self {
        Self {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            nproc: thread::available_parallelism().map_or(0, |n| n.get()),
            guest: None,
        }
    }
}

struct Report {
    machine: Machine,
    /// --observer-args, split.
    observer_args: Vec<String>,
    probes: Probes,
    params: Params,
    wall_s: f64,
    rows: Vec<Row>,
    runs: Vec<Run>,
}

/// Lowest and highest per-round bare / `config` rate ratio.
fn round_slowdowns(runs: &[Run], punch: bool, config: Config) -> Option<(f64, f64)> {
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
    fn new(
        params: Params,
        observer_args: &str,
        runs: Vec<Run>,
        probes: Probes,
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
                        ringbuf_full: obs().map(|o| o.ringbuf_full).sum(),
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
            .map(|(f, m)| format!("{f}={}", m.as_deref().unwrap_or("none")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn table(&self) -> String {
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

    fn json(&self) -> String {
        let mut s = String::from("{\"machine\":{");
        let _ = write!(
            s,
            "\"kernel\":{},\"nproc\":{},",
            json_str(&self.machine.kernel),
            self.machine.nproc
        );
        // null on the host; else what the guest ran on.
        match &self.machine.guest {
            None => s.push_str("\"vm\":null,"),
            Some(g) => {
                let _ = write!(
                    s,
                    "\"vm\":{{\"accel\":\"tcg\",\"host_kernel\":{},\"bench_s\":{},\
                     \"fault_rounds_requested\":{}}},",
                    json_str(&g.host_kernel),
                    g.bench_s.map_or("null".into(), |t| json_num(t, 3)),
                    g.fault_rounds_requested
                );
            }
        }
        s.push_str("\"probes\":[");
        for (i, (function, method)) in self.probes.iter().enumerate() {
            let method = method.as_deref().map_or("null".into(), json_str);
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(
                s,
                "{sep}{{\"function\":{},\"method\":{method}}}",
                json_str(function)
            );
        }
        let _ = write!(
            s,
            "]}},\"params\":{{\"rounds\":{},\"pages\":{},\"fault_rounds\":{},\"observer_args\":[{}]}},\
             \"wall_s\":{},\"results\":[",
            self.params.rounds,
            self.params.pages,
            self.params.fault_rounds,
            self.observer_args
                .iter()
                .map(|a| json_str(a))
                .collect::<Vec<_>>()
                .join(","),
            json_num(self.wall_s, 3)
        );
        for (i, r) in self.rows.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(
                s,
                "{sep}{{\"config\":\"{}\",\"punch\":{},\"runs\":{},\"faults_per_s_median\":{},\
                 \"faults_per_s_min\":{},\"faults_per_s_max\":{},\"slowdown\":{}",
                r.config.name(),
                r.punch,
                r.runs,
                json_num(r.median, 1),
                json_num(r.min, 1),
                json_num(r.max, 1),
                json_num(r.slowdown, 4)
            );
            match r.round_slowdowns {
                Some((lo, hi)) => {
                    let _ = write!(
                        s,
                        ",\"round_slowdown_min\":{},\"round_slowdown_max\":{}",
                        json_num(lo, 4),
                        json_num(hi, 4)
                    );
                }
                None => s.push_str(",\"round_slowdown_min\":null,\"round_slowdown_max\":null"),
            }
            match &r.observer {
                Some(o) => {
                    let _ = write!(
                        s,
                        ",\"events_per_s_median\":{},\"ringbuf_full\":{},\"filtered_per_run_median\":{}}}",
                        json_num(o.events_per_s, 1),
                        o.ringbuf_full,
                        json_num(o.filtered_per_run, 1)
                    );
                }
                None => s.push_str(
                    ",\"events_per_s_median\":null,\"ringbuf_full\":null,\"filtered_per_run_median\":null}",
                ),
            }
        }
        s.push_str("],\"runs\":[");
        for (i, r) in self.runs.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(
                s,
                "{sep}{{\"round\":{},\"punch\":{},\"config\":\"{}\",\"faults\":{},\"elapsed_s\":{},\
                 \"faults_per_s\":{},\"observer\":",
                r.round,
                r.punch,
                r.config.name(),
                r.fb.faults,
                json_num(r.fb.elapsed_s, 6),
                json_num(r.fb.faults_per_s, 1)
            );
            match (&r.observer, r.events_per_s()) {
                (Some(o), eps) => {
                    let _ = write!(
                        s,
                        "{{\"events\":{},\"events_per_s\":{},\"ringbuf_full\":{},\"unresolved\":{},\
                         \"late\":{},\"filtered\":{},\"windows\":{},\"alerts\":{}}}}}",
                        o.events,
                        eps.map_or("null".into(), |e| json_num(e, 1)),
                        o.ringbuf_full,
                        o.unresolved,
                        o.late,
                        o.filtered,
                        o.windows,
                        o.alerts
                    );
                }
                (None, _) => s.push_str("null}"),
            }
        }
        s.push_str("]}\n");
        s
    }
}

/// Median; the mean of the middle two for an even count, NaN when empty.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Rounds to an integer and groups digits by thousands: 1234567.8 → "1,234,568".
fn group(x: f64) -> String {
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

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value> {
    path.iter().try_fold(v, |v, key| {
        v.get(key)
            .with_context(|| format!("no field {:?}", path.join(".")))
    })
}

fn get_u64(v: &Value, path: &[&str]) -> Result<u64> {
    get(v, path)?
        .as_u64()
        .with_context(|| format!("{} is not a count", path.join(".")))
}

fn get_f64(v: &Value, path: &[&str]) -> Result<f64> {
    get(v, path)?
        .as_f64()
        .with_context(|| format!("{} is not a number", path.join(".")))
}

pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// NaN or infinity (a config with no runs) would make invalid JSON.
fn json_num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{"type":"summary","duration_s":0.808,"events":{"invalidate_enter":0,"invalidate_exit":0,"map_pages":103024,"syscall_enter":639,"syscall_exit":639,"folio_delete":6782},"kernel_emitted":{"filemap_map_pages":103024},"lost":{"ringbuf_full":3,"unresolved":1,"late":2},"filtered":17,"windows":639,"alerts":370,"alerts_shown":370,"verdict":"race_observed"}"#;

    #[test]
    fn summary_sums_every_event_kind() {
        let stats = ObserverStats::parse(&serde_json::from_str(SUMMARY).unwrap()).unwrap();
        assert_eq!(
            stats,
            ObserverStats {
                events: 103024 + 639 + 639 + 6782,
                ringbuf_full: 3,
                unresolved: 1,
                late: 2,
                filtered: 17,
                windows: 639,
                alerts: 370,
            }
        );
    }

    fn params(rounds: u32) -> Params {
        Params {
            rounds,
            pages: 64,
            fault_rounds: 10,
            scalable: false,
        }
    }

    #[test]
    fn schedule_alternates_configs_within_each_workload() {
        let all: Vec<_> = params(2).schedule().collect();
        assert_eq!(all.len(), params(2).total_runs());
        assert_eq!(
            all[..4],
            [
                (1, false, Config::Bare),
                (1, false, Config::Observer),
                (1, false, Config::FullStream),
                (1, true, Config::Bare),
            ]
        );
        assert_eq!(all[11], (2, true, Config::FullStream));
    }

    #[test]
    fn vm_has_its_own_defaults() {
        let args = |kernel: Option<&str>, rounds| BenchArgs {
            kernel: kernel.map(str::to_owned),
            rounds,
            pages: None,
            fault_rounds: None,
            out: None,
            bin_dir: None,
            observer_args: String::new(),
        };
        let host = Params::new(&args(None, None));
        assert_eq!(
            (host.rounds, host.pages, host.fault_rounds),
            (3, 4096, 2000)
        );
        assert!(!host.scalable);
        let vm = Params::new(&args(Some("6.12"), Some(2)));
        assert_eq!((vm.rounds, vm.pages, vm.fault_rounds), (2, 4096, 400));
        assert!(vm.scalable);
        let fixed = Params::new(&BenchArgs {
            fault_rounds: Some(100),
            ..args(Some("6.1"), None)
        });
        assert!(!fixed.scalable);
    }

    fn fb(rate: f64) -> Faultbench {
        Faultbench {
            faults: 100,
            elapsed_s: 100.0 / rate,
            faults_per_s: rate,
        }
    }

    #[test]
    fn per_round_slowdowns_pair_runs_of_one_round() {
        let run = |round, config, rate| Run {
            round,
            punch: false,
            config,
            fb: fb(rate),
            observer: None,
        };
        let runs = [
            run(1, Config::Bare, 100.0),
            run(1, Config::Observer, 80.0),
            run(2, Config::Bare, 50.0),
            run(2, Config::Observer, 50.0),
            // No bare run in round 3: not paired.
            run(3, Config::Observer, 1.0),
        ];
        assert_eq!(
            round_slowdowns(&runs, false, Config::Observer),
            Some((1.0, 1.25))
        );
        assert_eq!(round_slowdowns(&runs, true, Config::Observer), None);
    }

    /// What the guest's bench() leaves for a 1-round bench.
    fn guest_dir(observer_rc: &str) -> PathBuf {
        let dir = temp_dir("xtask-bench").unwrap();
        let startup =
            r#"{"type":"startup","probes":[{"function":"filemap_map_pages","method":"fentry"}]}"#;
        for (i, (_, punch, config)) in params(1).schedule().enumerate() {
            let prefix = dir.join(format!(
                "1.{}.{}",
                if punch { "punch" } else { "nopunch" },
                config.name()
            ));
            let file = |ext: &str| format!("{}{ext}", prefix.display());
            let rate = 1000.0 * (i + 1) as f64;
            fs::write(
                file(".faultbench.json"),
                format!(
                    "{{\"rounds\":10,\"pages\":64,\"faults\":40,\"elapsed_s\":{},\"faults_per_s\":{rate}}}\n",
                    40.0 / rate
                ),
            )
            .unwrap();
            if config != Config::Bare {
                fs::write(file(".observer.rc"), format!("{observer_rc}\n")).unwrap();
                fs::write(file(".observer.json"), format!("{startup}\n{SUMMARY}\n")).unwrap();
            }
        }
        dir
    }

    #[test]
    fn guest_results_parse_in_schedule_order() {
        let dir = guest_dir("0");
        let (runs, probes) = guest_runs(&dir, params(1)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            probes,
            vec![("filemap_map_pages".to_owned(), Some("fentry".to_owned()))]
        );
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[4].config, Config::Observer);
        assert!(runs[4].punch);
        assert_eq!(runs[4].fb.faults_per_s, 5000.0);
        assert!(runs[3].observer.is_none());
        assert_eq!(runs[4].observer.as_ref().unwrap().alerts, 370);
    }

    #[test]
    fn guest_observer_failure_is_an_error() {
        let dir = guest_dir("1");
        let err = guest_runs(&dir, params(1)).err().unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let err = format!("{err:#}");
        assert!(
            err.contains("round 1/1, no punch, observer: the observer exited with status 1"),
            "{err}"
        );
    }

    #[test]
    fn alert_is_not_a_summary() {
        let alert = serde_json::from_str(r#"{"type":"alert","events":{}}"#).unwrap();
        assert!(ObserverStats::parse(&alert).is_err());
    }

    #[test]
    fn startup_probes() {
        let line = r#"{"type":"startup","kernel":"6.18","probes":[{"function":"filemap_map_pages","method":"tracepoint","refused":[{"method":"fentry","reason":"no \"BTF\"\n"}]},{"function":"x","method":null,"refused":[]}]}"#;
        assert_eq!(
            parse_probes(&serde_json::from_str(line).unwrap()).unwrap(),
            vec![
                (
                    "filemap_map_pages".to_owned(),
                    Some("tracepoint".to_owned())
                ),
                ("x".to_owned(), None),
            ]
        );
    }

    #[test]
    fn faultbench_report() {
        let line = r#"{"rounds":200,"pages":4096,"faults":51202,"elapsed_s":0.104036,"faults_per_s":492158.9}"#;
        assert_eq!(
            Faultbench::parse(line).unwrap(),
            Faultbench {
                faults: 51202,
                elapsed_s: 0.104036,
                faults_per_s: 492158.9
            }
        );
    }

    #[test]
    fn medians_and_grouping() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(group(1234567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(group(-1000.0), "-1,000");
        assert_eq!(group(f64::NAN), "-");
        assert_eq!(json_str("a\"\n"), r#""a\"\u000a""#);
        assert_eq!(json_num(f64::INFINITY, 1), "null");
    }
}
