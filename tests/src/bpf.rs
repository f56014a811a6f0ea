//! What BPF programs and links the kernel holds, and which of them a process
//! has open (the detach tests).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{env_override, get_str, get_u64};

/// One entry of `bpftool prog show --json` / `bpftool link show --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfObject {
    pub id: u64,
    /// Program name ("" for links, which have none).
    pub name: String,
    /// Program or link type, e.g. "tracepoint" / "perf_event".
    pub kind: String,
    /// For links: the program behind it.
    pub prog_id: Option<u64>,
}

/// `bpftool` (`$BPFTOOL`, else /usr/sbin/bpftool, else from `$PATH`).
pub fn bpftool_bin() -> PathBuf {
    env_override("BPFTOOL").unwrap_or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/bpftool");
        if sbin.is_file() {
            sbin
        } else {
            PathBuf::from("bpftool")
        }
    })
}

fn bpftool_list(what: &str) -> Result<Vec<BpfObject>> {
    let bin = bpftool_bin();
    let out = Command::new(&bin)
        .args([what, "show", "--json"])
        .output()
        .with_context(|| format!("cannot run {} (apt-get install bpftool)", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {what} show --json: {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("bpftool {what} show: bad JSON"))?;
    let Value::Array(items) = v else {
        bail!("bpftool {what} show: not a JSON array");
    };
    items
        .iter()
        .map(|p| {
            Ok(BpfObject {
                id: get_u64(p, "id")?,
                name: get_str(p, "name").unwrap_or("").to_string(),
                kind: get_str(p, "type").unwrap_or("").to_string(),
                prog_id: get_u64(p, "prog_id").ok(),
            })
        })
        .collect()
}

/// Every BPF program loaded in the kernel, as `bpftool prog show --json` lists them.
pub fn bpf_programs() -> Result<Vec<BpfObject>> {
    bpftool_list("prog")
}

/// Every BPF link in the kernel, as `bpftool link show --json` lists them.
pub fn bpf_links() -> Result<Vec<BpfObject>> {
    bpftool_list("link")
}

/// BPF program and link ids that process `pid` holds file descriptors to
/// (from the `prog_id:` / `link_id:` lines of /proc/PID/fdinfo/*).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldBpf {
    pub prog_ids: Vec<u64>,
    pub link_ids: Vec<u64>,
}

pub fn bpf_held_by(pid: u32) -> Result<HeldBpf> {
    let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
    let mut held = HeldBpf::default();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        // fds come and go while we look: skip what vanished.
        let Ok(entry) = entry else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u64>() else {
                continue;
            };
            match key {
                "prog_id" => held.prog_ids.push(id),
                "link_id" => held.link_ids.push(id),
                _ => {}
            }
        }
    }
    held.prog_ids.sort_unstable();
    held.prog_ids.dedup();
    held.link_ids.sort_unstable();
    held.link_ids.dedup();
    Ok(held)
}
