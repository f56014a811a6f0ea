//! What each eBPF program costs, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled=1`): runs and run time per program.
//!
//! A setup's programs are the ones its loader process holds: every
//! `anon_inode:bpf-prog` descriptor in /proc/PID/fd, whose fdinfo carries the
//! kernel's id, run count and run time. Names come from `bpftool prog show`
//! (cut to 15 bytes by the kernel); the observer's startup record gives the
//! full ones.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context, Result};
use serde::Serialize;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns the kernel's per-program statistics on while it lives, and puts
/// back what was there before.
pub(super) struct BpfStats {
    before: String,
}

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        let before = fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("cannot read {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("cannot write {STATS_SYSCTL}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SYSCTL, &self.before);
    }
}

/// One program's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) run_cnt: u64,
    pub(super) run_time_ns: u64,
}

/// The counters of every program process `pid` holds, by kernel id.
pub(super) fn snapshot(pid: u32) -> Result<BTreeMap<u32, Counters>> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = BTreeMap::new();
    for e in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(e) = e else { continue };
        let is_prog = fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fd = e.file_name();
        let info = format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy());
        // A descriptor closed meanwhile is no error.
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        if let Some((id, c)) = parse_fdinfo(&text) {
            out.insert(id, c);
        }
    }
    Ok(out)
}

/// `prog_id`, `run_cnt` and `run_time_ns` from a bpf-prog fdinfo.
pub(super) fn parse_fdinfo(text: &str) -> Option<(u32, Counters)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    let id = u32::try_from(field("prog_id")?).ok()?;
    Some((
        id,
        Counters {
            run_cnt: field("run_cnt").unwrap_or(0),
            run_time_ns: field("run_time_ns").unwrap_or(0),
        },
    ))
}

/// The kernel's (15-byte) name of each loaded program, by id.
pub(super) fn names() -> BTreeMap<u32, String> {
    #[derive(serde::Deserialize)]
    struct Prog {
        id: u32,
        #[serde(default)]
        name: String,
    }
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
    else {
        return BTreeMap::new();
    };
    serde_json::from_slice::<Vec<Prog>>(&out.stdout)
        .map(|v| v.into_iter().map(|p| (p.id, p.name)).collect())
        .unwrap_or_default()
}

/// One program's share of one measured run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ProgCost {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) runs: u64,
    pub(crate) run_time_ns: u64,
}

impl ProgCost {
    pub(crate) fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }

    /// The fault-around program, by the names both setups give it: the
    /// observer's `filemap_map_pages_*`, bpftrace's `mm_filemap_map_`.
    pub(crate) fn is_map_pages(&self) -> bool {
        self.name.contains("map_pages") || self.name.starts_with("mm_filemap_map")
    }
}

/// What happened between two snapshots, busiest program first; programs
/// that never ran are left out.
pub(super) fn diff(
    before: &BTreeMap<u32, Counters>,
    after: &BTreeMap<u32, Counters>,
    names: &BTreeMap<u32, String>,
) -> Vec<ProgCost> {
    let mut out: Vec<ProgCost> = after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id).copied().unwrap_or_default();
            ProgCost {
                id: *id,
                name: names.get(id).cloned().unwrap_or_else(|| format!("id {id}")),
                runs: a.run_cnt.saturating_sub(b.run_cnt),
                run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            }
        })
        .filter(|p| p.runs > 0)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
    out
}
