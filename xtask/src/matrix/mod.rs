//! `cargo xtask matrix`: the truth table across kernels and filesystems.
//!
//! For every kernel (Debian 5.10, 6.1, 6.12, 7.2 and 7.3 under qemu, cloud and
//! generic flavour, and the host's own kernel on loop mounts) and every
//! filesystem it offers among xfs, ext4, btrfs, tmpfs, fuse, f2fs, ntfs3, ntfs,
//! gfs2, ocfs2 and bcachefs, the racer runs a list of workloads, each under
//! its own observer: a few "race" runs (hole punches racing mapped faults and
//! buffered reads of the punched range: race classes A and B), then one short
//! run per invalidator (punch, zero range, collapse, insert, ftruncate,
//! truncate, MADV_REMOVE, FICLONERANGE, FIDEDUPERANGE). The observer's
//! summaries are summed per kernel × filesystem into one table, which is
//! printed and written as JSON.

mod host;
mod model;
mod report;
#[cfg(test)]
mod tests;
mod vm;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use observer_tests::ops::{self, Op};

use self::{
    model::{KernelResult, Offer, Planned, RACE},
    report::Report,
};
use crate::{
    build_cmd,
    progress::Progress,
    util::{self, Workspace, pick, prepare_out, say},
    vm::{
        Step,
        kernel::{Flavour, Spec},
        kernel_filesystems,
    },
};

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Kernels, in order: Debian series (5.10, 6.1, 6.12, 7.2 from sid, 7.3
    /// from trixie-backports), with `:amd64` for the generic flavour, or
    /// exact releases, booted under qemu as `cargo xtask vm` does, and `host`
    /// for the running kernel on loop mounts [default: every series' cloud
    /// kernel, the generic one of 5.10, 6.12 and 7.3, and the host; with
    /// --all, every series' generic one too].
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Filesystems, where the kernel offers them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "xfs,ext4,btrfs,tmpfs,fuse,f2fs,ntfs3,ntfs,gfs2,ocfs2,bcachefs"
    )]
    pub fs: Vec<String>,
    /// Invalidators to run one short racer each for (racer --op values), on
    /// every kernel [default: every one on the host; on the VM kernels the
    /// ones the truth-table test asserts there, see --all].
    #[arg(long, value_delimiter = ',')]
    pub ops: Option<Vec<String>>,
    /// Every invalidator on every kernel: the whole table, not only the
    /// cells CI asserts (which fit its time budget on two cores).
    #[arg(long)]
    pub all: bool,
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
        default_value = "--op punch --punch-pages 16 --fault-threads 2 --readers 2 --check-holes",
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

/// One kernel's row to run, or why it cannot.
enum Row<'a> {
    Vm(vm::Kernel<'a>),
    Host {
        release: String,
        offer: Offer,
        steps: usize,
    },
    Broken(anyhow::Error),
}

/// The kernels CI's default run covers: every series' cloud kernel (xfs,
/// ext4, btrfs, tmpfs, fuse, ntfs3 on 6.12, ntfs on 7.x), and the generic
/// flavour (f2fs, gfs2, ocfs2) of the oldest series, the newest, and 6.12,
/// the one with ntfs3 and bcachefs.
const DEFAULT_KERNELS: &[&str] = &[
    "5.10",
    "5.10:amd64",
    "6.1",
    "6.12",
    "6.12:amd64",
    "7.2",
    "7.3",
    "7.3:amd64",
    "host",
];

/// --all: every series in both flavours.
const ALL_KERNELS: &[&str] = &[
    "5.10",
    "5.10:amd64",
    "6.1",
    "6.1:amd64",
    "6.12",
    "6.12:amd64",
    "7.2",
    "7.2:amd64",
    "7.3",
    "7.3:amd64",
    "host",
];

pub fn run(ws: &Workspace, mut args: MatrixArgs) -> Result<()> {
    if args.kernels.is_empty() {
        let list = if args.all {
            ALL_KERNELS
        } else {
            DEFAULT_KERNELS
        };
        args.kernels = list.iter().map(|k| k.to_string()).collect();
    }
    crate::vm::check_filesystems("--fs", &args.fs)?;
    for op in args.ops.iter().flatten() {
        if Op::named(op).is_none() {
            let all: Vec<&str> = ops::ALL.iter().map(|o| o.name()).collect();
            bail!("--ops {op}: not one of {}", all.join(","));
        }
    }
    if args.kernels.iter().any(|k| k == "host") && !util::is_root() {
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
    prepare_out(&dir, OUT_MARKER, "matrix")?;
    let dir = fs::canonicalize(&dir)?;

    let mut bins = build_cmd::fresh_or_as_they_are(ws, args.no_build)?;
    bins.observer = pick(args.observer_bin.as_deref(), "OBSERVER_BIN", bins.observer);
    bins.racer = pick(args.racer_bin.as_deref(), "RACER_BIN", bins.racer);
    for (name, bin) in [("observer", &bins.observer), ("racer", &bins.racer)] {
        if !bin.is_file() {
            bail!("no {name} binary at {}", bin.display());
        }
    }

    let started = Instant::now();
    // Every kernel is planned first (a VM kernel is downloaded if need be),
    // so that the progress line knows how many steps there are.
    let mut rows: Vec<(Row, Duration)> = args
        .kernels
        .iter()
        .map(|spec| {
            let t0 = Instant::now();
            (plan_kernel(ws, &args, spec), t0.elapsed())
        })
        .collect();
    share_flavours(&mut rows);
    for (row, _) in &mut rows {
        if let Row::Vm(k) = row {
            k.planned = k
                .offer
                .runs
                .iter()
                .flat_map(|fs| plan(&args, k.spec, fs))
                .collect();
        }
    }
    let total = rows
        .iter()
        .map(|(row, _)| match row {
            Row::Vm(k) => k.planned.len(),
            Row::Host { steps, .. } => *steps,
            Row::Broken(_) => 0,
        })
        .sum();
    let progress = Progress::start(total);
    let mut kernels = Vec::new();
    for ((row, planning), spec) in rows.into_iter().zip(&args.kernels) {
        let t0 = Instant::now();
        let kdir = dir.join(sanitize(spec));
        let result = match row {
            Row::Vm(k) => vm::run(ws, &args, &bins, k, &progress, &kdir),
            Row::Host { release, offer, .. } => {
                host::run(&args, &bins, release, &offer, &progress, &kdir)
            }
            Row::Broken(error) => Err(error),
        };
        let wall_s = (planning + t0.elapsed()).as_secs_f64();
        let k = match result {
            Ok(k) => KernelResult { wall_s, ..k },
            Err(e) => {
                say(format!("kernel {spec}: {e:#}"));
                KernelResult {
                    spec: spec.clone(),
                    release: String::new(),
                    package: None,
                    mode: if spec == "host" { "host" } else { "vm" },
                    wall_s,
                    error: Some(format!("{e:#}")),
                    guest_errors: Vec::new(),
                    boots: 0,
                    cells: Vec::new(),
                }
            }
        };
        say(format!("kernel {spec}: {:.0}s", k.wall_s));
        kernels.push(k);
    }
    drop(progress);
    let report = Report {
        args: &args,
        qemu: crate::vm::qemu_version(),
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

/// What `spec` will run: the filesystems its kernel offers among --fs
/// (the steps of a VM row are planned once [`share_flavours`] has run).
fn plan_kernel<'a>(ws: &Workspace, args: &MatrixArgs, spec: &'a str) -> Row<'a> {
    if spec == "host" {
        let offer = host::offer(&args.fs);
        let release = util::output(std::process::Command::new("uname").arg("-r"));
        return match release {
            Ok(release) => Row::Host {
                release: release.trim().to_string(),
                steps: offer.runs.iter().map(|fs| plan(args, spec, fs).len()).sum(),
                offer,
            },
            Err(error) => Row::Broken(error),
        };
    }
    match kernel_filesystems(ws, spec, &args.fs) {
        Ok(k) => Row::Vm(vm::Kernel {
            spec,
            release: k.release,
            package: k.package,
            planned: Vec::new(),
            offer: Offer {
                runs: k.offered,
                missing: k.missing,
            },
        }),
        Err(error) => Row::Broken(error),
    }
}

/// Two flavours of one series run each filesystem once: the cloud row
/// what it offers, the generic row (`SERIES:amd64`) only what the cloud
/// one lacks (f2fs, gfs2, ...). A filesystem neither offers is shown as
/// not testable on the generic row alone, which has every module Debian
/// builds.
fn share_flavours(rows: &mut [(Row, Duration)]) {
    let series = |spec: &str| {
        Spec::parse(spec)
            .ok()
            .map(|s| (s.version.to_string(), s.flavour))
    };
    // What each series' rows of one flavour offer.
    let offered = |flavour: Flavour| -> Vec<(String, Vec<String>)> {
        rows.iter()
            .filter_map(|(row, _)| match row {
                Row::Vm(k) => match series(k.spec)? {
                    (version, f) if f == flavour => Some((version, k.offer.runs.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    let clouds = offered(Flavour::Cloud);
    let generics = offered(Flavour::Generic);
    for (row, _) in rows.iter_mut() {
        let Row::Vm(k) = row else { continue };
        let Some((version, flavour)) = series(k.spec) else {
            continue;
        };
        let sibling = match flavour {
            Flavour::Cloud => &generics,
            Flavour::Generic => &clouds,
        };
        let Some((_, theirs)) = sibling.iter().find(|(v, _)| *v == version) else {
            continue;
        };
        match flavour {
            Flavour::Cloud => k.offer.missing.clear(),
            Flavour::Generic => k.offer.runs.retain(|fs| !theirs.contains(fs)),
        }
    }
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

/// Invalidators the VM kernels run unless --all or --ops say otherwise:
/// those whose cells the truth-table test asserts per kernel (the race runs
/// and the punch). Every other one runs on the host, where a step costs
/// seconds, not a TCG guest's minute.
const VM_ASSERTED_OPS: &[&str] = &["punch"];

impl MatrixArgs {
    /// The invalidators `spec` runs.
    pub(crate) fn ops_for(&self, spec: &str) -> Vec<String> {
        match &self.ops {
            Some(ops) => ops.clone(),
            None if self.all || spec == "host" => {
                ops::ALL.iter().map(|o| o.name().to_string()).collect()
            }
            None => VM_ASSERTED_OPS.iter().map(|o| o.to_string()).collect(),
        }
    }

    /// Every invalidator some kernel runs, in table order.
    pub(crate) fn op_names(&self) -> Vec<String> {
        ops::ALL
            .iter()
            .map(|o| o.name().to_string())
            .filter(|op| self.kernels.iter().any(|k| self.ops_for(k).contains(op)))
            .collect()
    }
}

/// The steps for one filesystem: the race runs, then one run per op.
fn plan(args: &MatrixArgs, spec: &str, fs: &str) -> Vec<Planned> {
    let race = (1..=args.race_runs).map(|i| Planned {
        workload: RACE.to_string(),
        step: Step {
            name: format!("{fs}.race{i}"),
            fs: fs.to_string(),
            seconds: args.race_secs,
            racer_args: args.race_args.clone(),
        },
    });
    let ops = args.ops_for(spec).into_iter().map(|op| Planned {
        workload: op.clone(),
        step: Step {
            name: format!("{fs}.{op}"),
            fs: fs.to_string(),
            seconds: args.op_secs,
            racer_args: format!("--op {op} {}", args.op_args),
        },
    });
    race.chain(ops).collect()
}
