//! The observer's error contract: a bad invocation or environment gets exactly
//! one `observer: error: <reason>` line on stderr, nothing on stdout, and exit
//! status 1, before anything is loaded into the kernel.
//!
//! Argument checks run without privileges. The tests that depend on running
//! as root (or on dropping root) are ignored by default; run them with
//! `cargo test -p observer-tests -- --include-ignored` (as `cargo xtask test`
//! does).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use observer_tests::{is_root, observer_bin};

const NOBODY: u32 = 65534;

fn run_observer(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    // An error path must not start watching: do not hang on a regression.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{shown} still running after 60 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "{shown}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn observer(args: &[&str]) -> Output {
    run_observer(Command::new(observer_bin()).args(args))
}

/// Exit status 1, nothing on stdout and exactly one stderr line, which starts
/// with `observer: error: `; returns that line.
fn one_error_line(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "exit status: {out:?}");
    assert!(out.stdout.is_empty(), "stdout: {out:?}");
    let stderr = String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr");
    assert!(stderr.ends_with('\n'), "stderr not a full line: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one stderr line, got:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("observer: error: "), "{line}");
    assert!(
        line.len() > "observer: error: ".len() + 10,
        "no reason given: {line}"
    );
    line.to_string()
}

#[test]
fn bad_dev_filter_is_one_error_line() {
    for bad in ["8x", "8", "8:", ":0", "a:b", "4096:0", "8:1048576"] {
        let line = one_error_line(&observer(&["--dev", bad]));
        assert!(line.contains("--dev"), "{line}");
        assert!(line.contains(bad), "{line}");
    }
    // A good filter next to a bad one does not hide the bad one.
    let line = one_error_line(&observer(&["--dev", "7:0", "--dev", "8x"]));
    assert!(line.contains("'8x'"), "{line}");
}

#[test]
fn long_or_empty_comm_is_one_error_line() {
    let line = one_error_line(&observer(&["--comm", "a_very_long_task_name"]));
    assert!(line.contains("--comm"), "{line}");
    assert!(line.contains("a_very_long_task_name"), "{line}");
    assert!(line.contains("15"), "names the kernel's limit: {line}");
    let line = one_error_line(&observer(&["--comm", ""]));
    assert!(line.contains("--comm"), "{line}");
}

#[test]
fn bad_duration_is_one_error_line() {
    // `=` keeps clap from reading "-1" as an option.
    for bad in ["0", "-1", "-0.5", "0.0", "nan", "inf"] {
        let arg = format!("--duration={bad}");
        let line = one_error_line(&observer(&[&arg]));
        assert!(line.contains("--duration"), "{line}");
        assert!(line.contains("positive"), "{line}");
    }
}

#[test]
fn bad_ringbuf_size_is_one_error_line() {
    for bad in ["0", "3", "100"] {
        let line = one_error_line(&observer(&["--ringbuf-kib", bad]));
        assert!(line.contains("--ringbuf-kib"), "{line}");
        assert!(line.contains("power of two"), "{line}");
    }
}

#[test]
#[ignore = "needs root: the BTF is only read after the root check; run by cargo xtask test"]
fn missing_btf_is_one_error_line() {
    assert!(is_root(), "needs root");
    let line = one_error_line(&observer(&["--btf", "/nonexistent"]));
    assert!(line.contains("/nonexistent"), "{line}");
    assert!(line.contains("BTF"), "{line}");
    // A file that is not BTF at all.
    let line = one_error_line(&observer(&["--btf", "/proc/self/status"]));
    assert!(line.contains("/proc/self/status"), "{line}");
    assert!(line.contains("BTF"), "{line}");
}

#[test]
#[ignore = "needs root: as root, only the output path can be at fault; run by cargo xtask test"]
fn unwritable_output_is_one_error_line() {
    assert!(is_root(), "needs root");
    // Paths that cannot even be created. (A path that opens but fails on
    // write, like /dev/full, is only found out after loading: not tested.)
    let dir = std::env::temp_dir();
    let in_missing_dir = dir.join(format!("observer-no-such-dir-{}/x", std::process::id()));
    let a_directory = dir.to_str().unwrap().to_string();
    for path in [
        "/proc/nonexistent/x",
        in_missing_dir.to_str().unwrap(),
        &a_directory,
    ] {
        let line = one_error_line(&observer(&["--json", "--output", path]));
        assert!(line.contains("cannot write to"), "{line}");
        assert!(line.contains(path), "{line}");
    }
}

/// A world-readable, world-executable copy of the observer in a fresh
/// directory (the build tree may not be traversable by other users).
struct PublicCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl PublicCopy {
    fn new() -> PublicCopy {
        let dir = std::env::temp_dir().join(format!("observer-errors-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("observer");
        std::fs::copy(observer_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        PublicCopy { dir, bin }
    }

    fn bin(&self) -> &Path {
        &self.bin
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `bin args` as uid/gid 65534. Setting the uid as root also makes std
/// drop the supplementary groups (setgroups(0)).
fn as_nobody(bin: &Path, args: &[&str]) -> Output {
    run_observer(
        Command::new(bin)
            .args(args)
            .current_dir("/")
            .uid(NOBODY)
            .gid(NOBODY),
    )
}

#[test]
#[ignore = "needs root: drops to uid 65534; run by cargo xtask test"]
fn not_root_is_one_error_line() {
    assert!(is_root(), "needs root to switch to uid {NOBODY}");
    let copy = PublicCopy::new();
    // The switch really happens (guards against a vacuous pass)...
    let out = as_nobody(Path::new("id"), &[]);
    let id = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && id.starts_with("uid=65534(") && id.contains(" groups=65534("),
        "{out:?}"
    );
    assert!(!id.contains("(root)"), "{id}");
    // ...and that user can run the copy.
    let out = as_nobody(copy.bin(), &["--version"]);
    assert!(out.status.success(), "nobody cannot run the copy: {out:?}");
    let line = one_error_line(&as_nobody(copy.bin(), &[]));
    assert!(line.contains("root"), "{line}");
    let line = one_error_line(&as_nobody(copy.bin(), &["--json", "--duration", "5"]));
    assert!(line.contains("root"), "{line}");
    // Argument errors still come first, and still in one line.
    let line = one_error_line(&as_nobody(copy.bin(), &["--dev", "8x"]));
    assert!(line.contains("--dev"), "{line}");
}
