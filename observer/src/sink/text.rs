//! One readable line per alert, for a terminal.

use std::fmt::Write as _;

use super::{Frames, Startup, UtcTime, unix_ns};
use crate::correlator::{Alert, AlertKind, Finding, JoinedReport, Severity, WindowInfo};
use crate::event::{PageRange, Task};

/// Task names and paths are user-controlled: control characters are shown as
/// `\xNN` so that one alert stays one line.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && u32::from(c) < 0x100 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// `comm[pid/tid]`
pub fn task(t: &Task) -> String {
    format!("{}[{}/{}]", printable(&t.comm), t.pid, t.tid)
}

/// Short human durations: `850ns`, `38us`, `2.500ms`, `1.250s`.
pub fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{}.{:03}ms", ns / 1_000_000, ns / 1_000 % 1_000),
        _ => format!("{}.{:03}s", ns / 1_000_000_000, ns / 1_000_000 % 1_000),
    }
}

fn pages(r: &PageRange) -> String {
    if r.start == r.end {
        format!("page {}", r.start)
    } else {
        format!("pages {r}")
    }
}

/// `12:00:01.123456 PTE-IN-PUNCH-WINDOW dev 7:0 ino 131 /mnt/x/racer.dat pages
/// 16-31 by racer[1234/1240] | window #7 punch_hole pages 20-35 by
/// racer[1234/1236] open 38us | fentry | removed 3`, on one line.
///
/// Critical alerts (`STALE-PTE`, `STALE-DATA`) end in `CRITICAL: <what it
/// means> (<detail>)`, followed by the stacks of both sides on indented lines
/// when stack ids were captured.
/// The window part of an alert line, and what the finding says about it.
fn window(s: &mut String, a: &Alert, w: &WindowInfo) {
    let _ = write!(
        s,
        " | window #{} {} pages {} by {} open {}",
        w.id,
        w.op.as_str(),
        w.pages,
        task(&w.task),
        duration(w.open_for_ns)
    );
    if let Finding::StaleData {
        truncate_exit_ts,
        fs_remove,
        fs_remove_exit_ts,
        invalidate_lock,
    } = a.finding
    {
        let since = |ts: u64| duration(ts.saturating_sub(w.opened_ts));
        if let Some(t) = truncate_exit_ts {
            let _ = write!(s, ", truncated +{}", since(t));
        }
        let _ = write!(
            s,
            ", {} done +{}, invalidate_lock {}",
            fs_remove.as_str(),
            since(fs_remove_exit_ts),
            invalidate_lock.as_str()
        );
    }
    if w.closed_ts.is_none() {
        s.push_str(" (never closed)");
    }
}

pub fn alert(a: &Alert, path: Option<&str>, boot_to_realtime_ns: i64, frames: &Frames) -> String {
    let when = UtcTime::from_unix_ns(unix_ns(a.ts, boot_to_realtime_ns)).time_of_day_us();
    let mut s = String::with_capacity(200);
    let _ = write!(
        s,
        "{when} {} dev {}:{} ino {}",
        a.kind().as_str().to_ascii_uppercase().replace('_', "-"),
        a.file.major(),
        a.file.minor(),
        a.file.ino
    );
    if let Some(path) = path {
        let _ = write!(s, " {}", printable(path));
    }
    let _ = write!(
        s,
        " {} by {}{}",
        pages(&a.pages),
        task(&a.task),
        if a.kind() == AlertKind::StaleData {
            " read from disk"
        } else {
            ""
        },
    );
    match &a.window {
        Some(w) => window(&mut s, a, w),
        None => {
            if let Finding::BeyondEof { i_size, pmd } = a.finding {
                let _ = write!(
                    s,
                    " | {} with i_size {i_size} (EOF at page {}), no size change under way",
                    if pmd { "pmd" } else { "ptes" },
                    observer_abi::eof_page(i_size)
                );
            }
        }
    }
    let _ = write!(s, " | {}", a.fidelity.as_str());
    if a.map_fidelity != a.window_fidelity {
        let side = if a.kind().is_critical() {
            "victim"
        } else {
            "map_pages"
        };
        let _ = write!(
            s,
            " ({side} {}, window {})",
            a.map_fidelity.as_str(),
            a.window_fidelity.as_str()
        );
    }
    if let Some(message) = a.kind().message() {
        let _ = write!(s, " | CRITICAL: {message}");
        if let Finding::StalePte { deleted_ts, pfn } = a.finding {
            let _ = write!(
                s,
                " (removed {} after the install, pfn {pfn:#x})",
                duration(deleted_ts.saturating_sub(a.ts))
            );
        }
        let ids = a.evidence.stack_ids;
        for (side, id, frames) in [
            ("victim", ids.victim, &frames.victim),
            ("punch", ids.punch, &frames.punch),
        ] {
            let Some(id) = id else { continue };
            match frames {
                Some(frames) => {
                    let _ = write!(s, "\n  {side} stack (id {id}):");
                    for f in frames {
                        let _ = write!(s, "\n    {}", printable(f));
                    }
                }
                None => {
                    let _ = write!(s, "\n  {side} stack (id {id}): not symbolized");
                }
            }
        }
        return s;
    }
    match a.folios_removed() {
        Some(n) => {
            let _ = write!(s, " | removed {n}");
        }
        None => s.push_str(" | removed n/a"),
    }
    if let Some(p) = a.ptes() {
        let _ = write!(
            s,
            " | ptes {}: rezapped {}, stale {}, still mapped {}, unknown {}",
            p.installed, p.rezapped, p.stale, p.still_mapped, p.unknown
        );
    }
    let _ = write!(s, " | {}", a.severity.as_str());
    s
}

/// A kernel report: a header line, the report's own lines indented, and
/// the windows it joined.
pub fn report(r: &JoinedReport, boot_to_realtime_ns: i64) -> String {
    let k = &r.report;
    let when = UtcTime::from_unix_ns(unix_ns(k.ts, boot_to_realtime_ns)).time_of_day_us();
    let mut s = format!(
        "{when} KERNEL-REPORT {} ({})",
        k.kind.as_str(),
        match r.severity {
            Severity::Critical => "CRITICAL",
            s => s.as_str(),
        }
    );
    if let Some(ino) = k.ino {
        let _ = write!(s, " ino {ino}");
    }
    if let Some(t) = &r.test {
        let _ = write!(s, " [{}]", printable(t));
    }
    let _ = write!(s, ", {} windows open on its file", r.windows.len());
    for l in &k.lines {
        let _ = write!(s, "\n  | {}", printable(l));
    }
    for (f, w) in &r.windows {
        let _ = write!(
            s,
            "\n  window #{} {} dev {}:{} ino {} pages {} by {}",
            w.id,
            w.op.as_str(),
            f.major(),
            f.minor(),
            f.ino,
            w.pages,
            task(&w.task)
        );
    }
    s
}

/// The attach ladder's outcome, one probe per line.
pub fn startup(st: &Startup) -> String {
    let mut s = format!("observer: kernel {}", printable(&st.kernel));
    for p in &st.probes {
        let _ = write!(
            s,
            "\n  {}: {}",
            p.function,
            p.method.as_deref().unwrap_or("NOT ATTACHED")
        );
        for r in &p.refused {
            let _ = write!(s, "\n    {} refused: {}", r.method, printable(&r.reason));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Fidelity, PageRange};
    use crate::sink::sample_startup;
    use crate::sink::tests::{
        sample_alert, sample_alert_with_ptes, sample_beyond_eof, sample_stale_data,
        sample_stale_pte,
    };

    const OFFSET: i64 = 1_764_072_001_000_000_000 - 5_000_000_000;

    #[test]
    fn alert_line_reads_like_the_example() {
        let mut a = sample_alert();
        a.ts = 5_123_456_789;
        assert_eq!(
            alert(&a, Some("/mnt/x/racer.dat"), OFFSET, &Frames::default()),
            "12:00:01.123456 PTE-IN-PUNCH-WINDOW dev 7:0 ino 131 /mnt/x/racer.dat pages 16-31 \
             by racer[1234/1240] | window #7 punch_hole pages 20-35 by racer[1234/1236] open 38us \
             | fentry | removed 3 | info"
        );
    }

    #[test]
    fn alert_line_without_path_with_mixed_fidelity_and_unknowns() {
        let mut a = sample_alert();
        a.fidelity = Fidelity::Tracepoint;
        a.window_fidelity = Fidelity::Tracepoint;
        a.win_mut().pages = PageRange::new(20, PageRange::EOF);
        a.win_mut().closed_ts = None;
        if let Finding::PteInPunchWindow { folios_removed, .. } = &mut a.finding {
            *folios_removed = None;
        }
        a.task.comm = "evil\nname".into();
        let line = alert(&a, None, OFFSET, &Frames::default());
        assert!(
            line.contains("ino 131 pages 16-31 by evil\\x0aname[1234/1240]"),
            "{line}"
        );
        assert!(line.contains("pages 20-EOF"));
        assert!(line.contains("open 38us (never closed)"));
        assert!(
            line.ends_with(
                "| tracepoint (map_pages fentry, window tracepoint) | removed n/a | info"
            )
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn alert_line_with_page_exact_counts() {
        let mut a = sample_alert_with_ptes();
        a.severity = Severity::Warning;
        let line = alert(&a, None, OFFSET, &Frames::default());
        assert!(
            line.ends_with(
                "| removed 3 | ptes 16: rezapped 13, stale 1, still mapped 2, unknown 0 | warning"
            ),
            "{line}"
        );
    }

    #[test]
    fn stale_pte_lines_with_stacks() {
        let frames = Frames {
            victim: Some(vec![
                "set_pte_range+0x0/0x1c0".into(),
                "filemap_map_pages+0x3a1/0x6c0".into(),
            ]),
            punch: None,
        };
        let text = alert(
            &sample_stale_pte(),
            Some("/mnt/x/racer.dat"),
            OFFSET,
            &frames,
        );
        assert_eq!(
            text,
            "12:00:01.000036 STALE-PTE dev 7:0 ino 131 /mnt/x/racer.dat page 21 by \
             racer[1234/1240] | window #7 punch_hole pages 20-35 by racer[1234/1236] open 36us \
             | fentry | CRITICAL: pte now points to a freed page (removed 9us after the install, \
             pfn 0x12345)\n\
             \x20 victim stack (id 4):\n\
             \x20   set_pte_range+0x0/0x1c0\n\
             \x20   filemap_map_pages+0x3a1/0x6c0\n\
             \x20 punch stack (id 9): not symbolized"
        );
    }

    #[test]
    fn stale_data_line() {
        let mut a = sample_stale_data();
        a.map_fidelity = Fidelity::Kprobe;
        a.fidelity = Fidelity::Kprobe;
        assert_eq!(
            alert(&a, None, OFFSET, &Frames::default()),
            "12:00:01.000060 STALE-DATA dev 7:0 ino 131 pages 24-27 by reader[1234/1240] read \
             from disk | window #7 punch_hole pages 20-35 by racer[1234/1236] open 50us, \
             truncated +30us, ext4_ext_remove_space done +80us, invalidate_lock not_exposed | kprobe (victim kprobe, window \
             fentry) | CRITICAL: the cache holds data from blocks the punch then freed\n\
             \x20 victim stack (id 11): not symbolized"
        );
    }

    #[test]
    fn beyond_eof_line() {
        assert_eq!(
            alert(&sample_beyond_eof(), None, OFFSET, &Frames::default()),
            "12:00:01.000070 BEYOND-EOF dev 7:0 ino 131 pages 0-511 by racer[1234/1240] | pmd \
             with i_size 40960 (EOF at page 10), no size change under way | fentry | CRITICAL: a \
             page at or past EOF is mapped: an access must SIGBUS\n\
             \x20 victim stack (id 12): not symbolized"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0ns");
        assert_eq!(duration(999), "999ns");
        assert_eq!(duration(38_000), "38us");
        assert_eq!(duration(2_500_000), "2.500ms");
        assert_eq!(duration(1_250_000_000), "1.250s");
    }

    #[test]
    fn startup_lines() {
        let st = sample_startup();
        assert_eq!(
            startup(&st),
            "observer: kernel 6.12.9\n  filemap_map_pages: kprobe\n    fentry refused: no BTF for \"vmlinux\"\n  \
             unmap_mapping_range: NOT ATTACHED"
        );
    }
}
