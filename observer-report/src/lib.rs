//! The records the observer writes, as one typed model: the observer
//! serializes them, and the tests, the benchmark and the matrix read them
//! back with the same types, so each field has one name in one place.
//!
//! A JSON stream is one [`Record`] per line: the startup record, alerts, and
//! the summary last. Alerts are read as [`serde_json::Value`] here; their
//! schema is the README's.

mod counts;
pub mod metrics;
mod sum;
pub mod text;

use std::collections::BTreeMap;

pub use counts::Counts;
use serde::{Deserialize, Serialize};

/// One line of `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Startup(Startup),
    Alert(serde_json::Value),
    /// One of the kernel's own reports of this bug class (kernel log).
    KernelReport(serde_json::Value),
    Summary(Box<Summary>),
}

impl Record {
    /// Parses one line of the stream.
    pub fn parse(line: &str) -> serde_json::Result<Record> {
        serde_json::from_str(line)
    }
}

/// What the observer attached, and why each better method was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Startup {
    /// Kernel release, as `uname -r` prints it.
    pub kernel: String,
    /// The core functions first, then the optional sources of truth.
    pub probes: Vec<StartupProbe>,
    /// Every program the observer holds in the kernel, with the kernel's id
    /// for it: what must be gone once the observer is (the kernel cuts names
    /// to 15 bytes, so ids, not names, identify them).
    pub programs: Vec<LoadedProgram>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedProgram {
    pub name: String,
    pub id: u32,
}

/// How one kernel function ended up observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupProbe {
    pub function: String,
    /// The method that worked (`fentry`, `kprobe`, `raw_tracepoint`,
    /// `tracepoint`); `None` when every rung refused.
    pub method: Option<String>,
    /// Methods tried before, and why the kernel turned them down.
    pub refused: Vec<Refusal>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub method: String,
    pub reason: String,
}

/// The closing account of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Wall time observed, rounded to the millisecond.
    pub duration_s: f64,
    /// Records the agent received, per kind.
    pub events: Counts,
    /// Records the kernel programs emitted, per kind: compared with
    /// `events`, they show what went missing in between.
    pub kernel_emitted: Counts,
    /// Records the kernel had no ring-buffer room for, per kind (their sum
    /// is `lost.ringbuf_full`).
    pub kernel_dropped: Counts,
    pub lost: Lost,
    /// Fault-arounds the kernel pre-filter dropped because their file had no
    /// window: by design, not a loss.
    pub filtered: u64,
    /// Fault-arounds it dropped because they missed the pages of their
    /// file's only open window (tracepoint mode).
    pub filtered_outside_range: u64,
    /// Page-exact installs the kernel judged against EOF and dropped: below
    /// EOF, no window on their file. By design, not a loss.
    #[serde(default)]
    pub pte_installs_filtered: u64,
    /// Folios that left the page cache of files with a window open: the
    /// `folio_delete` records are fewer, one per run of contiguous unmapped
    /// folios a task removed.
    #[serde(default)]
    pub folios_removed: u64,
    pub windows: u64,
    /// Final-closed windows by operation, every operation listed.
    pub windows_by_op: Counts,
    /// Invalidating syscalls that failed and removed nothing, by operation:
    /// not windows (a collapse with an unaligned range returns EINVAL before
    /// it touches the page cache).
    pub failed_calls: Counts,
    pub alerts: u64,
    /// Alerts left after the user's filter and `--min-severity`.
    pub alerts_shown: u64,
    /// Every alert by severity, filtered or not.
    pub alerts_by_severity: BySeverity,
    /// Every alert by kind (`pte_in_punch_window`, `stale_pte`,
    /// `stale_data`, all listed) and severity, filtered or not: what
    /// `pcro_alerts_total{kind,severity}` exports.
    #[serde(default)]
    pub alerts_by_kind: BTreeMap<String, BySeverity>,
    /// The kernel's own reports (Bad page cache/map/state, kernel BUG in
    /// mm/) and other mm/ and fs/ warnings seen in its log.
    pub kernel_reports: u64,
    /// Per test of the suite, in the order they ran (kernel-log markers;
    /// empty without markers).
    pub tests: Vec<TestRow>,
    /// Class A and B outcomes, from all events, filtered or not.
    pub classes: Classes,
    pub health: Health,
    pub agent: AgentUsage,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BySeverity {
    pub info: u64,
    pub warning: u64,
    pub critical: u64,
}

/// What one test of the suite did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRow {
    pub test: String,
    pub windows_by_op: Counts,
    pub alerts: BySeverity,
    pub kernel_reports: u64,
}

/// Records that never reached a verdict, by the stage that dropped them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// The kernel could not reserve ring-buffer space.
    pub ringbuf_full: u64,
    /// A kernel pointer chain (vma → file → inode …) could not be read.
    pub unresolved: u64,
    /// Arrived after the correlator had moved past them.
    pub late: u64,
    /// Records the agent could not decode (a kind it does not know).
    pub undecodable: u64,
    /// Exits whose entry the kernel side no longer had (its per-task stash
    /// is an LRU that evicts silently), or that began before the observer
    /// attached: those calls were not seen whole.
    pub no_entry: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.ringbuf_full + self.unresolved + self.late + self.undecodable + self.no_entry
    }
}

/// Class A: PTEs installed inside invalidation windows (page-exact, from the
/// kernel's PTE installer), and what became of each.
///
/// Every installed (page, task) pair inside a window gets exactly one
/// outcome: `ptes_in_window == rezapped + stale_pte +
/// still_mapped_after_window + unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassA {
    pub ptes_in_window: u64,
    /// The folio later left the cache with no PTE on it.
    pub rezapped: u64,
    /// The folio left the cache still mapped: a `stale_pte` alert each.
    pub stale_pte: u64,
    /// No removal before the window final-closed (partial pages, large
    /// folios whose head was not removed, pages outside the truncated part):
    /// legitimate, classified only.
    pub still_mapped_after_window: u64,
    /// Removed but the mapcount was unreadable, no removal source at all, or
    /// the install record arrived after its window had final-closed.
    pub unknown: u64,
    /// Folio removals with a PTE still on them that no install inside a
    /// window accounts for (not an alert: the installer was not seen).
    pub still_mapped_unattributed: u64,
}

/// Class B: page-cache refills inside a punch, between the truncate and the
/// end of the filesystem's block removal. Refills count folios (page-cache
/// add records), not pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassB {
    /// Class-B windows that ended (their operation's syscall returned).
    pub windows: u64,
    /// Of those, windows without any block-removal exit record (tmpfs, a
    /// filesystem without the hook, a lost record): not evaluated.
    pub unbounded: u64,
    /// Folios added inside evaluated class-B windows, overlapping the
    /// punched range.
    pub refills: u64,
    /// Refills with a page the operation did not remove again.
    pub survived: u64,
    /// Survivors read from disk by another task, on fully punched pages: a
    /// `stale_data` alert each.
    pub stale_data: u64,
    /// Survivors read from disk by another task that the filesystem's own
    /// lock kept from freed blocks (btrfs: observer_abi::filesystems):
    /// counted, not critical.
    pub exempt: u64,
    /// Evaluated windows whose block removal began with the punching task
    /// holding the file's invalidate_lock for writing (5.15+ ext4, xfs)...
    pub removals_under_lock: u64,
    /// ...or without it (btrfs and tmpfs use their own locks). Neither on a
    /// kernel without invalidate_lock.
    pub removals_without_lock: u64,
    /// Refills by another task while the punching task held invalidate_lock
    /// for writing: a path that filled the cache without taking it shared.
    pub refills_under_lock: u64,
}

/// Class C: page-exact installs (PTEs, or a PMD from do_set_pmd) at or past
/// the file's EOF, by the i_size the kernel program read as they went in.
/// `installs_past_eof == during_size_change + shmem + beyond_eof`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassC {
    pub installs_past_eof: u64,
    /// Of those, PMD mappings that reach past EOF.
    pub pmd: u64,
    /// While the file's size was changing (a truncate, collapse or insert
    /// window or syscall on the file, or such a window opening within the op
    /// gap after): a truncate writes i_size before it unmaps, so a
    /// fault-around that read the old size installs past the new EOF and the
    /// truncate's unmap zaps it. Legitimate.
    pub during_size_change: u64,
    /// On tmpfs, whose huge pages are mapped across EOF by design.
    pub shmem: u64,
    /// The rest: a mapping past EOF that no size change explains, where an
    /// access must raise SIGBUS (the 2025 "do not populate page table entries
    /// beyond i_size" class). Critical.
    pub beyond_eof: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes {
    pub a: ClassA,
    pub b: ClassB,
    /// Absent from summaries made before class C.
    #[serde(default)]
    pub c: ClassC,
}

impl Classes {
    /// Critical outcomes: the verdict is `critical` when this is non-zero.
    pub fn critical(&self) -> u64 {
        self.a.stale_pte + self.b.stale_data + self.c.beyond_eof
    }
}

/// Whether every attached probe fired as its partners say it should have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Runs of each attached program, by program name.
    pub hits: Counts,
    /// Probes that stayed silent while a partner fired: a renamed or inlined
    /// function, a changed argument, a verifier-accepted program that reads
    /// the wrong field.
    pub silent: Vec<Silence>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// The program that never ran.
    pub program: String,
    /// The program that ran meanwhile, and how often.
    pub partner: String,
    pub partner_hits: u64,
    /// Why the one implies the other.
    pub because: String,
}

/// The agent's own cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentUsage {
    /// Peak resident set size (VmHWM).
    pub peak_rss_kib: u64,
    /// User plus system CPU time.
    pub cpu_s: f64,
    /// Times the ring buffer woke the agent (records mostly wait for its
    /// poll instead).
    pub wakeups: u64,
}

/// What the run allows one to conclude.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A PTE outlived its folio (`stale_pte`) or the cache kept data of freed
    /// blocks (`stale_data`): the race did damage.
    Critical,
    /// At least one fault-around installed PTEs inside an invalidation window.
    RaceObserved,
    /// Windows and fault-arounds never met, and nothing was lost.
    NoRace,
    /// No alert, but some events were lost: the race may have been missed.
    Inconclusive,
    /// No invalidation happened while observing.
    #[default]
    NoWindows,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Critical => "critical",
            Verdict::RaceObserved => "race_observed",
            Verdict::NoRace => "no_race",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NoWindows => "no_windows",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            Verdict::Critical => {
                "a PTE outlived its folio, a page was mapped past EOF, the page cache kept data of freed blocks, or the kernel reported a bad page"
            }
            Verdict::RaceObserved => "fault-around installed PTEs inside invalidation windows",
            Verdict::NoRace => "no fault-around met an invalidation window",
            Verdict::Inconclusive => "no alert, but events were lost: a race may have gone unseen",
            Verdict::NoWindows => "no invalidation window was observed",
        }
    }

    /// From the counts it is made of (`critical`: critical alerts and
    /// reports).
    pub fn of(classes: &Classes, alerts: u64, lost: &Lost, windows: u64) -> Verdict {
        Verdict::with_critical(classes.critical(), alerts, lost, windows)
    }

    pub fn with_critical(critical: u64, alerts: u64, lost: &Lost, windows: u64) -> Verdict {
        if critical > 0 {
            Verdict::Critical
        } else if alerts > 0 {
            Verdict::RaceObserved
        } else if lost.total() > 0 {
            Verdict::Inconclusive
        } else if windows == 0 {
            Verdict::NoWindows
        } else {
            Verdict::NoRace
        }
    }
}

impl Summary {
    /// The summary as its JSON line (no newline).
    pub fn to_json(&self) -> String {
        let record = Record::Summary(Box::new(self.clone()));
        serde_json::to_string(&record).expect("a summary always serializes")
    }
}

impl Startup {
    /// The startup record as its JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Record::Startup(self.clone())).expect("a startup always serializes")
    }
}

/// Milliseconds are what a person reads; more digits only look precise.
pub fn round_ms(seconds: f64) -> f64 {
    if seconds.is_finite() {
        (seconds * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_the_type_tag_first() {
        let mut s = Summary {
            duration_s: 1.5,
            windows: 3,
            ..Summary::default()
        };
        s.windows_by_op.add("punch_hole", 3);
        s.verdict = Verdict::NoRace;
        let line = s.to_json();
        assert!(
            line.starts_with(r#"{"type":"summary","duration_s":1.5,"#),
            "{line}"
        );
        assert!(
            line.contains(r#""windows_by_op":{"punch_hole":3}"#),
            "{line}"
        );
        assert!(line.ends_with(r#""verdict":"no_race"}"#), "{line}");
        assert_eq!(Record::parse(&line).unwrap(), Record::Summary(Box::new(s)));

        let st = Startup {
            kernel: "6.1.0".into(),
            probes: vec![StartupProbe {
                function: "filemap_map_pages".into(),
                method: None,
                refused: vec![Refusal {
                    method: "fentry".into(),
                    reason: "a \"quoted\"\nreason".into(),
                }],
            }],
            programs: vec![LoadedProgram {
                name: "sys_exit_invalidating".into(),
                id: 42,
            }],
        };
        let line = st.to_json();
        assert!(line.starts_with(r#"{"type":"startup","kernel":"6.1.0","#));
        assert!(!line.contains('\n'));
        assert_eq!(Record::parse(&line).unwrap(), Record::Startup(st));
        let alert = Record::parse(r#"{"type":"alert","kind":"stale_pte","ino":5}"#).unwrap();
        let Record::Alert(v) = alert else {
            panic!("not an alert")
        };
        assert_eq!(v["ino"], 5);
    }

    #[test]
    fn verdicts() {
        let mut c = Classes::default();
        let lost = Lost::default();
        assert_eq!(Verdict::of(&c, 0, &lost, 0), Verdict::NoWindows);
        assert_eq!(Verdict::of(&c, 0, &lost, 2), Verdict::NoRace);
        let some = Lost {
            undecodable: 1,
            ..Lost::default()
        };
        assert_eq!(Verdict::of(&c, 0, &some, 2), Verdict::Inconclusive);
        assert_eq!(Verdict::of(&c, 4, &some, 2), Verdict::RaceObserved);
        c.b.stale_data = 1;
        assert_eq!(Verdict::of(&c, 4, &some, 2), Verdict::Critical);
    }

    #[test]
    fn rounds_to_the_millisecond() {
        assert_eq!(round_ms(12.3456), 12.346);
        assert_eq!(round_ms(f64::NAN), 0.0);
    }
}
