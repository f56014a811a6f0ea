//! `cargo xtask matrix`: the truth table across kernels and filesystems.
//!
//! For every kernel (Debian 5.10, 6.1 and 6.12 cloud kernels under qemu, and
//! the host's own kernel on loop mounts) and every filesystem it offers among
//! xfs, ext4, btrfs and tmpfs, the racer runs a list of workloads, each under
//! its own observer: a few "race" runs (hole punches racing mapped faults and
//! buffered reads of the punched range: race classes A and B), then one short
//! run per invalidator (punch, zero range, collapse, insert, ftruncate,
//! truncate, MADV_REMOVE, FICLONERANGE, FIDEDUPERANGE). The observer's
//! summaries are summed per kernel × filesystem into one table, which is
//! printed and written as JSON.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    bench::{Observer, json_str},
    build_cmd::{self, Binaries},
    util::{Workspace, say},
    vm::{self, Step},
};

/// The invalidators: racer `--op`, table column, and the window operation
/// the observer names for it.
pub const OPS: &[(&str, &str, &str)] = &[
    ("punch", "punch", "punch_hole"),
    ("zero", "zero", "zero_range"),
    ("collapse", "coll", "collapse_range"),
    ("insert", "ins", "insert_range"),
    ("truncate", "ftrunc", "ftruncate"),
    ("truncate-path", "trunc", "truncate"),
    ("madv-remove", "madv", "madv_remove"),
    ("clone", "clone", "clone_range"),
    ("dedupe", "dedup", "dedupe_range"),
];

/// The window operation the observer names for a workload (the race runs
/// punch).
fn window_op(workload: &str) -> &'static str {
    let op = if workload == "race" {
        "punch"
    } else {
        workload
    };
    OPS.iter()
        .find(|(o, ..)| *o == op)
        .map_or("unknown", |(.., name)| name)
}

/// Class A and class B counters of the summary's "classes", in table order.
const CLASS_A: &[&str] = &[
    "ptes_in_window",
    "rezapped",
    "stale_pte",
    "still_mapped_after_window",
    "unknown",
];
const CLASS_B: &[&str] = &["windows", "unbounded", "refills", "survived", "stale_data"];

/// Exit status of racer when the filesystem lacks the operation.
const RACER_UNSUPPORTED: i32 = 77;
/// Boots per kernel: later ones run what a hung earlier one left. Under
/// TCG, guests hang now and then while the kernel patches its own text (a
/// jump label, an fentry site) as the observer attaches or detaches, about
/// once in 130 steps, so a 44-step boot hangs about a third of the time.
/// Booting again as long as the last boot finished a step makes a kernel's
/// row fail only after a run of hangs without progress.
const ATTEMPTS: u32 = 8;

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Kernels, in order: Debian series (5.10, 6.1, 6.12) or exact releases
    /// booted under qemu as `cargo xtask vm` does, and `host` for the running
    /// kernel on loop mounts.
    #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12,host")]
    pub kernels: Vec<String>,
    /// Filesystems, where the kernel offers them.
    #[arg(long, value_delimiter = ',', default_value = "xfs,ext4,btrfs,tmpfs")]
    pub fs: Vec<String>,
    /// Invalidators to run one short racer each for (racer --op values).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "punch,zero,collapse,insert,truncate,truncate-path,madv-remove,clone,dedupe"
    )]
    pub ops: Vec<String>,
    /// Race runs per filesystem: hole punches racing mapped faults (class A)
    /// and buffered reads of the punched range (class B).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub race_runs: u32,
    /// Seconds per race run.
    #[arg(long, default_value_t = 6.0, value_name = "SECS")]
    pub race_secs: f64,
    /// racer arguments of the race runs.
    #[arg(
        long,
        default_value = "--op punch --punch-pages 16 --fault-threads 2 --readers 2",
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub race_args: String,
    /// Seconds per invalidator run.
    #[arg(long, default_value_t = 1.5, value_name = "SECS")]
    pub op_secs: f64,
    /// racer arguments of the invalidator runs (besides --op).
    #[arg(
        long,
        default_value = "--fault-threads 2",
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub op_args: String,
    /// A directory (it gets matrix.json, matrix.txt and every run's files,
    /// one subdirectory per kernel; emptied first), or FILE.json for the
    /// JSON alone (the runs then go to <target>/matrix) [default:
    /// <target>/matrix].
    #[arg(long, value_name = "DIR|FILE.json")]
    pub out: Option<PathBuf>,
    /// Seconds without a progress line after which a guest counts as hung:
    /// it is killed, and booted again (up to twice) for the steps it did not
    /// finish. The quietest healthy stretch is one race run (~10 s).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub stall_secs: u64,
    /// Use the binaries as they are instead of running `cargo xtask build`
    /// (implied when XTASK_VM=1, i.e. under `cargo xtask test`).
    #[arg(long)]
    pub no_build: bool,
    /// Observer binary [default: $OBSERVER_BIN, else target/release/observer].
    #[arg(long)]
    pub observer_bin: Option<PathBuf>,
    /// Racer binary [default: $RACER_BIN, else target/release/racer].
    #[arg(long)]
    pub racer_bin: Option<PathBuf>,
}

/// Marks a directory as made by `cargo xtask matrix`, so it may be emptied.
const OUT_MARKER: &str = ".xtask-matrix";

pub fn run(ws: &Workspace, args: MatrixArgs) -> Result<()> {
    for fs in &args.fs {
        if !vm::FILESYSTEMS.contains(&fs.as_str()) {
            bail!(
                "--fs {fs}: only {} are supported",
                vm::FILESYSTEMS.join(",")
            );
        }
    }
    for op in &args.ops {
        if !OPS.iter().any(|(o, ..)| o == op) {
            let all: Vec<&str> = OPS.iter().map(|(o, ..)| *o).collect();
            bail!("--ops {op}: not one of {}", all.join(","));
        }
    }
    if args.kernels.iter().any(|k| k == "host") && !crate::util::is_root() {
        bail!("the host runs load eBPF programs and make loop mounts: run as root");
    }
    let (dir, json_file) = match &args.out {
        Some(p) if p.extension().is_some_and(|e| e == "json") => {
            (ws.target.join("matrix"), p.clone())
        }
        Some(p) => (p.clone(), p.join("matrix.json")),
        None => (
            ws.target.join("matrix"),
            ws.target.join("matrix").join("matrix.json"),
        ),
    };
    prepare_out(&dir)?;
    let dir = fs::canonicalize(&dir)?;

    let nested = std::env::var_os("XTASK_VM").is_some_and(|v| v == "1");
    let built = if args.no_build || nested {
        Binaries::in_profile(ws, false)
    } else {
        build_cmd::build(ws, false)?
    };
    let pick = |flag: &Option<PathBuf>, var: &str, default: PathBuf| {
        flag.clone()
            .or_else(|| {
                std::env::var_os(var)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or(default)
    };
    let observer = pick(&args.observer_bin, "OBSERVER_BIN", built.observer);
    let racer = pick(&args.racer_bin, "RACER_BIN", built.racer);
    for (name, bin) in [("observer", &observer), ("racer", &racer)] {
        if !bin.is_file() {
            bail!("no {name} binary at {}", bin.display());
        }
    }

    let started = Instant::now();
    let mut kernels = Vec::new();
    for spec in &args.kernels {
        let t0 = Instant::now();
        let kdir = dir.join(sanitize(spec));
        let result = if spec == "host" {
            run_host(&args, &observer, &racer, &kdir)
        } else {
            run_vm(ws, &args, spec, &observer, &racer, &kdir)
        };
        let wall_s = t0.elapsed().as_secs_f64();
        let k = match result {
            Ok(mut k) => {
                k.wall_s = wall_s;
                k
            }
            Err(e) => {
                say(format!("kernel {spec}: {e:#}"));
                KernelResult {
                    spec: spec.clone(),
                    release: String::new(),
                    mode: if spec == "host" { "host" } else { "vm" },
                    wall_s,
                    error: Some(format!("{e:#}")),
                    guest_errors: Vec::new(),
                    cells: Vec::new(),
                }
            }
        };
        say(format!("kernel {spec}: {:.0}s", k.wall_s));
        kernels.push(k);
    }
    let report = Report {
        args: &args,
        kernels,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let table = report.table();
    println!("{table}");
    fs::write(dir.join("matrix.txt"), &table)?;
    if let Some(parent) = json_file.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&json_file, report.json() + "\n")
        .with_context(|| format!("writing {}", json_file.display()))?;
    say(format!("matrix: {}", json_file.display()));
    let broken: Vec<String> = report
        .kernels
        .iter()
        .filter_map(|k| k.error.as_ref().map(|e| format!("{}: {e}", k.spec)))
        .collect();
    if !broken.is_empty() {
        bail!("some kernels did not run: {}", broken.join("; "));
    }
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Empties `out` if it is ours (or empty); refuses to touch anything else.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() {
        let ours = out.join(OUT_MARKER).exists();
        let empty = fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !ours && !empty {
            bail!(
                "--out {} is not empty and was not made by `cargo xtask matrix`; pick another directory",
                out.display()
            );
        }
        fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fs::write(out.join(OUT_MARKER), format!("{}\n", std::process::id()))?;
    Ok(())
}

/// The steps for one filesystem: the race runs, then one run per op.
fn plan(args: &MatrixArgs, fs: &str) -> Vec<(String, Step)> {
    let mut steps = Vec::new();
    for i in 1..=args.race_runs {
        steps.push((
            "race".to_string(),
            Step {
                name: format!("{fs}.race{i}"),
                fs: fs.to_string(),
                seconds: args.race_secs,
                racer_args: args.race_args.clone(),
            },
        ));
    }
    for op in &args.ops {
        steps.push((
            op.clone(),
            Step {
                name: format!("{fs}.{op}"),
                fs: fs.to_string(),
                seconds: args.op_secs,
                racer_args: format!("--op {op} {}", args.op_args),
            },
        ));
    }
    steps
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

fn run_vm(
    ws: &Workspace,
    args: &MatrixArgs,
    spec: &str,
    observer: &Path,
    racer: &Path,
    kdir: &Path,
) -> Result<KernelResult> {
    let (release, offered) = vm::kernel_filesystems(ws, spec, &args.fs)?;
    let mut planned: Vec<(String, Step)> = Vec::new();
    for fs in &offered {
        planned.extend(plan(args, fs));
    }
    let steps: Vec<Step> = planned.iter().map(|(_, s)| s.clone()).collect();
    say(format!(
        "kernel {spec} ({release}): {} steps on {}",
        steps.len(),
        offered.join(",")
    ));
    // A guest kernel that hangs (it happens: see ATTEMPTS) is killed after
    // --stall-secs without progress; another boot runs the steps it did not
    // finish.
    let mut remaining = steps.clone();
    let mut stuck = 0;
    let mut guest_errors = Vec::new();
    let mut booted = None;
    for attempt in 1..=ATTEMPTS {
        let adir = if attempt == 1 {
            kdir.to_path_buf()
        } else {
            say(format!(
                "kernel {spec}: booting again for the {} unfinished steps",
                remaining.len()
            ));
            kdir.join(format!("attempt{attempt}"))
        };
        let secs: f64 = remaining.iter().map(|s| s.seconds + 15.0).sum();
        let outcome = vm::steps(
            ws,
            &vm::StepsGuest {
                kernel: spec,
                observer,
                racer,
                filesystems: &offered,
                steps: &remaining,
                out: &adir,
                timeout: Duration::from_secs(180 + secs as u64),
                watch: &|_| {},
            },
            Duration::from_secs(args.stall_secs),
        )?;
        guest_errors.extend(
            fs::read_to_string(outcome.dir.join("errors"))
                .unwrap_or_default()
                .lines()
                .map(|l| format!("attempt {attempt}: {l}")),
        );
        guest_errors.extend(
            outcome
                .problems
                .iter()
                .map(|p| format!("attempt {attempt}: {p}")),
        );
        if attempt == 1 {
            booted = fs::read_to_string(outcome.dir.join("uname")).ok();
        } else {
            // The step files join the first attempt's.
            for entry in fs::read_dir(&outcome.dir)?.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if remaining
                    .iter()
                    .any(|s| name.starts_with(&format!("{}.", s.name)))
                {
                    fs::copy(entry.path(), kdir.join(&name))?;
                }
            }
        }
        // A step is done once its uptime file is written.
        let before = remaining.len();
        remaining.retain(|s| !kdir.join(format!("{}.uptime", s.name)).exists());
        if outcome.finished || remaining.is_empty() {
            break;
        }
        stuck = if remaining.len() == before {
            stuck + 1
        } else {
            0
        };
        if stuck == 3 {
            guest_errors.push(format!(
                "attempt {attempt}: no step finished in three boots in a row; giving up"
            ));
            break;
        }
    }
    let booted = booted.unwrap_or_default();
    Ok(KernelResult {
        spec: spec.to_string(),
        release: if booted.trim().is_empty() {
            release
        } else {
            booted.trim().to_string()
        },
        mode: "vm",
        wall_s: 0.0,
        error: None,
        guest_errors,
        cells: cells(&args.fs, &offered, &planned, kdir),
    })
}

fn run_host(args: &MatrixArgs, observer: &Path, racer: &Path, kdir: &Path) -> Result<KernelResult> {
    fs::create_dir_all(kdir)?;
    let release = crate::util::output(Command::new("uname").arg("-r"))?
        .trim()
        .to_string();
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let offered: Vec<String> = args
        .fs
        .iter()
        .filter(|fs| known.split_whitespace().any(|w| w == fs.as_str()))
        .cloned()
        .collect();
    let scratch = Scratch::new()?;
    let mut planned: Vec<(String, Step)> = Vec::new();
    let mut guest_errors = Vec::new();
    for fs in &offered {
        let mount = match scratch.mount(fs) {
            Ok(m) => m,
            Err(e) => {
                guest_errors.push(format!("{fs}: {e:#}"));
                continue;
            }
        };
        for (workload, step) in plan(args, fs) {
            if let Err(e) = host_step(observer, racer, &mount, &step, kdir) {
                guest_errors.push(format!("[{}] {e:#}", step.name));
            }
            planned.push((workload, step));
        }
        drop(mount);
    }
    scratch.remove()?;
    if !guest_errors.is_empty() {
        fs::write(kdir.join("errors"), guest_errors.join("\n") + "\n")?;
    }
    Ok(KernelResult {
        spec: "host".into(),
        release,
        mode: "host",
        wall_s: 0.0,
        error: None,
        guest_errors,
        cells: cells(&args.fs, &offered, &planned, kdir),
    })
}

/// One step on the host: the files the guest's init.sh would have written.
fn host_step(
    observer: &Path,
    racer: &Path,
    mount: &HostMount,
    step: &Step,
    dir: &Path,
) -> Result<()> {
    let r = |ext: &str| dir.join(format!("{}.{ext}", step.name));
    let t0 = Instant::now();
    let file = mount.path.join("racer.dat");
    let cleanup = || {
        let _ = fs::remove_file(&file);
        let _ = fs::remove_file(mount.path.join("racer.dat.src"));
    };
    // An operation the filesystem lacks needs no observer run.
    let probe = Command::new(racer)
        .arg("--file")
        .arg(&file)
        .arg("--probe")
        .args(step.racer_args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", racer.display()))?;
    if probe.status.code() == Some(RACER_UNSUPPORTED) {
        fs::write(r("racer.log"), &probe.stderr)?;
        fs::write(r("racer.rc"), format!("{RACER_UNSUPPORTED}\n"))?;
        say(format!(
            "[host {}] not supported: {}",
            step.name,
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
        cleanup();
        fs::write(
            r("uptime"),
            format!("0 {:.2}\n", t0.elapsed().as_secs_f64()),
        )?;
        return Ok(());
    }
    let alerts = r("alerts.json");
    // The host may run other workloads: show only alerts on our filesystem
    // (the summary's counters stay machine-wide).
    let dev = format!("{}:{}", libc::major(mount.dev), libc::minor(mount.dev));
    say(format!("[host {}] observer --dev {dev}", step.name));
    let obs = match Observer::start(observer, &["--dev", &dev], &alerts) {
        Ok(o) => o,
        Err(e) => {
            fs::write(r("ready"), "not-ready\n")?;
            fs::write(r("observer.log"), format!("{e:#}\n"))?;
            return Err(e);
        }
    };
    fs::write(r("ready"), "ready\n")?;
    let out = Command::new(racer)
        .arg("--file")
        .arg(&file)
        .arg("--duration")
        .arg(step.seconds.to_string())
        .args(step.racer_args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", racer.display()))?;
    let rc = out.status.code().unwrap_or(-1);
    fs::write(r("racer.json"), &out.stdout)?;
    fs::write(r("racer.log"), &out.stderr)?;
    fs::write(r("racer.rc"), format!("{rc}\n"))?;
    let (status, log) = obs.finish()?;
    fs::write(r("observer.log"), log.join("\n") + "\n")?;
    fs::write(
        r("observer.rc"),
        format!("{}\n", status.code().unwrap_or(-1)),
    )?;
    trim(&dir.join(&step.name))?;
    cleanup();
    fs::write(
        r("uptime"),
        format!("0 {:.2}\n", t0.elapsed().as_secs_f64()),
    )?;
    match rc {
        0 => {}
        RACER_UNSUPPORTED => say(format!(
            "[host {}] not supported: {}",
            step.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        _ => say(format!(
            "[host {}] racer exited {rc}: {}",
            step.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
    Ok(())
}

/// The host side of init.sh's trim(): PREFIX.alerts.json becomes
/// PREFIX.observer.json, PREFIX.kinds and PREFIX.samples.json.
fn trim(prefix: &Path) -> Result<()> {
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(format!(".{ext}"));
        PathBuf::from(p)
    };
    let Ok(text) = fs::read_to_string(with("alerts.json")) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut kept = String::new();
    if let Some(first) = lines.first() {
        kept.push_str(first);
        kept.push('\n');
    }
    if lines.len() > 1 {
        kept.push_str(lines[lines.len() - 1]);
        kept.push('\n');
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples = String::new();
    for line in &lines {
        if !line.contains("\"type\":\"alert\"") {
            continue;
        }
        let Some(kind) = line
            .split_once("\"kind\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(k, _)| k.to_string())
        else {
            continue;
        };
        let n = kinds.entry(kind).or_default();
        *n += 1;
        if *n <= 3 {
            samples.push_str(line);
            samples.push('\n');
        }
    }
    fs::write(with("observer.json"), kept)?;
    fs::write(
        with("kinds"),
        kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}\n"))
            .collect::<String>(),
    )?;
    fs::write(with("samples.json"), samples)?;
    fs::remove_file(with("alerts.json"))?;
    Ok(())
}

/// A private directory for the host's images and mount points.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Result<Self> {
        Ok(Self {
            dir: crate::util::temp_dir("xtask-matrix")?,
        })
    }

    /// A fresh `fs` (a 512 MiB sparse loop image, or a tmpfs) mounted in
    /// the scratch directory.
    fn mount(&self, fs: &str) -> Result<HostMount> {
        let path = self.dir.join(fs);
        fs::create_dir_all(&path)?;
        let image = self.dir.join(format!("{fs}.img"));
        let mut mount = Command::new("mount");
        if fs == "tmpfs" {
            mount.args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"]);
        } else {
            fs::File::create(&image)
                .and_then(|f| f.set_len(512 << 20))
                .with_context(|| format!("cannot create {}", image.display()))?;
            let (mkfs, flags): (&str, &[&str]) = match fs {
                "xfs" => ("mkfs.xfs", &["-f", "-q"]),
                "ext4" => ("mkfs.ext4", &["-q", "-F"]),
                _ => ("mkfs.btrfs", &["-q", "-f"]),
            };
            crate::util::output(Command::new(mkfs).args(flags).arg(&image))
                .with_context(|| format!("{mkfs} (cargo xtask setup installs it)"))?;
            mount.args(["-t", fs, "-o", "loop"]).arg(&image);
        }
        crate::util::output(mount.arg(&path))?;
        let dev = fs::metadata(&path)?.dev();
        Ok(HostMount {
            path,
            image: (fs != "tmpfs").then_some(image),
            dev,
        })
    }

    fn remove(self) -> Result<()> {
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

struct HostMount {
    path: PathBuf,
    image: Option<PathBuf>,
    dev: u64,
}

impl Drop for HostMount {
    fn drop(&mut self) {
        if crate::util::unmount(&self.path).is_err() {
            crate::util::detach(&self.path);
        }
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}

// ---------------------------------------------------------------------------
// Reading the results
// ---------------------------------------------------------------------------

struct KernelResult {
    spec: String,
    release: String,
    mode: &'static str,
    wall_s: f64,
    /// Why the kernel did not run at all.
    error: Option<String>,
    /// Problems the guest (or the host run) reported while running.
    guest_errors: Vec<String>,
    cells: Vec<Cell>,
}

/// One kernel × filesystem.
struct Cell {
    fs: String,
    offered: bool,
    steps: Vec<StepResult>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    /// The filesystem lacks the operation (racer exit 77).
    Unsupported,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unsupported => "n/a",
            Status::Failed => "failed",
        }
    }
}

struct StepResult {
    name: String,
    workload: String,
    status: Status,
    /// Why it failed, or what the filesystem refused.
    detail: Option<String>,
    racer: Option<Value>,
    summary: Option<Summary>,
    probes: Vec<(String, Option<String>)>,
    /// Alerts by kind.
    kinds: BTreeMap<String, u64>,
    wall_s: Option<f64>,
}

#[derive(Default, Clone)]
struct Summary {
    windows: u64,
    alerts: u64,
    verdict: String,
    /// ringbuf_full, unresolved, late.
    lost: [u64; 3],
    classes: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
    windows_by_op: Option<BTreeMap<String, u64>>,
}

fn counts(v: Option<&Value>) -> Option<BTreeMap<String, u64>> {
    Some(
        v?.as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect(),
    )
}

impl Summary {
    fn parse(v: &Value) -> Option<Self> {
        if v.get("type")?.as_str()? != "summary" {
            return None;
        }
        let lost = v.get("lost");
        let lost_of = |k: &str| lost.and_then(|l| l.get(k)).and_then(Value::as_u64);
        let classes = v.get("classes").and_then(|c| {
            let a = counts(c.get("a"))?;
            let b = counts(c.get("b"))?;
            Some((a, b))
        });
        Some(Self {
            windows: v.get("windows")?.as_u64()?,
            alerts: v.get("alerts").and_then(Value::as_u64).unwrap_or(0),
            verdict: v
                .get("verdict")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            lost: [
                lost_of("ringbuf_full").unwrap_or(0),
                lost_of("unresolved").unwrap_or(0),
                lost_of("late").unwrap_or(0),
            ],
            classes,
            windows_by_op: counts(v.get("windows_by_op")),
        })
    }
}

fn read_step(dir: &Path, workload: &str, step: &Step) -> StepResult {
    let read = |ext: &str| fs::read_to_string(dir.join(format!("{}.{ext}", step.name))).ok();
    let mut res = StepResult {
        name: step.name.clone(),
        workload: workload.to_string(),
        status: Status::Failed,
        detail: None,
        racer: None,
        summary: None,
        probes: Vec::new(),
        kinds: BTreeMap::new(),
        wall_s: read("uptime").and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some(it.next()??.mul_add(-1.0, it.next()??))
        }),
    };
    let last_lines = |ext: &str, n: usize| {
        read(ext)
            .map(|t| {
                let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
                lines[lines.len().saturating_sub(n)..].join(" | ")
            })
            .unwrap_or_default()
    };
    let racer_rc = read("racer.rc").and_then(|t| t.trim().parse::<i32>().ok());
    let observer_rc = read("observer.rc").and_then(|t| t.trim().parse::<i32>().ok());
    res.racer = read("racer.json").and_then(|t| serde_json::from_str(t.trim()).ok());
    if let Some(text) = read("observer.json") {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        if let Some(startup) = lines
            .next()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            && let Some(probes) = startup.get("probes").and_then(Value::as_array)
        {
            res.probes = probes
                .iter()
                .filter_map(|p| {
                    Some((
                        p.get("function")?.as_str()?.to_string(),
                        p.get("method").and_then(Value::as_str).map(str::to_string),
                    ))
                })
                .collect();
        }
        res.summary = lines
            .next_back()
            .and_then(|l| serde_json::from_str(l).ok())
            .and_then(|v| Summary::parse(&v));
    }
    for line in read("kinds").unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(n), Some(kind)) = (it.next().and_then(|n| n.parse().ok()), it.next()) {
            res.kinds.insert(kind.to_string(), n);
        }
    }
    (res.status, res.detail) = match (racer_rc, observer_rc, &res.summary) {
        (Some(RACER_UNSUPPORTED), _, _) => (Status::Unsupported, Some(last_lines("racer.log", 1))),
        (Some(0), Some(0), Some(_)) => (Status::Ok, None),
        (None, _, _) => (
            Status::Failed,
            Some(format!(
                "racer did not run (observer: {})",
                last_lines("observer.log", 3)
            )),
        ),
        (Some(0), Some(0), None) => (Status::Failed, Some("the observer wrote no summary".into())),
        (Some(0), rc, _) => (
            Status::Failed,
            Some(format!(
                "observer exit status {}: {}",
                rc.map_or("?".into(), |r| r.to_string()),
                last_lines("observer.log", 3)
            )),
        ),
        (Some(rc), _, _) => (
            Status::Failed,
            Some(format!(
                "racer exit status {rc}: {}",
                last_lines("racer.log", 2)
            )),
        ),
    };
    res
}

fn cells(
    filesystems: &[String],
    offered: &[String],
    planned: &[(String, Step)],
    dir: &Path,
) -> Vec<Cell> {
    filesystems
        .iter()
        .map(|fs| Cell {
            fs: fs.clone(),
            offered: offered.contains(fs),
            steps: planned
                .iter()
                .filter(|(_, s)| &s.fs == fs)
                .map(|(w, s)| read_step(dir, w, s))
                .collect(),
        })
        .collect()
}

/// The observer's three core probes: windows and fault-around.
const CORE_PROBES: &[&str] = &[
    "unmap_mapping_range",
    "truncate_inode_pages_range",
    "filemap_map_pages",
];
/// The kernel's file PTE installer (5.10, 6.1, 6.12+): page-exact class A.
const PTE_PROBES: &[&str] = &["alloc_set_pte", "do_set_pte", "set_pte_range"];

/// The filesystem's block-removal functions: the end of a class B window.
fn removal_probes(fs: &str) -> &'static [&'static str] {
    match fs {
        "ext4" => &["ext4_ext_remove_space", "ext4_ind_remove_space"],
        "xfs" => &["xfs_free_file_space"],
        "btrfs" => &["btrfs_replace_file_extents"],
        "tmpfs" => &["shmem_undo_range"],
        _ => &[],
    }
}

fn method_rank(m: &str) -> u8 {
    match m {
        "fentry" => 3,
        "kprobe" => 2,
        "tracepoint" => 1,
        _ => 0,
    }
}

impl Cell {
    fn ok(&self) -> impl Iterator<Item = &StepResult> {
        self.steps.iter().filter(|s| s.status == Status::Ok)
    }

    fn summaries(&self) -> impl Iterator<Item = &Summary> {
        self.ok().filter_map(|s| s.summary.as_ref())
    }

    fn probes(&self) -> &[(String, Option<String>)] {
        self.steps
            .iter()
            .find(|s| !s.probes.is_empty())
            .map_or(&[], |s| &s.probes)
    }

    /// Methods of the attached probes among `names`.
    fn methods(&self, names: &[&str]) -> Vec<&str> {
        self.probes()
            .iter()
            .filter(|(f, _)| names.contains(&f.as_str()))
            .filter_map(|(_, m)| m.as_deref())
            .collect()
    }

    /// Whether the kernel's PTE installer is watched: class A is page-exact.
    fn pte_hook(&self) -> bool {
        !self.methods(PTE_PROBES).is_empty()
    }

    /// Whether the filesystem's block removal is watched: class B windows
    /// have an end.
    fn removal_hook(&self) -> bool {
        !self.methods(removal_probes(&self.fs)).is_empty()
    }

    /// The weakest attach method among the core probes, the PTE installer
    /// and this filesystem's block removal, with `!pte` / `!rm` when the
    /// latter two are not watched; None before any observer ran.
    fn fidelity(&self) -> Option<String> {
        let mut names: Vec<&str> = CORE_PROBES.to_vec();
        names.extend(PTE_PROBES);
        names.extend(removal_probes(&self.fs));
        let weakest = self
            .methods(&names)
            .into_iter()
            .min_by_key(|m| method_rank(m))?
            .to_string();
        let mut f = weakest;
        if !self.pte_hook() {
            f.push_str(" !pte");
        }
        if !self.removal_hook() {
            f.push_str(" !rm");
        }
        Some(f)
    }

    /// Class A PTEs in window and where the number comes from: the
    /// page-exact count ("classes"), or the pte_in_punch_window alerts
    /// ("alerts") when the observer has no classes or no PTE hook.
    fn class_a_in_window(&self) -> (Option<u64>, &'static str) {
        if self.ok().next().is_none() {
            return (None, "none");
        }
        match self.classes() {
            Some((a, _)) if self.pte_hook() => (a.get("ptes_in_window").copied(), "classes"),
            _ => (Some(self.alerts_of("pte_in_punch_window")), "alerts"),
        }
    }

    /// Class A and B counters summed over the good steps; None when there is
    /// none, or one lacks "classes".
    fn classes(&self) -> Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
        let mut sum: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)> = None;
        for s in self.summaries() {
            let (a, b) = s.classes.as_ref()?;
            let acc = sum.get_or_insert_with(Default::default);
            for (k, v) in a {
                *acc.0.entry(k.clone()).or_default() += v;
            }
            for (k, v) in b {
                *acc.1.entry(k.clone()).or_default() += v;
            }
        }
        sum
    }

    fn windows_by_op(&self) -> Option<BTreeMap<String, u64>> {
        let mut sum: Option<BTreeMap<String, u64>> = None;
        for s in self.summaries() {
            let by = s.windows_by_op.as_ref()?;
            let acc = sum.get_or_insert_with(Default::default);
            for (k, v) in by {
                *acc.entry(k.clone()).or_default() += v;
            }
        }
        sum
    }

    fn alerts_of(&self, kind: &str) -> u64 {
        self.ok()
            .map(|s| s.kinds.get(kind).copied().unwrap_or(0))
            .sum()
    }

    fn all_kinds(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for s in self.ok() {
            for (k, n) in &s.kinds {
                *all.entry(k.clone()).or_default() += n;
            }
        }
        all
    }

    fn lost(&self) -> [u64; 3] {
        self.summaries().fold([0; 3], |mut acc, s| {
            for (a, l) in acc.iter_mut().zip(s.lost) {
                *a += l;
            }
            acc
        })
    }

    fn windows(&self) -> u64 {
        self.summaries().map(|s| s.windows).sum()
    }

    /// Status of a workload's steps (the worst) and their windows.
    fn workload(&self, w: &str) -> Option<(Status, u64)> {
        let steps: Vec<&StepResult> = self.steps.iter().filter(|s| s.workload == w).collect();
        if steps.is_empty() {
            return None;
        }
        let status = if steps.iter().any(|s| s.status == Status::Failed) {
            Status::Failed
        } else if steps.iter().all(|s| s.status == Status::Unsupported) {
            Status::Unsupported
        } else {
            Status::Ok
        };
        let windows = steps
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.windows)
            .sum();
        Some((status, windows))
    }

    /// Windows of a workload's steps that carry its operation's name.
    fn named_windows(&self, w: &str) -> u64 {
        self.steps
            .iter()
            .filter(|s| s.workload == w)
            .filter_map(|s| s.summary.as_ref()?.windows_by_op.as_ref())
            .filter_map(|m| m.get(window_op(w)))
            .sum()
    }

    fn workloads(&self) -> Vec<String> {
        let mut w: Vec<String> = Vec::new();
        for s in &self.steps {
            if !w.contains(&s.workload) {
                w.push(s.workload.clone());
            }
        }
        w
    }
}

// ---------------------------------------------------------------------------
// The table and the JSON
// ---------------------------------------------------------------------------

struct Report<'a> {
    args: &'a MatrixArgs,
    kernels: Vec<KernelResult>,
    wall_s: f64,
}

fn count(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}

impl Report<'_> {
    fn table(&self) -> String {
        let mut head: Vec<String> = [
            "kernel",
            "fs",
            "fidelity",
            "A:in-win",
            "rezap",
            "stale",
            "mapped",
            "unkn",
            "B:win",
            "unbnd",
            "refill",
            "surv",
            "stale",
            "lock+/-/byp",
            "win:race",
        ]
        .map(String::from)
        .to_vec();
        let ops: Vec<(&str, &str)> = OPS
            .iter()
            .filter(|(o, ..)| self.args.ops.iter().any(|a| a == o))
            .map(|&(o, column, _)| (o, column))
            .collect();
        head.extend(ops.iter().map(|(_, c)| c.to_string()));
        head.push("lost(rb/unres/late)".into());
        let mut rows = vec![head];
        let mut notes = Vec::new();
        let mut proxy = false;
        for k in &self.kernels {
            let kname = if k.mode == "host" {
                format!("host {}", k.release)
            } else if k.release.is_empty() {
                k.spec.clone()
            } else {
                k.release.clone()
            };
            if let Some(e) = &k.error {
                let mut row = vec![kname.clone(), "-".into(), format!("did not run: {e}")];
                row.truncate(3);
                rows.push(row);
                continue;
            }
            for c in &k.cells {
                let mut row = vec![kname.clone(), c.fs.clone()];
                if !c.offered {
                    row.push("not offered".into());
                    rows.push(row);
                    continue;
                }
                row.push(c.fidelity().unwrap_or_else(|| "-".into()));
                let classes = c.classes();
                let pte = c.pte_hook();
                let a = |key: &str| {
                    count(
                        classes
                            .as_ref()
                            .filter(|_| pte)
                            .and_then(|(a, _)| a.get(key).copied()),
                    )
                };
                let b = |key: &str| count(classes.as_ref().and_then(|(_, b)| b.get(key).copied()));
                let any_ok = c.ok().next().is_some();
                // Class A in window: the page-exact count when the observer
                // has it, else the pte_in_punch_window alerts (marked *).
                row.push(match c.class_a_in_window() {
                    (Some(n), "classes") => n.to_string(),
                    (Some(n), _) => {
                        proxy = true;
                        format!("{n}*")
                    }
                    (None, _) => "-".into(),
                });
                row.extend(CLASS_A[1..].iter().map(|k| a(k)));
                row.extend(CLASS_B.iter().map(|k| b(k)));
                row.push(
                    [
                        "removals_under_lock",
                        "removals_without_lock",
                        "refills_under_lock",
                    ]
                    .map(b)
                    .join("/"),
                );
                for w in std::iter::once("race").chain(ops.iter().map(|(o, _)| *o)) {
                    row.push(match c.workload(w) {
                        None => "-".into(),
                        Some((Status::Ok, _)) => c.named_windows(w).to_string(),
                        Some((Status::Unsupported, _)) => "n/a".into(),
                        Some((Status::Failed, _)) => "FAIL".into(),
                    });
                }
                let lost = c.lost();
                row.push(if any_ok {
                    format!("{}/{}/{}", lost[0], lost[1], lost[2])
                } else {
                    "-".into()
                });
                for s in c.steps.iter().filter(|s| s.status == Status::Failed) {
                    notes.push(format!(
                        "{} {}: {}",
                        kname,
                        s.name,
                        s.detail.as_deref().unwrap_or("failed")
                    ));
                }
                rows.push(row);
            }
            for e in &k.guest_errors {
                notes.push(format!("{kname}: {e}"));
            }
        }
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                rows.iter()
                    .filter(|r| r.len() == cols)
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let w = if row.len() == cols { widths[i] } else { 0 };
                if i < 3 {
                    let _ = write!(line, "{cell:<w$}  ");
                } else {
                    let _ = write!(line, "{cell:>w$} ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(
            "A: PTEs installed inside an invalidation window (in-win) and what became of them: \
             rezapped, stale (folio left the cache still mapped), mapped (still mapped when the \
             window closed), unknown.\nB: refill windows (win), unbounded ones, folios refilled \
             inside them, refills that survived, stale (read freed blocks from disk); lock: \
             windows whose block removal ran with the punching task holding invalidate_lock \
             for writing (+) or not (-), refills by other tasks that got in while it was held \
             (byp); 0/0/0 on kernels without invalidate_lock (before 5.15).\n\
             win:OP: windows the observer named after that workload's operation (punch_hole, \
             zero_range, ..., madv_remove, clone_range, dedupe_range); n/a: the filesystem \
             lacks the operation.\n",
        );
        out.push_str(
            "fidelity: the weakest attach method of the window, fault-around, PTE-installer and \
             block-removal probes; !pte: no PTE-installer probe (class A not page-exact), !rm: no \
             block-removal probe (class B windows unbounded).\n",
        );
        if proxy {
            out.push_str(
                "*: no page-exact class A (no \"classes\" in the summary, or !pte): the \
                 pte_in_punch_window alerts stand in for A:in-win.\n",
            );
        }
        let _ = writeln!(
            out,
            "race: {} x {}s of racer {}; each op: {}s of racer --op OP {}.",
            self.args.race_runs,
            self.args.race_secs,
            self.args.race_args,
            self.args.op_secs,
            self.args.op_args
        );
        let walls: Vec<String> = self
            .kernels
            .iter()
            .map(|k| format!("{} {:.0}s", k.spec, k.wall_s))
            .collect();
        let _ = writeln!(
            out,
            "wall time: {} (total {:.0}s)",
            walls.join(", "),
            self.wall_s
        );
        for n in notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    fn json(&self) -> String {
        let map = |m: &BTreeMap<String, u64>| {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_str(k)))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        let opt_map = |m: Option<&BTreeMap<String, u64>>| m.map_or("null".into(), map);
        let opt_str = |s: Option<&str>| s.map_or("null".into(), json_str);
        let summary = |s: &Summary| {
            format!(
                "{{\"windows\":{},\"alerts\":{},\"verdict\":{},\"lost\":{{\"ringbuf_full\":{},\"unresolved\":{},\"late\":{}}},\"classes\":{},\"windows_by_op\":{}}}",
                s.windows,
                s.alerts,
                json_str(&s.verdict),
                s.lost[0],
                s.lost[1],
                s.lost[2],
                s.classes.as_ref().map_or("null".into(), |(a, b)| format!(
                    "{{\"a\":{},\"b\":{}}}",
                    map(a),
                    map(b)
                )),
                opt_map(s.windows_by_op.as_ref())
            )
        };
        let mut kernels = Vec::new();
        for k in &self.kernels {
            let mut cells = Vec::new();
            for c in &k.cells {
                let classes = c.classes();
                let (in_win, source) = c.class_a_in_window();
                let probes: Vec<String> = c
                    .probes()
                    .iter()
                    .map(|(f, m)| {
                        format!(
                            "{{\"function\":{},\"method\":{}}}",
                            json_str(f),
                            opt_str(m.as_deref())
                        )
                    })
                    .collect();
                let workloads: Vec<String> = c
                    .workloads()
                    .iter()
                    .filter_map(|w| {
                        let (status, windows) = c.workload(w)?;
                        let mut by_op: Option<BTreeMap<String, u64>> = Some(BTreeMap::new());
                        for s in c.steps.iter().filter(|s| &s.workload == w) {
                            match (
                                &mut by_op,
                                s.summary.as_ref().and_then(|x| x.windows_by_op.as_ref()),
                            ) {
                                (Some(acc), Some(m)) => {
                                    for (k, v) in m {
                                        *acc.entry(k.clone()).or_default() += v;
                                    }
                                }
                                _ => by_op = None,
                            }
                        }
                        Some(format!(
                            "{}:{{\"status\":{},\"windows\":{windows},\"windows_by_op\":{}}}",
                            json_str(w),
                            json_str(status.as_str()),
                            opt_map(by_op.as_ref())
                        ))
                    })
                    .collect();
                let steps: Vec<String> = c
                    .steps
                    .iter()
                    .map(|s| {
                        let racer = s.racer.as_ref().map_or("null".into(), |r| {
                            let n = |k: &str| count(r.get(k).and_then(Value::as_u64));
                            format!(
                                "{{\"punches\":{},\"faults\":{},\"reads\":{}}}",
                                n("punches").replace('-', "null"),
                                n("faults").replace('-', "null"),
                                n("reads").replace('-', "null")
                            )
                        });
                        format!(
                            "{{\"name\":{},\"workload\":{},\"status\":{},\"detail\":{},\"wall_s\":{},\"racer\":{racer},\"summary\":{},\"alerts\":{}}}",
                            json_str(&s.name),
                            json_str(&s.workload),
                            json_str(s.status.as_str()),
                            opt_str(s.detail.as_deref()),
                            s.wall_s.map_or("null".into(), |w| format!("{w:.2}")),
                            s.summary.as_ref().map_or("null".into(), summary),
                            map(&s.kinds)
                        )
                    })
                    .collect();
                let lost = c.lost();
                let any_ok = c.ok().next().is_some();
                cells.push(format!(
                    concat!(
                        "{{\"fs\":{},\"offered\":{},\"fidelity\":{},\"pte_hook\":{},\"removal_hook\":{},\"probes\":[{}],",
                        "\"class_a_in_window\":{},\"class_a_source\":{},",
                        "\"classes\":{},\"alerts\":{},\"windows\":{},\"windows_by_op\":{},",
                        "\"lost\":{},\"workloads\":{{{}}},\"steps\":[{}]}}"
                    ),
                    json_str(&c.fs),
                    c.offered,
                    opt_str(c.fidelity().as_deref()),
                    c.pte_hook(),
                    c.removal_hook(),
                    probes.join(","),
                    count(in_win).replace('-', "null"),
                    json_str(source),
                    classes.as_ref().map_or("null".into(), |(a, b)| format!(
                        "{{\"a\":{},\"b\":{}}}",
                        map(a),
                        map(b)
                    )),
                    map(&c.all_kinds()),
                    if any_ok {
                        c.windows().to_string()
                    } else {
                        "null".into()
                    },
                    opt_map(c.windows_by_op().as_ref()),
                    if any_ok {
                        format!(
                            "{{\"ringbuf_full\":{},\"unresolved\":{},\"late\":{}}}",
                            lost[0], lost[1], lost[2]
                        )
                    } else {
                        "null".into()
                    },
                    workloads.join(","),
                    steps.join(",")
                ));
            }
            let errors: Vec<String> = k.guest_errors.iter().map(|e| json_str(e)).collect();
            kernels.push(format!(
                "{{\"spec\":{},\"release\":{},\"mode\":{},\"wall_s\":{:.1},\"error\":{},\"errors\":[{}],\"cells\":[{}]}}",
                json_str(&k.spec),
                json_str(&k.release),
                json_str(k.mode),
                k.wall_s,
                opt_str(k.error.as_deref()),
                errors.join(","),
                cells.join(",")
            ));
        }
        let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
        format!(
            concat!(
                "{{\"type\":\"matrix\",\"config\":{{\"kernels\":[{}],\"fs\":[{}],\"ops\":[{}],",
                "\"race_runs\":{},\"race_secs\":{},\"race_args\":{},\"op_secs\":{},\"op_args\":{}}},",
                "\"wall_s\":{:.1},\"kernels\":[{}]}}"
            ),
            list(&self.args.kernels),
            list(&self.args.fs),
            list(&self.args.ops),
            self.args.race_runs,
            self.args.race_secs,
            json_str(&self.args.race_args),
            self.args.op_secs,
            json_str(&self.args.op_args),
            self.wall_s,
            kernels.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = r#"{"type":"summary","duration_s":2.3,"events":{},"kernel_emitted":{},"lost":{"ringbuf_full":1,"unresolved":130,"late":2},"filtered":4,"windows":89,"alerts":158,"alerts_shown":158,"verdict":"race_observed","classes":{"a":{"ptes_in_window":40,"rezapped":39,"stale_pte":0,"still_mapped_after_window":1,"unknown":0},"b":{"windows":80,"unbounded":0,"refills":3,"survived":1,"stale_data":1}},"windows_by_op":{"punch_hole":89,"zero_range":0,"collapse_range":0,"insert_range":0,"ftruncate":0,"truncate":0,"unknown":0}}"#;

    fn write_step(dir: &Path, name: &str, summary: &str, racer_rc: i32) {
        let w = |ext: &str, text: &str| fs::write(dir.join(format!("{name}.{ext}")), text).unwrap();
        w(
            "observer.json",
            &format!(
                "{}\n{summary}\n",
                r#"{"type":"startup","kernel":"5.10","probes":[{"function":"filemap_map_pages","method":"fentry","refused":[]},{"function":"alloc_set_pte","method":"fentry","refused":[]},{"function":"ext4_ext_remove_space","method":"kprobe","refused":[]},{"function":"shmem_undo_range","method":null,"refused":[]}]}"#
            ),
        );
        w("observer.rc", "0\n");
        w("racer.rc", &format!("{racer_rc}\n"));
        w(
            "racer.json",
            r#"{"file":"/mnt/ext4/racer.dat","punches":77,"faults":5298,"reads":4353}"#,
        );
        w(
            "racer.log",
            "racer: ioctl(FICLONERANGE): Operation not supported\n",
        );
        w(
            "kinds",
            "      12 pte_in_punch_window\n       1 stale_data\n",
        );
        w("uptime", "10.5 17.25\n");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-matrix-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn args() -> MatrixArgs {
        MatrixArgs {
            kernels: vec!["5.10".into()],
            fs: vec!["ext4".into(), "tmpfs".into()],
            ops: vec!["punch".into(), "clone".into()],
            race_runs: 2,
            race_secs: 6.0,
            race_args: "--op punch --readers 2".into(),
            op_secs: 1.5,
            op_args: "--fault-threads 2".into(),
            stall_secs: 120,
            out: None,
            no_build: true,
            observer_bin: None,
            racer_bin: None,
        }
    }

    #[test]
    fn cells_sum_steps_and_mark_unsupported() {
        let dir = scratch("cells");
        let a = args();
        let planned = plan(&a, "ext4");
        assert_eq!(
            planned
                .iter()
                .map(|(_, s)| s.name.as_str())
                .collect::<Vec<_>>(),
            ["ext4.race1", "ext4.race2", "ext4.punch", "ext4.clone"]
        );
        for (w, s) in &planned {
            write_step(&dir, &s.name, SUMMARY, if w == "clone" { 77 } else { 0 });
        }
        let cells = cells(&a.fs, &["ext4".to_string()], &planned, &dir);
        assert_eq!(cells.len(), 2);
        let c = &cells[0];
        assert!(c.offered && !cells[1].offered);
        let (ca, cb) = c.classes().unwrap();
        assert_eq!(ca["ptes_in_window"], 120);
        assert_eq!(cb["stale_data"], 3);
        assert_eq!(c.windows_by_op().unwrap()["punch_hole"], 3 * 89);
        assert_eq!(c.alerts_of("pte_in_punch_window"), 36);
        assert_eq!(c.lost(), [3, 390, 6]);
        assert_eq!(c.fidelity().as_deref(), Some("kprobe"));
        assert!(c.pte_hook() && c.removal_hook());
        assert_eq!(c.class_a_in_window(), (Some(120), "classes"));
        assert_eq!(c.workload("clone"), Some((Status::Unsupported, 89)));
        assert_eq!(c.workload("race"), Some((Status::Ok, 178)));
        assert_eq!(c.named_windows("race"), 178);
        assert_eq!(c.named_windows("punch"), 89);
        assert_eq!(c.steps[0].wall_s, Some(6.75));

        let report = Report {
            args: &a,
            kernels: vec![KernelResult {
                spec: "5.10".into(),
                release: "5.10.0-46-cloud-amd64".into(),
                mode: "vm",
                wall_s: 100.0,
                error: None,
                guest_errors: vec![],
                cells,
            }],
            wall_s: 100.0,
        };
        let table = report.table();
        assert!(table.contains("5.10.0-46-cloud-amd64"), "{table}");
        assert!(table.contains("n/a"), "{table}");
        assert!(table.contains("not offered"), "{table}");
        let v: Value = serde_json::from_str(&report.json()).expect("valid JSON");
        let cell = &v.get("kernels").unwrap().as_array().unwrap()[0]
            .get("cells")
            .unwrap()
            .as_array()
            .unwrap()[0];
        assert_eq!(cell.get("class_a_in_window").unwrap().as_u64(), Some(120));
        assert_eq!(
            cell.get("workloads")
                .unwrap()
                .get("clone")
                .unwrap()
                .get("status")
                .unwrap()
                .as_str(),
            Some("n/a")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn old_observer_falls_back_to_alert_counts() {
        let dir = scratch("old");
        let a = args();
        let old = SUMMARY
            .split_once(",\"classes\"")
            .map(|(head, _)| format!("{head}}}"))
            .unwrap();
        let planned = plan(&a, "ext4");
        for (_, s) in &planned {
            write_step(&dir, &s.name, &old, 0);
        }
        let cells = cells(&a.fs, &["ext4".to_string()], &planned, &dir);
        assert!(cells[0].classes().is_none());
        assert!(cells[0].windows_by_op().is_none());
        let report = Report {
            args: &a,
            kernels: vec![KernelResult {
                spec: "5.10".into(),
                release: String::new(),
                mode: "vm",
                wall_s: 1.0,
                error: None,
                guest_errors: vec![],
                cells,
            }],
            wall_s: 1.0,
        };
        assert!(report.table().contains("48*"), "{}", report.table());
        let v: Value = serde_json::from_str(&report.json()).unwrap();
        let cell = &v.get("kernels").unwrap().as_array().unwrap()[0]
            .get("cells")
            .unwrap()
            .as_array()
            .unwrap()[0];
        assert_eq!(cell.get("class_a_source").unwrap().as_str(), Some("alerts"));
        assert_eq!(cell.get("classes"), Some(&Value::Null));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_trim_matches_the_guest_format() {
        let dir = scratch("trim");
        let prefix = dir.join("x.punch");
        let alert = |k: &str| format!(r#"{{"type":"alert","kind":"{k}","ts_ns":1}}"#);
        let mut text = String::from("{\"type\":\"startup\",\"probes\":[]}\n");
        for _ in 0..5 {
            text.push_str(&alert("pte_in_punch_window"));
            text.push('\n');
        }
        text.push_str(&alert("stale_data"));
        text.push('\n');
        text.push_str(SUMMARY);
        text.push('\n');
        fs::write(dir.join("x.punch.alerts.json"), text).unwrap();
        trim(&prefix).unwrap();
        assert!(!dir.join("x.punch.alerts.json").exists());
        let kept = fs::read_to_string(dir.join("x.punch.observer.json")).unwrap();
        assert_eq!(kept.lines().count(), 2);
        assert!(kept.lines().nth(1).unwrap().contains("\"summary\""));
        assert_eq!(
            fs::read_to_string(dir.join("x.punch.kinds")).unwrap(),
            "5 pte_in_punch_window\n1 stale_data\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("x.punch.samples.json"))
                .unwrap()
                .lines()
                .count(),
            4
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
