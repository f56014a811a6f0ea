//! What the matrix runs and what it found: the planned steps, each step's
//! result read back from the files it left (the guest's init.sh and the
//! host runner write the same ones), and the cells (kernel × filesystem)
//! that sum them.

use std::{collections::BTreeMap, fs, path::Path};

use observer_abi::filesystems;
use observer_abi::probes::{Role, functions};
use observer_report::{Classes, Counts, Lost, Summary};
use observer_tests::{Ends, RacerReport, ops::Op};
use serde::Serialize;

use crate::{json::Probe, vm::Step};

/// Exit status of racer when the filesystem lacks the operation.
pub(super) const RACER_UNSUPPORTED: i32 = 77;

/// The workload of the race runs (punches racing faults and reads).
pub(super) const RACE: &str = "race";

/// One step to run: a workload ("race" or a racer --op) on a filesystem.
#[derive(Clone, Debug)]
pub(super) struct Planned {
    pub(super) workload: String,
    pub(super) step: Step,
}

/// One kernel's row: what ran, or why nothing did.
pub(super) struct KernelResult {
    pub(super) spec: String,
    pub(super) release: String,
    /// `SUITE VERSION` of the Debian package a VM kernel came from.
    pub(super) package: Option<String>,
    pub(super) mode: &'static str,
    pub(super) wall_s: f64,
    /// Why the kernel did not run at all.
    pub(super) error: Option<String>,
    /// Problems the guest (or the host run) reported while running.
    pub(super) guest_errors: Vec<String>,
    /// Guests booted for the row (more than one: a guest hung or crashed
    /// and another ran the steps it left); 0 on the host.
    pub(super) boots: u32,
    pub(super) cells: Vec<Cell>,
}

/// One kernel × filesystem.
pub(super) struct Cell {
    pub(super) fs: String,
    pub(super) offered: bool,
    /// Why the kernel cannot run it, when it cannot.
    pub(super) why_not: Option<String>,
    pub(super) steps: Vec<StepResult>,
}

/// Which filesystems a kernel row runs, and the ones it shows as not
/// testable, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Offer {
    pub(super) runs: Vec<String>,
    pub(super) missing: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub(super) enum Status {
    #[serde(rename = "ok")]
    Ok,
    /// The filesystem lacks the operation (racer exit 77).
    #[serde(rename = "n/a")]
    Unsupported,
    #[serde(rename = "failed")]
    Failed,
}

/// What the racer did, from its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) struct RacerCounts {
    pub(super) punches: u64,
    pub(super) faults: u64,
    pub(super) reads: u64,
    /// racer --check-holes: punched ranges read back, and their pages that
    /// were not zero (data the hole should have dropped).
    pub(super) holes_checked: Option<u64>,
    pub(super) holes_not_zero: Option<u64>,
}

pub(super) struct StepResult {
    pub(super) name: String,
    pub(super) workload: String,
    pub(super) status: Status,
    /// Why it failed, or what the filesystem refused.
    pub(super) detail: Option<String>,
    pub(super) racer: Option<RacerCounts>,
    pub(super) summary: Option<Summary>,
    pub(super) probes: Vec<Probe>,
    /// Alerts by kind.
    pub(super) kinds: BTreeMap<String, u64>,
    /// racer --check-holes: the non-zero pages by their offset in the
    /// punched range.
    pub(super) holes_by_offset: BTreeMap<u64, u64>,
    pub(super) wall_s: Option<f64>,
}

/// Reads the files one step left in `dir`: NAME.observer.json (startup
/// record and summary), NAME.kinds, NAME.racer.{json,log,rc},
/// NAME.observer.{log,rc} and NAME.uptime.
pub(super) fn read_step(dir: &Path, planned: &Planned) -> StepResult {
    let step = &planned.step;
    let read = |ext: &str| fs::read_to_string(dir.join(format!("{}.{ext}", step.name))).ok();
    let last_lines = |ext: &str, n: usize| {
        read(ext)
            .map(|t| {
                let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
                lines[lines.len().saturating_sub(n)..].join(" | ")
            })
            .unwrap_or_default()
    };
    let racer_rc = read("racer.rc").and_then(|t| t.trim().parse::<i32>().ok());
    let observer_rc = read("observer.rc").and_then(|t| t.trim().parse::<i32>().ok());
    let ends = Ends::parse(&read("observer.json").unwrap_or_default());
    let mut kinds = BTreeMap::new();
    for line in read("kinds").unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(n), Some(kind)) = (it.next().and_then(|n| n.parse().ok()), it.next()) {
            kinds.insert(kind.to_string(), n);
        }
    }
    let (status, detail) = match (racer_rc, observer_rc, &ends.summary) {
        (Some(RACER_UNSUPPORTED), _, _) => (Status::Unsupported, Some(last_lines("racer.log", 1))),
        (Some(0), Some(0), Some(_)) => (Status::Ok, None),
        (None, _, _) => (
            Status::Failed,
            Some(format!(
                "racer did not run (observer: {})",
                last_lines("observer.log", 3)
            )),
        ),
        (Some(0), Some(0), None) => (Status::Failed, Some("the observer wrote no summary".into())),
        (Some(0), rc, _) => (
            Status::Failed,
            Some(format!(
                "observer exit status {}: {}",
                rc.map_or("?".into(), |r| r.to_string()),
                last_lines("observer.log", 3)
            )),
        ),
        (Some(rc), _, _) => (
            Status::Failed,
            Some(format!(
                "racer exit status {rc}: {}",
                last_lines("racer.log", 2)
            )),
        ),
    };
    let racer = read("racer.json").and_then(|t| RacerReport::parse(&t).ok());
    StepResult {
        name: step.name.clone(),
        workload: planned.workload.clone(),
        status,
        detail,
        racer: racer.as_ref().map(|r| RacerCounts {
            punches: r.punches,
            faults: r.faults,
            reads: r.reads,
            holes_checked: r.holes.as_ref().map(|h| h.checked),
            holes_not_zero: r.holes.as_ref().map(|h| h.pages_not_zero),
        }),
        holes_by_offset: racer
            .and_then(|r| r.holes)
            .map(|h| h.by_offset)
            .unwrap_or_default(),
        probes: ends
            .startup
            .map(|s| s.probes.iter().map(Probe::from).collect())
            .unwrap_or_default(),
        summary: ends.summary,
        kinds,
        // "T0 T1": the guest's uptime around the step.
        wall_s: read("uptime").and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some(it.next()??.mul_add(-1.0, it.next()??))
        }),
    }
}

/// The cells of one kernel, in the order of `filesystems`: each one it
/// runs, with the steps planned on it read back from `dir`, and each one it
/// shows as not testable.
pub(super) fn cells(
    filesystems: &[String],
    offer: &Offer,
    planned: &[Planned],
    dir: &Path,
) -> Vec<Cell> {
    filesystems
        .iter()
        .filter_map(|fs| {
            let why_not = offer
                .missing
                .iter()
                .find(|(f, _)| f == fs)
                .map(|(_, why)| why.clone());
            let offered = offer.runs.contains(fs);
            (offered || why_not.is_some()).then(|| Cell {
                fs: fs.clone(),
                offered,
                why_not,
                steps: planned
                    .iter()
                    .filter(|p| &p.step.fs == fs)
                    .map(|p| read_step(dir, p))
                    .collect(),
            })
        })
        .collect()
}

/// The window operation the observer names for a workload (the race runs
/// punch).
pub(super) fn window_op(workload: &str) -> &'static str {
    let op = if workload == RACE { "punch" } else { workload };
    Op::named(op).map_or("unknown", Op::window_op)
}

/// The observer's three core probes: windows and fault-around.
fn core_probes() -> Vec<&'static str> {
    functions(&Role::CORE).collect()
}

/// The kernel's file PTE installer (one per kernel): page-exact class A.
fn pte_probes() -> Vec<&'static str> {
    functions(&[Role::PteInstall]).collect()
}

/// The filesystem's block removal (or tmpfs's page removal) from the
/// filesystem table: the end of a class-B window.
fn removal_probes(fs: &str) -> Vec<&'static str> {
    filesystems::by_name(fs).map_or_else(Vec::new, |f| {
        f.removers
            .iter()
            .map(|r| r.function)
            .chain(f.hooks.iter().copied())
            .collect()
    })
}

fn method_rank(m: &str) -> u8 {
    match m {
        "fentry" => 3,
        "kprobe" => 2,
        "tracepoint" => 1,
        _ => 0,
    }
}

impl Cell {
    pub(super) fn ok(&self) -> impl Iterator<Item = &StepResult> {
        self.steps.iter().filter(|s| s.status == Status::Ok)
    }

    pub(super) fn any_ok(&self) -> bool {
        self.ok().next().is_some()
    }

    fn summaries(&self) -> impl Iterator<Item = &Summary> {
        self.ok().filter_map(|s| s.summary.as_ref())
    }

    pub(super) fn probes(&self) -> &[Probe] {
        self.steps
            .iter()
            .find(|s| !s.probes.is_empty())
            .map_or(&[], |s| &s.probes)
    }

    /// Methods of the attached probes among `names`.
    fn methods(&self, names: &[&str]) -> Vec<&str> {
        self.probes()
            .iter()
            .filter(|p| names.contains(&p.function.as_str()))
            .filter_map(|p| p.method.as_deref())
            .collect()
    }

    /// Whether the kernel's PTE installer is watched: class A is page-exact.
    pub(super) fn pte_hook(&self) -> bool {
        !self.methods(&pte_probes()).is_empty()
    }

    /// Whether the filesystem's block removal is watched: class B windows
    /// have an end.
    pub(super) fn removal_hook(&self) -> bool {
        !self.methods(&removal_probes(&self.fs)).is_empty()
    }

    /// The weakest attach method among the core probes, the PTE installer
    /// and this filesystem's block removal, with `!pte` / `!rm` when the
    /// latter two are not watched; None before any observer ran.
    pub(super) fn fidelity(&self) -> Option<String> {
        let mut names = core_probes();
        names.extend(pte_probes());
        names.extend(removal_probes(&self.fs));
        let mut f = self
            .methods(&names)
            .into_iter()
            .min_by_key(|m| method_rank(m))?
            .to_string();
        if !self.pte_hook() {
            f.push_str(" !pte");
        }
        if !self.removal_hook() {
            f.push_str(" !rm");
        }
        Some(f)
    }

    /// Class A PTEs in window and where the number comes from: the
    /// page-exact count ("classes"), or the pte_in_punch_window alerts
    /// ("alerts") when the observer has no PTE hook.
    pub(super) fn class_a_in_window(&self) -> (Option<u64>, &'static str) {
        match self.classes() {
            None => (None, "none"),
            Some(c) if self.pte_hook() => (Some(c.a.ptes_in_window), "classes"),
            Some(_) => (Some(self.alerts_of("pte_in_punch_window")), "alerts"),
        }
    }

    /// Class A and B counters summed over the good steps; None when there
    /// is none.
    pub(super) fn classes(&self) -> Option<Classes> {
        self.summaries().map(|s| s.classes).reduce(|mut sum, c| {
            sum += c;
            sum
        })
    }

    /// Windows by operation summed over the good steps; None when there is
    /// none.
    pub(super) fn windows_by_op(&self) -> Option<Counts> {
        sum_counts(self.summaries().map(|s| Some(&s.windows_by_op)))
    }

    pub(super) fn alerts_of(&self, kind: &str) -> u64 {
        self.ok()
            .map(|s| s.kinds.get(kind).copied().unwrap_or(0))
            .sum()
    }

    pub(super) fn all_kinds(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for s in self.ok() {
            for (k, n) in &s.kinds {
                *all.entry(k.clone()).or_default() += n;
            }
        }
        all
    }

    /// filemap_map_pages calls on files with an invalidation window open
    /// (the kernel's filter drops the others: every binary the guest maps),
    /// summed over the good steps; None when none ran. 0 on a filesystem
    /// without fault-around (ocfs2 has no `.map_pages`).
    pub(super) fn fault_arounds(&self) -> Option<u64> {
        let name = functions(&[Role::MapPages])
            .next()
            .unwrap_or("filemap_map_pages");
        self.summaries()
            .map(|s| s.events.get(name))
            .reduce(|a, b| a + b)
    }

    /// Pages of punched ranges the racer read back not zero, summed over
    /// the good steps that checked; None when none did.
    pub(super) fn holes_not_zero(&self) -> Option<u64> {
        self.ok()
            .filter_map(|s| s.racer.and_then(|r| r.holes_not_zero))
            .reduce(|a, b| a + b)
    }

    /// The racer's non-zero hole pages by offset, summed over the good
    /// steps.
    pub(super) fn holes_by_offset(&self) -> BTreeMap<u64, u64> {
        let mut all = BTreeMap::new();
        for s in self.ok() {
            for (o, n) in &s.holes_by_offset {
                *all.entry(*o).or_default() += n;
            }
        }
        all
    }

    pub(super) fn lost(&self) -> Lost {
        self.summaries().fold(Lost::default(), |mut sum, s| {
            sum += s.lost;
            sum
        })
    }

    pub(super) fn windows(&self) -> u64 {
        self.summaries().map(|s| s.windows).sum()
    }

    fn steps_of<'a>(&'a self, w: &'a str) -> impl Iterator<Item = &'a StepResult> {
        self.steps.iter().filter(move |s| s.workload == w)
    }

    /// Status of a workload's steps (the worst) and their windows.
    pub(super) fn workload(&self, w: &str) -> Option<(Status, u64)> {
        let steps: Vec<&StepResult> = self.steps_of(w).collect();
        if steps.is_empty() {
            return None;
        }
        let status = if steps.iter().any(|s| s.status == Status::Failed) {
            Status::Failed
        } else if steps.iter().all(|s| s.status == Status::Unsupported) {
            Status::Unsupported
        } else {
            Status::Ok
        };
        let windows = steps
            .iter()
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.windows)
            .sum();
        Some((status, windows))
    }

    /// A workload's windows by operation; None unless every one of its
    /// steps has a summary.
    pub(super) fn workload_windows_by_op(&self, w: &str) -> Option<Counts> {
        sum_counts(
            self.steps_of(w)
                .map(|s| s.summary.as_ref().map(|x| &x.windows_by_op)),
        )
    }

    /// Windows of a workload's steps that carry its operation's name.
    pub(super) fn named_windows(&self, w: &str) -> u64 {
        self.steps_of(w)
            .filter_map(|s| s.summary.as_ref())
            .map(|s| s.windows_by_op.get(window_op(w)))
            .sum()
    }

    /// The workloads, in the order they ran.
    pub(super) fn workloads(&self) -> Vec<&str> {
        let mut w: Vec<&str> = Vec::new();
        for s in &self.steps {
            if !w.contains(&s.workload.as_str()) {
                w.push(&s.workload);
            }
        }
        w
    }
}

/// The sum of all `counts`; None when there are none, or one is missing.
fn sum_counts<'a>(counts: impl Iterator<Item = Option<&'a Counts>>) -> Option<Counts> {
    let mut sum: Option<Counts> = None;
    for c in counts {
        *sum.get_or_insert_with(Counts::default) += c?;
    }
    sum
}
