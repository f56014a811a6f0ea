//! `observer replay FILE`: the correlator and sinks over a recording, with no
//! probes and no root. The correlator is pure, so the alerts depend only on
//! the records and their order.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use crate::{
    agent::{Output, open_sink, output_name, summarize},
    cli::Cli,
    correlator::{self, Correlator},
    filter::Filter,
    sink::no_stacks,
    source::KernelCounters,
    trace,
};

pub fn run(cli: &Cli, file: &Path, filter: Filter) -> Result<()> {
    let (wiring, events, undecodable) = trace::read(file)?;
    let mut sink = open_sink(cli, wiring.boot_to_realtime_ns)?;
    let mut correlator = Correlator::new(correlator::Config {
        reorder_horizon_ns: cli.reorder_ms * 1_000_000,
        syscall_windows: wiring.syscall_windows,
        ..correlator::Config::default()
    });
    if wiring.folio_deletes {
        correlator.expect_folio_deletes();
    }
    let span = match (events.first(), events.last()) {
        (Some(a), Some(b)) => Duration::from_nanos(b.ts.saturating_sub(a.ts)),
        _ => Duration::ZERO,
    };
    eprintln!(
        "observer: replaying {} records from {}",
        events.len(),
        file.display()
    );
    let mut alerts = Vec::new();
    let mut out = Output::default();
    for ev in events {
        correlator.push(ev, &mut alerts);
        out.emit(&mut sink, &filter, None, &mut alerts, cli, &no_stacks)?;
    }
    correlator.flush(&mut alerts);
    out.emit(&mut sink, &filter, None, &mut alerts, cli, &no_stacks)?;
    // The kernel's counters were not recorded: only what the records show.
    let summary = summarize(
        &correlator,
        &KernelCounters::default(),
        undecodable,
        span,
        out.shown,
    );
    sink.summary(&summary).with_context(|| output_name(cli))?;
    Ok(())
}
