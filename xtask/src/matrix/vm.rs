//! The matrix's rows of Debian kernels under qemu: one guest runs a
//! kernel's steps, and a guest that hangs is booted again for the steps it
//! did not finish.

use std::{cell::RefCell, collections::HashSet, fs, path::Path, time::Duration};

use anyhow::Result;

use super::{
    MatrixArgs,
    model::{self, KernelResult, Offer, Planned},
};
use crate::{
    build_cmd::Binaries,
    progress::Progress,
    util::{Workspace, say},
    vm::{self, Step},
};

/// Boots per kernel: later ones run what a hung earlier one left. Under
/// TCG, guests hang now and then while the kernel patches its own text (a
/// jump label, an fentry site) as the observer attaches or detaches, about
/// once in 130 steps, so a 44-step boot hangs about a third of the time.
/// Booting again as long as the last boot finished a step makes a kernel's
/// row fail only after a run of hangs without progress.
const ATTEMPTS: u32 = 8;

/// A kernel to boot, and what it will run.
pub struct Kernel<'a> {
    pub spec: &'a str,
    /// The release the spec resolved to.
    pub release: String,
    /// `SUITE VERSION` of its package.
    pub package: String,
    pub offer: Offer,
    pub planned: Vec<Planned>,
}

pub fn run(
    ws: &Workspace,
    args: &MatrixArgs,
    bins: &Binaries,
    k: Kernel,
    progress: &Progress,
    kdir: &Path,
) -> Result<KernelResult> {
    let spec = k.spec;
    let steps: Vec<Step> = k.planned.iter().map(|p| p.step.clone()).collect();
    say(format!(
        "kernel {spec} ({}, package {}): {} steps on {}",
        k.release,
        k.package,
        steps.len(),
        k.offer.runs.join(",")
    ));
    // Steps the guest said it finished, for the progress line (a step that
    // a hung boot finished and the next boot runs again counts once).
    let finished: RefCell<HashSet<String>> = RefCell::default();
    let watch = |msg: &str| {
        let msg = msg.strip_prefix("FAILED: ").unwrap_or(msg);
        let Some((name, what)) = msg.strip_prefix('[').and_then(|m| m.split_once("] ")) else {
            return;
        };
        if !steps.iter().any(|s| s.name == name) {
            return;
        }
        let label = format!("{spec} {name}");
        let ends = ["observer exited", "not supported", "/mnt/"];
        if ends.iter().any(|e| what.starts_with(e)) {
            if finished.borrow_mut().insert(name.to_string()) {
                progress.finished(&label);
            }
        } else {
            progress.working_on(&label);
        }
    };
    // A guest kernel that hangs (it happens: see ATTEMPTS) is killed after
    // --stall-secs without progress; another boot runs the steps it did not
    // finish.
    let mut remaining = steps.clone();
    let mut stuck = 0;
    let mut guest_errors = Vec::new();
    let mut booted = None;
    let mut boots = 0;
    for attempt in 1..=ATTEMPTS {
        boots = attempt;
        let adir = if attempt == 1 {
            kdir.to_path_buf()
        } else {
            say(format!(
                "kernel {spec}: booting again for the {} unfinished steps",
                remaining.len()
            ));
            kdir.join(format!("attempt{attempt}"))
        };
        let secs: f64 = remaining.iter().map(|s| s.seconds + 15.0).sum();
        let outcome = vm::steps(
            ws,
            &vm::StepsGuest {
                kernel: spec,
                observer: &bins.observer,
                racer: &bins.racer,
                fusefs: &bins.fusefs,
                filesystems: &k.offer.runs,
                steps: &remaining,
                out: &adir,
                timeout: Duration::from_secs(180 + secs as u64),
                watch: &watch,
            },
            Duration::from_secs(args.stall_secs),
        )?;
        guest_errors.extend(
            fs::read_to_string(outcome.dir.join("errors"))
                .unwrap_or_default()
                .lines()
                .map(|l| format!("attempt {attempt}: {l}")),
        );
        guest_errors.extend(
            outcome
                .problems
                .iter()
                .map(|p| format!("attempt {attempt}: {p}")),
        );
        if attempt == 1 {
            booted = fs::read_to_string(outcome.dir.join("uname")).ok();
        } else {
            // The step files join the first attempt's.
            for entry in fs::read_dir(&outcome.dir)?.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if remaining
                    .iter()
                    .any(|s| name.starts_with(&format!("{}.", s.name)))
                {
                    fs::copy(entry.path(), kdir.join(&name))?;
                }
            }
        }
        // A step is done once its uptime file is written.
        let before = remaining.len();
        remaining.retain(|s| !kdir.join(format!("{}.uptime", s.name)).exists());
        if outcome.finished || remaining.is_empty() {
            break;
        }
        stuck = if remaining.len() == before {
            stuck + 1
        } else {
            0
        };
        if stuck == 3 {
            guest_errors.push(format!(
                "attempt {attempt}: no step finished in three boots in a row; giving up"
            ));
            break;
        }
    }
    // Steps no boot finished still count as done for the progress line.
    for s in &steps {
        if finished.borrow_mut().insert(s.name.clone()) {
            progress.finished(&format!("{spec} {} (unfinished)", s.name));
        }
    }
    let booted = booted.unwrap_or_default();
    Ok(KernelResult {
        spec: spec.to_string(),
        release: if booted.trim().is_empty() {
            k.release
        } else {
            booted.trim().to_string()
        },
        package: Some(k.package),
        mode: "vm",
        wall_s: 0.0,
        error: None,
        guest_errors,
        boots,
        cells: model::cells(&args.fs, &k.offer, &k.planned, kdir),
    })
}
