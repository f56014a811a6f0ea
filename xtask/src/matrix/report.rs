//! The matrix as a table (printed, and written to matrix.txt) and as JSON
//! (matrix.json, which the matrix test reads).

use std::{collections::BTreeMap, fmt::Write as _};

use observer_report::{Classes, Counts, Lost, Verdict};
use observer_tests::ops;
use serde::{Serialize, Serializer};

use super::{
    MatrixArgs,
    model::{Cell, KernelResult, RACE, RacerCounts, Status, StepResult},
};
use crate::json::{Probe, rounded};

pub struct Report<'a> {
    pub args: &'a MatrixArgs,
    /// `qemu --version` of the guests' qemu; None when no VM ran.
    pub qemu: Option<String>,
    pub kernels: Vec<KernelResult>,
    pub wall_s: f64,
}

/// The table's columns after the kernel, the filesystem and the fidelity:
/// class A, class B, the lock counts, class C, then the windows per workload.
const CLASS_COLUMNS: [&str; 14] = [
    "A:in-win",
    "rezap",
    "stale",
    "mapped",
    "unkn",
    "B:win",
    "unbnd",
    "refill",
    "surv",
    "stale",
    "lock+/-/byp",
    "hole≠0",
    "C:eof/beyond",
    "win:race",
];

/// The class counters of the table, in column order (class A in window
/// excluded: it has a column of its own); class A only when page-exact.
/// `holes`: the racer's read-back of punched ranges, beside class B.
fn class_cells(classes: Option<&Classes>, page_exact: bool, holes: Option<u64>) -> Vec<String> {
    let a = classes.filter(|_| page_exact).map(|&Classes { a, .. }| {
        vec![
            a.rezapped,
            a.stale_pte,
            a.still_mapped_after_window,
            a.unknown,
        ]
    });
    let b = classes.map(|&Classes { b, .. }| {
        vec![b.windows, b.unbounded, b.refills, b.survived, b.stale_data]
    });
    let lock = classes.map(|&Classes { b, .. }| {
        vec![
            b.removals_under_lock,
            b.removals_without_lock,
            b.refills_under_lock,
        ]
    });
    let shown = |counts: Option<Vec<u64>>, n: usize| match counts {
        Some(c) => c.iter().map(u64::to_string).collect(),
        None => vec!["-".to_string(); n],
    };
    // Class C comes from the PTE installer too: installs past EOF, and of
    // those the ones no size change or tmpfs explains.
    let c = classes
        .filter(|_| page_exact)
        .map(|&Classes { c, .. }| vec![c.installs_past_eof, c.beyond_eof]);
    let mut cells: Vec<String> = shown(a, 4);
    cells.extend(shown(b, 5));
    cells.push(shown(lock, 3).join("/"));
    cells.push(holes.map_or_else(|| "-".into(), |n| n.to_string()));
    cells.push(shown(c, 2).join("/"));
    cells
}

impl Report<'_> {
    /// The invalidators asked for, in table order.
    fn ops(&self) -> Vec<ops::Op> {
        let names = self.args.op_names();
        ops::ALL
            .into_iter()
            .filter(|op| names.iter().any(|a| a == op.name()))
            .collect()
    }

    pub fn table(&self) -> String {
        let ops = self.ops();
        let mut head: Vec<String> = ["kernel", "fs", "fidelity"].map(String::from).to_vec();
        head.extend(CLASS_COLUMNS.map(String::from));
        head.extend(ops.iter().map(|op| op.column().to_string()));
        head.push("lost(rb/unres/late)".into());
        let mut rows = vec![head];
        let mut notes = Vec::new();
        let mut proxy = false;
        for k in &self.kernels {
            // A VM row names its series and the package it booted, e.g.
            // `7.2 (sid 7.2.13-1)`: sid moves on, so the version matters.
            let kname = if k.mode == "host" {
                format!("host {}", k.release)
            } else if let Some(package) = &k.package {
                format!("{} ({package})", k.spec)
            } else if k.release.is_empty() {
                k.spec.clone()
            } else {
                k.release.clone()
            };
            if let Some(e) = &k.error {
                rows.push(vec![kname.clone(), "-".into(), format!("did not run: {e}")]);
                continue;
            }
            for c in &k.cells {
                let mut row = vec![kname.clone(), c.fs.clone()];
                if !c.offered {
                    let why = c.why_not.as_deref().unwrap_or("not offered");
                    row.push(format!("not testable here: {why}"));
                    rows.push(row);
                    continue;
                }
                row.push(c.fidelity().unwrap_or_else(|| "-".into()));
                // Class A in window: the page-exact count when the observer
                // has it, else the pte_in_punch_window alerts (marked *).
                row.push(match c.class_a_in_window() {
                    (Some(n), "classes") => n.to_string(),
                    (Some(n), _) => {
                        proxy = true;
                        format!("{n}*")
                    }
                    (None, _) => "-".into(),
                });
                row.extend(class_cells(
                    c.classes().as_ref(),
                    c.pte_hook(),
                    c.holes_not_zero(),
                ));
                for w in std::iter::once(RACE).chain(ops.iter().map(|op| op.name())) {
                    row.push(match c.workload(w) {
                        None => "-".into(),
                        Some((Status::Ok, _)) => c.named_windows(w).to_string(),
                        Some((Status::Unsupported, _)) => "n/a".into(),
                        Some((Status::Failed, _)) => "FAIL".into(),
                    });
                }
                let lost = c.lost();
                row.push(if c.any_ok() {
                    format!("{}/{}/{}", lost.ringbuf_full, lost.unresolved, lost.late)
                } else {
                    "-".into()
                });
                for s in c.steps.iter().filter(|s| s.status == Status::Failed) {
                    notes.push(format!(
                        "{} {}: {}",
                        kname,
                        s.name,
                        s.detail.as_deref().unwrap_or("failed")
                    ));
                }
                rows.push(row);
            }
            for e in &k.guest_errors {
                notes.push(format!("{kname}: {e}"));
            }
        }
        let mut out = align(&rows);
        out.push_str(
            "A: PTEs installed inside an invalidation window (in-win) and what became of them: \
             rezapped, stale (folio left the cache still mapped), mapped (still mapped when the \
             window closed), unknown.\nB: refill windows (win), unbounded ones, folios refilled \
             inside them, refills that survived, stale (read freed blocks from disk); lock: \
             windows whose block removal ran with the punching task holding invalidate_lock \
             for writing (+) or not (-), refills by other tasks that got in while it was held \
             (byp); 0/0/0 on kernels without invalidate_lock (before 5.15); hole≠0: pages of \
             punched ranges the racer read back (read(2), before writing them again) holding \
             data the hole should have dropped.\n\
             C: page-exact installs (PTE or PMD) reaching at or past EOF by the i_size the \
             kernel read (eof), and those no size change on the file and no tmpfs explains \
             (beyond: critical).\n\
             win:OP: windows the observer named after that workload's operation (punch_hole, \
             zero_range, ..., madv_remove, clone_range, dedupe_range); n/a: the filesystem \
             lacks the operation.\n",
        );
        out.push_str(
            "fidelity: the weakest attach method of the window, fault-around, PTE-installer and \
             block-removal probes; !pte: no PTE-installer probe (class A not page-exact), !rm: no \
             block-removal probe (class B windows unbounded).\n",
        );
        if proxy {
            out.push_str(
                "*: no page-exact class A (no \"classes\" in the summary, or !pte): the \
                 pte_in_punch_window alerts stand in for A:in-win.\n",
            );
        }
        let _ = writeln!(
            out,
            "race: {} x {}s of racer {}; each op: {}s of racer --op OP {}.",
            self.args.race_runs,
            self.args.race_secs,
            self.args.race_args,
            self.args.op_secs,
            self.args.op_args
        );
        if let Some(q) = &self.qemu {
            let boots: Vec<String> = self
                .kernels
                .iter()
                .filter(|k| k.boots > 0)
                .map(|k| format!("{} {}", k.spec, k.boots))
                .collect();
            let _ = writeln!(out, "{q}; boots: {}.", boots.join(", "));
        }
        let walls: Vec<String> = self
            .kernels
            .iter()
            .map(|k| format!("{} {:.0}s", k.spec, k.wall_s))
            .collect();
        let _ = writeln!(
            out,
            "wall time: {} (total {:.0}s)",
            walls.join(", "),
            self.wall_s
        );
        for n in notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    pub fn json(&self) -> String {
        let a = self.args;
        let doc = Matrix {
            kind: "matrix",
            config: Config {
                kernels: &a.kernels,
                fs: &a.fs,
                ops: a.op_names(),
                all: a.all,
                race_runs: a.race_runs,
                race_secs: a.race_secs,
                race_args: &a.race_args,
                op_secs: a.op_secs,
                op_args: &a.op_args,
            },
            qemu: self.qemu.as_deref(),
            wall_s: rounded(self.wall_s, 1),
            kernels: self.kernels.iter().map(KernelJson::of).collect(),
        };
        serde_json::to_string(&doc).expect("the matrix always serializes")
    }
}

/// The rows as columns: the kernel, filesystem and fidelity left-aligned,
/// the counts right-aligned; short rows (a kernel that did not run, a
/// filesystem not offered) take no part in the widths.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter(|r| r.len() == cols)
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let w = if row.len() == cols { widths[i] } else { 0 };
            if i < 3 {
                let _ = write!(line, "{cell:<w$}  ");
            } else {
                let _ = write!(line, "{cell:>w$} ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// matrix.json
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct Matrix<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    config: Config<'a>,
    /// `qemu --version` (first line) of the VM rows' qemu.
    qemu: Option<&'a str>,
    wall_s: Option<f64>,
    kernels: Vec<KernelJson<'a>>,
}

#[derive(Serialize)]
struct Config<'a> {
    kernels: &'a [String],
    fs: &'a [String],
    ops: Vec<String>,
    all: bool,
    race_runs: u32,
    race_secs: f64,
    race_args: &'a str,
    op_secs: f64,
    op_args: &'a str,
}

#[derive(Serialize)]
struct KernelJson<'a> {
    spec: &'a str,
    release: &'a str,
    /// `SUITE VERSION` of the Debian package (VM kernels).
    package: Option<&'a str>,
    mode: &'static str,
    wall_s: Option<f64>,
    error: Option<&'a str>,
    errors: &'a [String],
    /// Guests booted (a hung or crashed one is followed by another).
    boots: u32,
    cells: Vec<CellJson<'a>>,
}

impl<'a> KernelJson<'a> {
    fn of(k: &'a KernelResult) -> Self {
        KernelJson {
            spec: &k.spec,
            release: &k.release,
            package: k.package.as_deref(),
            mode: k.mode,
            wall_s: rounded(k.wall_s, 1),
            error: k.error.as_deref(),
            errors: &k.guest_errors,
            boots: k.boots,
            cells: k.cells.iter().map(CellJson::of).collect(),
        }
    }
}

#[derive(Serialize)]
struct CellJson<'a> {
    fs: &'a str,
    offered: bool,
    /// Why the kernel cannot run it (not offered).
    why_not: Option<&'a str>,
    fidelity: Option<String>,
    pte_hook: bool,
    removal_hook: bool,
    probes: &'a [Probe],
    class_a_in_window: Option<u64>,
    class_a_source: &'static str,
    classes: Option<Classes>,
    /// Alerts by kind.
    alerts: BTreeMap<String, u64>,
    windows: Option<u64>,
    windows_by_op: Option<Counts>,
    lost: Option<Lost>,
    /// Pages of punched ranges the racer read back not zero (racer
    /// --check-holes); None when no step checked.
    holes_not_zero: Option<u64>,
    /// filemap_map_pages calls on files with a window open.
    fault_arounds: Option<u64>,
    /// `holes_not_zero` by the page's offset in its punched range.
    holes_by_offset: BTreeMap<u64, u64>,
    /// By workload, in the order they ran.
    #[serde(serialize_with = "in_order")]
    workloads: Vec<(&'a str, WorkloadJson)>,
    steps: Vec<StepJson<'a>>,
}

impl<'a> CellJson<'a> {
    fn of(c: &'a Cell) -> Self {
        let (class_a_in_window, class_a_source) = c.class_a_in_window();
        let any_ok = c.any_ok();
        CellJson {
            fs: &c.fs,
            offered: c.offered,
            why_not: c.why_not.as_deref(),
            fidelity: c.fidelity(),
            pte_hook: c.pte_hook(),
            removal_hook: c.removal_hook(),
            probes: c.probes(),
            class_a_in_window,
            class_a_source,
            classes: c.classes(),
            alerts: c.all_kinds(),
            windows: any_ok.then(|| c.windows()),
            windows_by_op: c.windows_by_op(),
            lost: any_ok.then(|| c.lost()),
            holes_not_zero: c.holes_not_zero(),
            fault_arounds: c.fault_arounds(),
            holes_by_offset: c.holes_by_offset(),
            workloads: c
                .workloads()
                .into_iter()
                .filter_map(|w| {
                    let (status, windows) = c.workload(w)?;
                    let windows_by_op = c.workload_windows_by_op(w);
                    Some((
                        w,
                        WorkloadJson {
                            status,
                            windows,
                            windows_by_op,
                        },
                    ))
                })
                .collect(),
            steps: c.steps.iter().map(StepJson::of).collect(),
        }
    }
}

/// Pairs as a JSON object, in their order.
fn in_order<S: Serializer, V: Serialize>(pairs: &[(&str, V)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

#[derive(Serialize)]
struct WorkloadJson {
    status: Status,
    windows: u64,
    windows_by_op: Option<Counts>,
}

#[derive(Serialize)]
struct StepJson<'a> {
    name: &'a str,
    workload: &'a str,
    status: Status,
    detail: Option<&'a str>,
    wall_s: Option<f64>,
    racer: Option<RacerCounts>,
    summary: Option<StepSummary<'a>>,
    /// Alerts by kind.
    alerts: &'a BTreeMap<String, u64>,
}

/// What the matrix keeps of a step's observer summary.
#[derive(Serialize)]
struct StepSummary<'a> {
    windows: u64,
    alerts: u64,
    verdict: Verdict,
    lost: Lost,
    classes: Classes,
    windows_by_op: &'a Counts,
}

impl<'a> StepJson<'a> {
    fn of(s: &'a StepResult) -> Self {
        StepJson {
            name: &s.name,
            workload: &s.workload,
            status: s.status,
            detail: s.detail.as_deref(),
            wall_s: s.wall_s.and_then(|w| rounded(w, 2)),
            racer: s.racer,
            summary: s.summary.as_ref().map(|x| StepSummary {
                windows: x.windows,
                alerts: x.alerts,
                verdict: x.verdict,
                lost: x.lost,
                classes: x.classes,
                windows_by_op: &x.windows_by_op,
            }),
            alerts: &s.kinds,
        }
    }
}
