use std::{fs, path::PathBuf};

use observer_report::{Startup, Summary};
use observer_tests::FaultbenchReport;

use super::{
    BenchArgs, Config, HOST_CONFIGS, HOST_WORKLOADS, Params, Run, VM_CONFIGS, VM_WORKLOADS,
    Workload, peer, probes_of, read_observer_output,
    report::{group, median, quantile, round_ratios},
    stats,
    vm::guest_runs,
};
use crate::{fixtures, json::Probe, util::temp_dir};

fn summary() -> Summary {
    let mut s = fixtures::summary(639, 370, 17);
    for (kind, n) in [
        ("filemap_map_pages", 103024),
        ("syscall:enter", 639),
        ("syscall:exit", 639),
        ("folio_delete", 6782),
    ] {
        s.events.add(kind, n);
        s.kernel_emitted.add(kind, n);
    }
    s.lost.ringbuf_full = 3;
    s
}

fn startup() -> Startup {
    fixtures::startup(&[("filemap_map_pages", Some("fentry")), ("x", None)])
}

/// The VM's schedule (the guest's results are named by it).
fn params(rounds: u32) -> Params {
    Params {
        rounds,
        pages: 64,
        fault_rounds: 10,
        mix_ops: 10,
        scalable: false,
        workloads: &VM_WORKLOADS,
        configs: &VM_CONFIGS,
    }
}

#[test]
fn observer_output_gives_the_summary_and_the_probes() {
    let text = format!("{}\n{}\n", startup().to_json(), summary().to_json());
    let (s, startup) = read_observer_output(&text).unwrap();
    assert_eq!(s.events.total(), 103024 + 639 + 639 + 6782);
    assert_eq!(
        probes_of(&startup),
        [
            Probe {
                function: "filemap_map_pages".into(),
                method: Some("fentry".into())
            },
            Probe {
                function: "x".into(),
                method: None
            },
        ]
    );
    // No startup record: no probes, but no failure either.
    let (_, startup) = read_observer_output(&format!("{}\n", summary().to_json())).unwrap();
    assert!(probes_of(&startup).is_empty());
    // An alert is not a summary.
    let alert = r#"{"type":"alert","events":{}}"#;
    assert!(read_observer_output(alert).is_err());
}

#[test]
fn schedule_alternates_configs_within_each_workload() {
    let all: Vec<_> = params(2).schedule().collect();
    assert_eq!(all.len(), params(2).total_runs());
    assert_eq!(
        all[..4],
        [
            (1, Workload::NoPunch, Config::Bare),
            (1, Workload::NoPunch, Config::Observer),
            (1, Workload::NoPunch, Config::FullStream),
            (1, Workload::Punch, Config::Bare),
        ]
    );
    assert_eq!(all[11], (2, Workload::Punch, Config::FullStream));
    // The host: three setups over three workloads in every round.
    let host = Params {
        workloads: &HOST_WORKLOADS,
        configs: &HOST_CONFIGS,
        ..params(7)
    };
    let all: Vec<_> = host.schedule().collect();
    assert_eq!(all.len(), 7 * 9);
    assert_eq!(all[2], (1, Workload::NoPunch, Config::Peer));
    assert_eq!(all[8], (1, Workload::Mix, Config::Peer));
    assert_eq!(all[9], (2, Workload::NoPunch, Config::Bare));
}

#[test]
fn vm_has_its_own_defaults() {
    let args = |kernel: Option<&str>, rounds| BenchArgs {
        kernel: kernel.map(str::to_owned),
        rounds,
        pages: None,
        fault_rounds: None,
        mix_ops: None,
        no_stats: false,
        replay: None,
        out: None,
        bin_dir: None,
        observer_args: String::new(),
    };
    let host = Params::new(&args(None, None));
    assert_eq!(
        (host.rounds, host.pages, host.fault_rounds, host.mix_ops),
        (7, 4096, 2000, 5000)
    );
    assert!(!host.scalable);
    assert_eq!(host.configs, HOST_CONFIGS);
    assert_eq!(host.workloads, HOST_WORKLOADS);
    let vm = Params::new(&args(Some("6.12"), Some(2)));
    assert_eq!((vm.rounds, vm.pages, vm.fault_rounds), (2, 4096, 400));
    assert!(vm.scalable);
    assert_eq!(vm.configs, VM_CONFIGS);
    let fixed = Params::new(&BenchArgs {
        fault_rounds: Some(100),
        ..args(Some("6.1"), None)
    });
    assert!(!fixed.scalable);
}

fn fb(rate: f64) -> FaultbenchReport {
    FaultbenchReport {
        rounds: 1,
        pages: 100,
        faults: 100,
        elapsed_s: 100.0 / rate,
        faults_per_s: rate,
        ops: 100,
        ops_per_s: rate,
    }
}

#[test]
fn per_round_slowdowns_pair_runs_of_one_round() {
    let run = |round, config, rate| Run {
        round,
        workload: Workload::NoPunch,
        config,
        fb: fb(rate),
        observer: None,
        peer_in_window: None,
    };
    let runs = [
        run(1, Config::Bare, 100.0),
        run(1, Config::Observer, 80.0),
        run(2, Config::Bare, 50.0),
        run(2, Config::Observer, 50.0),
        // No bare run in round 3: not paired.
        run(3, Config::Observer, 1.0),
    ];
    assert_eq!(
        round_ratios(&runs, Workload::NoPunch, Config::Observer),
        [1.25, 1.0]
    );
    assert!(round_ratios(&runs, Workload::Punch, Config::Observer).is_empty());
}

/// What the guest's bench() leaves for a 1-round bench.
fn guest_dir(observer_rc: &str) -> PathBuf {
    let dir = temp_dir("xtask-bench").unwrap();
    for (i, (_, workload, config)) in params(1).schedule().enumerate() {
        let prefix = dir.join(format!("1.{}.{}", workload.tag(), config.name()));
        let file = |ext: &str| format!("{}{ext}", prefix.display());
        let rate = 1000.0 * (i + 1) as f64;
        fs::write(
            file(".faultbench.json"),
            format!(
                "{{\"rounds\":10,\"pages\":64,\"faults\":40,\"elapsed_s\":{},\"faults_per_s\":{rate},\"ops\":40,\"ops_per_s\":{rate}}}\n",
                40.0 / rate
            ),
        )
        .unwrap();
        if config != Config::Bare {
            fs::write(file(".observer.rc"), format!("{observer_rc}\n")).unwrap();
            fs::write(
                file(".observer.json"),
                format!("{}\n{}\n", startup().to_json(), summary().to_json()),
            )
            .unwrap();
        }
    }
    dir
}

#[test]
fn guest_results_parse_in_schedule_order() {
    let dir = guest_dir("0");
    let (runs, probes) = guest_runs(&dir, params(1)).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(probes[0].method.as_deref(), Some("fentry"));
    assert_eq!(runs.len(), 6);
    assert_eq!(runs[4].config, Config::Observer);
    assert_eq!(runs[4].workload, Workload::Punch);
    assert_eq!(runs[4].fb.faults_per_s, 5000.0);
    assert!(runs[3].observer.is_none());
    assert_eq!(runs[4].observer.as_ref().unwrap().alerts, 370);
}

#[test]
fn guest_observer_failure_is_an_error() {
    let dir = guest_dir("1");
    let err = guest_runs(&dir, params(1)).err().unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let err = format!("{err:#}");
    assert!(
        err.contains("round 1/1, no punch, observer: the observer exited with status 1"),
        "{err}"
    );
}

#[test]
fn medians_and_grouping() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0]), 2.5);
    assert!(median(&[]).is_nan());
    assert_eq!(group(1234567.8), "1,234,568");
    assert_eq!(group(999.0), "999");
    assert_eq!(group(-1000.0), "-1,000");
    assert_eq!(group(f64::NAN), "-");
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
    assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0], 0.75), 3.25);
    assert!(quantile(&[], 0.5).is_nan());
}

#[test]
fn fdinfo_gives_the_program_and_its_counters() {
    let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t108\n\
                run_time_ns:\t72000\nrun_cnt:\t1000\nrecursion_misses:\t0\n";
    assert_eq!(
        stats::parse_fdinfo(text),
        Some((
            108,
            stats::Counters {
                run_cnt: 1000,
                run_time_ns: 72000
            }
        ))
    );
    // A map's fdinfo has no prog_id.
    assert_eq!(stats::parse_fdinfo("map_type:\t1\nmap_id:\t3\n"), None);
    let before = [(1, stats::Counters::default())].into();
    let after = [
        (
            1,
            stats::Counters {
                run_cnt: 4,
                run_time_ns: 400,
            },
        ),
        (2, stats::Counters::default()),
    ]
    .into();
    let names = [(1, "mm_filemap_map_".to_owned())].into();
    let d = stats::diff(&before, &after, &names);
    assert_eq!(d.len(), 1, "a program that never ran is left out");
    assert_eq!(d[0].ns_per_run(), 100.0);
    assert!(d[0].is_map_pages());
}

#[test]
fn the_peer_script_says_ready_and_its_count_is_read() {
    assert!(peer::SCRIPT.contains("printf(\"ready\\n\")"));
    let out =
        "Attaching 9 probes...\nready\n\n@in_window[64768, 131]: 120\n@in_window[64768, 132]: 3\n";
    assert_eq!(peer::in_window(out), 123);
    assert_eq!(peer::in_window("ready\n"), 0);
}
