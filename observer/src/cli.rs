//! Command line of the observer.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::loader::Method;

/// Watches for page-table entries that fault-around (filemap_map_pages)
/// installs inside a hole-punch/truncate invalidation window
/// (unmap_mapping_range → truncate_inode_pages_range). Run as root.
#[derive(Parser, Debug)]
#[command(name = "observer", version, allow_negative_numbers = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// JSON lines instead of text (schema in the README).
    #[arg(global = true, long)]
    pub json: bool,

    /// Write alerts and the summary to FILE instead of stdout.
    #[arg(global = true, long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stop after this many seconds (fractions allowed).
    #[arg(global = true, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Only alerts where the faulting or the punching task has this pid.
    #[arg(global = true, long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only alerts where the faulting or the punching task has this comm.
    #[arg(global = true, long, value_name = "COMM")]
    pub comm: Vec<String>,

    /// Only alerts on files of this device (MAJOR:MINOR, as in /proc/self/mountinfo).
    #[arg(global = true, long, value_name = "MAJ:MIN")]
    pub dev: Vec<String>,

    /// Only alerts on this inode number.
    #[arg(global = true, long, value_name = "INO")]
    pub ino: Vec<u64>,

    /// BTF of the running kernel, for struct offsets.
    #[arg(
        global = true,
        long,
        value_name = "FILE",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,

    /// Best probe method to try; worse ones follow if it is refused.
    #[arg(
        global = true,
        long,
        value_name = "fentry|kprobe|tracepoint",
        default_value = "fentry"
    )]
    pub method: Method,

    /// Send every filemap_map_pages call to the agent, not only those on
    /// files with an open window (for debugging the pre-filter; costly).
    #[arg(global = true, long)]
    pub full_stream: bool,

    /// Ring buffer size in KiB (a power of two).
    #[arg(global = true, long, value_name = "KIB", default_value_t = 4096)]
    pub ringbuf_kib: u32,

    /// How long to hold events for reordering across CPUs, in milliseconds.
    #[arg(global = true, long, value_name = "MS", default_value_t = 50)]
    pub reorder_ms: u64,

    /// Print the verifier log of refused rungs too.
    #[arg(global = true, long, short)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch live, and also write every raw record to FILE for `replay`.
    Record {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Correlate a recorded FILE offline: the same alerts, deterministically,
    /// without root or probes.
    Replay {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}
