//! A short `cargo xtask bench` on the host (about 20 s): one round of every
//! setup over every workload, the bpf_stats runs and one replay. It asserts
//! the shape of the report, not its figures (one round on a shared machine
//! says nothing about overhead): every workload has a ratio for the observer
//! and for the bpftrace peer, every stats run counted its fault-around
//! program, the replay replayed records, and the targets were judged.
//!
//! Needs root and bpftrace: run by `cargo xtask test`, which sets XTASK_BIN
//! and OBSERVER_BIN.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

#[test]
#[ignore = "needs root and bpftrace: run by cargo xtask test"]
fn bench_reports_every_setup_and_workload() {
    let xtask = std::env::var_os("XTASK_BIN")
        .expect("XTASK_BIN is unset: run the host tests through `cargo xtask test`");
    let observer = PathBuf::from(
        std::env::var_os("OBSERVER_BIN").expect("OBSERVER_BIN is unset: run `cargo xtask test`"),
    );
    let bin_dir = observer.parent().expect("OBSERVER_BIN has a directory");
    let out = std::env::temp_dir().join("observer-bench-test.json");
    let _ = std::fs::remove_file(&out);
    let run = Command::new(xtask)
        .args(["bench", "--rounds", "1", "--fault-rounds", "50"])
        .args(["--mix-ops", "300", "--replay", "1", "--out"])
        .arg(&out)
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("cannot run xtask bench");
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "xtask bench failed ({}): {}\n{table}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("xtask bench wrote no --out file");
    let _ = std::fs::remove_file(&out);
    let v: Value = serde_json::from_str(&text).expect("the bench's JSON");

    let results = v["results"].as_array().expect("results");
    for workload in ["no punch", "punch", "mix"] {
        for setup in ["bare", "observer", "bpftrace-peer"] {
            let row = results
                .iter()
                .find(|r| r["workload"] == workload && r["setup"] == setup)
                .unwrap_or_else(|| panic!("no row for {workload}, {setup}:\n{table}"));
            assert!(
                row["ops_per_s_median"].as_f64().is_some_and(|x| x > 0.0),
                "{workload}, {setup}: no ops/s: {row}"
            );
            if setup != "bare" {
                assert!(
                    row["slowdown"].as_f64().is_some_and(|x| x > 0.0),
                    "{workload}, {setup}: no ratio: {row}"
                );
            }
        }
        // The table names them too.
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(workload) && l.contains("bpftrace-peer")),
            "{table}"
        );
    }
    // The peer saw the punches' windows.
    let peer_punch = results
        .iter()
        .find(|r| r["workload"] == "punch" && r["setup"] == "bpftrace-peer")
        .unwrap();
    assert!(
        peer_punch["peer_in_window_median"]
            .as_f64()
            .is_some_and(|n| n > 0.0),
        "the peer counted no fault-around in a window under punches: {peer_punch}"
    );

    let stats = v["bpf_stats"].as_array().expect("bpf_stats");
    assert_eq!(
        stats.len(),
        6,
        "one stats run per workload and setup: {stats:?}"
    );
    for s in stats.iter().filter(|s| s["workload"] != "mix") {
        let map_pages = s["programs"].as_array().into_iter().flatten().find(|p| {
            let name = p["name"].as_str().unwrap_or("");
            name.contains("map_pages") || name.starts_with("mm_filemap_map")
        });
        let runs = map_pages.and_then(|p| p["runs"].as_u64()).unwrap_or(0);
        assert!(
            runs > 1000,
            "{}: the fault-around program ran {runs} times: {s}",
            s["setup"]
        );
    }

    let replay = &v["replay"];
    assert!(
        replay["records"].as_u64().is_some_and(|n| n > 0),
        "{replay}"
    );
    assert_eq!(replay["replays"].as_array().map(Vec::len), Some(1));

    let targets = v["targets"].as_array().expect("targets");
    let binding = targets.iter().filter(|t| t["kind"] == "binding").count();
    assert_eq!(
        binding, 4,
        "slowdown and ns/run, with and without punches: {targets:?}"
    );
    assert!(table.contains("targets (issue 8):"), "{table}");
}
