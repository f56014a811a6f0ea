//! The closing account of a run, for people: the summary record
//! (observer-report) as aligned lines.

use std::fmt::Write as _;

use observer_abi::probes::Prog;
use observer_report::{Counts, Summary};

/// `name n, name n` of the non-zero counts, or "none".
fn nonzero(counts: &Counts) -> String {
    let list: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The summary as several aligned lines, without the final newline.
pub fn text(sum: &Summary) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "summary after {:.3} s",
        observer_report::round_ms(sum.duration_s)
    );
    let _ = writeln!(s, "  events received  {}", nonzero(&sum.events));
    let _ = writeln!(s, "  kernel emitted   {}", nonzero(&sum.kernel_emitted));
    let l = &sum.lost;
    let _ = writeln!(
        s,
        "  lost             ringbuf_full {}, unresolved {}, late {}, undecodable {}, no_entry {}",
        l.ringbuf_full, l.unresolved, l.late, l.undecodable, l.no_entry
    );
    let _ = writeln!(
        s,
        "  filtered         {} without a window, {} outside its pages, {} installs below EOF without a window (kernel pre-filter, not a loss)",
        sum.filtered, sum.filtered_outside_range, sum.pte_installs_filtered
    );
    if sum.windows_by_op.total() == 0 {
        let _ = writeln!(s, "  windows          {}", sum.windows);
    } else {
        let _ = writeln!(
            s,
            "  windows          {} ({})",
            sum.windows,
            nonzero(&sum.windows_by_op)
        );
    }
    if sum.failed_calls.total() > 0 {
        let _ = writeln!(
            s,
            "  failed calls     {} (removed nothing: not windows)",
            nonzero(&sum.failed_calls)
        );
    }
    let v = &sum.alerts_by_severity;
    let _ = writeln!(
        s,
        "  alerts           {} ({} shown): info {}, warning {}, critical {}",
        sum.alerts, sum.alerts_shown, v.info, v.warning, v.critical
    );
    if sum.kernel_reports > 0 {
        let _ = writeln!(
            s,
            "  kernel reports   {} (the kernel's own, from its log)",
            sum.kernel_reports
        );
    }
    for t in &sum.tests {
        let _ = writeln!(
            s,
            "  test {:<16} windows {}; alerts info {}, warning {}, critical {}; kernel reports {}",
            t.test,
            nonzero(&t.windows_by_op),
            t.alerts.info,
            t.alerts.warning,
            t.alerts.critical,
            t.kernel_reports
        );
    }
    let (a, b) = (&sum.classes.a, &sum.classes.b);
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
        "  class b (refill) windows {} (unbounded {}): refills {}, survived {}, stale_data {}, exempt {}",
        b.windows, b.unbounded, b.refills, b.survived, b.stale_data, b.exempt
    );
    let c = &sum.classes.c;
    let _ = writeln!(
        s,
        "  class c (eof)    installs past EOF {} (pmd {}): during a size change {}, shmem {}, beyond_eof {}",
        c.installs_past_eof, c.pmd, c.during_size_change, c.shmem, c.beyond_eof
    );
    // The add probes emit only while the file has a window open, so a
    // `folio_add 0` above cannot tell a silent probe from adds that all
    // land between windows (on xfs and ext4 the readers wait on
    // invalidate_lock, which the punch holds): the probes' runs can.
    let add_runs: u64 = [
        Prog::FolioAddRawTp,
        Prog::ShmemAddFentry,
        Prog::ShmemAddKprobe,
    ]
    .iter()
    .map(|p| sum.health.hits.get(p.name()))
    .sum();
    let _ = writeln!(
        s,
        "  page-cache adds  {add_runs} seen by the add probes, {} inside a window",
        sum.events.get("folio_add")
    );
    let _ = writeln!(
        s,
        "  removals         {} folios of windowed files, in {} records (runs of contiguous folios)",
        sum.folios_removed,
        sum.events.get("folio_delete")
    );
    let _ = writeln!(
        s,
        "  invalidate_lock  removals under it {}, without it {}; refills under it {}",
        b.removals_under_lock, b.removals_without_lock, b.refills_under_lock
    );
    if sum.health.silent.is_empty() {
        let _ = writeln!(
            s,
            "  health           every attached probe fired or had no reason to"
        );
    } else {
        let names: Vec<&str> = sum
            .health
            .silent
            .iter()
            .map(|x| x.program.as_str())
            .collect();
        let _ = writeln!(s, "  health           SILENT: {}", names.join(", "));
    }
    let _ = writeln!(
        s,
        "  agent            peak rss {} KiB, cpu {:.2} s, {} wakeups",
        sum.agent.peak_rss_kib, sum.agent.cpu_s, sum.agent.wakeups
    );
    let _ = write!(
        s,
        "  verdict          {}: {}",
        sum.verdict.as_str(),
        sum.verdict.explain()
    );
    s
}

#[cfg(test)]
mod tests {
    use observer_report::{
        AgentUsage, BySeverity, ClassA, ClassB, ClassC, Classes, Health, Lost, Silence, TestRow,
        Verdict,
    };

    use super::*;

    pub(crate) fn sample() -> Summary {
        let classes = Classes {
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
                exempt: 0,
                removals_under_lock: 3,
                removals_without_lock: 0,
                refills_under_lock: 0,
            },
            c: ClassC {
                installs_past_eof: 3,
                pmd: 1,
                during_size_change: 2,
                shmem: 1,
                beyond_eof: 0,
            },
        };
        let lost = Lost {
            ringbuf_full: 1,
            unresolved: 0,
            late: 2,
            undecodable: 0,
            no_entry: 0,
        };
        Summary {
            duration_s: 12.3456,
            events: [("map_pages", 120), ("unmap_enter", 4), ("folio_add", 7)]
                .into_iter()
                .collect(),
            kernel_emitted: [("map_pages", 121), ("unmap_enter", 4), ("folio_add", 7)]
                .into_iter()
                .collect(),
            kernel_dropped: [("map_pages", 1)].into_iter().collect(),
            lost,
            filtered: 900,
            filtered_outside_range: 0,
            pte_installs_filtered: 0,
            folios_removed: 9,
            windows: 4,
            windows_by_op: [("punch_hole", 3), ("collapse_range", 0), ("ftruncate", 1)]
                .into_iter()
                .collect(),
            failed_calls: [("collapse_range", 7)].into_iter().collect(),
            alerts: 3,
            alerts_shown: 2,
            alerts_by_severity: BySeverity {
                info: 3,
                warning: 0,
                critical: 0,
            },
            alerts_by_kind: [(
                "pte_in_punch_window".to_owned(),
                BySeverity {
                    info: 3,
                    warning: 0,
                    critical: 0,
                },
            )]
            .into_iter()
            .collect(),
            kernel_reports: 0,
            tests: vec![TestRow {
                test: "generic/127".into(),
                windows_by_op: [("punch_hole", 3)].into_iter().collect(),
                alerts: BySeverity {
                    info: 3,
                    ..BySeverity::default()
                },
                kernel_reports: 0,
            }],
            classes,
            health: Health {
                hits: [("folio_add_raw_tp", 2241), ("folio_delete_raw_tp", 2054)]
                    .into_iter()
                    .collect(),
                ..Health::default()
            },
            agent: AgentUsage {
                peak_rss_kib: 20480,
                cpu_s: 0.25,
                wakeups: 7,
            },
            verdict: Verdict::of(&classes, 3, &lost, 4),
        }
    }

    #[test]
    fn text_summary() {
        assert_eq!(
            text(&sample()),
            "summary after 12.346 s\n\
             \x20 events received  map_pages 120, unmap_enter 4, folio_add 7\n\
             \x20 kernel emitted   map_pages 121, unmap_enter 4, folio_add 7\n\
             \x20 lost             ringbuf_full 1, unresolved 0, late 2, undecodable 0, no_entry 0\n\
             \x20 filtered         900 without a window, 0 outside its pages, 0 installs below EOF without a window (kernel pre-filter, not a loss)\n\
             \x20 windows          4 (punch_hole 3, ftruncate 1)\n\
             \x20 failed calls     collapse_range 7 (removed nothing: not windows)\n\
             \x20 alerts           3 (2 shown): info 3, warning 0, critical 0\n\
             \x20 test generic/127      windows punch_hole 3; alerts info 3, warning 0, critical 0; kernel reports 0\n\
             \x20 class a (ptes)   in window 40: rezapped 30, stale_pte 0, \
             still_mapped_after_window 8, unknown 2; still mapped unattributed 0\n\
             \x20 class b (refill) windows 4 (unbounded 1): refills 2, survived 1, stale_data 0, exempt 0\n\
             \x20 class c (eof)    installs past EOF 3 (pmd 1): during a size change 2, shmem 1, beyond_eof 0\n\
             \x20 page-cache adds  2241 seen by the add probes, 7 inside a window\n\
             \x20 removals         9 folios of windowed files, in 0 records (runs of contiguous folios)\n\
             \x20 invalidate_lock  removals under it 3, without it 0; refills under it 0\n\
             \x20 health           every attached probe fired or had no reason to\n\
             \x20 agent            peak rss 20480 KiB, cpu 0.25 s, 7 wakeups\n\
             \x20 verdict          race_observed: fault-around installed PTEs inside invalidation windows"
        );
    }

    #[test]
    fn silent_probes_are_named() {
        let mut s = sample();
        s.health.silent.push(Silence {
            program: "folio_add_raw_tp".into(),
            partner: "folio_delete_raw_tp".into(),
            partner_hits: 2739,
            because: "a page cache that loses folios gains them too".into(),
        });
        assert!(
            text(&s).contains("  health           SILENT: folio_add_raw_tp\n"),
            "{}",
            text(&s)
        );
    }

    #[test]
    fn json_keeps_the_documented_field_names() {
        let line = sample().to_json();
        for key in [
            r#"{"type":"summary","duration_s":12.3456,"#,
            r#""lost":{"ringbuf_full":1,"unresolved":0,"late":2,"undecodable":0,"no_entry":0}"#,
            r#""windows_by_op":{"punch_hole":3,"collapse_range":0,"ftruncate":1}"#,
            r#""failed_calls":{"collapse_range":7}"#,
            r#""classes":{"a":{"ptes_in_window":40,"rezapped":30,"stale_pte":0,"#,
            r#""health":{"hits":{"folio_add_raw_tp":2241,"folio_delete_raw_tp":2054},"silent":[]}"#,
            r#""verdict":"race_observed"}"#,
        ] {
            assert!(line.contains(key), "{key} not in {line}");
        }
    }
}
