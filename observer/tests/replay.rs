//! Golden replay of a synthetic recording: `observer replay` needs no root and
//! no kernel, so the exact alerts a known stream must produce are asserted
//! end to end through the binary.

use std::process::Command;

use observer::trace::{Recorder, Trailer, Wiring, encode};
use observer_abi::{
    Event, FALLOC_FL_PUNCH_HOLE, FLAG_MAPCOUNT_KNOWN, FLAG_STILL_MAPPED, FLAG_UPTODATE,
    FS_REMOVE_EXT4_EXT, Kind, NO_STACK, OP_FALLOCATE,
};
use serde_json::Value;

const DEV: u32 = (8 << 20) | 16;

fn ev(kind: Kind, ts: u64, tid: u32, ino: u64, start: u64, end: u64) -> Event {
    let mut e = Event {
        ts,
        entry_ts: ts,
        ino,
        start,
        end,
        dev: DEV,
        pid: 100,
        tid,
        kind: kind as u8,
        fidelity: observer_abi::probes::Method::Fentry.code(),
        stack_id: NO_STACK,
        ..Default::default()
    };
    let comm: &[u8] = match tid {
        101 => b"puncher",
        103 => b"reader",
        _ => b"faulter",
    };
    e.comm[..comm.len()].copy_from_slice(comm);
    e
}

fn replay(events: &[Event], extra: &[&str]) -> Vec<Value> {
    // Tests run in parallel: one directory per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "replay-golden-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.pcro");
    let mut r = Recorder::create(&trace, Wiring::default()).unwrap();
    for e in events {
        r.record(&encode(e)).unwrap();
    }
    r.finish(&Trailer::default()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_observer"))
        .arg("replay")
        .arg(&trace)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A punch (unmap then truncate) on ino 7, pages 10-19. Fault-around on the
/// same file: one call inside the window overlapping it, one inside but
/// beside it, one before it; and one on another file inside the window.
fn punch_stream() -> Vec<Event> {
    let mut map_in = ev(Kind::MapPages, 1_500, 102, 7, 16, 31);
    map_in.entry_ts = 1_400;
    let mut map_beside = ev(Kind::MapPages, 1_600, 102, 7, 20, 35);
    map_beside.entry_ts = 1_550;
    let mut map_before = ev(Kind::MapPages, 900, 102, 7, 0, 15);
    map_before.entry_ts = 800;
    let mut map_other = ev(Kind::MapPages, 1_700, 102, 8, 0, 31);
    map_other.entry_ts = 1_650;
    vec![
        map_before,
        ev(Kind::UnmapEnter, 1_000, 101, 7, 10, 19),
        map_in,
        ev(Kind::UnmapExit, 1_800, 101, 7, 10, 19),
        map_beside,
        map_other,
        ev(Kind::TruncateEnter, 1_900, 101, 7, 10, 19),
        ev(Kind::TruncateExit, 2_500, 101, 7, 10, 19),
    ]
}

#[test]
fn synthetic_punch_yields_exactly_the_overlapping_alert() {
    let lines = replay(&punch_stream(), &[]);
    let alerts: Vec<&Value> = lines.iter().filter(|v| v["type"] == "alert").collect();
    assert_eq!(alerts.len(), 1, "{lines:#?}");
    let a = alerts[0];
    assert_eq!(a["kind"], "pte_in_punch_window");
    assert_eq!(a["dev"], "8:16");
    assert_eq!(a["ino"], 7);
    assert_eq!(a["pages"]["start"], 16);
    assert_eq!(a["pages"]["end"], 31);
    assert_eq!(a["task"]["comm"], "faulter");
    assert_eq!(a["window"]["pages"]["start"], 10);
    assert_eq!(a["window"]["pages"]["end"], 19);
    assert_eq!(a["window"]["task"]["comm"], "puncher");
    assert_eq!(a["window"]["opened_ns"], 1_000);
    assert_eq!(a["window"]["closed_ns"], 2_500);
    assert_eq!(a["window"]["open_for_ns"], 500);
    assert_eq!(a["fidelity"], "fentry");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["alerts"], 1);
    assert_eq!(summary["windows"], 1);
    assert_eq!(summary["events"]["filemap_map_pages"], 4);
    assert_eq!(summary["verdict"], "race_observed");
    // No installer records in this stream: no page-exact counts.
    assert!(a["outcome"]["ptes"].is_null());
}

#[test]
fn replay_filters_apply() {
    let lines = replay(&punch_stream(), &["--ino", "8"]);
    assert!(lines.iter().all(|v| v["type"] != "alert"));
    assert_eq!(lines.last().unwrap()["alerts"], 1);
    assert_eq!(lines.last().unwrap()["alerts_shown"], 0);
}

fn with(mut e: Event, f: impl FnOnce(&mut Event)) -> Event {
    f(&mut e);
    e
}

/// fallocate(PUNCH_HOLE | KEEP_SIZE), as the syscall records carry it.
const PUNCH: u64 = OP_FALLOCATE | ((FALLOC_FL_PUNCH_HOLE | 0x01) << 8);

fn alerts_of<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "alert" && v["kind"] == kind)
        .collect()
}

/// A punch of pages 10-19 of ino 7. Between its unmap and its truncate a
/// fault-around maps 8-23, its installer putting PTEs on 12 and 13; the
/// truncate then removes 12 with a PTE still on it and 13 clean.
fn stale_pte_stream() -> Vec<Event> {
    vec![
        with(ev(Kind::SyscallEnter, 900, 101, 7, 10, 19), |e| {
            e.aux = PUNCH
        }),
        ev(Kind::UnmapEnter, 1_000, 101, 7, 10, 19),
        ev(Kind::UnmapExit, 1_100, 101, 7, 10, 19),
        with(ev(Kind::MapPages, 1_300, 102, 7, 8, 23), |e| {
            e.entry_ts = 1_150
        }),
        with(ev(Kind::PteInstall, 1_200, 102, 7, 12, 13), |e| {
            e.stack_id = 5
        }),
        with(ev(Kind::TruncateEnter, 1_400, 101, 7, 10, 19), |e| {
            e.stack_id = 9
        }),
        with(ev(Kind::FolioDelete, 1_500, 1, 7, 12, 12), |e| {
            e.aux = 0x4242;
            e.flags = FLAG_MAPCOUNT_KNOWN | FLAG_STILL_MAPPED;
        }),
        with(ev(Kind::FolioDelete, 1_510, 1, 7, 13, 13), |e| {
            e.aux = 0x4243;
            e.flags = FLAG_MAPCOUNT_KNOWN;
        }),
        ev(Kind::TruncateExit, 1_600, 101, 7, 10, 19),
        with(ev(Kind::SyscallExit, 2_000, 101, 7, 0, 0), |e| {
            e.aux = PUNCH
        }),
    ]
}

#[test]
fn synthetic_stale_pte_yields_exactly_one_critical_alert() {
    let lines = replay(&stale_pte_stream(), &[]);
    let stale = alerts_of(&lines, "stale_pte");
    assert_eq!(stale.len(), 1, "{lines:#?}");
    let a = stale[0];
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["message"], "pte now points to a freed page");
    assert_eq!(a["ts_ns"], 1_200);
    assert_eq!(a["dev"], "8:16");
    assert_eq!(a["ino"], 7);
    assert_eq!(a["task"]["tid"], 102);
    assert_eq!(a["task"]["comm"], "faulter");
    assert_eq!(a["pages"]["start"], 12);
    assert_eq!(a["pages"]["end"], 12);
    let w = &a["window"];
    assert_eq!(w["id"], 1);
    assert_eq!(w["op"], "punch_hole");
    assert_eq!(w["pages"]["start"], 10);
    assert_eq!(w["pages"]["end"], 19);
    assert_eq!(w["task"]["comm"], "puncher");
    assert_eq!(w["opened_ns"], 1_000);
    assert_eq!(w["closed_ns"], 1_600);
    assert_eq!(w["open_for_ns"], 200);
    assert_eq!(a["fidelity"], "fentry");
    assert_eq!(a["victim_fidelity"], "fentry");
    assert_eq!(a["window_fidelity"], "fentry");
    assert_eq!(a["pte"]["installed_ns"], 1_200);
    assert_eq!(a["pte"]["deleted_ns"], 1_500);
    assert_eq!(a["pte"]["pfn"], 0x4242);
    let ev = &a["evidence"];
    assert_eq!(ev["stack_ids"]["victim"], 5);
    assert_eq!(ev["stack_ids"]["punch"], 9);
    // A recording has no stack map: ids, but no frames.
    assert!(ev["victim_stack"].is_null() && ev["punch_stack"].is_null());
    assert!(a.get("map_pages").is_none() && a.get("outcome").is_none());

    // The fault-around itself, with the page-exact outcome of its PTEs.
    let race = alerts_of(&lines, "pte_in_punch_window");
    assert_eq!(race.len(), 1);
    assert_eq!(race[0]["outcome"]["folios_removed"], 2);
    let ptes = &race[0]["outcome"]["ptes"];
    assert_eq!(
        (
            &ptes["installed"],
            &ptes["rezapped"],
            &ptes["stale"],
            &ptes["still_mapped"],
            &ptes["unknown"]
        ),
        (&2.into(), &1.into(), &1.into(), &0.into(), &0.into())
    );

    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["alerts"], 2);
    assert_eq!(summary["verdict"], "critical");
    assert_eq!(summary["windows_by_op"]["punch_hole"], 1);
    assert_eq!(summary["windows_by_op"]["unknown"], 0);
    let a = &summary["classes"]["a"];
    assert_eq!(a["ptes_in_window"], 2);
    assert_eq!(a["rezapped"], 1);
    assert_eq!(a["stale_pte"], 1);
    assert_eq!(a["still_mapped_after_window"], 0);
    assert_eq!(a["unknown"], 0);
    assert_eq!(a["still_mapped_unattributed"], 0);
    let b = &summary["classes"]["b"];
    // The punch had no block-removal record: class B was not evaluated.
    assert_eq!(b["windows"], 1);
    assert_eq!(b["unbounded"], 1);
    assert_eq!(b["stale_data"], 0);
}

/// An ext4 punch of pages 16-31 of ino 9. After its truncate and before its
/// block removal ends, a reader fills 20-23 from disk (that survives: stale)
/// and 24 already uptodate (not read: fine); after the removal it reads 25
/// (a hole by then: fine).
fn stale_data_stream() -> Vec<Event> {
    vec![
        with(ev(Kind::SyscallEnter, 900, 101, 9, 16, 31), |e| {
            e.aux = PUNCH
        }),
        ev(Kind::UnmapEnter, 1_000, 101, 9, 16, 31),
        ev(Kind::UnmapExit, 1_100, 101, 9, 16, 31),
        ev(Kind::TruncateEnter, 1_200, 101, 9, 16, 31),
        ev(Kind::TruncateExit, 1_400, 101, 9, 16, 31),
        with(ev(Kind::FolioAdd, 1_500, 103, 9, 20, 23), |e| {
            e.stack_id = 21
        }),
        with(ev(Kind::FolioAdd, 1_550, 103, 9, 24, 24), |e| {
            e.flags = FLAG_UPTODATE
        }),
        with(ev(Kind::FsRemoveEnter, 1_600, 101, 9, 0, 0), |e| {
            e.aux = FS_REMOVE_EXT4_EXT
        }),
        with(ev(Kind::FsRemoveExit, 1_800, 101, 9, 0, 0), |e| {
            e.aux = FS_REMOVE_EXT4_EXT;
            e.stack_id = 31;
        }),
        ev(Kind::FolioAdd, 1_900, 103, 9, 25, 25),
        with(ev(Kind::SyscallExit, 2_000, 101, 9, 0, 0), |e| {
            e.aux = PUNCH
        }),
    ]
}

#[test]
fn synthetic_stale_data_yields_exactly_one_critical_alert() {
    let lines = replay(&stale_data_stream(), &[]);
    let alerts: Vec<&Value> = lines.iter().filter(|v| v["type"] == "alert").collect();
    assert_eq!(alerts.len(), 1, "{lines:#?}");
    let a = alerts[0];
    assert_eq!(a["kind"], "stale_data");
    assert_eq!(a["severity"], "critical");
    assert_eq!(
        a["message"],
        "the cache holds data from blocks the punch then freed"
    );
    assert_eq!(a["ts_ns"], 1_500);
    assert_eq!(a["ino"], 9);
    assert_eq!(a["task"]["tid"], 103);
    assert_eq!(a["task"]["comm"], "reader");
    assert_eq!(a["pages"]["start"], 20);
    assert_eq!(a["pages"]["end"], 23);
    let w = &a["window"];
    assert_eq!(w["id"], 1);
    assert_eq!(w["op"], "punch_hole");
    assert_eq!(w["pages"]["start"], 16);
    assert_eq!(w["pages"]["end"], 31);
    assert_eq!(w["task"]["comm"], "puncher");
    assert_eq!(w["opened_ns"], 1_200);
    assert_eq!(w["closed_ns"], 1_800);
    assert_eq!(w["open_for_ns"], 300);
    assert_eq!(a["fidelity"], "fentry");
    let r = &a["refill"];
    assert_eq!(r["added_ns"], 1_500);
    assert_eq!(r["uptodate"], false);
    assert_eq!(r["truncate_exit_ns"], 1_400);
    assert_eq!(r["fs_remove"], "ext4_ext_remove_space");
    assert_eq!(r["fs_remove_exit_ns"], 1_800);
    assert_eq!(a["evidence"]["stack_ids"]["victim"], 21);
    assert_eq!(a["evidence"]["stack_ids"]["punch"], 31);
    assert!(a["evidence"]["victim_stack"].is_null());

    let summary = lines.last().unwrap();
    assert_eq!(summary["alerts"], 1);
    assert_eq!(summary["verdict"], "critical");
    assert_eq!(summary["windows_by_op"]["punch_hole"], 1);
    let b = &summary["classes"]["b"];
    assert_eq!(b["windows"], 1);
    assert_eq!(b["unbounded"], 0);
    assert_eq!(b["refills"], 2);
    assert_eq!(b["survived"], 2);
    assert_eq!(b["stale_data"], 1);
    assert_eq!(summary["classes"]["a"]["ptes_in_window"], 0);
    assert_eq!(summary["events"]["folio_add"], 3);
    assert_eq!(summary["events"]["fs_remove:enter"], 1);
    assert_eq!(summary["events"]["fs_remove:exit"], 1);
}

#[test]
fn critical_alerts_obey_the_filters_but_the_verdict_does_not() {
    let lines = replay(&stale_data_stream(), &["--comm", "nobody"]);
    assert!(lines.iter().all(|v| v["type"] != "alert"));
    let summary = lines.last().unwrap();
    assert_eq!(summary["alerts"], 1);
    assert_eq!(summary["alerts_shown"], 0);
    assert_eq!(summary["verdict"], "critical");
}

/// Class C through the binary: installs on ino 7 (size 40960 bytes, pages
/// 0-9). One reaches page 10 with nothing changing the size: beyond_eof. One
/// does so inside an ftruncate: legitimate. One PMD on tmpfs spans EOF: by
/// design. One stays below EOF: not class C at all.
#[test]
fn synthetic_installs_past_eof_are_classified_and_fail_the_verdict() {
    use observer_abi::{FLAG_ISIZE_KNOWN, FLAG_PMD, FLAG_SHMEM, OP_FTRUNCATE};
    let sized = |mut e: Event, flags: u8| {
        e.aux = 10 * 4096;
        e.flags = FLAG_ISIZE_KNOWN | flags;
        e
    };
    let events = vec![
        sized(ev(Kind::PteInstall, 1_000, 102, 7, 8, 10), 0),
        sized(ev(Kind::PteInstall, 1_100, 102, 7, 0, 9), 0),
        with(
            ev(Kind::SyscallEnter, 50_000_000, 101, 7, 4, u64::MAX),
            |e| e.aux = OP_FTRUNCATE,
        ),
        sized(ev(Kind::PteInstall, 50_001_000, 102, 7, 9, 12), 0),
        with(ev(Kind::SyscallExit, 50_100_000, 101, 7, 0, 0), |e| {
            e.aux = OP_FTRUNCATE
        }),
        sized(
            ev(Kind::PteInstall, 60_000_000, 102, 8, 0, 511),
            FLAG_PMD | FLAG_SHMEM,
        ),
    ];
    let lines = replay(&events, &[]);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let c = &summary["classes"]["c"];
    assert_eq!(c["installs_past_eof"], 3, "{c}");
    assert_eq!(c["beyond_eof"], 1, "{c}");
    assert_eq!(c["during_size_change"], 1, "{c}");
    assert_eq!(c["shmem"], 1, "{c}");
    assert_eq!(c["pmd"], 1, "{c}");
    assert_eq!(summary["verdict"], "critical");
}
