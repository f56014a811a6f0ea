//! What a fleet installs: the systemd unit passes `systemd-analyze verify`,
//! and the .deb of `cargo xtask package` installs with `dpkg -i` into a
//! clean Debian root (mmdebstrap), where `observer --version` and `--help`
//! run.
//!
//! Ignored by default: they need the built observer and, for the package,
//! root and the .deb whose path `cargo xtask test` passes in PCRO_DEB.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use observer_tests::{is_root, observer_bin, workspace_root};

fn unit_text() -> String {
    std::fs::read_to_string(workspace_root().join("packaging/observer.service"))
        .expect("packaging/observer.service")
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {}\n{text}", out.status);
    text
}

#[test]
#[ignore = "needs the built observer; run by cargo xtask test"]
fn the_systemd_unit_verifies() {
    let unit = unit_text();
    // What the fleet relies on.
    for line in [
        "LogRateLimitIntervalSec=0",
        "LimitMEMLOCK=infinity",
        "StandardOutput=journal",
        "KillSignal=SIGTERM",
        "ExecStart=/usr/bin/observer --json --metrics 9464",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit");
    }
    // /dev/kmsg is read for the test markers and the kernel's reports.
    assert!(
        !unit.lines().any(|l| l.starts_with("ProtectKernelLogs=")),
        "ProtectKernelLogs would hide /dev/kmsg"
    );
    assert!(!unit.lines().any(|l| l.starts_with("PrivateDevices=")));
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_SYSLOG"] {
        assert!(caps.split_whitespace().any(|c| c == cap), "{cap}: {caps}");
    }

    // verify checks that ExecStart's binary exists: point it at the build.
    let dir = std::env::temp_dir().join(format!("pcro-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("observer.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/observer", observer_bin().to_str().unwrap()),
    )
    .unwrap();
    // --man=no: the man page comes with the package, not on this host.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze (package systemd)");
    std::fs::remove_dir_all(&dir).unwrap();
    let text = ok(&out, "systemd-analyze verify");
    assert!(text.trim().is_empty(), "verify is not clean:\n{text}");
}

/// A minimal Debian 12 root, made once by mmdebstrap and kept as a tarball
/// under .cache/ (reruns only unpack it).
fn debian_root_tarball() -> PathBuf {
    let cache = workspace_root().join(".cache");
    let tar = cache.join("debian-bookworm-minbase.tar");
    if !tar.exists() {
        std::fs::create_dir_all(&cache).unwrap();
        // mmdebstrap picks the format from the name: keep .tar last.
        let partial = cache.join("debian-bookworm-minbase.partial.tar");
        let out = Command::new("mmdebstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&partial)
            .output()
            .expect("run mmdebstrap (package mmdebstrap)");
        ok(&out, "mmdebstrap");
        std::fs::rename(&partial, &tar).unwrap();
    }
    tar
}

fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run chroot")
}

#[test]
#[ignore = "needs root and PCRO_DEB (cargo xtask test builds the package)"]
fn the_package_installs_into_a_clean_debian_root() {
    assert!(is_root(), "needs root (chroot, dpkg in the root)");
    let deb = PathBuf::from(
        std::env::var_os("PCRO_DEB").expect("PCRO_DEB: the .deb of cargo xtask package"),
    );
    assert!(deb.exists(), "{}", deb.display());
    let tar = debian_root_tarball();
    let root = std::env::temp_dir().join(format!("pcro-debroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    ok(
        &Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .output()
            .expect("run tar"),
        "unpacking the root",
    );
    assert!(
        !root.join("usr/bin/observer").exists(),
        "the root is not clean"
    );
    std::fs::copy(&deb, root.join("tmp/observer.deb")).unwrap();

    ok(
        &chroot(&root, &["dpkg", "-i", "/tmp/observer.deb"]),
        "dpkg -i",
    );
    let listed = ok(
        &chroot(&root, &["dpkg", "-L", "pagecache-race-observer"]),
        "dpkg -L",
    );
    for file in [
        "/usr/bin/observer",
        "/usr/lib/systemd/system/observer.service",
        "/usr/share/man/man1/observer.1.gz",
        "/usr/share/man/man1/observer-run.1.gz",
        "/usr/share/bash-completion/completions/observer",
        "/usr/share/zsh/vendor-completions/_observer",
        "/usr/share/fish/vendor_completions.d/observer.fish",
    ] {
        assert!(
            listed.lines().any(|l| l == file),
            "{file} not installed:\n{listed}"
        );
    }
    let version = ok(
        &chroot(&root, &["observer", "--version"]),
        "observer --version",
    );
    assert!(version.starts_with("observer "), "{version}");
    let help = ok(&chroot(&root, &["observer", "--help"]), "observer --help");
    assert!(help.contains("--metrics <[ADDR:]PORT>"), "{help}");
    // The man page is the same clap definitions, gzipped.
    let man = std::fs::read(root.join("usr/share/man/man1/observer.1.gz")).unwrap();
    assert_eq!(&man[..2], &[0x1f, 0x8b], "gzip magic");
    std::fs::remove_dir_all(&root).unwrap();
}
