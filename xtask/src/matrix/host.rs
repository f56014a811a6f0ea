//! The matrix's host row: the running kernel, on loop mounts. Each step
//! leaves the files the guest's init.sh leaves for it (see `vm::steps`), so
//! that the host row is read like any other.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use observer_report::Record;
use observer_tests::{FsType, LoopMount, ObserverProcess};

use super::{
    MatrixArgs,
    model::{self, KernelResult, Offer, Planned, RACER_UNSUPPORTED},
};
use crate::{build_cmd::Binaries, progress::Progress, util::say};

/// As the guest's observer.sh: a minute to load and verify the programs, half
/// a minute to drain the ring buffer and write the summary.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which filesystems of `fs` the running kernel can mount: those in
/// /proc/filesystems (the host loads no modules for the matrix). tmpfs-huge
/// is a guest's mount only.
pub fn offer(fs: &[String]) -> Offer {
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let mut offer = Offer::default();
    for f in fs {
        let t = FsType::named(f);
        let name = t.map(|t| t.as_str());
        let has = name.is_some_and(|n| known.split_whitespace().any(|w| w == n));
        if let (true, Some(why)) = (has, t.and_then(FsType::untestable_here)) {
            offer
                .missing
                .push((f.clone(), format!("the host kernel has {f}, but {why}")));
        } else if has {
            offer.runs.push(f.clone());
        } else if name.is_some() {
            offer.missing.push((
                f.clone(),
                format!("the host kernel has no {f} (not in /proc/filesystems)"),
            ));
        }
    }
    offer
}

pub fn run(
    args: &MatrixArgs,
    bins: &Binaries,
    release: String,
    offer: &Offer,
    progress: &Progress,
    kdir: &Path,
) -> Result<KernelResult> {
    fs::create_dir_all(kdir)?;
    let mut planned: Vec<Planned> = Vec::new();
    let mut guest_errors = Vec::new();
    for fs in &offer.runs {
        let steps = super::plan(args, "host", fs);
        let mount = FsType::named(fs)
            .context("no such filesystem")
            .and_then(|t| LoopMount::new(t, if t == FsType::Tmpfs { 256 } else { 512 }));
        let mount = match mount {
            Ok(m) => m,
            Err(e) => {
                guest_errors.push(format!("{fs}: {e:#}"));
                for p in &steps {
                    progress.finished(&format!("host {} (no mount)", p.step.name));
                }
                continue;
            }
        };
        for p in steps {
            let label = format!("host {}", p.step.name);
            progress.working_on(&label);
            if let Err(e) = step(bins, &mount, &p, kdir) {
                guest_errors.push(format!("[{}] {e:#}", p.step.name));
            }
            progress.finished(&label);
            planned.push(p);
        }
    }
    if !guest_errors.is_empty() {
        fs::write(kdir.join("errors"), guest_errors.join("\n") + "\n")?;
    }
    Ok(KernelResult {
        spec: "host".into(),
        release,
        package: None,
        mode: "host",
        wall_s: 0.0,
        error: None,
        guest_errors,
        boots: 0,
        cells: model::cells(&args.fs, offer, &planned, kdir),
    })
}

/// One step on the host: the files the guest's init.sh would have written.
fn step(bins: &Binaries, mount: &LoopMount, planned: &Planned, dir: &Path) -> Result<()> {
    let step = &planned.step;
    let r = |ext: &str| dir.join(format!("{}.{ext}", step.name));
    let t0 = Instant::now();
    let file = mount.path().join("racer.dat");
    let done = || {
        let _ = fs::remove_file(&file);
        let _ = fs::remove_file(mount.path().join("racer.dat.src"));
        fs::write(
            r("uptime"),
            format!("0 {:.2}\n", t0.elapsed().as_secs_f64()),
        )
    };
    let racer = |extra: &[&str]| {
        Command::new(&bins.racer)
            .arg("--file")
            .arg(&file)
            .args(extra)
            .args(step.racer_args.split_whitespace())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", bins.racer.display()))
    };
    let unsupported = |stderr: &[u8]| {
        say(format!(
            "[host {}] not supported: {}",
            step.name,
            String::from_utf8_lossy(stderr).trim()
        ));
    };
    // An operation the filesystem lacks needs no observer run.
    let probe = racer(&["--probe"])?;
    if probe.status.code() == Some(RACER_UNSUPPORTED) {
        fs::write(r("racer.log"), &probe.stderr)?;
        fs::write(r("racer.rc"), format!("{RACER_UNSUPPORTED}\n"))?;
        unsupported(&probe.stderr);
        done()?;
        return Ok(());
    }
    // The host may run other workloads: show only alerts on our filesystem
    // (the summary's counters stay machine-wide).
    let dev = mount.dev();
    say(format!("[host {}] observer --dev {dev}", step.name));
    let alerts = r("alerts.json");
    let args: [&OsStr; 5] = [
        "--json".as_ref(),
        "--output".as_ref(),
        alerts.as_ref(),
        "--dev".as_ref(),
        dev.as_ref(),
    ];
    let observer = ObserverProcess::start(&bins.observer, args, READY_TIMEOUT);
    let observer = match observer {
        Ok(o) => o,
        Err(e) => {
            fs::write(r("ready"), "not-ready\n")?;
            fs::write(r("observer.log"), format!("{e:#}\n"))?;
            return Err(e);
        }
    };
    fs::write(r("ready"), "ready\n")?;
    let seconds = step.seconds.to_string();
    let out = racer(&["--duration", &seconds])?;
    let rc = out.status.code().unwrap_or(-1);
    fs::write(r("racer.json"), &out.stdout)?;
    fs::write(r("racer.log"), &out.stderr)?;
    fs::write(r("racer.rc"), format!("{rc}\n"))?;
    let exit = observer.stop(STOP_TIMEOUT)?;
    fs::write(r("observer.log"), &exit.stderr)?;
    fs::write(r("observer.rc"), format!("{}\n", exit.code().unwrap_or(-1)))?;
    trim(&dir.join(&step.name))?;
    done()?;
    match rc {
        0 => {}
        RACER_UNSUPPORTED => unsupported(&out.stderr),
        _ => say(format!(
            "[host {}] racer exited {rc}: {}",
            step.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
    Ok(())
}

/// The host side of init.sh's trim(): PREFIX.alerts.json becomes
/// PREFIX.observer.json (the startup record and the summary),
/// PREFIX.kinds ("COUNT KIND" lines) and PREFIX.samples.json (the first 3
/// alerts of each kind).
pub fn trim(prefix: &Path) -> Result<()> {
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
        let Ok(Record::Alert(alert)) = Record::parse(line) else {
            continue;
        };
        let Some(kind) = alert["kind"].as_str() else {
            continue;
        };
        let n = kinds.entry(kind.to_string()).or_default();
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
