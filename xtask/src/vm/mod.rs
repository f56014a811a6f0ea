//! `cargo xtask vm`: runs the observer and the racer in a Debian cloud
//! kernel under qemu, on XFS, ext4, btrfs and tmpfs, and brings the results
//! back. One boot runs a list of steps (a filesystem and racer arguments),
//! each under its own observer run; `cargo xtask matrix` builds on it.

mod initramfs;
pub mod kernel;
mod modules;
mod qemu;

pub use initramfs::Step;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use observer_report::Record;
use observer_tests::FsType;

use crate::{
    build_cmd,
    util::{Workspace, output, pick, prepare_out, say},
};

/// tmpfs-huge: a tmpfs mounted huge=always (the class C control).
const TMPFS_HUGE: &str = "tmpfs-huge";

/// The filesystems a guest can race on: every [`FsType`], and tmpfs-huge.
pub fn filesystems() -> Vec<&'static str> {
    let mut all: Vec<&str> = FsType::ALL.iter().map(|t| t.as_str()).collect();
    all.push(TMPFS_HUGE);
    all
}

/// Fails on a filesystem the guests cannot race on, naming `flag`.
pub fn check_filesystems(flag: &str, fs: &[String]) -> Result<()> {
    let known = filesystems();
    match fs.iter().find(|f| !known.contains(&f.as_str())) {
        Some(f) => bail!("{flag} {f}: only {} are supported", known.join(",")),
        None => Ok(()),
    }
}

/// The [`FsType`] a guest filesystem name stands for (tmpfs-huge is a tmpfs).
pub fn fs_type(fs: &str) -> Option<FsType> {
    if fs == TMPFS_HUGE {
        return Some(FsType::Tmpfs);
    }
    FsType::named(fs)
}
/// Marks an output directory as ours, so that it may be emptied next time.
const OUT_MARKER: &str = ".xtask-vm";

#[derive(Args)]
pub struct VmArgs {
    /// Kernel series (5.10, 6.1, 6.12, 7.2 or 7.3: newest Debian cloud
    /// package; 5.10 comes from bullseye, 7.2 from sid, 7.3 from
    /// trixie-backports; a series the suite has left falls back to the newest
    /// cached one) or an exact release such as 6.1.0-50-cloud-amd64; with
    /// `:amd64`, Debian's generic flavour (f2fs, gfs2, ocfs2), e.g. 7.3:amd64.
    #[arg(long)]
    kernel: String,
    /// Filesystems to run the racer on, in order (xfs, ext4, btrfs, tmpfs,
    /// tmpfs-huge, fuse, f2fs, ntfs3, ntfs, gfs2, ocfs2).
    #[arg(long, value_delimiter = ',', default_value = "xfs,ext4")]
    fs: Vec<String>,
    /// Seconds the racer runs on each filesystem.
    #[arg(long, default_value_t = 4)]
    duration: u64,
    /// Where results go [default: <target>/vm/<kernel>]; emptied first.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Extra observer arguments, split by the guest shell.
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    observer_args: String,
    /// Extra racer arguments, split by the guest shell.
    #[arg(
        long,
        default_value = "",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    racer_args: String,
    /// Use the binaries as they are instead of running `cargo xtask build`
    /// (implied when XTASK_VM=1, i.e. under `cargo xtask test`).
    #[arg(long)]
    no_build: bool,
    /// Observer binary [default: $OBSERVER_BIN, else target/release/observer].
    #[arg(long)]
    observer_bin: Option<PathBuf>,
    /// Racer binary [default: $RACER_BIN, else target/release/racer]; the
    /// guest idles for --duration when there is none.
    #[arg(long)]
    racer_bin: Option<PathBuf>,
    /// More host binaries to put in the guest's /bin (with their libraries).
    #[arg(long = "extra-bin")]
    extra_bins: Vec<PathBuf>,
    /// More kernel modules to load (their dependencies come along).
    #[arg(long = "module", value_delimiter = ',')]
    modules: Vec<String>,
    /// Seconds before qemu is killed [default: 300 + (20 + duration) per filesystem].
    #[arg(long)]
    timeout: Option<u64>,
    /// Keep the disk images and initramfs (in <out>/work) for inspection.
    #[arg(long)]
    keep_work: bool,
    /// Run each filesystem's racer as `observer run --fail-on critical --
    /// sh -c 'racer ...; exit N'`; the observer's exit status goes to
    /// FS.observer.rc (the exit-code contract, tested on a real kernel).
    #[arg(long, value_name = "N")]
    run_exit: Option<u8>,
}

pub fn run(ws: &Workspace, args: VmArgs) -> Result<()> {
    check_filesystems("--fs", &args.fs)?;
    let built = build_cmd::fresh_or_as_they_are(ws, args.no_build)?;
    let observer = pick(args.observer_bin.as_deref(), "OBSERVER_BIN", built.observer);
    if !observer.is_file() {
        bail!(
            "no observer binary at {} (build it, or pass --observer-bin)",
            observer.display()
        );
    }
    let racer = pick(args.racer_bin.as_deref(), "RACER_BIN", built.racer);
    let racer = if racer.is_file() {
        Some(racer)
    } else if args.racer_bin.is_some() || env::var_os("RACER_BIN").is_some() {
        bail!("no racer binary at {}", racer.display());
    } else {
        say(format!(
            "no racer at {}; the guest will only idle",
            racer.display()
        ));
        None
    };

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ws.target.join("vm").join(&args.kernel));
    let timeout = args
        .timeout
        .unwrap_or(300 + (20 + args.duration) * args.fs.len() as u64);
    // One step per filesystem, named after it: NAME.alerts.json etc.
    let steps: Vec<Step> = args
        .fs
        .iter()
        .map(|fs| Step {
            name: fs.clone(),
            fs: fs.clone(),
            seconds: args.duration as f64,
            racer_args: args.racer_args.clone(),
        })
        .collect();
    let out = boot_guest(
        ws,
        &Guest {
            kernel: &args.kernel,
            modules: &args.modules,
            filesystems: &args.fs,
            observer: &observer,
            fusefs: &built.fusefs,
            extra_bins: &args.extra_bins,
            observer_args: &args.observer_args,
            scenario: &initramfs::Scenario::Steps {
                racer: racer.as_deref(),
                steps: &steps,
                trim: false,
                run_exit: args.run_exit,
            },
            out: &out,
            timeout: Duration::from_secs(timeout),
            stall: None,
            watch: None,
            keep_work: args.keep_work,
        },
    )?
    .dir;
    summarize(&out, &args.fs)
}

/// `qemu --version` of the guests' qemu (see `qemu::binary`), None when it
/// cannot run.
pub fn qemu_version() -> Option<String> {
    qemu::version().ok()
}

/// What `cargo xtask matrix` runs in one guest.
pub struct StepsGuest<'a> {
    /// As `cargo xtask vm --kernel`.
    pub kernel: &'a str,
    pub observer: &'a Path,
    pub racer: &'a Path,
    /// The FUSE server, for a fuse filesystem.
    pub fusefs: &'a Path,
    /// Filesystems to make and mount; every step's must be among them.
    pub filesystems: &'a [String],
    pub steps: &'a [Step],
    /// Where the guest's results go; emptied first.
    pub out: &'a Path,
    pub timeout: Duration,
    /// Called with each progress line of the guest.
    pub watch: &'a dyn Fn(&str),
}

/// A kernel `spec` named, downloaded and unpacked.
pub struct Prepared {
    pub release: String,
    /// `SUITE VERSION` of its package, e.g. `sid 7.2.13-1`.
    pub package: String,
    /// Which of the filesystems asked for it can mount.
    pub offered: Vec<String>,
    /// The others, each with why not (from the kernel's config).
    pub missing: Vec<(String, String)>,
}

/// The kernel `spec` names, downloaded and unpacked if needed, and which of
/// `filesystems` it can mount.
pub fn kernel_filesystems(ws: &Workspace, spec: &str, filesystems: &[String]) -> Result<Prepared> {
    let kernel = kernel::prepare(ws, spec)?;
    let mut offered = Vec::new();
    let mut missing = Vec::new();
    for fs in filesystems {
        match modules::missing(&kernel, fs)? {
            None => offered.push(fs.clone()),
            Some(why) => missing.push((fs.clone(), why)),
        }
    }
    Ok(Prepared {
        release: kernel.release,
        package: kernel.package,
        offered,
        missing,
    })
}

/// What a steps guest brought back.
pub struct StepsOutcome {
    /// See `steps`.
    pub dir: PathBuf,
    /// Whether the guest got through its list and powered off.
    pub finished: bool,
    /// Why the guest did not finish every step (it stalled or timed out;
    /// the steps it finished are in `dir`), and kernel trouble from its
    /// console (BUG, soft lockup, RCU stall, WARNING, Oops).
    pub problems: Vec<String>,
}

/// Boots the guest in steps mode with trimmed results (see `trim()` in
/// init.sh). The directory it returns holds what the guest brought back:
/// `uname`, `filesystems`, and for each step NAME: `NAME.observer.json`
/// (startup record and summary), `NAME.kinds`, `NAME.samples.json`,
/// `NAME.observer.{log,rc}`, `NAME.ready`, `NAME.racer.{json,log,rc}`,
/// `NAME.uptime`. Errors the guest reported are in `errors`, not returned.
/// A guest that stops making progress for `stall` is killed; the steps it
/// finished are kept.
pub fn steps(ws: &Workspace, g: &StepsGuest, stall: Duration) -> Result<StepsOutcome> {
    let booted = boot_guest(
        ws,
        &Guest {
            kernel: g.kernel,
            modules: &[],
            filesystems: g.filesystems,
            observer: g.observer,
            fusefs: g.fusefs,
            extra_bins: &[],
            observer_args: "",
            scenario: &initramfs::Scenario::Steps {
                racer: Some(g.racer),
                steps: g.steps,
                trim: true,
                run_exit: None,
            },
            out: g.out,
            timeout: g.timeout,
            stall: Some(stall),
            watch: Some(g.watch),
            keep_work: false,
        },
    )?;
    let finished = booted.problem.is_none();
    let mut problems: Vec<String> = booted.problem.into_iter().collect();
    problems.extend(kernel_trouble(&booted.dir.join("console.log")));
    Ok(StepsOutcome {
        dir: booted.dir,
        finished,
        problems,
    })
}

/// Lines of a guest console that say the kernel itself is in trouble, at
/// most one per kind.
fn kernel_trouble(console: &Path) -> Vec<String> {
    const SIGNS: &[&str] = &[
        "BUG:",
        "Oops",
        "soft lockup",
        "self-detected stall",
        "WARNING:",
        "Kernel panic",
        "still mapped when deleted",
    ];
    let text = fs::read(console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut found: Vec<String> = Vec::new();
    for sign in SIGNS {
        let hits: Vec<&str> = text.lines().filter(|l| l.contains(sign)).collect();
        if let Some(first) = hits.first() {
            found.push(format!(
                "guest console: {} ({} such lines)",
                first.trim(),
                hits.len()
            ));
        }
    }
    found
}

/// What `cargo xtask bench --kernel` runs in the guest.
pub struct BenchGuest<'a> {
    /// As `cargo xtask vm --kernel`.
    pub kernel: &'a str,
    pub observer: &'a Path,
    pub faultbench: &'a Path,
    pub rounds: u32,
    pub pages: u64,
    pub fault_rounds: u64,
    /// When not 0, the guest lowers fault_rounds if its two warm-up runs
    /// (bare, without and with punching) take longer than this many ms; the
    /// value it used is in `bench/fault_rounds`.
    pub budget_ms: u64,
    /// More observer flags, split by the guest shell.
    pub observer_args: &'a str,
    /// Where the guest's results go; emptied first.
    pub out: &'a Path,
    pub timeout: Duration,
    /// Called with each progress line of the guest.
    pub watch: &'a dyn Fn(&str),
}

/// Boots the guest in bench mode (see `bench()` in init.sh) and returns the
/// directory holding what it brought back: `uname`, `nproc`,
/// `bench/fault_rounds`, and `bench/ROUND.WORKLOAD.CONFIG.*` for each run.
pub fn bench(ws: &Workspace, b: &BenchGuest) -> Result<PathBuf> {
    let out = boot_guest(
        ws,
        &Guest {
            kernel: b.kernel,
            modules: &[],
            filesystems: &["xfs".to_string()],
            observer: b.observer,
            fusefs: Path::new(""),
            extra_bins: &[],
            observer_args: b.observer_args,
            scenario: &initramfs::Scenario::Bench {
                faultbench: b.faultbench,
                rounds: b.rounds,
                pages: b.pages,
                fault_rounds: b.fault_rounds,
                budget_ms: b.budget_ms,
            },
            out: b.out,
            timeout: b.timeout,
            stall: None,
            watch: Some(b.watch),
            keep_work: false,
        },
    )?
    .dir;
    if let Ok(errors) = fs::read_to_string(out.join("errors"))
        && !errors.trim().is_empty()
    {
        bail!(
            "the guest reported: {}; its files are in {}",
            errors.trim().replace('\n', "; "),
            out.display()
        );
    }
    Ok(out)
}

struct Guest<'a> {
    kernel: &'a str,
    /// Modules to load beyond the disk and filesystem ones.
    modules: &'a [String],
    /// Filesystems to mount: a disk each, tmpfs in memory.
    filesystems: &'a [String],
    observer: &'a Path,
    /// The FUSE server: put in the guest when `filesystems` has fuse.
    fusefs: &'a Path,
    extra_bins: &'a [PathBuf],
    observer_args: &'a str,
    scenario: &'a initramfs::Scenario<'a>,
    out: &'a Path,
    timeout: Duration,
    /// Kill the guest when it makes no progress for this long, and keep
    /// what it had finished (the steps scenario saves results after every
    /// step); None: only `timeout` applies and a hung guest is an error.
    stall: Option<Duration>,
    watch: Option<&'a dyn Fn(&str)>,
    keep_work: bool,
}

/// Empties `g.out`, boots the kernel with an initramfs for `g.scenario`,
/// and unpacks what the guest left on its results disk into `g.out`, which
/// it returns canonicalized.
fn boot_guest(ws: &Workspace, g: &Guest) -> Result<Booted> {
    prepare_out(g.out, OUT_MARKER, "vm")?;
    let out = fs::canonicalize(g.out)?;

    let kernel = kernel::prepare(ws, g.kernel)?;
    // Which package this run booted: sid moves on, the cache stays.
    say(format!(
        "kernel {}: package {}",
        kernel.release, kernel.package
    ));
    for fs in g.filesystems {
        if let Some(why) = modules::missing(&kernel, fs)? {
            bail!(
                "kernel {} cannot mount {fs}: {why}{}",
                kernel.release,
                if g.kernel.contains(':') {
                    ""
                } else {
                    " (the generic flavour has more filesystems: --kernel SERIES:amd64)"
                }
            );
        }
    }
    fs::write(out.join("package"), format!("{}\n", kernel.package))?;
    // On 5.10 virtio_pci is a module too (pulling in virtio, virtio_ring).
    let mut wanted: Vec<String> = ["virtio_pci", "virtio_blk"].map(String::from).to_vec();
    for t in g.filesystems.iter().filter_map(|fs| fs_type(fs)) {
        for (m, _) in t.modules() {
            if !wanted.iter().any(|w| w == m) {
                wanted.push(m.to_string());
            }
        }
    }
    wanted.extend(g.modules.iter().cloned());
    let modules = modules::modules(&kernel, &wanted)?;

    let work = out.join("work");
    fs::create_dir_all(&work)?;
    let initramfs = work.join("initramfs.cpio");
    let disks = qemu::make_disks(&work, g.filesystems)?;
    let mut extra_bins = g.extra_bins.to_vec();
    if g.filesystems
        .iter()
        .any(|fs| fs_type(fs) == Some(FsType::Fuse))
    {
        if !g.fusefs.is_file() {
            bail!(
                "fuse needs the FUSE server, and there is none at {}",
                g.fusefs.display()
            );
        }
        extra_bins.push(g.fusefs.to_path_buf());
    }
    initramfs::build(
        &initramfs::Contents {
            release: &kernel.release,
            modules: &modules,
            observer: g.observer,
            extra_bins: &extra_bins,
            observer_args: g.observer_args,
            devices: &disks.guest_devices(),
            tmpfs: g.filesystems.iter().any(|fs| fs.starts_with("tmpfs")),
            scenario: g.scenario,
        },
        &initramfs,
    )?;

    let outcome = qemu::boot(&qemu::Boot {
        vmlinuz: &kernel.vmlinuz,
        initramfs: &initramfs,
        disks: &disks,
        console_log: &out.join("console.log"),
        timeout: g.timeout,
        stall: g.stall,
        watch: g.watch,
    })?;

    let problem = match outcome {
        qemu::Outcome::Exited => None,
        qemu::Outcome::TimedOut => Some(format!(
            "the guest did not power off within {}s; see {}",
            g.timeout.as_secs(),
            out.join("console.log").display()
        )),
        qemu::Outcome::Stalled(last) => Some(format!(
            "the guest made no progress for {}s after \"{last}\" and was killed; see {}",
            g.stall.unwrap_or_default().as_secs(),
            out.join("console.log").display()
        )),
    };
    // A guest that did not finish left the results of the steps it did
    // finish (the steps scenario saves them after every step). One that
    // powered off early (a panic reboots, and -no-reboot ends qemu) looks
    // like a clean exit until the results show no `done`.
    let mut problem = problem;
    let partial = g.stall.is_some();
    let extracted = extract_results(&disks.results, &out, partial);
    if partial && problem.is_none() && !out.join("done").exists() {
        let why = kernel_trouble(&out.join("console.log"))
            .into_iter()
            .find(|t| t.contains("Kernel panic") || t.contains("BUG:") || t.contains("Oops"))
            .unwrap_or_else(|| "no panic on the console".into());
        problem = Some(format!(
            "the guest stopped before the end of /init ({why}); see {}",
            out.join("console.log").display()
        ));
    }
    if !g.keep_work {
        let _ = fs::remove_dir_all(&work);
    }
    if let Some(problem) = &problem {
        tail_console(&out);
        if !partial {
            bail!("{problem}");
        }
    }
    if let Err(e) = extracted {
        if problem.is_none() {
            tail_console(&out);
        }
        return Err(e);
    }
    Ok(Booted { dir: out, problem })
}

struct Booted {
    /// The results, canonicalized.
    dir: PathBuf,
    /// Why the guest did not finish (only with `Guest::stall`).
    problem: Option<String>,
}

fn extract_results(image: &Path, out: &Path, partial: bool) -> Result<()> {
    // The guest wrote a bare tar to the raw disk; tar stops at its end
    // marker and ignores the zeroes after it.
    let untar = output(
        Command::new("tar")
            .args(["-xf"])
            .arg(image)
            .args(["--no-same-owner", "--no-overwrite-dir", "-C"])
            .arg(out),
    );
    if partial {
        // Whatever the last save held; nothing at all if the guest never
        // finished a step.
        return untar.map(drop).or(Ok(()));
    }
    untar.context("the results disk holds no tar: the guest never got to the end of /init")?;
    if !out.join("done").exists() {
        bail!(
            "the results disk holds no results: the guest never got to the end of /init (see {})",
            out.join("console.log").display()
        );
    }
    Ok(())
}

fn tail_console(out: &Path) {
    if let Ok(text) = fs::read_to_string(out.join("console.log")) {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(25)..];
        say(format!("last console lines:\n{}", tail.join("\n")));
    }
}

fn summarize(out: &Path, filesystems: &[String]) -> Result<()> {
    let read = |name: &str| {
        fs::read_to_string(out.join(name))
            .ok()
            .map(|s| s.trim().to_string())
    };
    say(format!("results in {}", out.display()));
    say(format!(
        "  kernel   {} (package {})",
        read("uname").unwrap_or_else(|| "?".into()),
        read("package").unwrap_or_else(|| "?".into())
    ));
    for fs in filesystems {
        let alerts = read(&format!("{fs}.alerts.json"))
            .map(|s| {
                // JSON lines: a startup record, the alerts, a closing summary.
                let records: Vec<Record> =
                    s.lines().filter_map(|l| Record::parse(l).ok()).collect();
                let alerts = records
                    .iter()
                    .filter(|r| matches!(r, Record::Alert(_)))
                    .count();
                let summary = if matches!(records.last(), Some(Record::Summary(_))) {
                    ""
                } else {
                    ", no summary"
                };
                format!("{alerts} alerts{summary}")
            })
            .unwrap_or_else(|| "no alerts file".into());
        let rc = read(&format!("{fs}.observer.rc")).unwrap_or_else(|| "-".into());
        let ready = read(&format!("{fs}.ready")).unwrap_or_else(|| "-".into());
        let racer = read(&format!("{fs}.racer.rc")).unwrap_or_else(|| "-".into());
        let stop = read(&format!("{fs}.stop"))
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        say(format!(
            "  {fs:<6}   observer {ready}, exit status {rc}{stop}; {alerts}; racer exit status {racer}"
        ));
    }
    for trouble in kernel_trouble(&out.join("console.log")) {
        say(format!("  warning: {trouble}"));
    }
    if let Some(errors) = read("errors").filter(|e| !e.is_empty()) {
        bail!("the guest reported: {}", errors.replace('\n', "; "));
    }
    Ok(())
}
