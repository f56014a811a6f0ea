//! Alerts as JSON lines, written by hand: one allocation per alert on the
//! hot output path, and a string escaper that keeps control characters as
//! `\u00XX`. The startup and summary records are serde types
//! (observer-report).

use std::fmt::Write as _;

use super::{Frames, UtcTime, unix_ns};
use crate::correlator::{Alert, AlertKind, Finding, JoinedReport, PteCounts, WindowInfo};
use crate::event::{PageRange, Task};

/// Appends `s` as a JSON string literal. Control characters become `\u00XX`
/// so that a hostile comm or path can neither break the line nor the quoting.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_str(&mut out, s);
    out
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

fn push_opt_u64(out: &mut String, n: Option<u64>) {
    match n {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// `{"start":N,"end":N}`, the end being `"EOF"` for "to the end of file".
pub fn push_pages(out: &mut String, pages: &PageRange) {
    let _ = write!(out, "{{\"start\":{},\"end\":", pages.start);
    if pages.end == PageRange::EOF {
        out.push_str("\"EOF\"");
    } else {
        let _ = write!(out, "{}", pages.end);
    }
    out.push('}');
}

/// A window's fields that alerts and kernel reports both carry: `"op"`
/// through `"closed_ns"`.
fn push_window_fields(s: &mut String, w: &WindowInfo) {
    s.push_str("\"op\":");
    push_str(s, w.op.as_str());
    s.push_str(",\"pages\":");
    push_pages(s, &w.pages);
    s.push_str(",\"task\":");
    push_task(s, &w.task);
    let _ = write!(s, ",\"opened_ns\":{},\"closed_ns\":", w.opened_ts);
    push_opt_u64(s, w.closed_ts);
}

pub fn push_task(out: &mut String, task: &Task) {
    let _ = write!(out, "{{\"pid\":{},\"tid\":{},\"comm\":", task.pid, task.tid);
    push_str(out, &task.comm);
    out.push('}');
}

fn push_opt_u32(out: &mut String, n: Option<u32>) {
    push_opt_u64(out, n.map(u64::from));
}

fn push_frames(out: &mut String, frames: Option<&[String]>) {
    let Some(frames) = frames else {
        out.push_str("null");
        return;
    };
    out.push('[');
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, f);
    }
    out.push(']');
}

fn push_ptes(out: &mut String, ptes: Option<&PteCounts>) {
    let Some(p) = ptes else {
        out.push_str("null");
        return;
    };
    let _ = write!(
        out,
        "{{\"installed\":{},\"rezapped\":{},\"stale\":{},\"still_mapped\":{},\"unknown\":{}}}",
        p.installed, p.rezapped, p.stale, p.still_mapped, p.unknown
    );
}

/// One alert as a JSON object, without the newline. `pte_in_punch_window`
/// alerts have `map_pages` and `outcome`; the critical kinds have
/// `severity`, `message`, `pte` or `refill`, and `evidence` instead.
pub fn alert(a: &Alert, path: Option<&str>, boot_to_realtime_ns: i64, frames: &Frames) -> String {
    let mut s = String::with_capacity(640);
    s.push_str("{\"type\":\"alert\",\"kind\":");
    push_str(&mut s, a.kind().as_str());
    let _ = write!(s, ",\"severity\":\"{}\"", a.severity.as_str());
    if let Some(message) = a.kind().message() {
        s.push_str(",\"message\":");
        push_str(&mut s, message);
    }
    s.push_str(",\"test\":");
    push_opt_str(&mut s, a.window.as_ref().and_then(|w| w.test.as_deref()));
    s.push_str(",\"time\":");
    push_str(
        &mut s,
        &UtcTime::from_unix_ns(unix_ns(a.ts, boot_to_realtime_ns)).rfc3339(),
    );
    let _ = write!(
        s,
        ",\"ts_ns\":{},\"dev\":\"{}:{}\",\"ino\":{},\"path\":",
        a.ts,
        a.file.major(),
        a.file.minor(),
        a.file.ino
    );
    push_opt_str(&mut s, path);
    s.push_str(",\"task\":");
    push_task(&mut s, &a.task);
    s.push_str(",\"pages\":");
    push_pages(&mut s, &a.pages);
    if let Finding::PteInPunchWindow { map_entry_ts, .. } = a.finding {
        let _ = write!(
            s,
            ",\"map_pages\":{{\"entry_ns\":{map_entry_ts},\"exit_ns\":{}}}",
            a.ts
        );
    }
    match &a.window {
        Some(w) => {
            let _ = write!(s, ",\"window\":{{\"id\":{},", w.id);
            push_window_fields(&mut s, w);
            let _ = write!(s, ",\"open_for_ns\":{}}}", w.open_for_ns);
        }
        None => s.push_str(",\"window\":null"),
    }
    let victim_fidelity = match a.kind() {
        AlertKind::PteInPunchWindow => "map_pages_fidelity",
        AlertKind::StalePte | AlertKind::StaleData | AlertKind::BeyondEof => "victim_fidelity",
    };
    let _ = write!(
        s,
        ",\"fidelity\":\"{}\",\"{victim_fidelity}\":\"{}\",\"window_fidelity\":\"{}\"",
        a.fidelity.as_str(),
        a.map_fidelity.as_str(),
        a.window_fidelity.as_str()
    );
    match a.finding {
        Finding::PteInPunchWindow {
            folios_removed,
            ptes,
            ..
        } => {
            s.push_str(",\"outcome\":{\"folios_removed\":");
            push_opt_u64(&mut s, folios_removed);
            s.push_str(",\"ptes\":");
            push_ptes(&mut s, ptes.as_ref());
            s.push_str("}}");
            return s;
        }
        Finding::StalePte { deleted_ts, pfn } => {
            let _ = write!(
                s,
                ",\"pte\":{{\"installed_ns\":{},\"deleted_ns\":{deleted_ts},\"pfn\":{pfn}}}",
                a.ts
            );
        }
        Finding::StaleData {
            truncate_exit_ts,
            fs_remove,
            fs_remove_exit_ts,
            invalidate_lock,
        } => {
            let _ = write!(
                s,
                ",\"refill\":{{\"added_ns\":{},\"uptodate\":false,\"truncate_exit_ns\":",
                a.ts
            );
            push_opt_u64(&mut s, truncate_exit_ts);
            s.push_str(",\"fs_remove\":");
            push_str(&mut s, fs_remove.as_str());
            let _ = write!(
                s,
                ",\"fs_remove_exit_ns\":{fs_remove_exit_ts},\"invalidate_lock\":\"{}\"}}",
                invalidate_lock.as_str()
            );
        }
        Finding::BeyondEof { i_size, pmd } => {
            let _ = write!(
                s,
                ",\"eof\":{{\"installed_ns\":{},\"i_size\":{i_size},\"eof_page\":{},\"pmd\":{pmd}}}",
                a.ts,
                observer_abi::eof_page(i_size)
            );
        }
    }
    let ids = a.evidence.stack_ids;
    s.push_str(",\"evidence\":{\"stack_ids\":{\"victim\":");
    push_opt_u32(&mut s, ids.victim);
    s.push_str(",\"punch\":");
    push_opt_u32(&mut s, ids.punch);
    s.push_str("},\"victim_stack\":");
    push_frames(&mut s, frames.victim.as_deref());
    s.push_str(",\"punch_stack\":");
    push_frames(&mut s, frames.punch.as_deref());
    s.push_str("}}");
    s
}

/// `{"type":"kernel_report",...}`: the report's lines as the kernel printed
/// them, what it is, the test running, and the windows it joined.
pub fn report(r: &JoinedReport, boot_to_realtime_ns: i64) -> String {
    let k = &r.report;
    let mut s = String::with_capacity(512);
    s.push_str("{\"type\":\"kernel_report\",\"kind\":");
    push_str(&mut s, k.kind.as_str());
    let _ = write!(s, ",\"severity\":\"{}\",\"time\":", r.severity.as_str());
    push_str(
        &mut s,
        &UtcTime::from_unix_ns(unix_ns(k.ts, boot_to_realtime_ns)).rfc3339(),
    );
    let _ = write!(s, ",\"ts_ns\":{},\"ino\":", k.ts);
    push_opt_u64(&mut s, k.ino);
    s.push_str(",\"test\":");
    push_opt_str(&mut s, r.test.as_deref());
    s.push_str(",\"lines\":");
    push_frames(&mut s, Some(&k.lines));
    s.push_str(",\"windows\":[");
    for (i, (file, w)) in r.windows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"dev\":\"{}:{}\",\"ino\":{},\"id\":{},",
            file.major(),
            file.minor(),
            file.ino,
            w.id
        );
        push_window_fields(&mut s, w);
        s.push('}');
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::{
        sample_alert, sample_alert_with_ptes, sample_beyond_eof, sample_stale_data,
        sample_stale_pte,
    };
    use crate::sink::{Startup, sample_startup};

    #[test]
    fn escapes_quotes_backslashes_and_control_characters() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\r\t"), r#""l1\u000al2\u000d\u0009""#);
        assert_eq!(string("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        // Non-ASCII passes through as UTF-8.
        assert_eq!(string("fiché/ü"), "\"fiché/ü\"");
        assert_eq!(string(""), r#""""#);
    }

    #[test]
    fn alert_renders_every_field() {
        let offset = 1_764_072_001_000_000_000 - 5_000_000_000;
        let line = alert(
            &sample_alert(),
            Some("/mnt/x/racer.dat"),
            offset,
            &Frames::default(),
        );
        assert_eq!(
            line,
            concat!(
                r#"{"type":"alert","kind":"pte_in_punch_window","severity":"info","test":null,"time":"2025-11-25T12:00:01.000038000Z","#,
                r#""ts_ns":5000038000,"dev":"7:0","ino":131,"path":"/mnt/x/racer.dat","#,
                r#""task":{"pid":1234,"tid":1240,"comm":"racer"},"pages":{"start":16,"end":31},"#,
                r#""map_pages":{"entry_ns":5000030000,"exit_ns":5000038000},"#,
                r#""window":{"id":7,"op":"punch_hole","pages":{"start":20,"end":35},"#,
                r#""task":{"pid":1234,"tid":1236,"comm":"racer"},"opened_ns":5000000000,"#,
                r#""closed_ns":5000050000,"open_for_ns":38000},"#,
                r#""fidelity":"fentry","map_pages_fidelity":"fentry","window_fidelity":"fentry","#,
                r#""outcome":{"folios_removed":3,"ptes":null}}"#
            )
        );
        let a = sample_alert_with_ptes();
        assert!(alert(&a, None, 0, &Frames::default()).ends_with(concat!(
            r#""outcome":{"folios_removed":3,"ptes":{"installed":16,"rezapped":13,"#,
            r#""stale":1,"still_mapped":2,"unknown":0}}}"#
        )));
    }

    #[test]
    fn stale_pte_renders_every_field() {
        let offset = 1_764_072_001_000_000_000 - 5_000_000_000;
        let frames = Frames {
            victim: Some(vec!["set_pte_range+0x0/0x1c0".into(), "x\"y".into()]),
            punch: None,
        };
        let line = alert(
            &sample_stale_pte(),
            Some("/mnt/x/racer.dat"),
            offset,
            &frames,
        );
        assert_eq!(
            line,
            concat!(
                r#"{"type":"alert","kind":"stale_pte","severity":"critical","#,
                r#""message":"pte now points to a freed page","test":null,"#,
                r#""time":"2025-11-25T12:00:01.000036000Z","#,
                r#""ts_ns":5000036000,"dev":"7:0","ino":131,"path":"/mnt/x/racer.dat","#,
                r#""task":{"pid":1234,"tid":1240,"comm":"racer"},"pages":{"start":21,"end":21},"#,
                r#""window":{"id":7,"op":"punch_hole","pages":{"start":20,"end":35},"#,
                r#""task":{"pid":1234,"tid":1236,"comm":"racer"},"opened_ns":5000000000,"#,
                r#""closed_ns":5000050000,"open_for_ns":36000},"#,
                r#""fidelity":"fentry","victim_fidelity":"fentry","window_fidelity":"fentry","#,
                r#""pte":{"installed_ns":5000036000,"deleted_ns":5000045000,"pfn":74565},"#,
                r#""evidence":{"stack_ids":{"victim":4,"punch":9},"#,
                r#""victim_stack":["set_pte_range+0x0/0x1c0","x\"y"],"punch_stack":null}}"#
            )
        );
    }

    #[test]
    fn stale_data_renders_every_field() {
        let line = alert(&sample_stale_data(), None, 0, &Frames::default());
        assert_eq!(
            line,
            concat!(
                r#"{"type":"alert","kind":"stale_data","severity":"critical","#,
                r#""message":"the cache holds data from blocks the punch then freed","test":null,"#,
                r#""time":"1970-01-01T00:00:05.000060000Z","#,
                r#""ts_ns":5000060000,"dev":"7:0","ino":131,"path":null,"#,
                r#""task":{"pid":1234,"tid":1240,"comm":"reader"},"pages":{"start":24,"end":27},"#,
                r#""window":{"id":7,"op":"punch_hole","pages":{"start":20,"end":35},"#,
                r#""task":{"pid":1234,"tid":1236,"comm":"racer"},"opened_ns":5000010000,"#,
                r#""closed_ns":5000090000,"open_for_ns":50000},"#,
                r#""fidelity":"fentry","victim_fidelity":"fentry","window_fidelity":"fentry","#,
                r#""refill":{"added_ns":5000060000,"uptodate":false,"truncate_exit_ns":5000040000,"#,
                r#""fs_remove":"ext4_ext_remove_space","fs_remove_exit_ns":5000090000,"invalidate_lock":"not_exposed"},"#,
                r#""evidence":{"stack_ids":{"victim":11,"punch":null},"#,
                r#""victim_stack":null,"punch_stack":null}}"#
            )
        );
    }

    #[test]
    fn beyond_eof_renders_every_field() {
        let line = alert(&sample_beyond_eof(), None, 0, &Frames::default());
        assert_eq!(
            line,
            concat!(
                r#"{"type":"alert","kind":"beyond_eof","severity":"critical","#,
                r#""message":"a page at or past EOF is mapped: an access must SIGBUS","test":null,"#,
                r#""time":"1970-01-01T00:00:05.000070000Z","#,
                r#""ts_ns":5000070000,"dev":"7:0","ino":131,"path":null,"#,
                r#""task":{"pid":1234,"tid":1240,"comm":"racer"},"pages":{"start":0,"end":511},"#,
                r#""window":null,"#,
                r#""fidelity":"fentry","victim_fidelity":"fentry","window_fidelity":"fentry","#,
                r#""eof":{"installed_ns":5000070000,"i_size":40960,"eof_page":10,"pmd":true},"#,
                r#""evidence":{"stack_ids":{"victim":12,"punch":null},"#,
                r#""victim_stack":null,"punch_stack":null}}"#
            )
        );
    }

    #[test]
    fn alert_nulls_eof_and_hostile_strings() {
        let mut a = sample_alert();
        a.win_mut().pages = PageRange::new(20, PageRange::EOF);
        a.win_mut().closed_ts = None;
        if let Finding::PteInPunchWindow { folios_removed, .. } = &mut a.finding {
            *folios_removed = None;
        }
        a.task.comm = "a\"b\n".into();
        let line = alert(&a, None, 0, &Frames::default());
        assert!(line.contains(r#""path":null"#));
        assert!(line.contains(r#""pages":{"start":20,"end":"EOF"}"#));
        assert!(line.contains(r#""closed_ns":null"#));
        assert!(line.contains(r#""outcome":{"folios_removed":null,"ptes":null}"#));
        assert!(line.contains(r#""comm":"a\"b\u000a""#));
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""time":"1970-01-01T00:00:05.000038000Z""#));
    }

    #[test]
    fn startup_lists_probes_and_refusals() {
        let st = sample_startup();
        assert_eq!(
            st.to_json(),
            concat!(
                r#"{"type":"startup","kernel":"6.12.9","probes":["#,
                r#"{"function":"filemap_map_pages","method":"kprobe","refused":[{"method":"fentry","reason":"no BTF for \"vmlinux\""}]},"#,
                r#"{"function":"unmap_mapping_range","method":null,"refused":[]}],"programs":[]}"#
            )
        );
        assert_eq!(
            Startup::default().to_json(),
            r#"{"type":"startup","kernel":"","probes":[],"programs":[]}"#
        );
    }
}
