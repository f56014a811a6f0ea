//! fuse as a filesystem the tests race on: the project's own server
//! (`fusefs`, over an ext4 loop mount) checked on its own, then the
//! observer around the racer on it.
//!
//! They need root (mounts, /dev/fuse, BPF) and are ignored by default, like
//! host_observer.rs; one runs at a time.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use observer_tests::ops::Op;
use observer_tests::serial;
use observer_tests::workload::{self, page_size};
use observer_tests::{
    FsType, LoopMount, ObserverProcess, RacerReport, Stream, assert_nothing_vanished, is_root,
    observer_bin, racer_bin, statfs_type,
};
use serde_json::Value;

fn fuse_mount() -> LoopMount {
    assert!(is_root(), "needs root (mounts, /dev/fuse, BPF)");
    LoopMount::new(FsType::Fuse, 512).unwrap_or_else(|e| panic!("fuse mount: {e:#}"))
}

fn mounted_at(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// Stops the server the way Drop does and checks it ended cleanly with
/// its mount gone.
fn stop_and_check(m: &mut LoopMount) {
    let mnt = m.path().to_path_buf();
    let pid = m.server_pid().expect("the server runs");
    m.stop_fuse_server()
        .unwrap_or_else(|e| panic!("fusefs shutdown: {e:#}"));
    assert!(!mounted_at(&mnt), "{} still mounted", mnt.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "fusefs {pid} not reaped"
    );
    assert_ne!(statfs_type(&mnt).unwrap(), 0x6573_5546);
}

/// `st_blocks` of the backing file behind `name`.
fn backing_blocks(m: &LoopMount, name: &str) -> u64 {
    std::fs::metadata(m.dir().join("backing").join(name))
        .unwrap()
        .blocks()
}

#[test]
#[ignore = "needs root: mounts and /dev/fuse; run by cargo xtask test"]
fn fusefs_serves_files_through_the_page_cache() {
    let _serial = serial();
    let mut m = fuse_mount();
    let page = page_size();
    let pages = 64u64;
    let len = pages as usize * page;
    let path = m.path().join("f.dat");
    let f = workload::create(&path).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();

    // Names and inodes are the backing file's; the device is fuse's own.
    let st = std::fs::metadata(&path).unwrap();
    let back = std::fs::metadata(m.dir().join("backing/f.dat")).unwrap();
    assert_eq!(st.ino(), back.ino());
    assert_eq!(st.len(), len as u64);
    assert_ne!(st.dev(), back.dev());
    assert_eq!(
        m.dev(),
        format!("{}:{}", libc::major(st.dev()), libc::minor(st.dev()))
    );
    assert_eq!(statfs_type(m.path()).unwrap(), 0x6573_5546);

    // Read back, by read(2) and through a shared mapping.
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data, "read back differs");
    let map = workload::map_shared_read(&f, len, None).unwrap();
    // SAFETY: a live PROT_READ mapping of len bytes.
    let mapped = unsafe { std::slice::from_raw_parts(map, len) };
    assert!(mapped == &data[..], "mmap read differs");

    // A punch frees the backing blocks and reads as zeros, in both views.
    let before = backing_blocks(&m, "f.dat");
    workload::punch_hole(&f, 8 * page as u64, 16 * page as u64).unwrap();
    let after = backing_blocks(&m, "f.dat");
    assert!(
        after + 16 * page as u64 / 512 <= before,
        "punch freed no blocks: {before} -> {after} sectors"
    );
    f.read_exact_at(&mut buf, 0).unwrap();
    let mut want = data.clone();
    want[8 * page..24 * page].fill(0);
    assert!(buf == want, "punched range does not read as zeros");
    assert!(mapped == &want[..], "mapping still shows punched data");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);

    // Zero range too (the kernel's fuse passes PUNCH_HOLE and ZERO_RANGE
    // on; collapse and insert it refuses itself, before the server).
    f.write_all_at(&data, 0).unwrap();
    workload::zero_range(&f, 30 * page as u64, 2 * page as u64).unwrap();
    f.read_exact_at(&mut buf, 0).unwrap();
    want = data.clone();
    want[30 * page..32 * page].fill(0);
    assert!(buf == want, "zero range does not read as zeros");
    let e = workload::collapse_range(&f, 0, page as u64).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");

    // Truncate down, and the tail is gone in the backing file as well.
    workload::unmap(map, len).unwrap();
    f.set_len(10 * page as u64).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * page as u64);
    assert_eq!(
        std::fs::metadata(m.dir().join("backing/f.dat"))
            .unwrap()
            .len(),
        10 * page as u64
    );
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(n, 10 * page);
    assert!(buf[..n] == want[..n]);

    // Unlink, and what the server does not serve.
    drop(f);
    std::fs::remove_file(&path).unwrap();
    assert!(!m.dir().join("backing/f.dat").exists());
    assert!(std::fs::create_dir(m.path().join("d")).is_err());

    stop_and_check(&mut m);
}

#[test]
#[ignore = "needs root: mounts and /dev/fuse; run by cargo xtask test"]
fn fusefs_exits_when_unmounted() {
    let _serial = serial();
    let mut m = fuse_mount();
    std::fs::write(m.path().join("x"), b"x").unwrap();
    let out = Command::new("umount").arg(m.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // The server reads ENODEV and exits 0 on its own.
    stop_and_check(&mut m);
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

fn page_range(v: &Value) -> (u64, u64) {
    let end = match &v["end"] {
        Value::String(s) if s == "EOF" => u64::MAX,
        e => u64_of(e),
    };
    (u64_of(&v["start"]), end)
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The observer around the racer's `op` on the fuse file: the windows
/// open on the fuse inode and device, and fault-around runs inside them.
/// The kernel's fuse takes no lock against faults in fallocate (fs/fuse/
/// file.c fuse_file_fallocate: the invalidate_lock only when FUSE_IS_DAX),
/// so the racer's faults land in the windows as on ext4.
fn observe_op_on_fuse(op: &str, window_op: &str) {
    let _serial = serial();
    let mut m = fuse_mount();
    let out = m.dir().join("observer.jsonl");
    let bin = observer_bin();
    let mut p = ObserverProcess::spawn(&bin, ["--json", "--output", out.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("cannot start {}: {e:#}", bin.display()));
    p.wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("observer: {e:#}"));
    let file = m.path().join("racer.dat");
    let racer = Command::new(racer_bin())
        .arg("--file")
        .arg(&file)
        .args(["--duration", "3", "--op", op])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&racer.stdout);
    assert!(
        racer.status.success(),
        "racer failed ({}): {stdout}{}",
        racer.status,
        String::from_utf8_lossy(&racer.stderr)
    );
    let r = RacerReport::parse(&stdout).unwrap();
    p.signal(libc::SIGINT).unwrap();
    let exit = p.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let s = Stream::read(&out).unwrap_or_else(|e| panic!("{e:#}"));
    assert_nothing_vanished(&s.summary);

    // The racer's file is the fuse file: fuse's device, the backing inode.
    let dev = m.dev();
    assert_eq!(format!("{}:{}", r.dev_major, r.dev_minor), dev);
    let back = std::fs::metadata(m.dir().join("backing/racer.dat")).unwrap();
    assert_eq!(r.ino, back.ino());
    assert!(r.punches > 0 && r.faults > 0, "{r:?}");

    // Two windows per racer call: the racer's fallocate on the fuse inode,
    // and inside it the server's fallocate on the backing ext4 inode. The
    // observer watches the whole host, so other processes' calls may add
    // a few (measured alone: exactly 2 per call).
    let sum = &s.summary;
    let windows = sum.windows_by_op.get(window_op);
    assert!(
        windows >= 2 * r.punches,
        "{windows} {window_op} windows for {} racer calls: {sum:?}",
        r.punches
    );
    let ours = s.alerts_on(&dev, r.ino);
    assert!(
        !ours.is_empty(),
        "no alert on dev {dev} ino {} among {} (racer {r:?})",
        r.ino,
        s.alerts.len()
    );
    // The server reads and writes the backing file, never maps it: no
    // alert is on the backing file.
    let back_dev = format!("{}:{}", libc::major(back.dev()), libc::minor(back.dev()));
    assert!(s.alerts_on(&back_dev, back.ino()).is_empty());
    let punched = (r.punched_start, r.punched_end);
    for a in &ours {
        assert_eq!(a["kind"], "pte_in_punch_window", "{a}");
        let w = &a["window"];
        assert_eq!(w["op"], window_op, "{a}");
        assert_eq!(w["task"]["comm"], "racer-punch", "{a}");
        assert_eq!(a["task"]["comm"], "racer-fault", "{a}");
        let (pages, wpages) = (page_range(&a["pages"]), page_range(&w["pages"]));
        assert!(
            overlap(pages, wpages),
            "alert pages outside its window: {a}"
        );
        assert!(
            overlap(wpages, punched),
            "window outside the racer's range: {a}"
        );
        assert_eq!(wpages.1 - wpages.0 + 1, r.punch_pages, "{a}");
        assert!(
            pages.1 < r.pages,
            "alert past the file's {} pages: {a}",
            r.pages
        );
    }
    // The kernel unmaps what it removes (truncate_inode_pages_range): no
    // critical outcome.
    assert_eq!(sum.alerts_by_severity.critical, 0, "{sum:?}");
    eprintln!(
        "fuse {op}: {} calls, {} faults, {windows} {window_op} windows, {} alerts on the file, \
         first pages {:?} in window {:?}",
        r.punches,
        r.faults,
        ours.len(),
        page_range(&ours[0]["pages"]),
        page_range(&ours[0]["window"]["pages"])
    );
    stop_and_check(&mut m);
}

#[test]
#[ignore = "needs root: mounts, /dev/fuse and BPF; run by cargo xtask test"]
fn observer_sees_the_racers_punches_on_fuse() {
    observe_op_on_fuse("punch", "punch_hole");
}

#[test]
#[ignore = "needs root: mounts, /dev/fuse and BPF; run by cargo xtask test"]
fn observer_sees_the_racers_zero_ranges_on_fuse() {
    observe_op_on_fuse("zero", "zero_range");
}

/// Every racer op on fuse: the ones the kernel's fuse passes on run (with
/// a reader thread), the others are "not supported" (exit 77): collapse
/// and insert are refused by fuse_file_fallocate itself, and the server
/// answers no clone or dedupe ioctl.
#[test]
#[ignore = "needs root: mounts and /dev/fuse; run by cargo xtask test"]
fn racer_runs_every_supported_op_on_fuse() {
    let _serial = serial();
    let m = fuse_mount();
    let file = m.path().join("race");
    for op in observer_tests::ops::ALL {
        let unsupported = matches!(op, Op::Collapse | Op::Insert | Op::Clone | Op::Dedupe);
        let out = Command::new(racer_bin())
            .arg("--file")
            .arg(&file)
            .args(["--op", op.name(), "--duration", "0.5", "--readers", "1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if unsupported {
            assert_eq!(out.status.code(), Some(77), "{}: {out:?}", op.name());
            continue;
        }
        assert!(out.status.success(), "{}: {out:?}", op.name());
        let r = RacerReport::parse(&stdout).unwrap();
        assert!(
            r.punches > 0 && r.faults > 0 && r.reads > 0,
            "{}: {r:?}",
            op.name()
        );
        eprintln!(
            "fuse {}: {} calls, {} faults, {} reads",
            op.name(),
            r.punches,
            r.faults,
            r.reads
        );
    }
}
