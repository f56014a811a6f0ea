//! `cargo xtask bench --replay N`: the correlator's own throughput. The
//! racer runs a few seconds under `observer record`; the recording is then
//! replayed N times, each `observer replay` pinned to one CPU. Its stderr
//! says `observer: replaying N records` once the file is read and decoded,
//! so each replay splits into startup (exec, reading the recording) and the
//! replay proper (the pipeline: correlator, sinks, summary), timed apart.
//! The replay proper still has fixed costs (setting the pipeline up, the
//! summary at the end), so the recording's first half is replayed as well
//! (a recording cut short replays every whole entry): the difference between
//! the two gives the marginal rate, records/s with every fixed cost out.
//! Peak RSS is the kernel's (`ru_maxrss` from wait4).
//!
//! Each replay runs twice: writing every alert as JSON (what `--json`
//! costs), and with `--min-severity critical`, which prints none of the
//! racer's info alerts but correlates and counts every one of them: the
//! correlator's own rate.

use std::{
    ffi::OsString,
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use observer_tests::{LoopMount, ObserverProcess};
use serde::Serialize;

use super::{Binaries, report::median};
use crate::util::say;

/// How long the racer runs under `observer record`.
pub(crate) const RECORD_S: f64 = 3.0;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReplayResult {
    pub(crate) records: u64,
    pub(crate) recording_bytes: u64,
    pub(crate) replays: Vec<OneReplay>,
    /// The recording's first half, replayed as many times.
    pub(crate) half_records: u64,
    pub(crate) half_replays: Vec<OneReplay>,
    /// The same with `--min-severity critical`: no alert written.
    pub(crate) quiet: Vec<OneReplay>,
    pub(crate) quiet_half: Vec<OneReplay>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct OneReplay {
    /// From exec to the "replaying" line.
    pub(crate) startup_s: f64,
    /// From that line to the exit.
    pub(crate) replay_s: f64,
    /// User plus system CPU of the whole process.
    pub(crate) cpu_s: f64,
    pub(crate) peak_rss_kib: u64,
}

impl ReplayResult {
    /// Median records per second of the replay proper.
    pub(crate) fn records_per_s(&self) -> f64 {
        let v: Vec<f64> = self
            .replays
            .iter()
            .map(|r| self.records as f64 / r.replay_s)
            .collect();
        median(&v)
    }

    /// Records/s of the second half alone: (all - first half) records over
    /// the difference of the median replay times.
    pub(crate) fn marginal_records_per_s(&self) -> f64 {
        self.marginal(&self.replays, &self.half_replays)
    }

    /// The marginal rate with no alert written.
    pub(crate) fn quiet_records_per_s(&self) -> f64 {
        self.marginal(&self.quiet, &self.quiet_half)
    }

    fn marginal(&self, whole: &[OneReplay], half: &[OneReplay]) -> f64 {
        let t = |v: &[OneReplay]| median(&v.iter().map(|r| r.replay_s).collect::<Vec<_>>());
        let dt = t(whole) - t(half);
        if dt > 0.0 {
            self.records.saturating_sub(self.half_records) as f64 / dt
        } else {
            f64::NAN
        }
    }

    pub(crate) fn startup_s(&self) -> f64 {
        median(&self.replays.iter().map(|r| r.startup_s).collect::<Vec<_>>())
    }

    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.replays
            .iter()
            .map(|r| r.peak_rss_kib)
            .max()
            .unwrap_or(0)
    }
}

pub(super) fn measure(bins: &Binaries, mount: &LoopMount, n: u32) -> Result<ReplayResult> {
    if !bins.racer.is_file() {
        bail!(
            "{} not found: run `cargo xtask build` first",
            bins.racer.display()
        );
    }
    let rec = mount.dir().join("racer.rec");
    let _ = fs::remove_file(&rec);
    say(format!("recording the racer for {RECORD_S} s"));
    let args: Vec<OsString> = vec![
        "record".into(),
        rec.clone().into(),
        "--json".into(),
        "--output".into(),
        "/dev/null".into(),
    ];
    let observer = ObserverProcess::start(&bins.observer, &args, Duration::from_secs(60))?;
    let racer = Command::new(&bins.racer)
        .arg("--file")
        .arg(mount.path().join("racer.dat"))
        .args(["--duration", &RECORD_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .context("cannot run the racer")?;
    let exit = observer.stop(Duration::from_secs(60))?;
    if !racer.status.success() {
        bail!(
            "racer failed ({}): {}",
            racer.status,
            String::from_utf8_lossy(&racer.stderr).trim()
        );
    }
    if !exit.status.success() {
        bail!("observer record failed ({}): {}", exit.status, exit.stderr);
    }
    let recording_bytes = fs::metadata(&rec).map(|m| m.len()).unwrap_or(0);
    let half = mount.dir().join("racer-half.rec");
    let bytes = fs::read(&rec).with_context(|| format!("cannot read {}", rec.display()))?;
    fs::write(&half, &bytes[..bytes.len() / 2])
        .with_context(|| format!("cannot write {}", half.display()))?;
    let mut replays = Vec::new();
    let mut half_replays = Vec::new();
    let mut quiet = Vec::new();
    let mut quiet_half = Vec::new();
    let (mut records, mut half_records) = (0, 0);
    let (mut q_records, mut q_half_records) = (0, 0);
    const JSON: &[&str] = &[];
    const QUIET: &[&str] = &["--min-severity", "critical"];
    // Alternated, as the bench's setups are.
    for i in 1..=n {
        for (file, flags, out, count, what) in [
            (&rec, JSON, &mut replays, &mut records, "whole"),
            (
                &half,
                JSON,
                &mut half_replays,
                &mut half_records,
                "first half",
            ),
            (
                &rec,
                QUIET,
                &mut quiet,
                &mut q_records,
                "whole, no alert written",
            ),
            (
                &half,
                QUIET,
                &mut quiet_half,
                &mut q_half_records,
                "first half, no alert written",
            ),
        ] {
            let (r, n_records) = replay_once(bins, file, flags)?;
            say(format!(
                "replay {i}/{n}, {what}: {n_records} records, startup {:.3} s, replay {:.3} s ({:.0} records/s), peak RSS {} MiB",
                r.startup_s,
                r.replay_s,
                n_records as f64 / r.replay_s,
                r.peak_rss_kib / 1024
            ));
            *count = n_records;
            out.push(r);
        }
    }
    let _ = fs::remove_file(&rec);
    let _ = fs::remove_file(&half);
    Ok(ReplayResult {
        records,
        recording_bytes,
        replays,
        half_records,
        half_replays,
        quiet,
        quiet_half,
    })
}

fn replay_once(bins: &Binaries, rec: &std::path::Path, flags: &[&str]) -> Result<(OneReplay, u64)> {
    let mut cmd = Command::new(&bins.observer);
    cmd.arg("replay")
        .arg(rec)
        .args(["--json", "--output", "/dev/null"])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: sched_setaffinity is async-signal-safe and touches only the
    // set built on this stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("cannot start observer replay")?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut started = None;
    let mut count = None;
    let mut text = String::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("observer: replaying ") {
            started = Some(Instant::now());
            count = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
        text.push_str(&line);
        text.push('\n');
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; the pointers are to live locals.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let ended = Instant::now();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("observer replay failed (wait status {status}): {text}");
    }
    let (Some(started), Some(count)) = (started, count) else {
        bail!("observer replay never said how many records it replays: {text}");
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        OneReplay {
            startup_s: (started - t0).as_secs_f64(),
            replay_s: (ended - started).as_secs_f64(),
            cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime),
            peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
        count,
    ))
}
