//! Which alerts the user wants to see. Applied after correlation, because a
//! window and the fault-around that meets it usually belong to different
//! tasks: filtering events by task first would hide exactly the races.

use anyhow::{Result, bail};

use crate::correlator::Alert;
use crate::event::{FileId, Task};

/// The kernel keeps `TASK_COMM_LEN - 1` bytes of a task name.
pub const COMM_MAX: usize = 15;

const MINOR_BITS: u32 = 20;
const MAJOR_MAX: u32 = (1 << (32 - MINOR_BITS)) - 1;
const MINOR_MAX: u32 = (1 << MINOR_BITS) - 1;

/// Every list is a set of alternatives; an empty list admits anything. The
/// lists are combined with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pids: Vec<u32>,
    comms: Vec<String>,
    /// Kernel dev_t encoding, as in [`FileId::dev`].
    devs: Vec<u32>,
    inos: Vec<u64>,
}

impl Filter {
    /// `devs` are "MAJOR:MINOR" strings as the user typed them.
    pub fn new(
        pids: Vec<u32>,
        comms: Vec<String>,
        devs: Vec<String>,
        inos: Vec<u64>,
    ) -> Result<Filter> {
        for comm in &comms {
            check_comm(comm)?;
        }
        let devs = devs
            .iter()
            .map(|d| parse_dev(d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filter {
            pids,
            comms,
            devs,
            inos,
        })
    }

    /// Admits everything.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.comms.is_empty()
            && self.devs.is_empty()
            && self.inos.is_empty()
    }

    /// Each task criterion holds if either side of the race satisfies it:
    /// the faulting task or the invalidating one.
    pub fn matches(&self, alert: &Alert) -> bool {
        let sides: Vec<&Task> = std::iter::once(&alert.task)
            .chain(alert.window.as_ref().map(|w| &w.task))
            .collect();
        self.matches_file(alert.file)
            && (self.pids.is_empty() || sides.iter().any(|t| self.has_pid(t)))
            && (self.comms.is_empty() || sides.iter().any(|t| self.comms.contains(&t.comm)))
    }

    /// The file half of the filter. Safe to apply to raw events before
    /// correlation, since windows never span files; an unresolved file
    /// (`ino == 0`, truncate(2) by path) is admitted because it may still label
    /// a window of a wanted file.
    pub fn matches_file(&self, file: FileId) -> bool {
        if file.is_unknown() {
            return true;
        }
        (self.devs.is_empty() || self.devs.contains(&file.dev))
            && (self.inos.is_empty() || self.inos.contains(&file.ino))
    }

    /// Users often pass a thread id where a pid is asked for.
    fn has_pid(&self, task: &Task) -> bool {
        self.pids.iter().any(|&p| p == task.pid || p == task.tid)
    }
}

/// "MAJOR:MINOR" in decimal (as `ls -l`, `lsblk` and `/proc/self/mountinfo`
/// print them) to the kernel's internal dev_t, which is what
/// `super_block::s_dev` holds and is not the userspace `st_dev` encoding.
pub fn parse_dev(s: &str) -> Result<u32> {
    let number = |part: &str| -> Option<u32> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let parsed = s
        .split_once(':')
        .and_then(|(maj, min)| Some((number(maj)?, number(min)?)));
    let Some((major, minor)) = parsed else {
        bail!("bad --dev '{s}': expected MAJOR:MINOR, e.g. 7:0");
    };
    if major > MAJOR_MAX {
        bail!("bad --dev '{s}': major {major} is above the kernel's limit {MAJOR_MAX}");
    }
    if minor > MINOR_MAX {
        bail!("bad --dev '{s}': minor {minor} is above the kernel's limit {MINOR_MAX}");
    }
    Ok(major << MINOR_BITS | minor)
}

fn check_comm(comm: &str) -> Result<()> {
    if comm.is_empty() {
        bail!("bad --comm '': a task name cannot be empty");
    }
    if comm.len() > COMM_MAX {
        let mut cut = COMM_MAX;
        while !comm.is_char_boundary(cut) {
            cut -= 1;
        }
        bail!(
            "bad --comm '{comm}': {} bytes, but the kernel keeps only the first {COMM_MAX} (try '{}')",
            comm.len(),
            &comm[..cut]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlator::{Finding, WindowInfo};
    use crate::event::{Fidelity, Op, PageRange};

    fn task(pid: u32, tid: u32, comm: &str) -> Task {
        Task {
            pid,
            tid,
            comm: comm.to_string(),
        }
    }

    fn alert(dev: u32, ino: u64, faulter: Task, puncher: Task) -> Alert {
        Alert {
            severity: crate::correlator::Severity::Info,
            finding: Finding::PteInPunchWindow {
                map_entry_ts: 1500,
                folios_removed: None,
                ptes: None,
            },
            ts: 2000,
            file: FileId { dev, ino },
            task: faulter,
            pages: PageRange::new(0, 15),
            window: Some(WindowInfo {
                id: 1,
                op: Op::PunchHole,
                pages: PageRange::new(0, 31),
                task: puncher,
                opened_ts: 1000,
                closed_ts: Some(3000),
                open_for_ns: 1000,
                test: None,
            }),
            fidelity: Fidelity::Fentry,
            map_fidelity: Fidelity::Fentry,
            window_fidelity: Fidelity::Fentry,
            evidence: Default::default(),
        }
    }

    fn racer() -> Alert {
        alert(
            7 << 20,
            131,
            task(1234, 1240, "racer"),
            task(1234, 1236, "racer"),
        )
    }

    fn filter(pids: &[u32], comms: &[&str], devs: &[&str], inos: &[u64]) -> Filter {
        Filter::new(
            pids.to_vec(),
            comms.iter().map(|c| c.to_string()).collect(),
            devs.iter().map(|d| d.to_string()).collect(),
            inos.to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn parse_dev_encodes_kernel_dev_t() {
        assert_eq!(parse_dev("7:0").unwrap(), 7 << 20);
        assert_eq!(parse_dev("8:17").unwrap(), (8 << 20) | 17);
        assert_eq!(parse_dev("259:1048575").unwrap(), (259 << 20) | 0xf_ffff);
        assert_eq!(parse_dev("0:0").unwrap(), 0);
        let f = FileId {
            dev: parse_dev("253:3").unwrap(),
            ino: 1,
        };
        assert_eq!((f.major(), f.minor()), (253, 3));
    }

    #[test]
    fn parse_dev_errors_are_one_clear_line() {
        for bad in [
            "8x", "8", "8:", ":0", "8:1:2", "-1:0", "+8:0", " 8:0", "8:0x1", "", "a:b",
        ] {
            let err = parse_dev(bad).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("bad --dev '{bad}': expected MAJOR:MINOR, e.g. 7:0"),
                "{bad}"
            );
        }
        assert_eq!(
            parse_dev("4096:0").unwrap_err().to_string(),
            "bad --dev '4096:0': major 4096 is above the kernel's limit 4095"
        );
        assert_eq!(
            parse_dev("8:1048576").unwrap_err().to_string(),
            "bad --dev '8:1048576': minor 1048576 is above the kernel's limit 1048575"
        );
        assert!(parse_dev("99999999999:0").is_err());
        assert!(!parse_dev("8x").unwrap_err().to_string().contains('\n'));
    }

    #[test]
    fn comm_longer_than_the_kernel_keeps_is_refused() {
        let err = Filter::new(vec![], vec!["a_very_long_task_name".into()], vec![], vec![])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "bad --comm 'a_very_long_task_name': 21 bytes, but the kernel keeps only the first 15 (try 'a_very_long_tas')"
        );
        assert!(Filter::new(vec![], vec!["exactly15bytes!".into()], vec![], vec![]).is_ok());
        // Multi-byte names are cut at a character boundary in the hint.
        let err = Filter::new(vec![], vec!["ééééééééé".into()], vec![], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("(try 'ééééééé')"), "{err}");
        assert!(Filter::new(vec![], vec![String::new()], vec![], vec![]).is_err());
        assert!(Filter::new(vec![], vec![], vec!["x".into()], vec![]).is_err());
    }

    #[test]
    fn empty_filter_admits_everything() {
        let f = filter(&[], &[], &[], &[]);
        assert!(f.is_empty());
        assert!(f.matches(&racer()));
    }

    #[test]
    fn task_criteria_match_either_side() {
        let faulter = task(10, 11, "reader");
        let puncher = task(20, 21, "puncher");
        let a = alert(7 << 20, 5, faulter, puncher);
        assert!(filter(&[10], &[], &[], &[]).matches(&a));
        assert!(filter(&[20], &[], &[], &[]).matches(&a));
        assert!(filter(&[21], &[], &[], &[]).matches(&a), "thread id");
        assert!(!filter(&[30], &[], &[], &[]).matches(&a));
        assert!(filter(&[], &["puncher"], &[], &[]).matches(&a));
        assert!(filter(&[], &["nobody", "reader"], &[], &[]).matches(&a));
        assert!(
            !filter(&[], &["punch"], &[], &[]).matches(&a),
            "no prefix match"
        );
        // Criteria are independent: each may be met by a different side.
        assert!(filter(&[10], &["puncher"], &[], &[]).matches(&a));
        assert!(!filter(&[10], &["other"], &[], &[]).matches(&a));
    }

    #[test]
    fn file_criteria() {
        let a = racer();
        assert!(filter(&[], &[], &["7:0"], &[]).matches(&a));
        assert!(!filter(&[], &[], &["8:0"], &[]).matches(&a));
        assert!(filter(&[], &[], &["8:0", "7:0"], &[131]).matches(&a));
        assert!(!filter(&[], &[], &["7:0"], &[132]).matches(&a));
        assert!(filter(&[1234], &["racer"], &["7:0"], &[131]).matches(&a));
        assert!(!filter(&[1234], &["racer"], &["7:0"], &[1]).matches(&a));
        let f = filter(&[], &[], &["7:0"], &[131]);
        assert!(f.matches_file(FileId {
            dev: 7 << 20,
            ino: 131
        }));
        assert!(!f.matches_file(FileId {
            dev: 7 << 20,
            ino: 130
        }));
        assert!(f.matches_file(FileId::default()), "unresolved file passes");
    }
}
