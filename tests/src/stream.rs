//! An observer's `--json` output, read back with the observer's own record
//! types: the startup record, the alerts, the summary.

use std::path::Path;

use anyhow::{Context, Result, bail};
use observer_report::{Record, Startup, Summary};
use serde_json::Value;

#[derive(Debug)]
pub struct Stream {
    pub startup: Startup,
    pub alerts: Vec<Value>,
    pub reports: Vec<Value>,
    pub summary: Summary,
}

impl Stream {
    /// Every line must be a record: startup first, summary last.
    pub fn parse(text: &str) -> Result<Stream> {
        if !text.ends_with('\n') {
            bail!(
                "output does not end with a newline: {:?}",
                &text[text.len().saturating_sub(200)..]
            );
        }
        let mut startup = None;
        let mut summary = None;
        let mut alerts = Vec::new();
        let mut reports = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let record = Record::parse(line)
                .with_context(|| format!("line {} is not a record: {line}", i + 1))?;
            if summary.is_some() {
                bail!("a record after the summary: {line}");
            }
            match record {
                Record::Startup(s) if i == 0 => startup = Some(s),
                Record::Startup(_) => bail!("a startup record on line {}", i + 1),
                Record::Alert(_) if startup.is_none() => bail!("an alert before the startup"),
                Record::Alert(a) => alerts.push(a),
                Record::KernelReport(r) => reports.push(r),
                Record::Summary(s) => summary = Some(*s),
            }
        }
        Ok(Stream {
            startup: startup.context("no startup record")?,
            alerts,
            reports,
            summary: summary.context("no summary record")?,
        })
    }

    pub fn read(path: &Path) -> Result<Stream> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Stream::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Alerts on the file `dev` ("MAJ:MIN") / `ino`.
    pub fn alerts_on(&self, dev: &str, ino: u64) -> Vec<&Value> {
        self.alerts
            .iter()
            .filter(|a| a["ino"].as_u64() == Some(ino) && a["dev"].as_str() == Some(dev))
            .collect()
    }

    /// The method the startup record gives for `function`.
    pub fn method_of(&self, function: &str) -> Option<&str> {
        self.startup
            .probes
            .iter()
            .find(|p| p.function == function)?
            .method
            .as_deref()
    }
}

/// What the kernel emitted all arrived: the emitted records equal the
/// received ones plus the undecodable. Losses before emission (a full ring)
/// are counted apart, in `lost.ringbuf_full`.
pub fn assert_nothing_vanished(s: &Summary) {
    assert_eq!(
        s.kernel_emitted.total(),
        s.events.total() + s.lost.undecodable,
        "emitted {:?}, received {:?}, lost {:?}",
        s.kernel_emitted,
        s.events,
        s.lost
    );
}

/// The records at the two ends of an observer's output, each when it is
/// there: the startup record on the first line, the summary on the last.
/// For output that may stop short (an observer that failed) or that was
/// trimmed to those two lines (the matrix keeps counts of the alerts, not
/// the alerts).
#[derive(Debug, Default)]
pub struct Ends {
    pub startup: Option<Startup>,
    pub summary: Option<Summary>,
}

impl Ends {
    pub fn parse(text: &str) -> Ends {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let record = |line: Option<&&str>| line.and_then(|l| Record::parse(l).ok());
        Ends {
            startup: match record(lines.first()) {
                Some(Record::Startup(s)) => Some(s),
                _ => None,
            },
            summary: match record(lines.last()) {
                Some(Record::Summary(s)) => Some(*s),
                _ => None,
            },
        }
    }
}

/// A record as a replay must give it back: paths, symbolized stacks and the
/// agent's own cost are not in a recording, everything else is.
pub fn comparable(r: &Record) -> Record {
    let mut r = r.clone();
    match &mut r {
        Record::Alert(a) => {
            a["path"] = Value::Null;
            if !a["evidence"].is_null() {
                for side in ["victim_stack", "punch_stack"] {
                    a["evidence"][side] = Value::Null;
                }
            }
        }
        Record::Summary(s) => s.agent = Default::default(),
        Record::Startup(_) | Record::KernelReport(_) => {}
    }
    r
}
