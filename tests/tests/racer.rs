//! End-to-end checks of the `racer` and `faultbench` workload binaries.
//!
//! The loop-mount tests need root and are ignored by default; run them with
//! `cargo test -p observer-tests -- --include-ignored` (as `cargo xtask test` does).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use observer_tests::{FaultbenchReport, FsType, LoopMount, RacerReport, faultbench_bin, racer_bin};

const PAGES: u64 = 256;

fn run(bin: PathBuf, args: &[&str]) -> Output {
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    eprintln!(
        "{} {args:?}: {}\nstdout: {}stderr: {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs racer and returns its (single-line) report.
fn race(file: &Path, extra: &[&str]) -> RacerReport {
    let pages = PAGES.to_string();
    let mut args = vec![
        "--file",
        file.to_str().unwrap(),
        "--duration",
        "2",
        "--pages",
        &pages,
        "--seed",
        "7",
    ];
    args.extend_from_slice(extra);
    let out = run(racer_bin(), &args);
    assert!(out.status.success(), "racer failed: {out:?}");
    assert!(out.stderr.is_empty(), "racer wrote to stderr: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "want one line: {stdout:?}");
    // The hand-written JSON must also satisfy a real parser.
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("racer output is JSON");
    assert!(v["punched"]["start"].is_u64(), "{v}");
    RacerReport::parse(&stdout).expect("parse racer report")
}

fn check(r: &RacerReport, file: &Path, op: &str) {
    let st = std::fs::metadata(file).unwrap();
    assert_eq!(r.file, std::fs::canonicalize(file).unwrap());
    assert_eq!(r.ino, st.ino(), "ino");
    assert_eq!(r.dev(), st.dev(), "dev {}:{}", r.dev_major, r.dev_minor);
    assert_eq!(r.op, op);
    assert_eq!((r.pages, r.punch_pages), (PAGES, 16));
    assert_eq!(r.seed, 7);
    assert!(r.punches > 0, "no punches: {r:?}");
    assert!(r.faults > 0, "no faults: {r:?}");
    assert!(
        r.punched_start <= r.punched_end && r.punched_end < PAGES,
        "punched range outside [0, {PAGES}): {r:?}"
    );
    assert!((1.9..10.0).contains(&r.duration_s), "duration {r:?}");
    // Every operation ends by restoring the full size.
    assert_eq!(st.len(), PAGES * 4096, "file size after the run");
}

fn loop_mount(fs: FsType) -> LoopMount {
    assert!(
        observer_tests::is_root(),
        "needs root (loop mounts); run as root or leave the test ignored"
    );
    LoopMount::new(fs, 512).unwrap_or_else(|e| panic!("{fs} loop mount: {e:#}"))
}

#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn punch_on_xfs() {
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("race");
    let r = race(&file, &[]);
    check(&r, &file, "punch");
}

/// --check-holes reads every punched range back: on xfs, whose reads take
/// the invalidate_lock the punch holds, each one is all zeroes.
#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn punched_holes_read_back_as_zeroes_on_xfs() {
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("race");
    let r = race(&file, &["--readers", "2", "--check-holes"]);
    check(&r, &file, "punch");
    let holes = r.holes.clone().expect("--check-holes reports holes");
    assert_eq!(holes.checked, r.punches, "{r:?}");
    assert_eq!(holes.pages_not_zero, 0, "{r:?}");
    assert_eq!(holes.first_page, None, "{r:?}");
    // Without the flag there is nothing to report.
    assert_eq!(race(&file, &[]).holes, None);
}

#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn zero_range_on_xfs() {
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("race");
    let r = race(&file, &["--op", "zero"]);
    check(&r, &file, "zero");
}

#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn truncate_on_ext4() {
    let m = loop_mount(FsType::Ext4);
    let file = m.path().join("race");
    // Two fault threads per CPU-ish, so some touch pages beyond a transient
    // EOF and exercise the SIGBUS recovery.
    let r = race(&file, &["--op", "truncate", "--fault-threads", "3"]);
    check(&r, &file, "truncate");
    // A truncate invalidates everything from the range start to EOF.
    assert_eq!(r.punched_end, PAGES - 1);
}

/// Every invalidator on XFS (reflink) and ext4, with readers: the ops the
/// file system has run and leave the file at its size; the others exit 77
/// with one line, and `--probe` says the same without running.
#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn every_op_on_xfs_and_ext4() {
    const OPS: &[&str] = &[
        "punch",
        "zero",
        "collapse",
        "insert",
        "truncate",
        "truncate-path",
        "madv-remove",
        "clone",
        "dedupe",
    ];
    for fs in [FsType::Xfs, FsType::Ext4] {
        let m = loop_mount(fs);
        let file = m.path().join("race");
        for op in OPS {
            let unsupported = fs == FsType::Ext4 && ["clone", "dedupe"].contains(op);
            let probe = run(
                racer_bin(),
                &["--file", file.to_str().unwrap(), "--op", op, "--probe"],
            );
            assert!(probe.stdout.is_empty(), "--probe printed: {probe:?}");
            if unsupported {
                assert_eq!(probe.status.code(), Some(77), "{fs} {op}: {probe:?}");
                let full = run(
                    racer_bin(),
                    &[
                        "--file",
                        file.to_str().unwrap(),
                        "--op",
                        op,
                        "--duration",
                        "0.2",
                    ],
                );
                assert_eq!(full.status.code(), Some(77), "{fs} {op}: {full:?}");
                let err = String::from_utf8(full.stderr).unwrap();
                assert!(
                    err.starts_with("racer: ")
                        && err.ends_with("(the file system does not support it)\n"),
                    "{err:?}"
                );
                assert_eq!(err.lines().count(), 1);
                continue;
            }
            assert!(probe.status.success(), "{fs} {op} --probe: {probe:?}");
            let r = race(&file, &["--op", op, "--readers", "1"]);
            check(&r, &file, op);
            assert!(r.reads > 0, "{fs} {op}: no reads: {r:?}");
        }
    }
}

#[test]
#[ignore = "needs root: loop mounts; run by cargo xtask test"]
fn faultbench_on_xfs() {
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("bench");
    for extra in [&[][..], &["--punch"][..]] {
        let mut args = vec!["--file", file.to_str().unwrap(), "--pages", "1024"];
        args.extend_from_slice(extra);
        let out = run(faultbench_bin(), &args);
        assert!(out.status.success());
        let r = FaultbenchReport::parse(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!((r.rounds, r.pages), (50, 1024));
        // At least one fault per round (fault-around maps many pages per fault).
        assert!(r.faults >= r.rounds, "{r:?}");
        assert!(r.faults_per_s > 0.0, "{r:?}");
    }
}

/// Errors are a single `racer: …` line on stderr and a failing exit status.
#[test]
fn racer_errors_are_one_line() {
    let dir = std::env::temp_dir().join(format!("racer-missing-{}", std::process::id()));
    let file = dir.join("x");
    let out = run(racer_bin(), &["--file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "racer: cannot create {}: No such file or directory\n",
            file.display()
        )
    );

    let out = run(
        racer_bin(),
        &["--file", "/dev/null", "--pages", "4", "--punch-pages", "8"],
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "racer: --punch-pages (8) must not exceed --pages (4)\n"
    );

    // Another puncher's write-back would read as a hole not zeroed.
    let out = run(
        racer_bin(),
        &[
            "--file",
            "/dev/null",
            "--check-holes",
            "--punch-threads",
            "2",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "racer: --check-holes needs --punch-threads 1\n"
    );
}

/// A short unprivileged run in the temp directory, whose file system must
/// punch holes (ext4, xfs, btrfs and tmpfs all do).
#[test]
fn racer_smoke_in_tmp() {
    let file = std::env::temp_dir().join(format!("racer-smoke-{}", std::process::id()));
    let out = run(
        racer_bin(),
        &[
            "--file",
            file.to_str().unwrap(),
            "--duration",
            "0.3",
            "--pages",
            "64",
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "racer failed in {} (a file system that cannot punch holes fails this test): {}",
        std::env::temp_dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = RacerReport::parse(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert!(r.punches > 0 && r.punched_end < 64, "{r:?}");
}
