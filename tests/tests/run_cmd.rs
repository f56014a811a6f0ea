//! `observer run [OPTIONS] -- CMD`: the command runs as the observer's child
//! with the caller's stdio, the observer exits with its status (or with its
//! own documented codes), signals reach the command, and `--scope cmd`
//! watches the command's tasks only.
//!
//! They need root (BPF, loop mounts) and are ignored by default; `cargo
//! xtask test` runs them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::MutexGuard;
use std::time::Duration;

use observer_tests::{
    FsType, LoopMount, ObserverExit, ObserverProcess, RacerReport, Stream, is_root, observer_bin,
    racer_bin,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const EXIT_FAIL_ON: i32 = 112;
const EXIT_OBSERVER: i32 = 125;
const EXIT_NOT_EXECUTABLE: i32 = 126;
const EXIT_NOT_FOUND: i32 = 127;

fn serial() -> MutexGuard<'static, ()> {
    assert!(is_root(), "needs root (BPF, loop mounts)");
    observer_tests::serial()
}

/// `observer ARGS`, to its end.
fn observer(args: &[&str]) -> ObserverExit {
    let p = ObserverProcess::spawn(&observer_bin(), args).expect("start the observer");
    p.wait(TIMEOUT).expect("the observer ends")
}

/// The lines of stderr that are the observer's own.
fn own_errors(exit: &ObserverExit) -> Vec<&str> {
    exit.stderr
        .lines()
        .filter(|l| l.starts_with("observer: error"))
        .collect()
}

#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn run_passes_the_commands_status_and_stdout_through() {
    let _s = serial();
    let exit = observer(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo from-cmd; echo cmd-err >&2; exit 3",
    ]);
    assert_eq!(exit.code(), Some(3), "{}", exit.stderr);
    // CMD's stdout is CMD's alone: alerts and the summary go to stderr.
    assert_eq!(exit.stdout, "from-cmd\n");
    assert!(exit.stderr.contains("cmd-err"), "{}", exit.stderr);
    assert!(exit.stderr.contains("summary after "), "{}", exit.stderr);
    let ready = exit
        .stderr
        .find("observer: ready: running sh -c")
        .expect("a ready line");
    assert!(
        exit.stderr.find("cmd-err").unwrap() > ready,
        "CMD ran before the ready line:\n{}",
        exit.stderr
    );
    let exit = observer(&["run", "--", "true"]);
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
}

#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn run_exit_codes_follow_timeout() {
    let _s = serial();
    let exit = observer(&["run", "--", "no-such-command-anywhere"]);
    assert_eq!(exit.code(), Some(EXIT_NOT_FOUND), "{}", exit.stderr);
    assert_eq!(own_errors(&exit).len(), 1, "{}", exit.stderr);
    assert!(
        exit.stderr
            .contains("no-such-command-anywhere: command not found"),
        "{}",
        exit.stderr
    );

    let plain = std::env::temp_dir().join(format!("not-executable-{}", std::process::id()));
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    let exit = observer(&["run", "--", plain.to_str().unwrap()]);
    std::fs::remove_file(&plain).unwrap();
    assert_eq!(exit.code(), Some(EXIT_NOT_EXECUTABLE), "{}", exit.stderr);
    assert_eq!(own_errors(&exit).len(), 1, "{}", exit.stderr);

    // Killed by a signal: 128 + N, as a shell reports it.
    let exit = observer(&["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(exit.code(), Some(128 + libc::SIGKILL), "{}", exit.stderr);

    // The observer's own failures: it could not start, or was asked wrong.
    let exit = observer(&["run", "--btf", "/no/such/btf", "--", "true"]);
    assert_eq!(exit.code(), Some(EXIT_OBSERVER), "{}", exit.stderr);
    assert_eq!(own_errors(&exit).len(), 1, "{}", exit.stderr);
    let exit = observer(&["run", "--fail-on", "sometimes", "--", "true"]);
    assert_eq!(exit.code(), Some(EXIT_OBSERVER), "{}", exit.stderr);
    assert_eq!(
        exit.stderr.lines().count(),
        1,
        "one line for bad input: {}",
        exit.stderr
    );
    let exit = observer(&["run", "--duration", "3", "--", "true"]);
    assert_eq!(exit.code(), Some(EXIT_OBSERVER), "{}", exit.stderr);
}

/// SIGTERM and SIGINT sent to the observer (as a CI runner sends them) reach
/// the command, whose status then ends the run; the summary is printed.
#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn run_forwards_sigterm_and_sigint() {
    let _s = serial();
    for (sig, code) in [(libc::SIGTERM, 42), (libc::SIGINT, 43)] {
        let mut p = ObserverProcess::spawn(
            &observer_bin(),
            [
                "run",
                "--",
                "sh",
                "-c",
                "trap 'exit 42' TERM; trap 'exit 43' INT; while :; do sleep 0.1; done",
            ],
        )
        .expect("start");
        p.wait_ready(TIMEOUT).expect("ready");
        // Let the shell install its traps.
        std::thread::sleep(Duration::from_millis(500));
        p.signal(sig).expect("signal the observer");
        let exit = p.wait(TIMEOUT).expect("the observer ends");
        assert_eq!(exit.code(), Some(code), "signal {sig}: {}", exit.stderr);
        assert!(exit.stderr.contains("summary after "), "{}", exit.stderr);
    }
}

fn spawn_racer(file: &Path, secs: &str) -> Child {
    Command::new(racer_bin())
        .arg("--file")
        .arg(file)
        .args(["--duration", secs])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start racer")
}

fn racer_report(child: Child) -> RacerReport {
    let out = child.wait_with_output().expect("racer ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "racer failed: {text}");
    RacerReport::parse(&text).expect("racer report")
}

fn dev(r: &RacerReport) -> String {
    format!("{}:{}", r.dev_major, r.dev_minor)
}

/// One racer runs as CMD of `observer run --scope cmd`, a second one on
/// another file outside it at the same time, while a plain observer watches
/// the whole host. The scoped run alerts on its racer's file exactly as the
/// host-wide observer does, and never on the outside racer's.
fn scope_cmd_sees_only_the_commands_files(follow: &str) {
    let _s = serial();
    let m = LoopMount::new(FsType::Xfs, 512).expect("xfs loop mount");
    let (inside, outside) = (m.path().join("inside.dat"), m.path().join("outside.dat"));
    let host_out = m.image().with_file_name("host.jsonl");
    let cmd_out = m.image().with_file_name("cmd.jsonl");
    let mut host = ObserverProcess::spawn(
        &observer_bin(),
        ["--json", "-o", host_out.to_str().unwrap()],
    )
    .expect("start the host observer");
    host.wait_ready(TIMEOUT).expect("host observer ready");
    let racer = racer_bin();
    let mut scoped = ObserverProcess::spawn(
        &observer_bin(),
        [
            "run",
            "--scope",
            "cmd",
            "--follow",
            follow,
            "--json",
            "-o",
            cmd_out.to_str().unwrap(),
            "--",
            racer.to_str().unwrap(),
            "--file",
            inside.to_str().unwrap(),
            "--duration",
            "3",
        ],
    )
    .expect("start the scoped observer");
    scoped.wait_ready(TIMEOUT).expect("scoped observer ready");
    let other = spawn_racer(&outside, "3");
    let scoped = scoped.wait(TIMEOUT).expect("the scoped run ends");
    assert_eq!(scoped.code(), Some(0), "{}", scoped.stderr);
    let outside_report = racer_report(other);
    let inside_report = RacerReport::parse(&scoped.stdout).expect("the inside racer's report");
    host.signal(libc::SIGINT).expect("stop the host observer");
    let host_exit = host.wait(TIMEOUT).expect("host observer ends");
    assert_eq!(host_exit.code(), Some(0), "{}", host_exit.stderr);

    let scope_line = match follow {
        "tree" => "observer: scope: the command's process tree",
        _ => "observer: scope: the command's cgroup",
    };
    assert!(scoped.stderr.contains(scope_line), "{}", scoped.stderr);
    let host_stream = Stream::read(&host_out).expect("host output");
    let cmd_stream = Stream::read(&cmd_out).expect("scoped output");
    let on = |s: &Stream, r: &RacerReport| s.alerts_on(&dev(r), r.ino).len();
    let (host_in, host_other) = (
        on(&host_stream, &inside_report),
        on(&host_stream, &outside_report),
    );
    let (cmd_in, cmd_other) = (
        on(&cmd_stream, &inside_report),
        on(&cmd_stream, &outside_report),
    );
    assert!(
        host_in > 0 && host_other > 0,
        "the host observer saw both races: {host_in}, {host_other}"
    );
    assert_eq!(cmd_other, 0, "the scoped run alerted on the outside racer");
    // Each observer's programs read the clock for themselves, so a fault-around
    // at the very edge of a window can fall in for one and out for the other:
    // a few in ten thousand.
    let tolerance = (host_in / 200).max(5);
    assert!(
        cmd_in.abs_diff(host_in) <= tolerance,
        "on the inside racer's file the scoped run has {cmd_in} alerts, the host observer {host_in}"
    );
    // Every window of the scoped run is one of the inside racer's punches,
    // and every punch is one.
    let (cmd_sum, host_sum) = (&cmd_stream.summary, &host_stream.summary);
    assert_eq!(
        cmd_sum.windows_by_op.get("punch_hole"),
        inside_report.punches,
        "{cmd_sum:?}"
    );
    // (The racer sizes its file with one ftruncate first.)
    assert_eq!(
        cmd_sum.windows,
        inside_report.punches + cmd_sum.windows_by_op.get("ftruncate"),
        "{cmd_sum:?}"
    );
    assert!(cmd_sum.windows_by_op.get("ftruncate") <= 2, "{cmd_sum:?}");
    assert!(
        host_sum.windows_by_op.get("punch_hole") >= inside_report.punches + outside_report.punches,
        "{host_sum:?}"
    );
    // Late records depend on how the two CPUs were shared; nothing else may
    // be lost.
    for s in [cmd_sum, host_sum] {
        let l = &s.lost;
        assert_eq!(
            (l.ringbuf_full, l.unresolved, l.undecodable),
            (0, 0, 0),
            "{l:?}"
        );
    }
}

#[test]
#[ignore = "needs root: BPF and loop mounts; run by cargo xtask test"]
fn scope_cmd_by_cgroup_sees_only_the_commands_files() {
    scope_cmd_sees_only_the_commands_files("cgroup");
}

#[test]
#[ignore = "needs root: BPF and loop mounts; run by cargo xtask test"]
fn scope_cmd_by_process_tree_sees_only_the_commands_files() {
    scope_cmd_sees_only_the_commands_files("tree");
}

/// An alert at or above --fail-on beats CMD's status. The host has no
/// critical outcomes (no PTE installer), so `--fail-on never` and the
/// default are told apart with info alerts: they never fail a run.
#[test]
#[ignore = "needs root: BPF and loop mounts; run by cargo xtask test"]
fn info_alerts_never_fail_a_run() {
    let _s = serial();
    let m = LoopMount::new(FsType::Ext4, 512).expect("ext4 loop mount");
    let file = m.path().join("racer.dat");
    let out = m.image().with_file_name("out.jsonl");
    let racer = racer_bin();
    let exit = observer(&[
        "run",
        "--json",
        "-o",
        out.to_str().unwrap(),
        "--",
        racer.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--duration",
        "2",
    ]);
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let s = Stream::read(&out).expect("output");
    assert!(!s.alerts.is_empty(), "the racer made no alert");
    assert!(s.alerts.iter().all(|a| a["kind"] == "pte_in_punch_window"));
    assert_ne!(exit.code(), Some(EXIT_FAIL_ON));
}
