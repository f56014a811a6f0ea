//! Where verdicts go: one line per alert, as text for people or JSON lines
//! for programs, framed by a startup record and a closing summary.

pub mod digest;
pub mod json;
pub mod summary;
pub mod text;

use std::io::Write;

use anyhow::Result;

use crate::correlator::{Alert, JoinedReport, Severity};
pub use observer_report::{Lost, Summary, Verdict};

/// Symbolized kernel stacks of an alert's two sides, innermost frame first.
/// Only critical alerts carry them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    pub victim: Option<Vec<String>>,
    pub punch: Option<Vec<String>>,
}

impl Frames {
    /// Resolves a critical alert's stack ids with `resolve_stack` (stack id
    /// to frames, `None` when the id cannot be resolved). Other alerts are
    /// many and get none, so the resolver is not even asked.
    pub fn of(alert: &Alert, resolve_stack: &dyn Fn(u32) -> Option<Vec<String>>) -> Frames {
        if !alert.kind().is_critical() {
            return Frames::default();
        }
        let ids = alert.evidence.stack_ids;
        Frames {
            victim: ids.victim.and_then(resolve_stack),
            punch: ids.punch.and_then(resolve_stack),
        }
    }
}

/// The resolver for when no stack can be read: replays (the recording has
/// no `STACKS` map) and agents without symbols.
pub fn no_stacks(_stack_id: u32) -> Option<Vec<String>> {
    None
}

pub use observer_report::{Refusal as StartupRefusal, Startup, StartupProbe};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One output stream. Every record is flushed as it is written: alerts are
/// rare and someone may be watching live. Write errors are returned as they
/// are, for the caller to report once with the destination's name.
pub struct Sink {
    format: Format,
    out: Box<dyn Write + Send>,
    /// Added to CLOCK_MONOTONIC event times to get Unix time.
    boot_to_realtime_ns: i64,
    /// Alerts below this are not written (they are counted all the same).
    min_severity: Severity,
    /// Text: what is not critical goes through the digest (one line per
    /// window, rate limits); None with --per-call.
    digest: Option<digest::Digest>,
    last_ts: u64,
}

/// What the user asked to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub format: Format,
    pub min_severity: Severity,
    /// Text: one line per alert instead of the digest.
    pub per_call: bool,
}

impl Sink {
    pub fn new(view: View, out: Box<dyn Write + Send>, boot_to_realtime_ns: i64) -> Self {
        Sink {
            format: view.format,
            out,
            boot_to_realtime_ns,
            min_severity: view.min_severity,
            digest: (view.format == Format::Text && !view.per_call)
                .then(|| digest::Digest::new(boot_to_realtime_ns)),
            last_ts: 0,
        }
    }

    pub fn boot_to_realtime_ns(&self) -> i64 {
        self.boot_to_realtime_ns
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn startup(&mut self, startup: &Startup) -> Result<()> {
        let record = match self.format {
            Format::Text => text::startup(startup),
            Format::Json => startup.to_json(),
        };
        self.emit(&record)
    }

    /// `path` is the file's name when the agent could resolve it; `frames`
    /// the symbolized stacks (see [`Frames::of`]). Returns whether the alert
    /// was shown (at or above `--min-severity`; digested text counts).
    pub fn alert(&mut self, alert: &Alert, path: Option<&str>, frames: &Frames) -> Result<bool> {
        self.last_ts = self.last_ts.max(alert.ts);
        if alert.severity < self.min_severity {
            return Ok(false);
        }
        let record = match self.format {
            Format::Text => text::alert(alert, path, self.boot_to_realtime_ns, frames),
            Format::Json => json::alert(alert, path, self.boot_to_realtime_ns, frames),
        };
        match &mut self.digest {
            Some(d) if alert.severity < Severity::Critical => {
                let mut lines = Vec::new();
                d.alert(alert, path, format!("WARNING {record}"), &mut lines);
                for l in lines {
                    self.emit(&l)?;
                }
            }
            _ => self.emit(&record)?,
        }
        Ok(true)
    }

    /// A kernel report, with the windows it joined.
    pub fn report(&mut self, r: &JoinedReport) -> Result<()> {
        self.last_ts = self.last_ts.max(r.report.ts);
        if r.severity < self.min_severity {
            return Ok(());
        }
        let record = match self.format {
            Format::Text => text::report(r, self.boot_to_realtime_ns),
            Format::Json => json::report(r, self.boot_to_realtime_ns),
        };
        self.emit(&record)
    }

    pub fn summary(&mut self, summary: &Summary) -> Result<()> {
        if let Some(d) = &mut self.digest {
            let mut lines = Vec::new();
            d.finish(self.last_ts, &mut lines);
            for l in lines {
                self.emit(&l)?;
            }
        }
        let record = match self.format {
            Format::Text => summary::text(summary),
            Format::Json => summary.to_json(),
        };
        self.emit(&record)
    }

    /// `record` is complete lines without the final newline.
    fn emit(&mut self, record: &str) -> Result<()> {
        self.out.write_all(record.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}

/// An event's CLOCK_MONOTONIC time as Unix nanoseconds. Wide, so that no
/// offset or timestamp can overflow it.
pub fn unix_ns(ts: u64, boot_to_realtime_ns: i64) -> i128 {
    i128::from(ts) + i128::from(boot_to_realtime_ns)
}

/// A Unix time broken down in UTC (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
}

const NS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;

impl UtcTime {
    pub fn from_unix_ns(unix_ns: i128) -> Self {
        let secs = unix_ns.div_euclid(NS_PER_SEC);
        let nanos = unix_ns.rem_euclid(NS_PER_SEC) as u32;
        let days = secs.div_euclid(SECS_PER_DAY);
        let of_day = secs.rem_euclid(SECS_PER_DAY) as u32;
        // Far beyond any clock, but must not wrap: clamp to what i64 days hold.
        let days = days.clamp(i128::from(i64::MIN / 2), i128::from(i64::MAX / 2)) as i64;
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            nanos,
        }
    }

    /// `2025-11-25T12:00:01.123456789Z`
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.nanos
        )
    }

    /// `12:00:01.123456`: enough for a live terminal, where the date is known.
    pub fn time_of_day_us(&self) -> String {
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            self.hour,
            self.minute,
            self.second,
            self.nanos / 1_000
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's
/// `civil_from_days`: years are counted from March so that the leap day
/// falls at the end, in 400-year eras of 146097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One startup as both formats' tests print it: a probe attached after a
/// refusal, and one not attached.
#[cfg(test)]
pub(crate) fn sample_startup() -> Startup {
    Startup {
        programs: vec![],
        kernel: "6.12.9".into(),
        probes: vec![
            StartupProbe {
                function: "filemap_map_pages".into(),
                method: Some("kprobe".into()),
                refused: vec![StartupRefusal {
                    method: "fentry".into(),
                    reason: "no BTF for \"vmlinux\"".into(),
                }],
            },
            StartupProbe {
                function: "unmap_mapping_range".into(),
                method: None,
                refused: vec![],
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlator::{Evidence, Finding, StackIds, WindowInfo};
    use crate::event::{Fidelity, FileId, Op, PageRange, Task};
    use std::sync::{Arc, Mutex};

    fn utc(ns: i128) -> String {
        UtcTime::from_unix_ns(ns).rfc3339()
    }

    #[test]
    fn epoch_and_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            utc(1_764_072_001_123_456_789),
            "2025-11-25T12:00:01.123456789Z"
        );
        assert_eq!(
            UtcTime::from_unix_ns(1_764_072_001_123_456_789).time_of_day_us(),
            "12:00:01.123456"
        );
        // Leap days, century rules, the end of a year.
        assert_eq!(
            utc(951_782_400 * NS_PER_SEC),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            utc(1_709_164_800 * NS_PER_SEC),
            "2024-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            utc(4_107_542_400 * NS_PER_SEC),
            "2100-03-01T00:00:00.000000000Z"
        );
        assert_eq!(
            utc(1_735_689_599_999_999_999),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(utc(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn civil_from_days_walks_every_day_of_four_centuries() {
        // Cross-check against a naive day-by-day calendar.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn monotonic_to_unix() {
        assert_eq!(unix_ns(5, -10), -5);
        assert_eq!(
            unix_ns(u64::MAX, i64::MAX),
            i128::from(u64::MAX) + i128::from(i64::MAX)
        );
    }

    /// A writer the test can read back after the sink took ownership.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub(crate) fn sample_alert() -> Alert {
        Alert {
            severity: crate::correlator::Severity::Info,
            finding: Finding::PteInPunchWindow {
                map_entry_ts: 5_000_030_000,
                folios_removed: Some(3),
                ptes: None,
            },
            ts: 5_000_038_000,
            file: FileId {
                dev: 7 << 20,
                ino: 131,
            },
            task: Task {
                pid: 1234,
                tid: 1240,
                comm: "racer".into(),
            },
            pages: PageRange::new(16, 31),
            window: Some(WindowInfo {
                id: 7,
                op: Op::PunchHole,
                pages: PageRange::new(20, 35),
                task: Task {
                    pid: 1234,
                    tid: 1236,
                    comm: "racer".into(),
                },
                opened_ts: 5_000_000_000,
                closed_ts: Some(5_000_050_000),
                open_for_ns: 38_000,
                test: None,
            }),
            fidelity: Fidelity::Fentry,
            map_fidelity: Fidelity::Fentry,
            window_fidelity: Fidelity::Fentry,
            evidence: Evidence::default(),
        }
    }

    /// The same with page-exact counts (a PTE installer probe attached).
    pub(crate) fn sample_alert_with_ptes() -> Alert {
        let mut a = sample_alert();
        if let Finding::PteInPunchWindow { ptes, .. } = &mut a.finding {
            *ptes = Some(crate::correlator::PteCounts {
                installed: 16,
                rezapped: 13,
                stale: 1,
                still_mapped: 2,
                unknown: 0,
            });
        }
        a
    }

    /// A `stale_pte` alert as the correlator makes it.
    pub(crate) fn sample_stale_pte() -> Alert {
        let mut a = sample_alert();
        a.severity = crate::correlator::Severity::Critical;
        a.finding = Finding::StalePte {
            deleted_ts: 5_000_045_000,
            pfn: 0x12345,
        };
        a.ts = 5_000_036_000;
        a.pages = PageRange::new(21, 21);
        a.win_mut().open_for_ns = 36_000;
        a.evidence = Evidence {
            stack_ids: StackIds {
                victim: Some(4),
                punch: Some(9),
            },
        };
        a
    }

    /// A `stale_data` alert as the correlator makes it.
    pub(crate) fn sample_stale_data() -> Alert {
        let mut a = sample_alert();
        a.severity = crate::correlator::Severity::Critical;
        a.ts = 5_000_060_000;
        a.task.comm = "reader".into();
        a.pages = PageRange::new(24, 27);
        a.win_mut().opened_ts = 5_000_010_000;
        a.win_mut().closed_ts = Some(5_000_090_000);
        a.win_mut().open_for_ns = 50_000;
        a.finding = Finding::StaleData {
            truncate_exit_ts: Some(5_000_040_000),
            fs_remove: crate::event::FsRemover::from_code(observer_abi::FS_REMOVE_EXT4_EXT)
                .unwrap(),
            fs_remove_exit_ts: 5_000_090_000,
            invalidate_lock: crate::event::LockHolder::NotExposed,
        };
        a.evidence = Evidence {
            stack_ids: StackIds {
                victim: Some(11),
                punch: None,
            },
        };
        a
    }

    /// A PMD of a 10-page file, mapped across its EOF with no size change.
    pub(crate) fn sample_beyond_eof() -> Alert {
        let mut a = sample_alert();
        a.severity = crate::correlator::Severity::Critical;
        a.ts = 5_000_070_000;
        a.pages = PageRange::new(0, 511);
        a.window = None;
        a.finding = Finding::BeyondEof {
            i_size: 10 * 4096,
            pmd: true,
        };
        a.evidence = Evidence {
            stack_ids: StackIds {
                victim: Some(12),
                punch: None,
            },
        };
        a
    }

    #[test]
    fn frames_are_resolved_for_critical_alerts_only() {
        let resolve = |id: u32| Some(vec![format!("frame{id}")]);
        assert_eq!(Frames::of(&sample_alert(), &resolve), Frames::default());
        let f = Frames::of(&sample_stale_pte(), &resolve);
        assert_eq!(f.victim, Some(vec!["frame4".to_string()]));
        assert_eq!(f.punch, Some(vec!["frame9".to_string()]));
        let f = Frames::of(&sample_stale_data(), &resolve);
        assert_eq!(f.punch, None, "no stack id, nothing to resolve");
        assert_eq!(
            Frames::of(&sample_stale_pte(), &no_stacks),
            Frames::default()
        );
    }

    fn view(format: Format, per_call: bool) -> View {
        View {
            format,
            min_severity: Severity::Info,
            per_call,
        }
    }

    /// The digest: one line for a window's info alerts, critical ones
    /// always, and below --min-severity nothing.
    #[test]
    fn the_text_digest_gathers_a_window_and_keeps_critical_lines() {
        let buf = Shared::default();
        let mut sink = Sink::new(view(Format::Text, false), Box::new(buf.clone()), 0);
        for _ in 0..5 {
            assert!(
                sink.alert(&sample_alert(), None, &Frames::default())
                    .unwrap()
            );
        }
        let mut other = sample_alert();
        other.win_mut().id = 8;
        sink.alert(&other, None, &Frames::default()).unwrap();
        sink.alert(&sample_stale_pte(), None, &Frames::default())
            .unwrap();
        sink.summary(&Summary::default()).unwrap();
        let written = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert!(
            lines[0]
                .contains("WINDOW punch_hole dev 7:0 ino 131 pages 20-35: 5 fault-around calls"),
            "{written}"
        );
        assert!(lines.iter().any(|l| l.contains("STALE-PTE")), "{written}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("1 fault-around call in it")),
            "{written}"
        );
        let buf = Shared::default();
        let mut sink = Sink::new(
            View {
                min_severity: Severity::Critical,
                ..view(Format::Json, false)
            },
            Box::new(buf.clone()),
            0,
        );
        assert!(
            !sink
                .alert(&sample_alert(), None, &Frames::default())
                .unwrap()
        );
        assert!(
            sink.alert(&sample_stale_pte(), None, &Frames::default())
                .unwrap()
        );
        let written = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), 1);
        assert!(
            written.contains(r#""kind":"stale_pte","severity":"critical""#),
            "{written}"
        );
    }

    #[test]
    fn sink_writes_one_line_per_record_in_its_format() {
        let buf = Shared::default();
        // Monotonic 5 s maps to 2025-11-25T12:00:01.
        let offset = 1_764_072_001_000_000_000 - 5_000_000_000;
        let mut sink = Sink::new(view(Format::Text, true), Box::new(buf.clone()), offset);
        sink.alert(
            &sample_alert(),
            Some("/mnt/x/racer.dat"),
            &Frames::default(),
        )
        .unwrap();
        let mut sink = Sink::new(view(Format::Json, false), Box::new(buf.clone()), offset);
        sink.alert(&sample_alert(), None, &Frames::default())
            .unwrap();
        sink.summary(&Summary::default()).unwrap();
        let written = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("12:00:01.000038 PTE-IN-PUNCH-WINDOW "));
        assert!(lines[1].starts_with("{\"type\":\"alert\""));
        assert!(lines[1].contains("\"time\":\"2025-11-25T12:00:01.000038000Z\""));
        assert!(lines[2].starts_with("{\"type\":\"summary\""));
    }

    #[test]
    fn write_errors_propagate() {
        let mut sink = Sink::new(view(Format::Json, false), Box::new(Broken), 0);
        let err = sink
            .alert(&sample_alert(), None, &Frames::default())
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::BrokenPipe)
        );
    }
}
