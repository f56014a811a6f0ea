//! Developer tasks for the observer workspace: `cargo xtask <command>`.

mod bench;
mod build_cmd;
#[cfg(test)]
mod fixtures;
mod json;
mod matrix;
mod package;
mod progress;
mod setup;
mod util;
mod vm;

use std::{os::unix::process::CommandExt, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::util::{Workspace, display, say};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test the observer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, nightly
    /// rust-src, bpf-linker); skips what is present.
    Setup,
    /// Set up, then build observer, racer, faultbench and fusefs.
    Build {
        /// Debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run the observer (as root) with ARGS.
    Run {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Build, then run every test including the root/VM ones.
    Test {
        /// Passed to the test binaries after --include-ignored (e.g. a filter).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "TEST_ARGS"
        )]
        args: Vec<String>,
    },
    /// Build, then make a Debian package (target/package/*.deb): the
    /// binary, the systemd unit, man pages and shell completions.
    Package,
    /// Run the observer and the racer in a Debian kernel under qemu.
    Vm(Box<vm::VmArgs>),
    /// Build, then measure the observer's overhead on a fault-around-heavy
    /// workload: bare, observer, observer --full-stream, alternating.
    Bench(bench::BenchArgs),
    /// The truth table: every invalidator and the race workloads under the
    /// observer, per kernel (Debian 5.10, 6.1, 6.12, 7.2, 7.3 under qemu, cloud
    /// and generic; the host) and filesystem (xfs, ext4, btrfs, tmpfs, fuse,
    /// f2fs, ntfs3, ntfs, gfs2, ocfs2, bcachefs).
    Matrix(Box<matrix::MatrixArgs>),
}

fn main() -> ExitCode {
    util::fix_path();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[xtask] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let ws = Workspace::locate()?;
    match cli.cmd {
        Cmd::Setup => setup::run_setup(),
        Cmd::Build { debug } => build_cmd::build(&ws, debug).map(drop),
        Cmd::Run { args } => run_observer(&ws, args),
        Cmd::Test { args } => test(&ws, args),
        Cmd::Package => {
            let bins = build_cmd::build(&ws, false)?;
            package::build(&ws, &bins).map(drop)
        }
        Cmd::Vm(args) => vm::run(&ws, *args),
        Cmd::Bench(args) => {
            build_cmd::build(&ws, false)?;
            bench::run(&ws, args)
        }
        Cmd::Matrix(args) => matrix::run(&ws, *args),
    }
}

fn run_observer(ws: &Workspace, args: Vec<String>) -> Result<()> {
    // Checked before building so a non-root user does not wait for nothing.
    if !util::is_root() {
        bail!(
            "the observer loads eBPF programs and must run as root; try `sudo -E cargo xtask run -- ...`"
        );
    }
    let bins = build_cmd::build(ws, false)?;
    let mut cmd = std::process::Command::new(&bins.observer);
    cmd.args(&args);
    say(format!("$ {}", display(&cmd)));
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot execute {}", bins.observer.display()))
}

fn test(ws: &Workspace, args: Vec<String>) -> Result<()> {
    let bins = build_cmd::build(ws, false)?;
    // The package test installs this .deb into a clean Debian root.
    let deb = package::build(ws, &bins)?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = ws.cargo();
    // Every test binary runs even after one failed: the total says how many
    // failed, not only the first binary's.
    cmd.args(["test", "--workspace", "--release", "--no-fail-fast", "--"])
        .arg("--include-ignored")
        .args(&args)
        .env("OBSERVER_BIN", &bins.observer)
        .env("RACER_BIN", &bins.racer)
        .env("FAULTBENCH_BIN", &bins.faultbench)
        .env("FUSEFS_BIN", &bins.fusefs)
        .env("XTASK_VM", "1")
        .env("XTASK_BIN", &xtask)
        .env("PCRO_DEB", &deb);
    for (var, path) in [
        ("PCRO_DEB", &deb),
        ("OBSERVER_BIN", &bins.observer),
        ("RACER_BIN", &bins.racer),
        ("FAULTBENCH_BIN", &bins.faultbench),
        ("FUSEFS_BIN", &bins.fusefs),
        ("XTASK_BIN", &xtask),
    ] {
        say(format!("  {var}={}", path.display()));
    }
    say("  XTASK_VM=1");
    if !util::is_root() {
        say("not root: the tests that load eBPF programs will fail");
    }
    say(format!("$ {}", display(&cmd)));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    // cargo prints one "test result:" line per test binary, the last one
    // often a doc-test run of 0; one total at the end says what really ran.
    let mut total = TestTotal::default();
    let stdout = child.stdout.take().context("no stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        total.add(&line);
    }
    let status = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

#[derive(Default)]
struct TestTotal {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotal {
    /// Adds "test result: ok. 58 passed; 0 failed; 1 ignored; ..." lines.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut it = part.split_whitespace();
            if let (Some(n), Some(what)) = (it.next(), it.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TestTotal;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut t = TestTotal::default();
        t.add("test result: ok. 58 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.05s");
        t.add("test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (60, 3, 1));
    }
}
