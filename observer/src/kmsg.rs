//! The kernel log, as /dev/kmsg hands it out: test markers (fstests'
//! `check` writes `run fstests generic/127 at 2026-01-05 12:34:56` before
//! each test) and the kernel's own reports of this bug class (`BUG: Bad page
//! cache in process …` with the page dump that follows it, `BUG: Bad page
//! map`, `BUG: Bad page state`, `kernel BUG at mm/…`). Pure: records in,
//! findings out.
//!
//! A record is `prio,seq,usec,flags[,…];text`, then ` KEY=value` lines.
//! `prio` is `facility << 3 | level`. Anyone may write to /dev/kmsg, but the
//! kernel forces a written record's facility to user (1) unless the writer
//! names another one other than 0: only records of facility 0 are the
//! kernel's own, and only those may be reports. Markers are written from
//! user space and are taken from any facility.

use regex_lite::Regex;

/// One /dev/kmsg record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsgRecord {
    pub facility: u8,
    pub level: u8,
    pub seq: u64,
    /// Microseconds since boot, as printk stamps them.
    pub usec: u64,
    /// The message, with `\xNN` escapes undone where printable.
    pub text: String,
}

impl KmsgRecord {
    /// Parses one record (its first line; continuation lines are ignored).
    pub fn parse(raw: &str) -> Option<KmsgRecord> {
        let first = raw.lines().next()?;
        let (head, text) = first.split_once(';')?;
        let mut f = head.split(',');
        let prio: u32 = f.next()?.trim().parse().ok()?;
        let seq = f.next()?.parse().ok()?;
        let usec = f.next()?.parse().ok()?;
        Some(KmsgRecord {
            facility: (prio >> 3) as u8,
            level: (prio & 7) as u8,
            seq,
            usec,
            text: unescape(text),
        })
    }

    /// /dev/ttyprintk writes go through the kernel's own printk (facility
    /// kernel) but carry its `[U] ` prefix: user space all the same.
    pub fn is_kernels(&self) -> bool {
        self.facility == 0 && !self.text.starts_with("[U] ")
    }

    pub fn ts_ns(&self) -> u64 {
        self.usec.saturating_mul(1000)
    }
}

/// /dev/kmsg writes non-printable bytes and `\` as `\xNN`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 4);
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) if b.is_ascii() => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[i + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a kernel report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// `BUG: Bad page cache in process`: a folio left the page cache still
    /// mapped ("page dumped because: still mapped when deleted").
    BadPageCache,
    /// `BUG: Bad page map in process`: a PTE points at a page it should not.
    BadPageMap,
    /// `BUG: Bad page state in process`: a page freed with a mapcount or
    /// mapping still set.
    BadPageState,
    /// `kernel BUG at mm/…` (page_table_check among them).
    KernelBug,
    /// Another `WARNING:` or `BUG:` in mm/ or fs/: fstests' error-injection
    /// tests make such warnings on purpose, so they are warnings.
    Other,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::BadPageCache => "bad_page_cache",
            ReportKind::BadPageMap => "bad_page_map",
            ReportKind::BadPageState => "bad_page_state",
            ReportKind::KernelBug => "kernel_bug",
            ReportKind::Other => "warning",
        }
    }

    pub fn is_critical(self) -> bool {
        self != ReportKind::Other
    }

    fn of_header(text: &str) -> Option<ReportKind> {
        let t = text.trim_start();
        Some(if t.starts_with("BUG: Bad page cache in process") {
            ReportKind::BadPageCache
        } else if t.starts_with("BUG: Bad page map in process") {
            ReportKind::BadPageMap
        } else if t.starts_with("BUG: Bad page state in process") {
            ReportKind::BadPageState
        } else if t.starts_with("kernel BUG at mm/") {
            ReportKind::KernelBug
        } else if (t.starts_with("WARNING:")
            || t.starts_with("BUG:")
            || t.starts_with("kernel BUG at"))
            && (t.contains(" mm/")
                || t.contains(" fs/")
                || t.contains("at mm/")
                || t.contains("at fs/"))
        {
            ReportKind::Other
        } else {
            return None;
        })
    }
}

/// A whole report, its lines as the kernel printed them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelReport {
    pub kind: ReportKind,
    /// The header's time (ns since boot).
    pub ts: u64,
    pub lines: Vec<String>,
    /// The inode number the page dump names (`ino:` is printed in hex).
    pub ino: Option<u64>,
    /// The time of its last line.
    pub last: u64,
}

/// What the log said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A test began (its name).
    TestStart {
        ts: u64,
        name: String,
    },
    /// A report's header: the report itself comes once it is whole.
    ReportBegins {
        ts: u64,
    },
    Report(KernelReport),
}

/// The default marker: fstests' `check`.
pub const FSTESTS_MARKER: &str = r"run fstests (\S+) at ";

/// A report ends at the end of its trace, at a gap this long, or at this
/// many lines.
const GAP_NS: u64 = 500_000_000;
const MAX_LINES: usize = 80;

/// Turns kernel-log records into test markers and whole reports.
pub struct Reader {
    marker: Regex,
    open: Option<KernelReport>,
}

impl Reader {
    /// `marker`: a regular expression whose first capture group names the
    /// test.
    pub fn new(marker: &str) -> anyhow::Result<Reader> {
        let re =
            Regex::new(marker).map_err(|e| anyhow::anyhow!("bad --test-marker {marker:?}: {e}"))?;
        if re.captures_len() < 2 {
            anyhow::bail!(
                "bad --test-marker {marker:?}: it needs a capture group (the test's name)"
            );
        }
        Ok(Reader {
            marker: re,
            open: None,
        })
    }

    /// Takes one record; appends what is complete.
    pub fn push(&mut self, r: &KmsgRecord, out: &mut Vec<Finding>) {
        let ts = r.ts_ns();
        if self
            .open
            .as_ref()
            .is_some_and(|o| ts.saturating_sub(o.last) > GAP_NS && !r.text.starts_with(' '))
        {
            self.close(out);
        }
        if let Some(c) = self.marker.captures(&r.text)
            && let Some(name) = c.get(1)
        {
            out.push(Finding::TestStart {
                ts,
                name: name.as_str().to_owned(),
            });
            return;
        }
        if !r.is_kernels() {
            return;
        }
        if let Some(kind) = ReportKind::of_header(&r.text) {
            self.close(out);
            out.push(Finding::ReportBegins { ts });
            self.open = Some(KernelReport {
                kind,
                ts,
                lines: vec![r.text.clone()],
                ino: None,
                last: ts,
            });
            return;
        }
        let Some(open) = &mut self.open else { return };
        open.lines.push(r.text.clone());
        open.last = ts;
        if open.ino.is_none() {
            open.ino = ino_of(&r.text);
        }
        let t = r.text.trim();
        if t.starts_with("---[ end trace") || open.lines.len() >= MAX_LINES {
            self.close(out);
        }
    }

    /// End of input (or a quiet log): a report still being read is whole.
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        self.close(out);
    }

    /// The log went quiet at `now`: a report being read that nothing added
    /// to for the gap is whole.
    pub fn quiet(&mut self, now: u64, out: &mut Vec<Finding>) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| now.saturating_sub(o.last) > GAP_NS)
        {
            self.close(out);
        }
    }

    fn close(&mut self, out: &mut Vec<Finding>) {
        if let Some(r) = self.open.take() {
            out.push(Finding::Report(r));
        }
    }
}

/// `ino:1a2b` of a page dump's mapping line.
fn ino_of(text: &str) -> Option<u64> {
    let at = text.find(" ino:")?;
    let hex: String = text[at + 5..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(prio: u32, usec: u64, text: &str) -> KmsgRecord {
        KmsgRecord::parse(&format!("{prio},1,{usec},-;{text}")).unwrap()
    }

    fn read(records: &[KmsgRecord]) -> Vec<Finding> {
        let mut r = Reader::new(FSTESTS_MARKER).unwrap();
        let mut out = Vec::new();
        for x in records {
            r.push(x, &mut out);
        }
        r.flush(&mut out);
        out
    }

    #[test]
    fn parses_records_and_their_facility() {
        let r = KmsgRecord::parse(
            "12,813,5203155,-;run fstests generic/749 at 2026-01-05 12:34:56\n SUBSYSTEM=x",
        )
        .unwrap();
        assert_eq!((r.facility, r.level, r.seq, r.usec), (1, 4, 813, 5_203_155));
        assert_eq!(r.text, "run fstests generic/749 at 2026-01-05 12:34:56");
        assert!(!r.is_kernels());
        let k = KmsgRecord::parse("1,7,100,-;BUG: Bad page cache in process a\\x5cb  pfn:1234")
            .unwrap();
        assert!(k.is_kernels());
        assert_eq!(k.text, "BUG: Bad page cache in process a\\b  pfn:1234");
        assert!(KmsgRecord::parse("garbage").is_none());
    }

    /// A Bad page cache report as 6.12 prints it: the header, the page
    /// dump (ino in hex), the reason, a trace.
    #[test]
    fn a_bad_page_cache_report_is_read_whole() {
        let out = read(&[
            rec(
                12,
                1_000_000,
                "run fstests generic/127 at 2026-01-05 12:00:00",
            ),
            rec(
                1,
                2_000_000,
                "BUG: Bad page cache in process fsx  pfn:1a2b3",
            ),
            rec(
                4,
                2_000_010,
                "page: refcount:3 mapcount:1 mapping:ffff888004f1c6f0 index:0x10 pfn:0x1a2b3",
            ),
            rec(
                4,
                2_000_020,
                "aops:xfs_address_space_operations ino:83 dentry name(?):\"junk\"",
            ),
            rec(
                4,
                2_000_030,
                "flags: 0x4000000000000028(uptodate|lru|zone=1)",
            ),
            rec(
                4,
                2_000_040,
                "page dumped because: still mapped when deleted",
            ),
            rec(
                4,
                2_000_050,
                "CPU: 1 PID: 4242 Comm: fsx Not tainted 6.12.117",
            ),
            rec(4, 2_000_060, "---[ end trace 0000000000000000 ]---"),
            rec(6, 9_000_000, "xfs: mounting filesystem"),
        ]);
        assert_eq!(
            out[0],
            Finding::TestStart {
                ts: 1_000_000_000,
                name: "generic/127".into()
            }
        );
        // The header is announced at once, so its windows are held.
        assert_eq!(out[1], Finding::ReportBegins { ts: 2_000_000_000 });
        let Finding::Report(r) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(r.kind, ReportKind::BadPageCache);
        assert_eq!(r.ino, Some(0x83));
        assert_eq!(r.ts, 2_000_000_000);
        assert_eq!(r.last, 2_000_060_000);
        assert_eq!(r.lines.len(), 7);
        assert!(r.lines[4].contains("still mapped when deleted"));
        assert_eq!(out.len(), 3);
    }

    /// Anyone can write to /dev/kmsg; what arrives with the user facility
    /// is no kernel report, even when it looks like one.
    #[test]
    fn user_written_look_alikes_are_not_reports() {
        let out = read(&[
            rec(8, 1_000, "BUG: Bad page cache in process evil  pfn:1"),
            rec(12, 2_000, "BUG: Bad page map in process evil  pte:1 pmd:2"),
        ]);
        assert!(out.is_empty(), "{out:?}");
        // Through /dev/ttyprintk: facility kernel, but the `[U] ` prefix,
        // and no line of a real report either.
        let out = read(&[
            rec(4, 1_000, "[U] BUG: Bad page cache in process evil  pfn:1"),
            rec(0, 2_000, "BUG: Bad page map in process a  pte:1 pmd:2"),
            rec(4, 2_010, "[U] aops:xfs_address_space_operations ino:99"),
        ]);
        let Finding::Report(r) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!((r.lines.len(), r.ino), (1, None), "{r:?}");
    }

    #[test]
    fn other_warnings_in_mm_and_fs_are_warnings_and_the_rest_is_ignored() {
        let out = read(&[
            rec(
                4,
                1_000,
                "WARNING: CPU: 0 PID: 1 at fs/xfs/xfs_bmap.c:123 xfs_bmapi_write+0x1/0x2",
            ),
            rec(4, 1_100, "Modules linked in: xfs"),
            rec(
                4,
                9_000_000,
                "WARNING: CPU: 0 PID: 1 at drivers/net/x.c:1 y+0x1/0x2",
            ),
            rec(0, 9_100_000, "kernel BUG at mm/page_table_check.c:159!"),
        ]);
        assert_eq!(out.len(), 4, "{out:?}");
        let kinds: Vec<ReportKind> = out
            .iter()
            .filter_map(|f| match f {
                Finding::Report(r) => Some(r.kind),
                Finding::ReportBegins { .. } => None,
                _ => panic!("{f:?}"),
            })
            .collect();
        assert_eq!(kinds, [ReportKind::Other, ReportKind::KernelBug]);
        assert!(!ReportKind::Other.is_critical());
        assert!(ReportKind::KernelBug.is_critical());
    }

    /// Nothing follows a report's last line: it is whole once the log has
    /// been quiet for the gap, not only at the end of the run.
    #[test]
    fn a_report_is_whole_after_a_quiet_gap() {
        let mut r = Reader::new(FSTESTS_MARKER).unwrap();
        let mut out = Vec::new();
        r.push(
            &rec(0, 1_000, "BUG: Bad page map in process a  pte:1 pmd:2"),
            &mut out,
        );
        r.push(&rec(4, 1_010, "addr:00007f mapping:0 index:0"), &mut out);
        assert_eq!(out, [Finding::ReportBegins { ts: 1_000_000 }]);
        r.quiet(1_010_000 + GAP_NS, &mut out);
        assert_eq!(out.len(), 1, "closed before the gap: {out:?}");
        r.quiet(1_010_001 + GAP_NS, &mut out);
        let Finding::Report(k) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!((k.kind, k.lines.len()), (ReportKind::BadPageMap, 2));
    }

    #[test]
    fn other_suites_mark_tests_their_own_way() {
        let mut r = Reader::new(r"^=== RUN (\w+)").unwrap();
        let mut out = Vec::new();
        r.push(&rec(12, 5, "=== RUN TestPunch"), &mut out);
        assert_eq!(
            out,
            [Finding::TestStart {
                ts: 5000,
                name: "TestPunch".into()
            }]
        );
        assert!(Reader::new("no group").is_err());
        assert!(Reader::new("(unclosed").is_err());
    }
}
