//! Golden replay of a synthetic recording: `observer replay` needs no root and
//! no kernel, so the exact alerts a known stream must produce are asserted
//! end to end through the binary.

use std::process::Command;

use observer::trace::{Recorder, Wiring, encode};
use observer_abi::{Event, FIDELITY_FENTRY, Kind};
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
        fidelity: FIDELITY_FENTRY,
        ..Default::default()
    };
    let comm: &[u8] = if tid == 101 { b"puncher" } else { b"faulter" };
    e.comm[..comm.len()].copy_from_slice(comm);
    e
}

fn replay(events: &[Event], extra: &[&str]) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!(
        "replay-golden-{}-{}",
        std::process::id(),
        extra.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.pcro");
    let mut r = Recorder::create(&trace, Wiring::default()).unwrap();
    for e in events {
        r.record(&encode(e)).unwrap();
    }
    r.finish().unwrap();
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
    assert_eq!(summary["events"]["map_pages"], 4);
}

#[test]
fn replay_filters_apply() {
    let lines = replay(&punch_stream(), &["--ino", "8"]);
    assert!(lines.iter().all(|v| v["type"] != "alert"));
    assert_eq!(lines.last().unwrap()["alerts"], 1);
    assert_eq!(lines.last().unwrap()["alerts_shown"], 0);
}
