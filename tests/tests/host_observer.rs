//! End-to-end tests of the observer on this host's kernel: it runs next to the
//! `racer` workload on XFS/ext4 loop mounts and its output is checked record by
//! record. The host has no kprobes and refuses fentry, so every probe must
//! fall back to tracepoints by itself.
//!
//! They need root (loop mounts, BPF) and are ignored by default; run them with
//! `cargo test -p observer-tests -- --include-ignored` (as `cargo xtask test`
//! does). The tests take a process-wide lock so that only one observer and one
//! racer run at a time: the assertions are about each test's own racer file
//! (matched by dev and inode), but concurrent racers would compete for CPUs.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use observer_report::{Record, Startup, StartupProbe, Summary, Verdict};
use observer_tests::{
    FsType, LoopMount, ObserverExit, ObserverProcess, RacerReport, Stream, bpf_held_by, bpf_links,
    bpf_programs, comparable, is_root, observer_bin, ops::Op, racer_bin,
};
use observer_tests::{core_functions, serial};
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Seconds each racer runs.
const RACE_SECS: &str = "3";

fn need_root() {
    assert!(
        is_root(),
        "needs root (loop mounts, BPF); run as root or leave the test ignored"
    );
}

fn loop_mount(fs: FsType) -> LoopMount {
    need_root();
    LoopMount::new(fs, 512).unwrap_or_else(|e| panic!("{fs} loop mount: {e:#}"))
}

/// Where an observer run writes its JSON lines: next to the image, in the
/// mount's private directory (removed with it).
fn output_path(m: &LoopMount) -> PathBuf {
    m.image().with_file_name("observer.jsonl")
}

/// Starts the observer and waits for its `observer: ready:` line.
fn start_observer(args: &[&str]) -> ObserverProcess {
    let bin = observer_bin();
    let mut p = ObserverProcess::spawn(&bin, args)
        .unwrap_or_else(|e| panic!("cannot start {}: {e:#}", bin.display()));
    if let Err(e) = p.wait_ready(READY_TIMEOUT) {
        panic!("{} {args:?}: {e:#}", bin.display());
    }
    p
}

/// Sends `sig` and waits for a clean exit (status 0).
fn stop_observer(p: ObserverProcess, sig: libc::c_int) -> ObserverExit {
    p.signal(sig).expect("signal the observer");
    let exit = p
        .wait(EXIT_TIMEOUT)
        .expect("observer exits after the signal");
    assert_eq!(
        exit.code(),
        Some(0),
        "observer exit status {} after signal {sig}; stderr:\n{}",
        exit.status,
        exit.stderr
    );
    exit
}

/// Runs racer on `file` for [`RACE_SECS`] seconds and returns its report.
fn run_racer(file: &Path, extra: &[&str]) -> RacerReport {
    run_racer_for(file, RACE_SECS, extra)
}

fn run_racer_for(file: &Path, secs: &str, extra: &[&str]) -> RacerReport {
    let bin = racer_bin();
    let out = Command::new(&bin)
        .arg("--file")
        .arg(file)
        .args(["--duration", secs])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "racer {extra:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r =
        RacerReport::parse(&stdout).unwrap_or_else(|e| panic!("racer report {stdout:?}: {e:#}"));
    assert!(r.punches > 0 && r.faults > 0, "racer did nothing: {r:?}");
    r
}

/// The observer's JSON output: a startup record, alerts of the race the
/// racer provokes only, and the summary.
fn read_records(path: &Path) -> Stream {
    let stream = Stream::read(path).unwrap_or_else(|e| panic!("{e:#}"));
    for a in &stream.alerts {
        assert_eq!(a["kind"], "pte_in_punch_window", "{a}");
    }
    stream
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

/// A `{"start":N,"end":N|"EOF"}` page range as an inclusive pair.
fn page_range(v: &Value) -> (u64, u64) {
    let start = u64_of(&v["start"], "pages.start");
    let end = match &v["end"] {
        Value::String(s) if s == "EOF" => u64::MAX,
        e => u64_of(e, "pages.end"),
    };
    assert!(start <= end, "empty page range {v}");
    (start, end)
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

fn dev_of(r: &RacerReport) -> String {
    format!("{}:{}", r.dev_major, r.dev_minor)
}

fn is_on(alert: &Value, r: &RacerReport) -> bool {
    alert["ino"].as_u64() == Some(r.ino) && alert["dev"].as_str() == Some(dev_of(r).as_str())
}

/// The attach ladder ended on tracepoints for every function, after real
/// (not skipped) fentry refusals, in both the startup record and on stderr.
fn check_tracepoint_startup(startup: &Startup, stderr: &str) {
    assert!(!startup.kernel.is_empty(), "{startup:?}");
    // Raw tracepoints load here: the folio programs must pass the verifier
    // (a spilled undefined register once made one refuse, silently
    // emptying class B).
    for f in [
        "mm_filemap_delete_from_page_cache",
        "mm_filemap_add_to_page_cache",
    ] {
        let p = startup
            .probes
            .iter()
            .find(|p| p.function == f)
            .unwrap_or_else(|| panic!("no probe record for {f}: {startup:?}"));
        assert_eq!(p.method.as_deref(), Some("raw_tracepoint"), "{f}: {p:?}");
    }
    // The optional probes (PTE installer, folio add/delete, fs removal…)
    // follow the three core functions; only the core three define a window.
    let probes: Vec<&StartupProbe> = startup
        .probes
        .iter()
        .filter(|p| core_functions().contains(&p.function.as_str()))
        .collect();
    let functions: BTreeSet<&str> = probes.iter().map(|p| p.function.as_str()).collect();
    assert_eq!(
        functions,
        core_functions().into_iter().collect::<BTreeSet<_>>(),
        "{startup:?}"
    );
    assert_eq!(probes.len(), core_functions().len(), "{startup:?}");
    for p in probes {
        assert_eq!(p.method.as_deref(), Some("tracepoint"), "probe {p:?}");
        let fentry = p
            .refused
            .iter()
            .find(|r| r.method == "fentry")
            .unwrap_or_else(|| panic!("fentry is not among the refusals: {p:?}"));
        assert!(
            !fentry.reason.is_empty() && !fentry.reason.contains("skipped"),
            "fentry was not really tried: {p:?}"
        );
    }
    assert!(
        stderr.starts_with("observer: kernel "),
        "stderr does not start with the kernel line:\n{stderr}"
    );
    for f in core_functions() {
        let prefix = format!("observer: {f}: ");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no startup line for {f} on stderr:\n{stderr}"));
        assert!(line.contains("tracepoint"), "{line}");
        assert!(line.contains("fentry refused: "), "{line}");
    }
    // The startup lines come before the ready line.
    let lines: Vec<&str> = stderr.lines().collect();
    let ready = lines
        .iter()
        .position(|l| l.starts_with("observer: ready:"))
        .expect("ready line");
    let last_probe = lines
        .iter()
        .rposition(|l| {
            core_functions()
                .iter()
                .any(|f| l.starts_with(&format!("observer: {f}: ")))
        })
        .unwrap();
    assert!(
        last_probe < ready,
        "probe lines after the ready line:\n{stderr}"
    );
}

/// The alerts about the racer's file are the race the racer provoked, seen
/// through tracepoints; returns how many there are.
fn check_racer_alerts(alerts: &[Value], r: &RacerReport, window_op: &str) -> usize {
    let punched = (r.punched_start, r.punched_end);
    let ours: Vec<&Value> = alerts.iter().filter(|a| is_on(a, r)).collect();
    assert!(
        !ours.is_empty(),
        "no alert on {} (dev {}, ino {}) among {} alerts; racer: {r:?}",
        r.file.display(),
        dev_of(r),
        r.ino,
        alerts.len()
    );
    assert!(
        ours.iter()
            .any(|a| overlap(page_range(&a["pages"]), punched)
                && overlap(page_range(&a["window"]["pages"]), punched)),
        "no alert whose pages and window pages overlap the punched range {punched:?}; first: {}",
        ours[0]
    );
    let file = r.file.to_str().expect("UTF-8 racer path");
    for a in &ours {
        assert_eq!(a["fidelity"], "tracepoint", "{a}");
        assert_eq!(a["map_pages_fidelity"], "tracepoint", "{a}");
        assert_eq!(a["window_fidelity"], "tracepoint", "{a}");
        let w = &a["window"];
        assert_eq!(w["op"], window_op, "{a}");
        assert_eq!(w["task"]["comm"], "racer-punch", "{a}");
        assert_eq!(a["task"]["comm"], "racer-fault", "{a}");
        // Both sides are threads of the one racer process.
        assert_eq!(a["task"]["pid"], w["task"]["pid"], "{a}");
        assert_ne!(a["task"]["tid"], w["task"]["tid"], "{a}");
        match &a["path"] {
            Value::Null => {}
            p => assert_eq!(p, file, "{a}"),
        }
        // An alert is a fault-around for pages of the window's range...
        assert!(
            overlap(page_range(&a["pages"]), page_range(&w["pages"])),
            "alert pages outside its window: {a}"
        );
        // ...that ran while the window was open.
        let ts = u64_of(&a["ts_ns"], "ts_ns");
        let entry = u64_of(&a["map_pages"]["entry_ns"], "map_pages.entry_ns");
        let exit = u64_of(&a["map_pages"]["exit_ns"], "map_pages.exit_ns");
        let opened = u64_of(&w["opened_ns"], "window.opened_ns");
        assert!(entry <= exit && exit == ts, "{a}");
        assert!(
            opened <= exit,
            "fault-around returned before the window opened: {a}"
        );
        if !w["closed_ns"].is_null() {
            let closed = u64_of(&w["closed_ns"], "window.closed_ns");
            assert!(opened <= closed, "{a}");
            assert!(
                entry <= closed,
                "fault-around began after the window closed: {a}"
            );
        }
        assert_eq!(
            u64_of(&w["open_for_ns"], "window.open_for_ns"),
            ts - opened,
            "{a}"
        );
        assert!(
            a["outcome"]["folios_removed"].is_null() || a["outcome"]["folios_removed"].is_u64(),
            "{a}"
        );
        assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    }
    ours.len()
}

fn check_summary(summary: &Summary, alert_lines: usize) {
    assert_eq!(summary.alerts_shown, alert_lines as u64, "{summary:?}");
    assert!(summary.alerts >= summary.alerts_shown, "{summary:?}");
    assert!(summary.windows >= 1, "{summary:?}");
    assert!(summary.duration_s > 0.0, "{summary:?}");
    if summary.alerts > 0 {
        assert_eq!(summary.verdict, Verdict::RaceObserved, "{summary:?}");
    }
}

/// A finished observer run around one racer run.
struct Observed {
    racer: RacerReport,
    exit: ObserverExit,
    records: Stream,
}

/// Starts `observer --json --output FILE extra...`, runs racer on `file`,
/// SIGINTs the observer and parses what it wrote.
fn observe_race(
    m: &LoopMount,
    file: &Path,
    observer_args: &[&str],
    racer_args: &[&str],
) -> Observed {
    let out = output_path(m);
    let mut args = vec!["--json", "--output", out.to_str().unwrap()];
    args.extend_from_slice(observer_args);
    let p = start_observer(&args);
    let racer = run_racer(file, racer_args);
    let exit = stop_observer(p, libc::SIGINT);
    // With --output the summary also goes to stderr, and nothing to stdout.
    assert!(exit.stdout.is_empty(), "stdout: {}", exit.stdout);
    assert!(exit.stderr.contains("summary after "), "{}", exit.stderr);
    let records = read_records(&out);
    Observed {
        racer,
        exit,
        records,
    }
}

fn race_and_check(fs: FsType, op: Op) {
    let _serial = serial();
    let m = loop_mount(fs);
    let file = m.path().join("racer.dat");
    let o = observe_race(&m, &file, &[], &["--op", op.name()]);
    assert_eq!(o.racer.op, op.name());
    assert_eq!(o.racer.file, std::fs::canonicalize(&file).unwrap());
    check_tracepoint_startup(&o.records.startup, &o.exit.stderr);
    let ours = check_racer_alerts(&o.records.alerts, &o.racer, op.window_op());
    check_summary(&o.records.summary, o.records.alerts.len());
    eprintln!(
        "{fs} {}: {ours} alerts on the racer's file, {} shown, summary {}",
        op.name(),
        o.records.alerts.len(),
        o.records.summary.to_json()
    );
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn tracepoint_fallback_alerts_on_xfs() {
    race_and_check(FsType::Xfs, Op::Punch);
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn tracepoint_fallback_alerts_on_ext4_truncate() {
    race_and_check(FsType::Ext4, Op::Truncate);
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn tracepoint_fallback_alerts_on_xfs_zero_range() {
    race_and_check(FsType::Xfs, Op::Zero);
}

/// Creates the racer's file before the observer starts, so that filters can
/// name its inode (racer reopens it with O_CREAT|O_TRUNC: same inode).
fn precreate(m: &LoopMount) -> (PathBuf, u64, String) {
    let file = m.path().join("racer.dat");
    std::fs::write(&file, b"x").unwrap();
    let st = std::fs::metadata(&file).unwrap();
    let dev = format!("{}:{}", libc::major(st.dev()), libc::minor(st.dev()));
    (file, st.ino(), dev)
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn filter_by_another_inode_hides_every_alert() {
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let (file, ino, dev) = precreate(&m);
    let other = (ino + 1000).to_string();
    let o = observe_race(&m, &file, &["--dev", &dev, "--ino", &other], &[]);
    assert_eq!(o.racer.ino, ino, "racer replaced the file's inode");
    assert_eq!(dev_of(&o.racer), dev);
    check_tracepoint_startup(&o.records.startup, &o.exit.stderr);
    let s = &o.records.summary;
    assert!(
        o.records.alerts.is_empty(),
        "{} alerts shown despite --ino {other}; first: {}",
        o.records.alerts.len(),
        o.records.alerts[0]
    );
    assert!(
        s.alerts > 0,
        "the race went unseen, so the filter was not tested: {s:?}"
    );
    assert_eq!(s.alerts_shown, 0, "{s:?}");
    check_summary(s, 0);
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn filter_by_inode_and_comm_shows_only_the_racers_alerts() {
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let (file, ino, dev) = precreate(&m);
    let ino_s = ino.to_string();
    let o = observe_race(
        &m,
        &file,
        &["--comm", "racer-fault", "--ino", &ino_s, "--dev", &dev],
        &[],
    );
    assert_eq!(o.racer.ino, ino, "racer replaced the file's inode");
    let shown = check_racer_alerts(&o.records.alerts, &o.racer, Op::Punch.window_op());
    assert_eq!(
        shown,
        o.records.alerts.len(),
        "alerts on other files got through --ino/--dev"
    );
    check_summary(&o.records.summary, shown);

    // A comm that is neither side of the race hides everything.
    let o = observe_race(&m, &file, &["--comm", "racer-nobody"], &[]);
    assert!(
        o.records.alerts.is_empty(),
        "--comm racer-nobody let through: {}",
        o.records.alerts[0]
    );
    assert!(o.records.summary.alerts > 0, "{:?}", o.records.summary);
    // The punching side's comm matches too.
    let o = observe_race(&m, &file, &["--comm", "racer-punch", "--ino", &ino_s], &[]);
    let shown = check_racer_alerts(&o.records.alerts, &o.racer, Op::Punch.window_op());
    assert_eq!(shown, o.records.alerts.len());
}

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn text_output_names_the_race() {
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("racer.dat");
    let p = start_observer(&["--per-call"]);
    let r = run_racer(&file, &[]);
    let exit = stop_observer(p, libc::SIGINT);
    let needle = format!(" dev {} ino {} ", dev_of(&r), r.ino);
    let ours: Vec<&str> = exit
        .stdout
        .lines()
        .filter(|l| l.contains(&needle))
        .collect();
    assert!(
        !ours.is_empty(),
        "no text alert containing {needle:?}; stdout starts with:\n{}",
        &exit.stdout[..exit.stdout.len().min(2000)]
    );
    let path = r.file.to_str().unwrap();
    for l in &ours {
        assert!(l.contains(" PTE-IN-PUNCH-WINDOW dev "), "{l}");
        assert!(l.contains(" punch_hole pages "), "{l}");
        assert!(l.contains(" by racer-fault["), "{l}");
        assert!(l.contains(" by racer-punch["), "{l}");
        assert!(l.contains(" | tracepoint | "), "{l}");
        // After the inode: the path (when resolved), then the pages.
        let rest = l.split_once(&needle).unwrap().1;
        if rest.starts_with('/') {
            assert!(
                rest.starts_with(&format!("{path} pages ")),
                "wrong path: {l}"
            );
        } else {
            assert!(rest.starts_with("pages "), "{l}");
        }
    }
    // The summary closes stdout in text mode (not stderr: no --json/--output).
    assert!(
        exit.stdout.contains("\nsummary after "),
        "no summary on stdout"
    );
    assert!(
        exit.stdout.contains("race_observed"),
        "no verdict on stdout"
    );
    assert!(!exit.stderr.contains("summary after "), "{}", exit.stderr);
    assert!(!exit.stdout.contains("{\"type\""), "JSON in text mode");
}

/// The default text stream under a racer at full speed: one line per window
/// that shows, never more than the digest's rates allow, and roll-ups that
/// say what was held back, while the summary still counts every alert.
#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn text_digest_keeps_its_line_rate_under_a_racer() {
    use observer_report::text::{MAX_LINES_PER_S, max_lines};
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("racer.dat");
    let p = start_observer(&[]);
    let started = Instant::now();
    let r = run_racer_for(&file, "12", &[]);
    let exit = stop_observer(p, libc::SIGINT);
    let secs = started.elapsed().as_secs() + 1;
    let stream = exit
        .stdout
        .split("\nsummary after ")
        .next()
        .expect("a stream before the summary");
    // Lines that start with a time of day; critical ones are never held.
    let timed: Vec<&str> = stream
        .lines()
        .filter(|l| l.len() > 15 && l.as_bytes()[2] == b':' && l.as_bytes()[8] == b'.')
        .filter(|l| !l.contains("CRITICAL"))
        .collect();
    let needle = format!(" dev {} ino {} ", dev_of(&r), r.ino);
    let windows: Vec<&&str> = timed
        .iter()
        .filter(|l| l.contains(" WINDOW punch_hole") && l.contains(&needle))
        .collect();
    assert!(
        !windows.is_empty(),
        "no WINDOW line for {needle:?}; stream:\n{}",
        &stream[..stream.len().min(3000)]
    );
    for w in &windows {
        assert!(w.contains(" fault-around call"), "{w}");
        assert!(w.ends_with(" | info") || w.ends_with(" | warning"), "{w}");
    }
    assert!(
        timed.len() as u64 <= max_lines(secs),
        "{} lines in {secs} s, more than {}:\n{}",
        timed.len(),
        max_lines(secs),
        timed.join("\n")
    );
    let mut per_second = std::collections::BTreeMap::<&str, u64>::new();
    for l in &timed {
        *per_second.entry(&l[..8]).or_default() += 1;
    }
    let (worst, n) = per_second.iter().max_by_key(|(_, n)| **n).unwrap();
    assert!(
        *n <= MAX_LINES_PER_S,
        "{n} lines in second {worst}, more than {MAX_LINES_PER_S}"
    );
    // The racer opens thousands of windows: most are held back, and said so.
    assert!(
        timed
            .iter()
            .any(|l| l.contains(" ... ") && l.contains(" more windows like this on ")),
        "no roll-up line:\n{}",
        timed.join("\n")
    );
    let summary = exit.stdout.split("\nsummary after ").nth(1).unwrap();
    let alerts: u64 = summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("alerts "))
        .and_then(|rest| rest.trim_start().split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no alert count in the summary:\n{summary}"));
    assert!(
        alerts > windows.len() as u64,
        "summary counts {alerts} alerts for {} window lines",
        windows.len()
    );
}

// ---------------------------------------------------------------------------
// Detaching
// ---------------------------------------------------------------------------

/// The programs the observer reported at startup (its first `--json` line
/// on stdout), checked against what the process holds: the kernel cuts
/// names to 15 bytes and some collide there, so ids are what count.
fn held_programs(p: &ObserverProcess) -> (BTreeSet<u64>, BTreeSet<u64>) {
    // The record is written before the ready line, but the pipes are read
    // by separate threads: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stdout_so_far().contains('\n') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = p.stdout_so_far();
    let first = stdout.lines().next().expect("a startup record on stdout");
    let Ok(Record::Startup(startup)) = Record::parse(first) else {
        panic!("first line is not the startup record: {first}");
    };
    let ours: BTreeSet<u64> = startup.programs.iter().map(|p| u64::from(p.id)).collect();
    let names: Vec<&str> = startup.programs.iter().map(|p| p.name.as_str()).collect();
    assert!(ours.len() >= 7, "only {names:?} reported");
    // The syscall tracepoints are attached whatever the ladder chose.
    for want in [
        "sys_enter_fallocate",
        "sys_exit_invalidating",
        "mm_filemap_map_pages",
    ] {
        assert!(names.contains(&want), "{want} not loaded: {names:?}");
    }
    let held = bpf_held_by(p.pid()).expect("read the observer's fdinfo");
    let held_ids: BTreeSet<u64> = held.prog_ids.iter().copied().collect();
    assert!(
        ours.is_subset(&held_ids),
        "reported programs {ours:?} are not all held by the observer ({held_ids:?})"
    );
    assert!(
        held_ids.is_subset(&ours),
        "the observer holds programs it did not report: {:?}",
        held_ids.difference(&ours).collect::<Vec<_>>()
    );
    let listed: BTreeSet<u64> = bpf_programs()
        .expect("bpftool prog show")
        .iter()
        .map(|p| p.id)
        .collect();
    assert!(ours.is_subset(&listed), "bpftool does not list {ours:?}");
    let links: BTreeSet<u64> = held.link_ids.into_iter().collect();
    assert!(!links.is_empty(), "the observer holds no link");
    (ours, links)
}

/// After the observer exited, none of its programs or links is left.
fn assert_all_unloaded(progs: &BTreeSet<u64>, links: &BTreeSet<u64>) {
    // The kernel frees programs asynchronously (RCU): allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining: Vec<_> = bpf_programs()
            .expect("bpftool prog show")
            .into_iter()
            .filter(|p| progs.contains(&p.id))
            .collect();
        let links_left: Vec<_> = bpf_links()
            .expect("bpftool link show")
            .into_iter()
            .filter(|l| links.contains(&l.id) || l.prog_id.is_some_and(|p| progs.contains(&p)))
            .collect();
        if remaining.is_empty() && links_left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("after exit: programs still loaded {remaining:?}, links {links_left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn detach_leaves_no_programs_after_sigint() {
    let _serial = serial();
    need_root();
    let p = start_observer(&["--json"]);
    let (progs, links) = held_programs(&p);
    let exit = stop_observer(p, libc::SIGINT);
    // A whole stream, the summary last.
    if let Err(e) = Stream::parse(&exit.stdout) {
        panic!("{e:#}:\n{}", exit.stdout);
    }
    assert_all_unloaded(&progs, &links);
}

#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn detach_leaves_no_programs_after_sigterm() {
    let _serial = serial();
    need_root();
    let p = start_observer(&["--json"]);
    let (progs, links) = held_programs(&p);
    let exit = stop_observer(p, libc::SIGTERM);
    // A whole stream, the summary last.
    if let Err(e) = Stream::parse(&exit.stdout) {
        panic!("{e:#}:\n{}", exit.stdout);
    }
    assert_all_unloaded(&progs, &links);
}

/// SIGKILL gives the observer no chance to detach: the kernel must, as the
/// process's descriptors close.
#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn detach_leaves_no_programs_after_sigkill() {
    let _serial = serial();
    need_root();
    let p = start_observer(&["--json"]);
    let (progs, links) = held_programs(&p);
    p.signal(libc::SIGKILL).expect("kill -9");
    let exit = p.wait(EXIT_TIMEOUT).expect("observer dies");
    assert_eq!(exit.code(), None, "killed, not exited: {}", exit.status);
    assert_all_unloaded(&progs, &links);
}

#[test]
#[ignore = "needs root: BPF; run by cargo xtask test"]
fn detach_leaves_no_programs_after_duration() {
    let _serial = serial();
    need_root();
    let p = start_observer(&["--json", "--duration", "3"]);
    let ready = Instant::now();
    let (progs, links) = held_programs(&p);
    let exit = p.wait(EXIT_TIMEOUT).expect("observer stops by itself");
    let ran = ready.elapsed();
    assert_eq!(exit.code(), Some(0), "{}: {}", exit.status, exit.stderr);
    assert!(
        ran >= Duration::from_millis(2500),
        "--duration 3 stopped after {ran:?}"
    );
    let last = exit.stdout.lines().last().expect("output");
    let Ok(Record::Summary(summary)) = Record::parse(last) else {
        panic!("last line is not the summary: {last}");
    };
    let d = summary.duration_s;
    assert!((2.9..10.0).contains(&d), "duration_s {d} for --duration 3");
    assert_all_unloaded(&progs, &links);
}

/// `observer record` then `observer replay`: the replay prints the alerts
/// the live run printed (paths aside, which replay does not resolve), and
/// twice the same.
#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn replay_of_a_recording_gives_the_live_alerts() {
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let (file, ino, dev) = precreate(&m);
    let trace = m.image().with_file_name("run.pcro");
    // No reorder horizon: records from the other CPU arrive late, and replay
    // must call the same ones late.
    let o = observe_race(
        &m,
        &file,
        &[
            "--ino",
            &ino.to_string(),
            "--reorder-ms",
            "0",
            "record",
            trace.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.records.alerts.is_empty(), "the live run saw no race");
    let replay = |n: u32| -> Vec<Record> {
        let out = m.image().with_file_name(format!("replay{n}.jsonl"));
        let status = Command::new(observer_bin())
            .args(["replay", trace.to_str().unwrap(), "--json", "--ino"])
            .arg(ino.to_string())
            .arg("--output")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| Record::parse(l).unwrap())
            .collect()
    };
    let same = |a: &[Record], b: &[Record], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: not as many lines");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                comparable(x) == comparable(y),
                "{what}: line {} differs:\n{x:?}\n{y:?}",
                i + 1
            );
        }
    };
    let first = replay(1);
    same(&first, &replay(2), "two replays");
    let mut live = vec![Record::Startup(o.records.startup.clone())];
    live.extend(o.records.alerts.iter().cloned().map(Record::Alert));
    live.push(Record::Summary(Box::new(o.records.summary.clone())));
    same(&live, &first, "the live run and its replay");
    assert!(
        first[1..first.len() - 1]
            .iter()
            .all(|r| matches!(r, Record::Alert(a) if a["dev"] == dev.as_str()))
    );
    let late = o.records.summary.lost.late;
    eprintln!("replayed {} alerts, {late} late records", first.len() - 2);
}

/// A probe made silent on purpose (its program attached at a tracepoint the
/// workload never reaches) while its partner fires thousands of times: the
/// summary's health section and a warning line name it. Unredirected, the
/// same run has no finding.
#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn a_silent_probe_is_named_in_the_health_section() {
    let _serial = serial();
    let m = loop_mount(FsType::Xfs);
    let file = m.path().join("racer.dat");
    for silenced in [true, false] {
        let redirect = ["--redirect", "folio_add_raw_tp=bpf_test_finish"];
        let o = observe_race(&m, &file, if silenced { &redirect } else { &[] }, &[]);
        let s = &o.records.summary;
        let named: Vec<&str> = s.health.silent.iter().map(|x| x.program.as_str()).collect();
        let warning =
            "observer: warning: probe folio_add_raw_tp never ran while folio_delete_raw_tp ran";
        if silenced {
            assert_eq!(named, ["folio_add_raw_tp"], "{:?}", s.health);
            assert_eq!(s.health.silent[0].partner, "folio_delete_raw_tp");
            assert!(s.health.silent[0].partner_hits >= 1000, "{:?}", s.health);
            assert_eq!(s.health.hits.get("folio_add_raw_tp"), 0);
            assert!(o.exit.stderr.contains(warning), "{}", o.exit.stderr);
            assert!(
                o.exit
                    .stderr
                    .contains("health           SILENT: folio_add_raw_tp")
            );
        } else {
            assert!(named.is_empty(), "{:?}", s.health);
            assert!(s.health.hits.get("folio_add_raw_tp") > 0, "{:?}", s.health);
            assert!(
                !o.exit.stderr.contains("warning: probe"),
                "{}",
                o.exit.stderr
            );
        }
    }
}
