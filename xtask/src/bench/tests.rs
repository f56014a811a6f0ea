use std::{fs, path::PathBuf};

use observer_report::{Startup, Summary};
use observer_tests::FaultbenchReport;

use super::{
    BenchArgs, Config, Params, Run, read_observer_output,
    report::{group, median, round_slowdowns},
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

fn params(rounds: u32) -> Params {
    Params {
        rounds,
        pages: 64,
        fault_rounds: 10,
        scalable: false,
    }
}

#[test]
fn observer_output_gives_the_summary_and_the_probes() {
    let text = format!("{}\n{}\n", startup().to_json(), summary().to_json());
    let (s, probes) = read_observer_output(&text).unwrap();
    assert_eq!(s.events.total(), 103024 + 639 + 639 + 6782);
    assert_eq!(
        probes,
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
    let (_, probes) = read_observer_output(&format!("{}\n", summary().to_json())).unwrap();
    assert!(probes.is_empty());
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
            (1, false, Config::Bare),
            (1, false, Config::Observer),
            (1, false, Config::FullStream),
            (1, true, Config::Bare),
        ]
    );
    assert_eq!(all[11], (2, true, Config::FullStream));
}

#[test]
fn vm_has_its_own_defaults() {
    let args = |kernel: Option<&str>, rounds| BenchArgs {
        kernel: kernel.map(str::to_owned),
        rounds,
        pages: None,
        fault_rounds: None,
        out: None,
        bin_dir: None,
        observer_args: String::new(),
    };
    let host = Params::new(&args(None, None));
    assert_eq!(
        (host.rounds, host.pages, host.fault_rounds),
        (3, 4096, 2000)
    );
    assert!(!host.scalable);
    let vm = Params::new(&args(Some("6.12"), Some(2)));
    assert_eq!((vm.rounds, vm.pages, vm.fault_rounds), (2, 4096, 400));
    assert!(vm.scalable);
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
        punch: false,
        config,
        fb: fb(rate),
        observer: None,
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
        round_slowdowns(&runs, false, Config::Observer),
        Some((1.0, 1.25))
    );
    assert_eq!(round_slowdowns(&runs, true, Config::Observer), None);
}

/// What the guest's bench() leaves for a 1-round bench.
fn guest_dir(observer_rc: &str) -> PathBuf {
    let dir = temp_dir("xtask-bench").unwrap();
    for (i, (_, punch, config)) in params(1).schedule().enumerate() {
        let prefix = dir.join(format!(
            "1.{}.{}",
            if punch { "punch" } else { "nopunch" },
            config.name()
        ));
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
    assert!(runs[4].punch);
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
}
