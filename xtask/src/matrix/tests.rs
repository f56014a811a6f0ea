use std::{fs, path::Path, path::PathBuf};

use observer_report::{Startup, Summary};
use serde_json::Value;

use crate::fixtures;

use super::{
    MatrixArgs, host,
    model::{self, KernelResult, Status},
    plan,
    report::Report,
};

/// A summary of one step as the observer writes it.
fn summary() -> Summary {
    let mut s = fixtures::summary(89, 158, 4);
    s.lost.ringbuf_full = 1;
    s.lost.unresolved = 130;
    s.lost.late = 2;
    s.classes.a.ptes_in_window = 40;
    s.classes.a.rezapped = 39;
    s.classes.a.still_mapped_after_window = 1;
    s.classes.b.windows = 80;
    s.classes.b.refills = 3;
    s.classes.b.survived = 1;
    s.classes.b.stale_data = 1;
    for op in ["punch_hole", "zero_range", "collapse_range", "unknown"] {
        s.windows_by_op.add(op, 0);
    }
    s.windows_by_op.add("punch_hole", 89);
    s
}

/// A 5.10 startup record: fentry, the PTE installer when `pte`.
fn startup(pte: bool) -> Startup {
    let mut probes = vec![("filemap_map_pages", Some("fentry"))];
    if pte {
        probes.push(("alloc_set_pte", Some("fentry")));
    }
    probes.push(("ext4_ext_remove_space", Some("kprobe")));
    probes.push(("shmem_undo_range", None));
    fixtures::startup(&probes)
}

const RACER: &str = r#"{"file":"/mnt/ext4/racer.dat","dev":"254:2","ino":12,"pages":256,"punch_pages":16,"op":"punch","punches":77,"faults":5298,"reads":4353,"punched":{"start":0,"end":255},"holes":{"checked":77,"pages_not_zero":5,"by_offset":{"0":1,"15":4},"first":{"page":40,"at_s":0.25}},"duration_s":1.5,"seed":1}"#;

/// The files init.sh leaves for a step.
fn write_step(dir: &Path, name: &str, startup: &Startup, racer_rc: i32) {
    let w = |ext: &str, text: &str| fs::write(dir.join(format!("{name}.{ext}")), text).unwrap();
    w(
        "observer.json",
        &format!("{}\n{}\n", startup.to_json(), summary().to_json()),
    );
    w("observer.rc", "0\n");
    w("racer.rc", &format!("{racer_rc}\n"));
    w("racer.json", &format!("{RACER}\n"));
    w(
        "racer.log",
        "racer: ioctl(FICLONERANGE): Operation not supported\n",
    );
    w(
        "kinds",
        "      12 pte_in_punch_window\n       1 stale_data\n",
    );
    w("uptime", "10.5 17.25\n");
}

fn scratch(name: &str) -> PathBuf {
    crate::util::temp_dir(&format!("xtask-matrix-test-{name}")).unwrap()
}

fn args() -> MatrixArgs {
    MatrixArgs {
        kernels: vec!["5.10".into()],
        fs: vec!["ext4".into(), "tmpfs".into()],
        ops: Some(vec!["punch".into(), "clone".into()]),
        all: false,
        race_runs: 2,
        race_secs: 6.0,
        race_args: "--op punch --readers 2".into(),
        op_secs: 1.5,
        op_args: "--fault-threads 2".into(),
        stall_secs: 120,
        out: None,
        no_build: true,
        observer_bin: None,
        racer_bin: None,
    }
}

/// The 5.10 row of `args()` from steps written with `startup`.
fn report_of<'a>(a: &'a MatrixArgs, dir: &Path, startup: &Startup) -> Report<'a> {
    let planned = plan(a, "5.10", "ext4");
    for p in &planned {
        let rc = if p.workload == "clone" { 77 } else { 0 };
        write_step(dir, &p.step.name, startup, rc);
    }
    Report {
        args: a,
        qemu: Some("QEMU emulator version 10.0.2".into()),
        kernels: vec![KernelResult {
            spec: "5.10".into(),
            release: "5.10.0-46-cloud-amd64".into(),
            package: Some("bullseye 5.10.251-1".into()),
            mode: "vm",
            wall_s: 100.0,
            error: None,
            guest_errors: vec![],
            boots: 1,
            cells: model::cells(
                &a.fs,
                &model::Offer {
                    runs: vec!["ext4".into()],
                    missing: vec![("tmpfs".into(), "CONFIG_TMPFS is not set".into())],
                },
                &planned,
                dir,
            ),
        }],
        wall_s: 100.0,
    }
}

fn first_cell(report: &Report) -> Value {
    let v: Value = serde_json::from_str(&report.json()).expect("valid JSON");
    v["kernels"][0]["cells"][0].clone()
}

#[test]
fn cells_sum_steps_and_mark_unsupported() {
    let dir = scratch("cells");
    let a = args();
    let names: Vec<String> = plan(&a, "5.10", "ext4")
        .into_iter()
        .map(|p| p.step.name)
        .collect();
    assert_eq!(
        names,
        ["ext4.race1", "ext4.race2", "ext4.punch", "ext4.clone"]
    );
    let report = report_of(&a, &dir, &startup(true));
    let cells = &report.kernels[0].cells;
    assert_eq!(cells.len(), 2);
    let c = &cells[0];
    assert!(c.offered && !cells[1].offered);
    let classes = c.classes().unwrap();
    assert_eq!(classes.a.ptes_in_window, 120);
    assert_eq!(classes.b.stale_data, 3);
    assert_eq!(c.windows_by_op().unwrap().get("punch_hole"), 3 * 89);
    assert_eq!(c.alerts_of("pte_in_punch_window"), 36);
    let lost = c.lost();
    assert_eq!((lost.ringbuf_full, lost.unresolved, lost.late), (3, 390, 6));
    assert_eq!(c.fidelity().as_deref(), Some("kprobe"));
    assert!(c.pte_hook() && c.removal_hook());
    assert_eq!(c.class_a_in_window(), (Some(120), "classes"));
    assert_eq!(c.workload("clone"), Some((Status::Unsupported, 89)));
    assert_eq!(c.workload("race"), Some((Status::Ok, 178)));
    assert_eq!(c.named_windows("race"), 178);
    assert_eq!(c.named_windows("punch"), 89);
    assert_eq!(c.steps[0].wall_s, Some(6.75));
    assert_eq!(c.steps[0].racer.unwrap().reads, 4353);
    // Every good step's read-back (the clone step was refused).
    assert_eq!(c.holes_not_zero(), Some(3 * 5));
    assert_eq!(
        c.holes_by_offset(),
        std::collections::BTreeMap::from([(0, 3), (15, 12)])
    );

    let table = report.table();
    // Rows name the series and the package booted.
    assert!(table.contains("5.10 (bullseye 5.10.251-1)"), "{table}");
    assert!(table.contains("n/a"), "{table}");
    assert!(
        table.contains("not testable here: CONFIG_TMPFS is not set"),
        "{table}"
    );
    assert!(!table.contains("120*"), "{table}");
    let v: Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(v["kernels"][0]["package"], "bullseye 5.10.251-1");
    assert_eq!(v["kernels"][0]["release"], "5.10.0-46-cloud-amd64");
    let cell = first_cell(&report);
    assert_eq!(cell["class_a_in_window"], 120);
    assert_eq!(cell["class_a_source"], "classes");
    assert_eq!(cell["holes_not_zero"], 15);
    assert_eq!(cell["holes_by_offset"]["15"], 12);
    assert_eq!(cell["classes"]["b"]["stale_data"], 3);
    assert_eq!(cell["lost"]["late"], 6);
    assert_eq!(cell["alerts"]["stale_data"], 3);
    assert_eq!(cell["workloads"]["clone"]["status"], "n/a");
    assert_eq!(
        cell["workloads"]["race"]["windows_by_op"]["punch_hole"],
        178
    );
    let step = &cell["steps"][2];
    assert_eq!(step["name"], "ext4.punch");
    assert_eq!(step["wall_s"], 6.75);
    assert_eq!(step["racer"]["punches"], 77);
    assert_eq!(step["summary"]["windows_by_op"]["punch_hole"], 89);
    assert_eq!(step["summary"]["verdict"], "race_observed");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn without_a_pte_hook_the_alerts_stand_in_for_class_a() {
    let dir = scratch("nopte");
    let a = args();
    let report = report_of(&a, &dir, &startup(false));
    let c = &report.kernels[0].cells[0];
    assert_eq!(c.fidelity().as_deref(), Some("kprobe !pte"));
    // Three good steps (clone is n/a) with 12 alerts each.
    assert!(report.table().contains("36*"), "{}", report.table());
    let cell = first_cell(&report);
    assert_eq!(cell["class_a_source"], "alerts");
    assert_eq!(cell["class_a_in_window"], 36);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn host_trim_matches_the_guest_format() {
    let dir = scratch("trim");
    let prefix = dir.join("x.punch");
    let alert = |k: &str| format!(r#"{{"type":"alert","kind":"{k}","ts_ns":1}}"#);
    let mut text = startup(true).to_json() + "\n";
    for _ in 0..5 {
        text.push_str(&alert("pte_in_punch_window"));
        text.push('\n');
    }
    text.push_str(&alert("stale_data"));
    text.push('\n');
    text.push_str(&summary().to_json());
    text.push('\n');
    fs::write(dir.join("x.punch.alerts.json"), text).unwrap();
    host::trim(&prefix).unwrap();
    assert!(!dir.join("x.punch.alerts.json").exists());
    let kept = fs::read_to_string(dir.join("x.punch.observer.json")).unwrap();
    assert_eq!(kept.lines().count(), 2);
    assert!(kept.lines().nth(1).unwrap().contains("\"summary\""));
    assert_eq!(
        fs::read_to_string(dir.join("x.punch.kinds")).unwrap(),
        "5 pte_in_punch_window\n1 stale_data\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("x.punch.samples.json"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn vm_kernels_run_the_asserted_ops_unless_asked_for_all() {
    let mut a = args();
    a.ops = None;
    a.kernels = vec!["6.12".into(), "host".into()];
    let every: Vec<String> = observer_tests::ops::ALL
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    assert_eq!(a.ops_for("6.12"), ["punch"]);
    assert_eq!(a.ops_for("host"), every);
    assert_eq!(a.op_names(), every);
    a.all = true;
    assert_eq!(a.ops_for("6.12"), every);
    a.ops = Some(vec!["zero".into()]);
    assert_eq!(a.ops_for("6.12"), ["zero"]);
    assert_eq!(a.ops_for("host"), ["zero"]);
    assert_eq!(a.op_names(), ["zero"]);
}
