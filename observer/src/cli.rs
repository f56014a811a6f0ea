//! Command line of the observer.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::loader::Method;

/// `--method`: the best rung to try.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl MethodArg {
    pub fn method(self) -> Method {
        match self {
            MethodArg::Fentry => Method::Fentry,
            MethodArg::Kprobe => Method::Kprobe,
            MethodArg::Tracepoint => Method::Tracepoint,
        }
    }
}

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

    /// Write alerts and the summary to FILE instead of stdout (stderr for
    /// `run`, whose stdout is the command's).
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
        value_enum,
        default_value_t = MethodArg::Fentry
    )]
    pub method: MethodArg,

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

    /// Alerts below this severity are not printed (the summary and the
    /// verdict count them all the same).
    #[arg(global = true, long, value_enum, default_value_t = SeverityArg::Info)]
    pub min_severity: SeverityArg,

    /// Text: one line per alert, instead of one line per window and rate
    /// limits on what is not critical.
    #[arg(global = true, long)]
    pub per_call: bool,

    /// A regular expression for the kernel-log lines that begin a test of a
    /// suite; its first capture group names the test.
    #[arg(global = true, long, value_name = "REGEX", default_value = crate::kmsg::FSTESTS_MARKER)]
    pub test_marker: String,

    /// Tests only: read kernel-log records in /dev/kmsg format from FILE
    /// instead of /dev/kmsg (their times relative to the first one, which
    /// counts at the start).
    #[arg(global = true, long, value_name = "FILE", hide = true)]
    pub kmsg_file: Option<PathBuf>,

    /// Tests only: attach a raw tracepoint program at another tracepoint
    /// (PROGRAM=TRACEPOINT), one the workload never reaches, to make its
    /// probe silent on purpose.
    #[arg(global = true, long, value_name = "PROGRAM=TRACEPOINT", hide = true)]
    pub redirect: Vec<String>,

    /// Tests only: count tmpfs installs past EOF as beyond_eof too (the
    /// live control of class C: a huge=always tmpfs maps PMDs across EOF).
    #[arg(global = true, long, hide = true)]
    pub no_shmem_exemption: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics and a health
    /// check at /healthz (200, or 503 with the reason); ADDR defaults to
    /// 127.0.0.1.
    #[arg(global = true, long, value_name = "[ADDR:]PORT")]
    pub metrics: Option<String>,

    /// Keep serving --metrics this long after the summary, so that a last
    /// scrape sees the final counts (they equal the summary's).
    #[arg(global = true, long, value_name = "SECS", default_value_t = 0.0)]
    pub metrics_linger: f64,

    /// Print the verifier log of refused rungs too.
    #[arg(global = true, long, short)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach, then run CMD with the terminal's stdin, stdout and
    /// stderr, and exit with its status; or with 112 when an alert reached
    /// --fail-on (that beats CMD's status). 125: the observer failed; 126:
    /// CMD is not executable; 127: CMD was not found; CMD killed by signal N:
    /// 128+N. Alerts go to --output, or to stderr.
    Run(RunArgs),
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

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Exit with 112 once an alert of this severity or worse was seen
    /// (critical: stale_pte, stale_data).
    #[arg(long, value_enum, default_value_t = FailOn::Critical)]
    pub fail_on: FailOn,

    /// Which tasks are watched: the whole host (a punch and the fault that
    /// races it may come from different processes), or only CMD and what it
    /// starts (its cgroup, or its process tree without cgroup2).
    #[arg(long, value_enum, default_value_t = Scope::Host)]
    pub scope: Scope,

    /// How `--scope cmd` follows CMD: its own cgroup2 (when cgroup2 is
    /// mounted), or its process tree (sched_process_fork/exit).
    #[arg(long, value_enum, default_value_t = Follow::Auto, hide = true)]
    pub follow: Follow,

    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Info,
    Warning,
    Critical,
}

impl SeverityArg {
    pub fn severity(self) -> crate::correlator::Severity {
        use crate::correlator::Severity;
        match self {
            SeverityArg::Info => Severity::Info,
            SeverityArg::Warning => Severity::Warning,
            SeverityArg::Critical => Severity::Critical,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum FailOn {
    /// Never fail on a verdict: CMD's status only.
    Never,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    Host,
    Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Follow {
    Auto,
    Cgroup,
    Tree,
}
