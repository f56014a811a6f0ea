//! The real probes, on stock Debian cloud kernels booted under qemu (TCG).
//!
//! Needs root and qemu: run by `cargo xtask test`, which builds the binaries
//! and sets XTASK_BIN. Each test boots one kernel with an XFS and an ext4
//! disk, runs the racer on both under the observer and asserts on the alert
//! JSON the guest brings back.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
};

use observer_report::{Record, Summary};
use observer_tests::core_functions;
use observer_tests::{RacerReport, Stream, comparable};
use serde_json::Value;

/// Two TCG guests at once on two host CPUs starve each other's racers.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Run {
    dir: PathBuf,
    /// Held until the test is done with `dir`: two tests of one kernel
    /// share the directory, and the next boot empties it.
    _one_vm: MutexGuard<'static, ()>,
}

impl Run {
    fn boot(kernel: &str) -> Run {
        Run::boot_with(kernel, &["--duration", "4"])
    }

    fn boot_with(kernel: &str, args: &[&str]) -> Run {
        let one_vm = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let xtask = std::env::var_os("XTASK_BIN")
            .expect("XTASK_BIN is unset: run the VM tests through `cargo xtask test`");
        let dir = std::env::temp_dir().join(format!("observer-vm-test-{kernel}"));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new(xtask)
            .args(["vm", "--kernel", kernel])
            .args(args)
            .args(["--no-build", "--out"])
            .arg(&dir)
            .status()
            .expect("cannot run xtask vm");
        assert!(
            status.success(),
            "xtask vm --kernel {kernel} failed: {status}"
        );
        Run {
            dir,
            _one_vm: one_vm,
        }
    }

    fn text(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.join(name).display()))
    }

    fn fs(&self, fs: &str) -> FsRun {
        let rc = self.text(&format!("{fs}.observer.rc"));
        assert_eq!(rc.trim(), "0", "observer on {fs} exited {rc}");
        let stream = Stream::read(&self.dir.join(format!("{fs}.alerts.json")))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let racer = RacerReport::parse(&self.text(&format!("{fs}.racer.json")))
            .unwrap_or_else(|e| panic!("racer report: {e:#}"));
        FsRun {
            log: self.text(&format!("{fs}.observer.log")),
            stream,
            racer,
        }
    }
}

struct FsRun {
    log: String,
    stream: Stream,
    racer: RacerReport,
}

impl FsRun {
    fn summary(&self) -> &Summary {
        &self.stream.summary
    }

    /// Alerts on the racer's own file.
    fn racer_alerts(&self) -> Vec<&Value> {
        let dev = format!("{}:{}", self.racer.dev_major, self.racer.dev_minor);
        self.stream
            .alerts_on(&dev, self.racer.ino)
            .into_iter()
            .filter(|a| a["kind"] == "pte_in_punch_window")
            .collect()
    }

    /// Startup lines and the startup record name fentry for all three.
    fn assert_fentry_everywhere(&self) {
        for f in core_functions() {
            assert!(
                self.log.contains(&format!("observer: {f}: fentry/fexit")),
                "{f} not on fentry:\n{}",
                self.log
            );
            assert_eq!(self.stream.method_of(f), Some("fentry"), "{f}");
        }
    }

    /// At least one alert names the racer's file, overlaps its punches, and
    /// every alert agrees with the summary.
    fn assert_race_seen(&self) {
        let alerts = self.racer_alerts();
        assert!(
            !alerts.is_empty(),
            "no alert on the racer's file; log:\n{}",
            self.log
        );
        let punched = (self.racer.punched_start, self.racer.punched_end);
        let overlaps = |r: &Value, (s, e): (u64, u64)| {
            let start = r["start"].as_u64().unwrap();
            let end = r["end"].as_u64().unwrap_or(u64::MAX);
            start <= e && s <= end
        };
        for a in &alerts {
            assert_eq!(a["kind"], "pte_in_punch_window");
            assert_eq!(a["fidelity"], "fentry");
            assert_eq!(a["task"]["comm"], "racer-fault");
            assert_eq!(a["window"]["task"]["comm"], "racer-punch");
            assert_eq!(a["window"]["op"], "punch_hole");
            assert!(overlaps(&a["pages"], punched), "{a}");
            let w = &a["window"]["pages"];
            let wr = (
                w["start"].as_u64().unwrap(),
                w["end"].as_u64().unwrap_or(u64::MAX),
            );
            assert!(
                overlaps(&a["pages"], wr),
                "alert pages outside its window: {a}"
            );
            // The call's interval meets the window's.
            let (entry, exit) = (
                a["map_pages"]["entry_ns"].as_u64().unwrap(),
                a["map_pages"]["exit_ns"].as_u64().unwrap(),
            );
            let opened = a["window"]["opened_ns"].as_u64().unwrap();
            assert!(exit >= opened, "{a}");
            if let Some(closed) = a["window"]["closed_ns"].as_u64() {
                assert!(entry <= closed, "{a}");
            }
        }
        self.assert_summary_consistent();
        // No stock kernel here maps a freed page or caches freed blocks
        // during a punch on 6.x (see the matrix for 5.10).
        let critical: Vec<_> = self
            .stream
            .alerts
            .iter()
            .filter(|a| a["severity"] == "critical")
            .collect();
        assert!(critical.is_empty(), "critical alerts: {critical:?}");
    }

    fn assert_summary_consistent(&self) {
        let s = self.summary();
        let alerts = &self.stream.alerts;
        assert_eq!(s.alerts_shown, alerts.len() as u64, "{s:?}");
        assert_eq!(s.alerts, alerts.len() as u64, "{s:?}");
        let windows: HashSet<u64> = alerts
            .iter()
            .map(|a| a["window"]["id"].as_u64().unwrap())
            .collect();
        assert!(s.windows >= windows.len() as u64, "{s:?}");
        // Every record the kernel emitted reached the correlator.
        let map_pages = s.events.get("filemap_map_pages");
        assert_eq!(
            map_pages,
            s.kernel_emitted.get("filemap_map_pages"),
            "{s:?}"
        );
        assert_eq!(s.lost.ringbuf_full, 0, "{s:?}");
        let calls: HashSet<(u64, u64)> = alerts
            .iter()
            .map(|a| {
                (
                    a["task"]["tid"].as_u64().unwrap(),
                    a["map_pages"]["exit_ns"].as_u64().unwrap(),
                )
            })
            .collect();
        assert!(map_pages >= calls.len() as u64, "{s:?}");
    }
}

fn kernel_release(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("uname")).unwrap_or_default()
}

#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_6_12_fentry_sees_the_race_on_xfs_and_ext4() {
    let run = Run::boot("6.12");
    assert!(
        kernel_release(&run.dir).starts_with("6.12."),
        "booted {}",
        kernel_release(&run.dir)
    );
    for fs in ["xfs", "ext4"] {
        let r = run.fs(fs);
        r.assert_fentry_everywhere();
        r.assert_race_seen();
    }
}

/// On 6.1, xfs still wraps filemap_map_pages in its MMAPLOCK
/// (xfs_filemap_map_pages, removed in 6.4), which the punch holds
/// exclusively: fault-around cannot meet the window there. ext4 takes no such
/// lock around fault-around, so the race shows.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_6_1_fentry_sees_the_race_on_ext4_and_xfs_mmaplock_prevents_it() {
    let run = Run::boot("6.1");
    assert!(
        kernel_release(&run.dir).starts_with("6.1."),
        "booted {}",
        kernel_release(&run.dir)
    );
    let ext4 = run.fs("ext4");
    ext4.assert_fentry_everywhere();
    ext4.assert_race_seen();

    let xfs = run.fs("xfs");
    xfs.assert_fentry_everywhere();
    xfs.assert_summary_consistent();
    let s = xfs.summary();
    assert!(xfs.racer_alerts().is_empty(), "xfs on 6.1 raced: {s:?}");
    assert!(s.windows > 0, "no punch window seen: {s:?}");
    // Fault-around did run on the file; the pre-filter found no window open.
    assert!(s.filtered > 0, "{s:?}");
    assert!(xfs.racer.faults > 0);
}

/// Debian 7.2 (sid) ships its kernel split: an empty linux-image package
/// that depends on linux-binary (the image), linux-modules and linux-base
/// (modules.builtin, config); the harness assembles them. The observer's
/// ladder gets fentry/fexit on the core functions and the PTE installer, as
/// on 6.12, and sees the race on xfs and ext4. Buffered readers race the
/// punch too: they take invalidate_lock shared while the punch holds it for
/// writing, so no page-cache add lands inside a window (no refill), although
/// the add tracepoint fires for their reads between the windows.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_7_2_split_packages_fentry_sees_the_race_and_no_refill() {
    let run = Run::boot_with(
        "7.2",
        &[
            "--duration",
            "4",
            "--racer-args",
            "--op punch --punch-pages 16 --fault-threads 2 --readers 2",
        ],
    );
    let release = kernel_release(&run.dir);
    assert!(release.starts_with("7.2."), "booted {release}");
    // Recorded because sid drops superseded versions: "sid 7.2.13-1".
    let package = run.text("package");
    assert!(package.starts_with("sid 7.2."), "package {package}");
    for fs in ["xfs", "ext4"] {
        let r = run.fs(fs);
        r.assert_fentry_everywhere();
        for f in ["set_pte_range", "do_set_pmd"] {
            assert_eq!(r.stream.method_of(f), Some("fentry"), "{fs} {f}");
        }
        r.assert_race_seen();
        let s = r.summary();
        let b = s.classes.b;
        assert!(b.windows > 0, "{fs}: {s:?}");
        assert_eq!((b.refills, b.stale_data), (0, 0), "{fs}: {s:?}");
        assert!(b.removals_under_lock > 0, "{fs}: {s:?}");
        assert_eq!(
            (b.removals_without_lock, b.refills_under_lock),
            (0, 0),
            "{fs}: {s:?}"
        );
        assert!(r.racer.reads > 0, "{fs}: the readers did not read");
        // The add program emits only inside windows; its runs show it saw
        // the readers' adds all the same.
        assert!(
            s.health.hits.get("folio_add_raw_tp") > 0,
            "{fs}: the page-cache add probe is silent: {s:?}"
        );
        assert!(s.health.silent.is_empty(), "{fs}: {:?}", s.health.silent);
    }
}

/// `observer run` on a kernel with a real critical race: on 5.10 ext4,
/// buffered reads refill a punched range before the blocks are freed
/// (stale_data, see the truth table). The command (the racer, then `exit
/// 3`) fails for reasons of its own; the observer's exit status is 112 all
/// the same. On 5.10 xfs nothing is critical and the command's 3 passes
/// through.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_5_10_run_fails_on_stale_data_whatever_the_command_exits() {
    let run = Run::boot_with(
        "5.10",
        &[
            "--fs",
            "ext4,xfs",
            "--duration",
            "6",
            "--racer-args",
            "--op punch --punch-pages 16 --fault-threads 2 --readers 2",
            "--run-exit",
            "3",
        ],
    );
    assert!(
        kernel_release(&run.dir).starts_with("5.10."),
        "booted {}",
        kernel_release(&run.dir)
    );
    for (fs, want) in [("ext4", "112"), ("xfs", "3")] {
        let rc = run.text(&format!("{fs}.observer.rc"));
        let racer = run.text(&format!("{fs}.racer.rc"));
        assert_eq!(
            racer.trim(),
            "0",
            "racer on {fs}: {}",
            run.text(&format!("{fs}.racer.log"))
        );
        let s = Stream::read(&run.dir.join(format!("{fs}.alerts.json")))
            .unwrap_or_else(|e| panic!("{e:#}"))
            .summary;
        let stale = s.classes.b.stale_data;
        assert_eq!(
            rc.trim(),
            want,
            "observer run on {fs} exited {rc} with stale_data {stale}; log:\n{}",
            run.text(&format!("{fs}.observer.log"))
        );
        match fs {
            "ext4" => {
                assert!(stale > 0, "{s:?}");
                assert!(run.text(&format!("{fs}.observer.log")).contains(
                    "observer: exit 112: a critical alert was seen (the command exited 3)"
                ));
            }
            _ => assert_eq!(stale, 0, "{s:?}"),
        }
    }
}

/// A recording made on 6.12 (fentry, the PTE installer attached, no
/// reorder horizon so that records from the other vCPU arrive late), replayed
/// on the host, gives the live run's alerts and summary exactly: paths,
/// stacks and the agent's own cost aside.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_6_12_replay_equals_the_live_run() {
    let run = Run::boot_with(
        "6.12",
        &[
            "--fs",
            "xfs",
            "--duration",
            "3",
            "--observer-args",
            "--reorder-ms 0 record /results/xfs.pcro",
        ],
    );
    let records = |text: &str| -> Vec<Record> {
        text.lines()
            .map(|l| Record::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let live = records(&run.text("xfs.alerts.json"));
    let out = run.dir.join("replay.jsonl");
    let status = Command::new(observer_tests::observer_bin())
        .arg("replay")
        .arg(run.dir.join("xfs.pcro"))
        .args(["--json", "--output"])
        .arg(&out)
        .status()
        .expect("run observer replay");
    assert!(status.success(), "replay failed: {status}");
    let replayed = records(&std::fs::read_to_string(&out).expect("replay output"));
    let Some(Record::Summary(summary)) = live.last() else {
        panic!("the last record is not the summary");
    };
    assert!(summary.events.get("pte_install") > 0, "{summary:?}");
    assert!(summary.lost.late > 0, "nothing was late: {summary:?}");
    assert!(summary.alerts > 0, "{summary:?}");
    assert_eq!(live.len(), replayed.len());
    for (i, (l, r)) in live.iter().zip(&replayed).enumerate() {
        assert_eq!(comparable(l), comparable(r), "line {}", i + 1);
    }
}

/// Class C's live control. On a huge=always tmpfs a 384-page file (1.5 MiB)
/// gets a 2 MiB folio, and the racer maps 2 MiB of it: shmem maps the folio
/// by one PMD across EOF, by design. The test-only --no-shmem-exemption
/// counts those as beyond_eof, so this shows the kernel side (do_set_pmd,
/// i_size and the tmpfs magic read from BTF offsets) seeing a mapping past
/// EOF on a live kernel, and the verdict failing on it.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_6_12_tmpfs_huge_pmd_past_eof_is_class_c() {
    let run = Run::boot_with(
        "6.12",
        &[
            "--fs",
            "tmpfs-huge",
            "--duration",
            "2",
            "--racer-args",
            "--pages 384 --map-pages 512",
            "--observer-args",
            "--no-shmem-exemption",
        ],
    );
    let r = run.fs("tmpfs-huge");
    let s = r.summary();
    let c = s.classes.c;
    assert!(c.pmd > 0, "no PMD past EOF: {c:?}\n{}", r.log);
    assert!(c.beyond_eof >= c.pmd, "{c:?}");
    assert_eq!(c.shmem, 0, "the exemption was off: {c:?}");
    assert_eq!(
        c.installs_past_eof,
        c.during_size_change + c.shmem + c.beyond_eof,
        "{c:?}"
    );
    assert_eq!(s.verdict, observer_report::Verdict::Critical, "{}", r.log);
    // Each beyond_eof is an alert with the size its installer saw and the
    // installer's stack.
    let eof: Vec<_> = r
        .stream
        .alerts
        .iter()
        .filter(|a| a["kind"] == "beyond_eof")
        .collect();
    assert_eq!(eof.len() as u64, c.beyond_eof, "{}", r.log);
    for a in &eof {
        assert_eq!(a["severity"], "critical", "{a}");
        assert!(a["window"].is_null(), "{a}");
        let i_size = a["eof"]["i_size"].as_u64().unwrap();
        let eof_page = a["eof"]["eof_page"].as_u64().unwrap();
        assert_eq!(eof_page, i_size.div_ceil(4096), "{a}");
        assert!(a["pages"]["end"].as_u64().unwrap() >= eof_page, "{a}");
    }
    assert!(
        eof.iter()
            .any(|a| a["eof"]["pmd"] == true && a["evidence"]["stack_ids"]["victim"].is_u64()),
        "no PMD alert with the installer's stack: {eof:?}"
    );
}

/// The live race this project found on current kernels: gfs2 on Debian
/// 7.3's generic flavour (lock_nolock). A punch truncates the page cache
/// under the inode glock; readahead(2) refills the range through
/// gfs2_readahead, which takes no glock, from blocks punch_hole frees right
/// after; the hole then reads back the old data. Each stale_data alert
/// names the racer's file, a page of the punch it raced, a reader stack
/// through readahead(2) and a punch stack in __gfs2_punch_hole; the racer
/// read such pages back from its holes itself.
#[test]
#[ignore = "needs root and qemu: run by cargo xtask test"]
fn debian_7_3_gfs2_readahead_refills_a_punched_hole_with_freed_blocks() {
    let run = Run::boot_with(
        "7.3:amd64",
        &[
            "--fs",
            "gfs2",
            "--duration",
            "6",
            "--racer-args",
            "--op punch --punch-pages 16 --fault-threads 2 --readers 2 --check-holes",
        ],
    );
    let rel = kernel_release(&run.dir);
    assert!(
        rel.starts_with("7.3.") && !rel.contains("cloud"),
        "booted {rel}"
    );
    let g = run.fs("gfs2");
    assert!(
        g.log
            .contains("observer: punch_hole: kprobe/kretprobe (file from gfs2_inode.i_inode"),
        "gfs2's punch_hole not watched:\n{}",
        g.log
    );
    let holes = g.racer.holes.clone().expect("the racer checked its holes");
    assert!(
        holes.pages_not_zero > 0,
        "every hole read back as zeroes: {:?}",
        g.racer
    );
    let dev = format!("{}:{}", g.racer.dev_major, g.racer.dev_minor);
    let stale: Vec<&Value> = g
        .stream
        .alerts_on(&dev, g.racer.ino)
        .into_iter()
        .filter(|a| a["kind"] == "stale_data")
        .collect();
    assert!(
        !stale.is_empty(),
        "no stale_data on the racer's file:\n{}",
        g.log
    );
    assert_eq!(g.summary().classes.b.stale_data, stale.len() as u64);
    let stack = |a: &Value, which: &str| -> Vec<String> {
        a["evidence"][which]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    for a in &stale {
        assert_eq!(a["severity"], "critical", "{a}");
        assert_eq!(a["task"]["comm"], "racer-read", "{a}");
        assert_eq!(a["window"]["task"]["comm"], "racer-punch", "{a}");
        assert_eq!(a["window"]["op"], "punch_hole", "{a}");
        assert_eq!(a["refill"]["fs_remove"], "punch_hole", "{a}");
        // gfs2 has no invalidate_lock to hold.
        assert_eq!(a["refill"]["invalidate_lock"], "not_held", "{a}");
        // Inside the punch's range and time: after its page-cache
        // truncation began (it may pass the page before the add), before its
        // block removal ended.
        let (p, w) = (&a["pages"], &a["window"]["pages"]);
        assert!(
            w["start"].as_u64() <= p["start"].as_u64() && p["end"].as_u64() <= w["end"].as_u64(),
            "{a}"
        );
        let added = a["refill"]["added_ns"].as_u64().unwrap();
        assert!(a["window"]["opened_ns"].as_u64().unwrap() <= added, "{a}");
        assert!(
            added <= a["refill"]["fs_remove_exit_ns"].as_u64().unwrap(),
            "{a}"
        );
        let punch = stack(a, "punch_stack");
        assert!(
            punch.iter().any(|f| f.starts_with("__gfs2_punch_hole+")),
            "{punch:?}"
        );
    }
    // The refills come through readahead(2), not read(2): read(2) takes the
    // glock the punch holds.
    let victims: Vec<Vec<String>> = stale.iter().map(|a| stack(a, "victim_stack")).collect();
    assert!(
        victims
            .iter()
            .all(|s| s.iter().any(|f| f.starts_with("ksys_readahead+"))),
        "a refill not through readahead(2): {victims:?}"
    );
}
