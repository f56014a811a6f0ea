//! One readable line per alert, for a terminal.

use std::fmt::Write as _;

use super::{Startup, UtcTime, unix_ns};
use crate::correlator::Alert;
use crate::event::Task;

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

/// `12:00:01.123456 PTE-IN-PUNCH-WINDOW dev 7:0 ino 131 /mnt/x/racer.dat pages
/// 16-31 by racer[1234/1240] | window #7 punch_hole pages 20-35 by
/// racer[1234/1236] open 38us | fentry | removed 3`, on one line.
pub fn alert(a: &Alert, path: Option<&str>, boot_to_realtime_ns: i64) -> String {
    let when = UtcTime::from_unix_ns(unix_ns(a.ts, boot_to_realtime_ns)).time_of_day_us();
    let mut s = String::with_capacity(200);
    let _ = write!(
        s,
        "{when} {} dev {}:{} ino {}",
        a.kind.as_str().to_ascii_uppercase().replace('_', "-"),
        a.file.major(),
        a.file.minor(),
        a.file.ino
    );
    if let Some(path) = path {
        let _ = write!(s, " {}", printable(path));
    }
    let w = &a.window;
    let _ = write!(
        s,
        " pages {} by {} | window #{} {} pages {} by {} open {}",
        a.pages,
        task(&a.task),
        w.id,
        w.op.as_str(),
        w.pages,
        task(&w.task),
        duration(w.open_for_ns)
    );
    if w.closed_ts.is_none() {
        s.push_str(" (never closed)");
    }
    let _ = write!(s, " | {}", a.fidelity.as_str());
    if a.map_fidelity != a.window_fidelity {
        let _ = write!(
            s,
            " (map_pages {}, window {})",
            a.map_fidelity.as_str(),
            a.window_fidelity.as_str()
        );
    }
    match a.folios_removed {
        Some(n) => {
            let _ = write!(s, " | removed {n}");
        }
        None => s.push_str(" | removed n/a"),
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
    use crate::sink::tests::sample_alert;
    use crate::sink::{StartupProbe, StartupRefusal};

    const OFFSET: i64 = 1_764_072_001_000_000_000 - 5_000_000_000;

    #[test]
    fn alert_line_reads_like_the_example() {
        let mut a = sample_alert();
        a.ts = 5_123_456_789;
        assert_eq!(
            alert(&a, Some("/mnt/x/racer.dat"), OFFSET),
            "12:00:01.123456 PTE-IN-PUNCH-WINDOW dev 7:0 ino 131 /mnt/x/racer.dat pages 16-31 \
             by racer[1234/1240] | window #7 punch_hole pages 20-35 by racer[1234/1236] open 38us \
             | fentry | removed 3"
        );
    }

    #[test]
    fn alert_line_without_path_with_mixed_fidelity_and_unknowns() {
        let mut a = sample_alert();
        a.fidelity = Fidelity::Tracepoint;
        a.window_fidelity = Fidelity::Tracepoint;
        a.window.pages = PageRange::new(20, PageRange::EOF);
        a.window.closed_ts = None;
        a.folios_removed = None;
        a.task.comm = "evil\nname".into();
        let line = alert(&a, None, OFFSET);
        assert!(
            line.contains("ino 131 pages 16-31 by evil\\x0aname[1234/1240]"),
            "{line}"
        );
        assert!(line.contains("pages 20-EOF"));
        assert!(line.contains("open 38us (never closed)"));
        assert!(line.ends_with("| tracepoint (map_pages fentry, window tracepoint) | removed n/a"));
        assert!(!line.contains('\n'));
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
        let st = Startup {
            kernel: "6.12.9".into(),
            probes: vec![
                StartupProbe {
                    function: "filemap_map_pages".into(),
                    method: Some("kprobe".into()),
                    refused: vec![StartupRefusal {
                        method: "fentry".into(),
                        reason: "no BTF".into(),
                    }],
                },
                StartupProbe {
                    function: "unmap_mapping_range".into(),
                    method: None,
                    refused: vec![],
                },
            ],
        };
        assert_eq!(
            startup(&st),
            "observer: kernel 6.12.9\n  filemap_map_pages: kprobe\n    fentry refused: no BTF\n  \
             unmap_mapping_range: NOT ATTACHED"
        );
    }
}
