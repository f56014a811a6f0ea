//! `observer replay FILE`: a recording through the live run's own pipeline,
//! with no probes and no root. The recording holds every input the live
//! pipeline had, in order, so the alerts and the summary are the live
//! run's (but for paths and stacks, which only a live run can read).

use std::path::Path;

use anyhow::{Context, Result};

use crate::{
    agent::{open_sink, output_name},
    cli::Cli,
    filter::Filter,
    pipeline::Pipeline,
    sink::no_stacks,
    trace::{self, Entry},
};

pub fn run(cli: &Cli, file: &Path, filter: Filter) -> Result<()> {
    let rec = trace::read(file)?;
    let mut sink = open_sink(cli, rec.wiring.boot_to_realtime_ns)?;
    if let (true, Some(st)) = (cli.json, &rec.startup) {
        sink.startup(st).with_context(|| output_name(cli))?;
    }
    let records = rec
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Record(_)))
        .count();
    eprintln!(
        "observer: replaying {records} records from {}",
        file.display()
    );
    if rec.trailer.is_none() {
        eprintln!(
            "observer: the recording was cut short ({} torn bytes after the last whole entry): \
             every whole record is replayed; the kernel's counters were not recorded",
            rec.torn_bytes
        );
    }
    let mut pipeline = Pipeline::new(
        &rec.wiring,
        filter,
        sink,
        output_name(cli),
        None,
        false,
        &cli.test_marker,
    )?;
    for entry in &rec.entries {
        match entry {
            Entry::Record(raw) => pipeline.record(raw)?,
            Entry::Tick(now) => pipeline.tick(*now)?,
            Entry::Kmsg(raw, ts) => pipeline.kmsg(raw, *ts)?,
        }
        pipeline.emit(&no_stacks)?;
    }
    pipeline.finish(rec.trailer.as_ref(), &no_stacks)?;
    Ok(())
}
