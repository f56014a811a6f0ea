//! A third-party suite under `observer run`: stress-ng's fallocate, fpunch
//! and mmap-file stressors on XFS and ext4 loop mounts. None of them faults
//! on a file it punches at the same moment, so these runs are about
//! everything but detection: the exit codes, windows named after the
//! operations that succeeded (failed calls counted apart), fault-arounds
//! seen, every record accounted for, and the agent's memory.
//!
//! Needs root and stress-ng (`cargo xtask setup` installs it); `cargo xtask
//! test` runs it.

use std::ffi::OsString;
use std::time::Duration;

use observer_tests::stress::{self, Stressor};
use observer_tests::{
    FsType, LoopMount, ObserverExit, ObserverProcess, Stream, assert_nothing_vanished, is_root,
    observer_bin,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const SECS: u32 = 3;
/// The agent's peak RSS must stay below this (README, "Tests"). BTF parsing
/// is most of it today.
const PEAK_RSS_KIB: u64 = 160 * 1024;

fn run(m: &LoopMount, extra: &[&str], cmd: Vec<OsString>) -> (ObserverExit, Stream) {
    let out = m.image().with_file_name("stress.jsonl");
    let mut args: Vec<OsString> = ["run", "--scope", "cmd", "--json", "-o"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(out.clone().into());
    args.extend(extra.iter().map(OsString::from));
    args.push("--".into());
    args.extend(cmd);
    let p = ObserverProcess::spawn(&observer_bin(), &args).expect("start the observer");
    let exit = p.wait(TIMEOUT).expect("the run ends");
    let stream = Stream::read(&out).unwrap_or_else(|e| panic!("{e:#}; stderr:\n{}", exit.stderr));
    (exit, stream)
}

fn stressor_on(fs: FsType, s: &Stressor, extra: &[&str]) -> Stream {
    let m = LoopMount::new(fs, 512).expect("loop mount");
    let (exit, stream) = run(&m, extra, s.command(m.path(), SECS));
    assert_eq!(exit.code(), Some(0), "{} on {fs}: {}", s.name, exit.stderr);
    let sum = &stream.summary;
    assert_nothing_vanished(sum);
    assert_eq!(sum.lost.total(), 0, "{} on {fs}: {:?}", s.name, sum.lost);
    assert!(
        sum.agent.peak_rss_kib > 0 && sum.agent.peak_rss_kib < PEAK_RSS_KIB,
        "{} on {fs}: peak RSS {} KiB",
        s.name,
        sum.agent.peak_rss_kib
    );
    assert!(sum.health.silent.is_empty(), "{:?}", sum.health);
    eprintln!(
        "{} on {fs}: windows {:?}, failed {:?}, map_pages {}, peak RSS {} KiB",
        s.name,
        sum.windows_by_op,
        sum.failed_calls,
        sum.events.get("filemap_map_pages"),
        sum.agent.peak_rss_kib
    );
    stream
}

#[test]
#[ignore = "needs root and stress-ng; run by cargo xtask test"]
fn fallocate_windows_are_named_after_each_operation() {
    assert!(is_root());
    for fs in [FsType::Xfs, FsType::Ext4] {
        let s = stressor_on(fs, &stress::FALLOCATE, &[]);
        for op in [
            "punch_hole",
            "zero_range",
            "collapse_range",
            "insert_range",
            "ftruncate",
        ] {
            assert!(
                s.summary.windows_by_op.get(op) > 0,
                "fallocate on {fs}: no {op} window: {:?}",
                s.summary.windows_by_op
            );
        }
        assert_eq!(
            s.summary.windows_by_op.get("unknown"),
            0,
            "{:?}",
            s.summary.windows_by_op
        );
    }
}

/// fpunch's unaligned collapses and inserts fail with EINVAL and remove
/// nothing: they are failed calls, not windows of their operation.
#[test]
#[ignore = "needs root and stress-ng; run by cargo xtask test"]
fn fpunch_failed_calls_are_not_windows() {
    assert!(is_root());
    for fs in [FsType::Xfs, FsType::Ext4] {
        let s = stressor_on(fs, &stress::FPUNCH, &[]);
        let (w, failed) = (&s.summary.windows_by_op, &s.summary.failed_calls);
        assert!(w.get("punch_hole") > 0, "fpunch on {fs}: {w:?}");
        for op in ["collapse_range", "insert_range"] {
            assert!(
                failed.get(op) > 0,
                "fpunch on {fs}: no failed {op}: {failed:?}"
            );
            assert!(
                w.get(op) < failed.get(op),
                "fpunch on {fs}: most {op} calls fail, yet windows {w:?} and failures {failed:?}"
            );
        }
    }
}

/// The mmap stressor maps and faults its file: with the pre-filter off, its
/// fault-arounds reach the agent.
#[test]
#[ignore = "needs root and stress-ng; run by cargo xtask test"]
fn mmap_file_fault_arounds_are_seen() {
    assert!(is_root());
    for fs in [FsType::Xfs, FsType::Ext4] {
        let s = stressor_on(fs, &stress::MMAP_FILE, &["--full-stream"]);
        assert!(
            s.summary.events.get("filemap_map_pages") > 0,
            "mmap-file on {fs}: no fault-around: {:?}",
            s.summary.events
        );
        assert!(s.summary.health.hits.get("mm_filemap_map_pages") > 0);
    }
}

/// A suite that fails for its own reasons: its status passes through.
#[test]
#[ignore = "needs root and stress-ng; run by cargo xtask test"]
fn a_failing_suite_keeps_its_exit_status() {
    assert!(is_root());
    let m = LoopMount::new(FsType::Ext4, 512).expect("loop mount");
    let missing = m.path().join("no-such-dir");
    let cmd = stress::FALLOCATE.command(&missing, 1);
    let bare = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("run stress-ng");
    let want = bare.status.code().expect("an exit code");
    assert_ne!(want, 0, "stress-ng succeeded without its temp path");
    let (exit, stream) = run(&m, &[], cmd);
    assert_eq!(exit.code(), Some(want), "{}", exit.stderr);
    assert_nothing_vanished(&stream.summary);
}
