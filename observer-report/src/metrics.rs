//! The Prometheus metrics `--metrics` serves, named in one place: the
//! observer encodes these families (with prometheus-client), and the tests
//! and the README's queries use these names.
//!
//! Every counter is a count the summary prints, so that what Prometheus
//! scraped last equals the summary at exit. Names follow the Prometheus
//! conventions: the `pcro_` prefix, snake case, `_total` on counters (the
//! encoder appends it, as `_info` on info metrics), labels for dimensions.

use crate::{Startup, Summary};

/// How a family is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    /// A constant 1 whose labels carry the information.
    Info,
}

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The name given to the encoder, without the `_total`/`_info` suffix.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Type,
    pub labels: &'static [&'static str],
}

impl Metric {
    /// The series name as scraped and stored (`pcro_events_total`).
    pub fn series(&self) -> String {
        match self.kind {
            Type::Counter => format!("{}_total", self.name),
            Type::Info => format!("{}_info", self.name),
            Type::Gauge => self.name.to_owned(),
        }
    }
}

pub const EVENTS: Metric = Metric {
    name: "pcro_events",
    help: "Records the agent received from the kernel programs, by kind (summary: events)",
    kind: Type::Counter,
    labels: &["probe"],
};

pub const EVENTS_LOST: Metric = Metric {
    name: "pcro_events_lost",
    help: "Records lost before a verdict, by the stage that lost them (summary: lost)",
    kind: Type::Counter,
    labels: &["stage"],
};

pub const WINDOWS: Metric = Metric {
    name: "pcro_windows",
    help: "Invalidation windows that closed, by operation (summary: windows_by_op)",
    kind: Type::Counter,
    labels: &["op"],
};

pub const ALERTS: Metric = Metric {
    name: "pcro_alerts",
    help: "Alerts, filtered or not, by kind and severity (summary: alerts_by_kind)",
    kind: Type::Counter,
    labels: &["kind", "severity"],
};

pub const PTES_IN_WINDOW: Metric = Metric {
    name: "pcro_ptes_in_window",
    help: "PTEs installed inside invalidation windows, by outcome (summary: classes.a)",
    kind: Type::Counter,
    labels: &["outcome"],
};

pub const INSTALLS_PAST_EOF: Metric = Metric {
    name: "pcro_installs_past_eof",
    help: "Page-exact installs at or past EOF, by outcome; beyond_eof is critical (summary: classes.c)",
    kind: Type::Counter,
    labels: &["outcome"],
};

pub const KERNEL_REPORTS: Metric = Metric {
    name: "pcro_kernel_reports",
    help: "The kernel's own reports of this bug class and mm/fs warnings, from its log (summary: kernel_reports)",
    kind: Type::Counter,
    labels: &[],
};

pub const PROBE: Metric = Metric {
    name: "pcro_probe",
    help: "The method each watched function was attached with (none: not attached)",
    kind: Type::Info,
    labels: &["function", "method"],
};

pub const PROBES_SILENT: Metric = Metric {
    name: "pcro_probes_silent",
    help: "Probes that never ran while their partner ran often (summary: health.silent); /healthz is 503 while above zero",
    kind: Type::Gauge,
    labels: &[],
};

pub const BUILD: Metric = Metric {
    name: "pcro_build",
    help: "The observer's version",
    kind: Type::Info,
    labels: &["version"],
};

pub const KERNEL: Metric = Metric {
    name: "pcro_kernel",
    help: "The running kernel's release",
    kind: Type::Info,
    labels: &["release"],
};

pub const RUN_FINISHED: Metric = Metric {
    name: "pcro_run_finished",
    help: "1 once the summary was written: the counters are final and equal it",
    kind: Type::Gauge,
    labels: &[],
};

/// Every family, in the order they are served.
pub const ALL: &[&Metric] = &[
    &EVENTS,
    &EVENTS_LOST,
    &WINDOWS,
    &ALERTS,
    &PTES_IN_WINDOW,
    &INSTALLS_PAST_EOF,
    &KERNEL_REPORTS,
    &PROBE,
    &PROBES_SILENT,
    &BUILD,
    &KERNEL,
    &RUN_FINISHED,
];

/// One series of a family: its label values (in the family's label order)
/// and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub labels: Vec<String>,
    pub value: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub metric: &'static Metric,
    pub samples: Vec<Sample>,
}

/// The `lost` stages, as `pcro_events_lost_total{stage}` labels them.
pub fn lost_stages(l: &crate::Lost) -> [(&'static str, u64); 5] {
    [
        ("ringbuf_full", l.ringbuf_full),
        ("unresolved", l.unresolved),
        ("late", l.late),
        ("undecodable", l.undecodable),
        ("no_entry", l.no_entry),
    ]
}

/// The class-A outcomes, as `pcro_ptes_in_window_total{outcome}` labels
/// them (they sum to `ptes_in_window`).
pub fn pte_outcomes(a: &crate::ClassA) -> [(&'static str, u64); 4] {
    [
        ("rezapped", a.rezapped),
        ("stale_pte", a.stale_pte),
        ("still_mapped_after_window", a.still_mapped_after_window),
        ("unknown", a.unknown),
    ]
}

/// `pcro_alerts_total{kind,severity}`'s series: every kind the summary
/// names, each with all three severities.
pub fn alert_series(s: &Summary) -> impl Iterator<Item = (Vec<String>, u64)> + '_ {
    s.alerts_by_kind.iter().flat_map(|(kind, b)| {
        [
            ("info", b.info),
            ("warning", b.warning),
            ("critical", b.critical),
        ]
        .map(|(sev, v)| (vec![kind.clone(), sev.to_owned()], v))
    })
}

/// The class-C outcomes, as `pcro_installs_past_eof_total{outcome}` labels
/// them (they sum to `installs_past_eof`).
pub fn eof_outcomes(c: &crate::ClassC) -> [(&'static str, u64); 3] {
    [
        ("during_size_change", c.during_size_change),
        ("shmem", c.shmem),
        ("beyond_eof", c.beyond_eof),
    ]
}

/// Every family's series for this state of the run: a summary (live
/// snapshot or final), the startup record, the build's version, and
/// whether the summary is the final one.
pub fn families(s: &Summary, startup: &Startup, version: &str, finished: bool) -> Vec<Family> {
    let one = |labels: Vec<String>, value: u64| Sample { labels, value };
    let counts = |c: &crate::Counts| -> Vec<Sample> {
        c.iter().map(|(k, v)| one(vec![k.to_owned()], v)).collect()
    };
    ALL.iter()
        .map(|&metric| {
            let samples = match metric.name {
                n if n == EVENTS.name => counts(&s.events),
                n if n == EVENTS_LOST.name => lost_stages(&s.lost)
                    .iter()
                    .map(|(k, v)| one(vec![(*k).to_owned()], *v))
                    .collect(),
                n if n == WINDOWS.name => counts(&s.windows_by_op),
                n if n == ALERTS.name => {
                    alert_series(s).map(|(labels, v)| one(labels, v)).collect()
                }
                n if n == PTES_IN_WINDOW.name => pte_outcomes(&s.classes.a)
                    .iter()
                    .map(|(k, v)| one(vec![(*k).to_owned()], *v))
                    .collect(),
                n if n == INSTALLS_PAST_EOF.name => eof_outcomes(&s.classes.c)
                    .iter()
                    .map(|(k, v)| one(vec![(*k).to_owned()], *v))
                    .collect(),
                n if n == KERNEL_REPORTS.name => vec![one(vec![], s.kernel_reports)],
                n if n == PROBE.name => startup
                    .probes
                    .iter()
                    .map(|p| {
                        let method = p.method.clone().unwrap_or_else(|| "none".into());
                        one(vec![p.function.clone(), method], 1)
                    })
                    .collect(),
                n if n == PROBES_SILENT.name => vec![one(vec![], s.health.silent.len() as u64)],
                n if n == BUILD.name => vec![one(vec![version.to_owned()], 1)],
                n if n == KERNEL.name => vec![one(vec![startup.kernel.clone()], 1)],
                n if n == RUN_FINISHED.name => vec![one(vec![], u64::from(finished))],
                _ => Vec::new(),
            };
            Family { metric, samples }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BySeverity, StartupProbe};

    #[test]
    fn names_follow_the_conventions() {
        for m in ALL {
            assert!(m.name.starts_with("pcro_"), "{}", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            assert!(!m.name.ends_with("_total") && !m.name.ends_with("_info"));
        }
        assert_eq!(EVENTS.series(), "pcro_events_total");
        assert_eq!(PROBE.series(), "pcro_probe_info");
        assert_eq!(RUN_FINISHED.series(), "pcro_run_finished");
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn every_family_comes_from_the_summary() {
        let mut s = Summary::default();
        s.events.add("filemap_map_pages", 7);
        s.windows_by_op.add("punch_hole", 2);
        s.lost.late = 3;
        s.classes.a.rezapped = 4;
        s.classes.c.beyond_eof = 5;
        s.alerts_by_kind.insert(
            "stale_pte".into(),
            BySeverity {
                critical: 1,
                ..BySeverity::default()
            },
        );
        let startup = Startup {
            kernel: "6.18.0".into(),
            probes: vec![StartupProbe {
                function: "filemap_map_pages".into(),
                method: Some("fentry".into()),
                refused: vec![],
            }],
            programs: vec![],
        };
        let f = families(&s, &startup, "0.1.0", true);
        assert_eq!(f.len(), ALL.len());
        let of = |m: &Metric| f.iter().find(|x| x.metric == m).unwrap().samples.clone();
        assert_eq!(of(&EVENTS), [one(&["filemap_map_pages"], 7)]);
        assert!(of(&EVENTS_LOST).contains(&one(&["late"], 3)));
        assert_eq!(of(&WINDOWS), [one(&["punch_hole"], 2)]);
        assert!(of(&ALERTS).contains(&one(&["stale_pte", "critical"], 1)));
        assert!(of(&ALERTS).contains(&one(&["stale_pte", "info"], 0)));
        assert!(of(&PTES_IN_WINDOW).contains(&one(&["rezapped"], 4)));
        assert!(of(&INSTALLS_PAST_EOF).contains(&one(&["beyond_eof"], 5)));
        assert_eq!(of(&PROBE), [one(&["filemap_map_pages", "fentry"], 1)]);
        assert_eq!(of(&KERNEL), [one(&["6.18.0"], 1)]);
        assert_eq!(of(&RUN_FINISHED), [one(&[], 1)]);
        for fam in &f {
            for smp in &fam.samples {
                assert_eq!(smp.labels.len(), fam.metric.labels.len(), "{fam:?}");
            }
        }
    }

    fn one(labels: &[&str], value: u64) -> Sample {
        Sample {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            value,
        }
    }
}
