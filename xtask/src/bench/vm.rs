//! The benchmark in a Debian kernel under qemu: the guest's init.sh runs the
//! same schedule and brings every faultbench report and observer output
//! back, which go through the same reading as the host's.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use observer_tests::FaultbenchReport;

use super::{
    Binaries, Params, Run, VM_BUDGET_MS, describe, last_line, read_observer_output,
    report::{Guest, Machine},
};
use crate::{
    json::Probe,
    progress::Progress,
    util::{Workspace, say},
    vm,
};

/// Runs the bench in a guest; updates `params.fault_rounds` to what the
/// guest used.
pub(super) fn run(
    ws: &Workspace,
    kernel: &str,
    params: &mut Params,
    bins: &Binaries,
    observer_args: &str,
) -> Result<(Vec<Run>, Vec<Probe>, Machine)> {
    let out = ws.target.join("vm").join(format!("bench-{kernel}"));
    // A bound for a hung guest, not an estimate: boot, plus every run at a
    // pessimistic 5,000 faults/s plus 15 s of observer start and stop.
    let faults = params.pages.div_ceil(16) * params.fault_rounds;
    let per_run = faults / 5000 + 15;
    let timeout = 180 + (params.total_runs() as u64 + 1) * per_run;
    say(format!(
        "VM bench on kernel {kernel}: {} round(s) of faultbench --pages {} --rounds {}{}",
        params.rounds,
        params.pages,
        params.fault_rounds,
        if params.scalable {
            " (fewer if the kernel is slow)"
        } else {
            ""
        }
    ));
    let progress = Progress::start(params.total_runs());
    // init.sh says "bench: [LABEL] round R, WORKLOAD, CONFIG: N faults/s"
    // after each run.
    let watch = |msg: &str| {
        if let Some((_, run)) = msg
            .strip_prefix("bench: [")
            .and_then(|m| m.split_once("] "))
        {
            progress.finished(run);
        }
    };
    let dir = vm::bench(
        ws,
        &vm::BenchGuest {
            kernel,
            observer: &bins.observer,
            faultbench: &bins.faultbench,
            rounds: params.rounds,
            pages: params.pages,
            fault_rounds: params.fault_rounds,
            budget_ms: if params.scalable { VM_BUDGET_MS } else { 0 },
            observer_args,
            out: &out,
            timeout: Duration::from_secs(timeout),
            watch: &watch,
        },
    )?;
    drop(progress);
    say(format!("guest results in {}", dir.display()));
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .ok()
    };
    let requested = params.fault_rounds;
    params.fault_rounds = read("bench/fault_rounds")
        .and_then(|n| n.parse().ok())
        .context("the guest did not say how many fault rounds it ran")?;
    let (runs, probes) = guest_runs(&dir.join("bench"), *params)?;
    // "T0 T1": the guest's uptime around the bench, warm-up included.
    let bench_s = read("bench/uptime").and_then(|s| {
        let (t0, t1) = s.split_once(' ')?;
        Some(t1.parse::<f64>().ok()? - t0.parse::<f64>().ok()?)
    });
    let machine = Machine {
        kernel: read("uname").unwrap_or_else(|| "unknown".into()),
        nproc: read("nproc").and_then(|n| n.parse().ok()).unwrap_or(0),
        guest: Some(Guest {
            host_kernel: Machine::host().kernel,
            bench_s,
            fault_rounds_requested: requested,
        }),
    };
    Ok((runs, probes, machine))
}

/// Reads the runs the guest's bench() left in `dir`, in schedule order.
pub(super) fn guest_runs(dir: &Path, params: Params) -> Result<(Vec<Run>, Vec<Probe>)> {
    let total = params.total_runs();
    let mut runs = Vec::with_capacity(total);
    let mut probes = Vec::new();
    for (round, workload, config) in params.schedule() {
        let what = describe(round, params.rounds, workload, config);
        let prefix = dir.join(format!("{round}.{}.{}", workload.tag(), config.name()));
        let file = |ext: &str| {
            let mut p = prefix.clone().into_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        let read = |ext: &str| {
            let path = file(ext);
            fs::read_to_string(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))
        };
        let report = read(".faultbench.json")?;
        let line = last_line(&report).with_context(|| {
            format!(
                "{what}: faultbench printed nothing; see {}",
                file(".faultbench.log").display()
            )
        })?;
        let fb = FaultbenchReport::parse(line)
            .with_context(|| format!("{what}: bad faultbench report {line:?}"))?;
        let observer = match config.observer_flags() {
            None => None,
            Some(_) => {
                let rc = read(".observer.rc")?;
                if rc.trim() != "0" {
                    bail!(
                        "{what}: the observer exited with status {}; see {}",
                        rc.trim(),
                        file(".observer.log").display()
                    );
                }
                let (summary, startup) = read_observer_output(&read(".observer.json")?)
                    .with_context(|| format!("{what}: {}", file(".observer.json").display()))?;
                if probes.is_empty() {
                    probes = super::probes_of(&startup);
                }
                Some(summary)
            }
        };
        let run = Run {
            round,
            workload,
            config,
            fb,
            observer,
            peer_in_window: None,
        };
        say(format!(
            "[{:>2}/{total}] {}",
            runs.len() + 1,
            run.line(params.rounds)
        ));
        runs.push(run);
    }
    Ok((runs, probes))
}
