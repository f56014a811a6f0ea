//! The closing account of a run: what was seen, what was lost where, and
//! what can be concluded from it.

use std::fmt::Write as _;

use super::json::push_str;
use crate::correlator::Classes;

/// Events that never reached a verdict, by the stage that dropped them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// The kernel could not reserve ring-buffer space.
    pub ringbuf_full: u64,
    /// A kernel pointer chain (vma → file → inode …) could not be read.
    pub unresolved: u64,
    /// Arrived after the correlator had moved past them.
    pub late: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.ringbuf_full + self.unresolved + self.late
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub duration_s: f64,
    /// Events the agent received, per probe kind.
    pub events: Vec<(String, u64)>,
    /// Events the kernel programs emitted, per probe kind: compared with
    /// `events`, they show what went missing in between.
    pub kernel_emitted: Vec<(String, u64)>,
    pub lost: Lost,
    /// Fault-arounds the kernel pre-filter dropped because their file had no
    /// window: by design, not a loss.
    pub filtered: u64,
    pub windows: u64,
    /// Final-closed windows by operation, every op listed (zeros too).
    pub windows_by_op: Vec<(String, u64)>,
    pub alerts: u64,
    /// Alerts left after the user's filter.
    pub alerts_shown: u64,
    /// Class A (page-exact PTE outcomes) and class B (refills inside a
    /// punch) counts, from all events, filtered or not.
    pub classes: Classes,
}

/// What the run allows one to conclude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn explain(self) -> &'static str {
        match self {
            Verdict::Critical => {
                "a PTE outlived its folio, or the page cache kept data of freed blocks"
            }
            Verdict::RaceObserved => "fault-around installed PTEs inside invalidation windows",
            Verdict::NoRace => "no fault-around met an invalidation window",
            Verdict::Inconclusive => "no alert, but events were lost: a race may have gone unseen",
            Verdict::NoWindows => "no invalidation window was observed",
        }
    }
}

impl Summary {
    pub fn verdict(&self) -> Verdict {
        if self.classes.critical() > 0 {
            Verdict::Critical
        } else if self.alerts > 0 {
            Verdict::RaceObserved
        } else if self.lost.total() > 0 {
            Verdict::Inconclusive
        } else if self.windows == 0 {
            Verdict::NoWindows
        } else {
            Verdict::NoRace
        }
    }

    /// Several lines, aligned, without the final newline.
    pub fn to_text(&self) -> String {
        let counts = |list: &[(String, u64)]| {
            if list.is_empty() {
                return "none".to_string();
            }
            list.iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let verdict = self.verdict();
        let mut s = String::new();
        let _ = writeln!(s, "summary after {:.3} s", finite(self.duration_s));
        let _ = writeln!(s, "  events received  {}", counts(&self.events));
        let _ = writeln!(s, "  kernel emitted   {}", counts(&self.kernel_emitted));
        let _ = writeln!(
            s,
            "  lost             ringbuf_full {}, unresolved {}, late {}",
            self.lost.ringbuf_full, self.lost.unresolved, self.lost.late
        );
        let _ = writeln!(
            s,
            "  filtered         {} (kernel pre-filter, not a loss)",
            self.filtered
        );
        let ops: Vec<String> = self
            .windows_by_op
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        if ops.is_empty() {
            let _ = writeln!(s, "  windows          {}", self.windows);
        } else {
            let _ = writeln!(
                s,
                "  windows          {} ({})",
                self.windows,
                ops.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "  alerts           {} ({} shown)",
            self.alerts, self.alerts_shown
        );
        let (a, b) = (&self.classes.a, &self.classes.b);
        let _ = writeln!(
            s,
            "  class a (ptes)   in window {}: rezapped {}, stale_pte {}, \
             still_mapped_after_window {}, unknown {}; still mapped unattributed {}",
            a.ptes_in_window,
            a.rezapped,
            a.stale_pte,
            a.still_mapped_after_window,
            a.unknown,
            a.still_mapped_unattributed
        );
        let _ = writeln!(
            s,
            "  class b (refill) windows {} (unbounded {}): refills {}, survived {}, stale_data {}",
            b.windows, b.unbounded, b.refills, b.survived, b.stale_data
        );
        let _ = writeln!(
            s,
            "  invalidate_lock  removals under it {}, without it {}; refills under it {}",
            b.removals_under_lock, b.removals_without_lock, b.refills_under_lock
        );
        let _ = write!(
            s,
            "  verdict          {}: {}",
            verdict.as_str(),
            verdict.explain()
        );
        s
    }

    /// `{"type":"summary",...}` on one line.
    pub fn to_json(&self) -> String {
        let counts = |s: &mut String, list: &[(String, u64)]| {
            s.push('{');
            for (i, (name, n)) in list.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                push_str(s, name);
                let _ = write!(s, ":{n}");
            }
            s.push('}');
        };
        let mut s = String::with_capacity(400);
        let _ = write!(
            s,
            "{{\"type\":\"summary\",\"duration_s\":{:.3},\"events\":",
            finite(self.duration_s)
        );
        counts(&mut s, &self.events);
        s.push_str(",\"kernel_emitted\":");
        counts(&mut s, &self.kernel_emitted);
        let _ = write!(
            s,
            ",\"lost\":{{\"ringbuf_full\":{},\"unresolved\":{},\"late\":{}}}\
             ,\"filtered\":{},\"windows\":{},\"windows_by_op\":",
            self.lost.ringbuf_full,
            self.lost.unresolved,
            self.lost.late,
            self.filtered,
            self.windows,
        );
        counts(&mut s, &self.windows_by_op);
        let (a, b) = (&self.classes.a, &self.classes.b);
        let _ = write!(
            s,
            ",\"alerts\":{},\"alerts_shown\":{}\
             ,\"classes\":{{\"a\":{{\"ptes_in_window\":{},\"rezapped\":{},\"stale_pte\":{}\
             ,\"still_mapped_after_window\":{},\"unknown\":{},\"still_mapped_unattributed\":{}}}\
             ,\"b\":{{\"windows\":{},\"unbounded\":{},\"refills\":{},\"survived\":{}\
             ,\"stale_data\":{},\"removals_under_lock\":{},\"removals_without_lock\":{}\
             ,\"refills_under_lock\":{}}}}},\"verdict\":\"{}\"}}",
            self.alerts,
            self.alerts_shown,
            a.ptes_in_window,
            a.rezapped,
            a.stale_pte,
            a.still_mapped_after_window,
            a.unknown,
            a.still_mapped_unattributed,
            b.windows,
            b.unbounded,
            b.refills,
            b.survived,
            b.stale_data,
            b.removals_under_lock,
            b.removals_without_lock,
            b.refills_under_lock,
            self.verdict().as_str()
        );
        s
    }
}

/// NaN or infinity would make invalid JSON; a clock mishap is not worth it.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlator::{ClassA, ClassB};

    fn sample() -> Summary {
        Summary {
            duration_s: 12.3456,
            events: vec![("map_pages".into(), 120), ("unmap_enter".into(), 4)],
            kernel_emitted: vec![("map_pages".into(), 121), ("unmap_enter".into(), 4)],
            lost: Lost {
                ringbuf_full: 1,
                unresolved: 0,
                late: 2,
            },
            filtered: 900,
            windows: 4,
            windows_by_op: vec![("punch_hole".into(), 3), ("ftruncate".into(), 1)],
            alerts: 3,
            alerts_shown: 2,
            classes: Classes {
                a: ClassA {
                    ptes_in_window: 40,
                    rezapped: 30,
                    stale_pte: 0,
                    still_mapped_after_window: 8,
                    unknown: 2,
                    still_mapped_unattributed: 0,
                },
                b: ClassB {
                    windows: 4,
                    unbounded: 1,
                    refills: 2,
                    survived: 1,
                    stale_data: 0,
                    removals_under_lock: 3,
                    removals_without_lock: 0,
                    refills_under_lock: 0,
                },
            },
        }
    }

    #[test]
    fn json_summary() {
        assert_eq!(
            sample().to_json(),
            concat!(
                r#"{"type":"summary","duration_s":12.346,"#,
                r#""events":{"map_pages":120,"unmap_enter":4},"#,
                r#""kernel_emitted":{"map_pages":121,"unmap_enter":4},"#,
                r#""lost":{"ringbuf_full":1,"unresolved":0,"late":2},"#,
                r#""filtered":900,"windows":4,"windows_by_op":{"punch_hole":3,"ftruncate":1},"#,
                r#""alerts":3,"alerts_shown":2,"classes":{"a":{"ptes_in_window":40,"rezapped":30,"#,
                r#""stale_pte":0,"still_mapped_after_window":8,"unknown":2,"still_mapped_unattributed":0},"#,
                r#""b":{"windows":4,"unbounded":1,"refills":2,"survived":1,"stale_data":0,"removals_under_lock":3,"removals_without_lock":0,"refills_under_lock":0}},"#,
                r#""verdict":"race_observed"}"#
            )
        );
        let empty = Summary {
            duration_s: f64::NAN,
            ..Summary::default()
        };
        assert_eq!(
            empty.to_json(),
            concat!(
                r#"{"type":"summary","duration_s":0.000,"events":{},"kernel_emitted":{},"#,
                r#""lost":{"ringbuf_full":0,"unresolved":0,"late":0},"#,
                r#""filtered":0,"windows":0,"windows_by_op":{},"alerts":0,"alerts_shown":0,"#,
                r#""classes":{"a":{"ptes_in_window":0,"rezapped":0,"stale_pte":0,"#,
                r#""still_mapped_after_window":0,"unknown":0,"still_mapped_unattributed":0},"#,
                r#""b":{"windows":0,"unbounded":0,"refills":0,"survived":0,"stale_data":0,"removals_under_lock":0,"removals_without_lock":0,"refills_under_lock":0}},"#,
                r#""verdict":"no_windows"}"#
            )
        );
    }

    #[test]
    fn text_summary() {
        assert_eq!(
            sample().to_text(),
            "summary after 12.346 s\n\
             \x20 events received  map_pages 120, unmap_enter 4\n\
             \x20 kernel emitted   map_pages 121, unmap_enter 4\n\
             \x20 lost             ringbuf_full 1, unresolved 0, late 2\n\
             \x20 filtered         900 (kernel pre-filter, not a loss)\n\
             \x20 windows          4 (punch_hole 3, ftruncate 1)\n\
             \x20 alerts           3 (2 shown)\n\
             \x20 class a (ptes)   in window 40: rezapped 30, stale_pte 0, \
             still_mapped_after_window 8, unknown 2; still mapped unattributed 0\n\
             \x20 class b (refill) windows 4 (unbounded 1): refills 2, survived 1, stale_data 0\n\
             \x20 invalidate_lock  removals under it 3, without it 0; refills under it 0\n\
             \x20 verdict          race_observed: fault-around installed PTEs inside invalidation windows"
        );
    }

    #[test]
    fn verdicts() {
        let mut s = sample();
        assert_eq!(s.verdict(), Verdict::RaceObserved);
        s.classes.b.stale_data = 1;
        assert_eq!(s.verdict(), Verdict::Critical);
        assert!(s.to_text().ends_with(
            "verdict          critical: a PTE outlived its folio, or the page cache kept data of freed blocks"
        ));
        assert!(s.to_json().ends_with(r#""verdict":"critical"}"#));
        s.classes.b.stale_data = 0;
        s.classes.a.stale_pte = 2;
        assert_eq!(s.verdict(), Verdict::Critical);
        s.classes.a.stale_pte = 0;
        assert_eq!(s.verdict(), Verdict::RaceObserved);
        s.alerts = 0;
        assert_eq!(s.verdict(), Verdict::Inconclusive);
        s.lost = Lost::default();
        assert_eq!(s.verdict(), Verdict::NoRace);
        s.windows = 0;
        assert_eq!(s.verdict(), Verdict::NoWindows);
    }
}
