//! The kernel log on a live host: test markers name the test each alert
//! came from, the kernel's own bad-page reports become `kernel_report`
//! records joined to the windows open on their file, and what user space
//! writes to /dev/kmsg cannot pose as the kernel.
//!
//! Needs root (loop mounts, BPF, /dev/kmsg); `cargo xtask test` runs it.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use observer_tests::serial;
use observer_tests::{
    FsType, LoopMount, ObserverExit, ObserverProcess, RacerReport, Stream, is_root, observer_bin,
    racer_bin,
};

fn mount() -> LoopMount {
    assert!(is_root(), "needs root (loop mounts, BPF, /dev/kmsg)");
    LoopMount::new(FsType::Xfs, 512).unwrap_or_else(|e| panic!("xfs loop mount: {e:#}"))
}

fn observe(args: &[&str], during: impl FnOnce()) -> ObserverExit {
    let mut p = ObserverProcess::spawn(&observer_bin(), args).expect("start the observer");
    p.wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("observer {args:?}: {e:#}"));
    during();
    p.signal(libc::SIGINT).expect("signal the observer");
    let exit = p.wait(Duration::from_secs(60)).expect("observer exits");
    assert_eq!(exit.code(), Some(0), "observer failed:\n{}", exit.stderr);
    exit
}

fn racer(file: &Path, secs: &str) -> RacerReport {
    let out = Command::new(racer_bin())
        .arg("--file")
        .arg(file)
        .args(["--duration", secs])
        .output()
        .expect("run racer");
    assert!(out.status.success(), "racer failed: {out:?}");
    RacerReport::parse(&String::from_utf8_lossy(&out.stdout)).expect("racer report")
}

/// One record written to /dev/kmsg, as a test suite (or anyone) would.
fn kmsg(line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg");
    f.write_all(line.as_bytes()).expect("write /dev/kmsg");
}

fn dev(r: &RacerReport) -> String {
    format!("{}:{}", libc::major(r.dev()), libc::minor(r.dev()))
}

/// fstests' marker before a racer: every alert on its file carries the
/// test's name, and the summary has a row for it. A `<0>BUG: Bad page map`
/// written from user space (asking for facility kernel) lands as facility user and is no report.
#[test]
#[ignore = "needs root: loop mounts, BPF and /dev/kmsg; run by cargo xtask test"]
fn markers_name_the_test_and_user_space_cannot_forge_a_report() {
    let _serial = serial();
    let m = mount();
    let file = m.path().join("racer.dat");
    let out = m.image().with_file_name("kmsg.jsonl");
    let mut r = None;
    observe(&["--json", "--output", out.to_str().unwrap()], || {
        kmsg("<12>run fstests observer/001 at 2026-12-02 05:00:00\n");
        // Level err, facility kernel asked for; the kernel makes it user.
        kmsg("<3>BUG: Bad page map in process racer  pte:8000000123456067 pmd:0\n");
        kmsg("<3>page:0000000000000000 refcount:1 mapcount:-1 mapping:0 index:0x0 pfn:0x1\n");
        r = Some(racer(&file, "3"));
    });
    let r = r.unwrap();
    let s = Stream::read(&out).expect("a whole --json stream");
    let ours = s.alerts_on(&dev(&r), r.ino);
    assert!(!ours.is_empty(), "no alert on the racer's file");
    for a in &ours {
        assert_eq!(a["test"], "observer/001", "{a}");
    }
    assert!(
        s.reports.is_empty(),
        "a forged report was taken: {:?}",
        s.reports
    );
    assert_eq!(s.summary.kernel_reports, 0);
    let row = s
        .summary
        .tests
        .iter()
        .find(|t| t.test == "observer/001")
        .unwrap_or_else(|| panic!("no summary row for the test: {:?}", s.summary.tests));
    assert!(row.windows_by_op.get("punch_hole") > 0, "{row:?}");
    assert!(
        row.alerts.info + row.alerts.warning >= ours.len() as u64,
        "{row:?} counts fewer alerts than the {} on the racer's file",
        ours.len()
    );
    assert_eq!(s.summary.verdict.as_str(), "race_observed");
}

/// A bad-page report as the kernel logs it, fed in through `--kmsg-file`
/// (the kernel cannot be made to print one on purpose) while racer punches
/// the file it names: the report comes out whole, under its test, with the
/// racer's windows joined, and it makes the verdict critical.
#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn a_kernel_report_joins_the_windows_on_its_file() {
    let _serial = serial();
    let m = mount();
    let file = m.path().join("racer.dat");
    // The file first, so the report can name its inode.
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    let log = m.image().with_file_name("kmsg.txt");
    std::fs::write(
        &log,
        format!(
            "12,900,1000000,-;run fstests generic/127 at 2026-12-02 05:00:00\n\
             1,901,3500000,-;BUG: Bad page cache in process racer-fault  pfn:1a2b3\n\
             4,902,3500010,-;page: refcount:3 mapcount:1 mapping:ffff888004f1c6f0 index:0x10 pfn:0x1a2b3\n\
             4,903,3500020,-;aops:xfs_address_space_operations ino:{ino:x} dentry name(?):\"racer.dat\"\n\
             4,904,3500030,-;page dumped because: still mapped when deleted\n\
             4,905,3500040,-;CPU: 1 PID: 4242 Comm: racer-fault Tainted: G    B\n"
        ),
    )
    .unwrap();
    let out = m.image().with_file_name("report.jsonl");
    let mut r = None;
    observe(
        &[
            "--json",
            "--output",
            out.to_str().unwrap(),
            "--kmsg-file",
            log.to_str().unwrap(),
        ],
        || r = Some(racer(&file, "5")),
    );
    let r = r.unwrap();
    assert_eq!(r.ino, ino, "racer made a new file");
    let s = Stream::read(&out).expect("a whole --json stream");
    assert_eq!(s.reports.len(), 1, "{:?}", s.reports);
    let k = &s.reports[0];
    assert_eq!(k["kind"], "bad_page_cache", "{k}");
    assert_eq!(k["severity"], "critical", "{k}");
    assert_eq!(k["ino"], ino, "{k}");
    assert_eq!(k["test"], "generic/127", "{k}");
    let lines = k["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 5, "{k}");
    assert!(
        lines[3]
            .as_str()
            .unwrap()
            .contains("still mapped when deleted")
    );
    let windows = k["windows"].as_array().expect("windows");
    assert!(!windows.is_empty(), "no window joined: {k}");
    for w in windows {
        assert_eq!(w["ino"], ino, "{w}");
        assert_eq!(w["dev"], dev(&r).as_str(), "{w}");
        assert_eq!(w["op"], "punch_hole", "{w}");
    }
    assert_eq!(s.summary.kernel_reports, 1);
    assert_eq!(s.summary.verdict.as_str(), "critical");
}
