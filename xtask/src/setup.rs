use std::{collections::HashSet, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{output, path_with, raw_output, run, say};

/// Where a program the project runs comes from on a fresh machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The base image has it (Debian 12 with rustup): checked, not installed.
    Base,
    /// This Debian package provides it.
    Apt(&'static str),
    /// This package from bookworm-backports, at least this major version:
    /// qemu 7.2's TCG sometimes executes a breakpoint the kernel already
    /// patched away (guest lockups, `Oops: int3`); 10.0 runs the guests clean.
    Backports(&'static str, u32),
    /// `cargo install` (bpf-linker).
    Cargo,
}

/// A program that the build, the tests, the benchmark or the matrix run.
pub struct Tool {
    pub command: &'static str,
    pub origin: Origin,
    pub used_by: &'static str,
}

const fn tool(command: &'static str, origin: Origin, used_by: &'static str) -> Tool {
    Tool {
        command,
        origin,
        used_by,
    }
}

/// Every external program the project runs, in one place: setup installs
/// what is missing and then checks that each one is found, and a unit test
/// checks that no source file runs a program missing from this table.
pub const TOOLS: &[Tool] = &[
    tool("cargo", Origin::Base, "every build"),
    tool("rustup", Origin::Base, "setup (nightly rust-src)"),
    tool("bpf-linker", Origin::Cargo, "linking the eBPF object"),
    tool("sh", Origin::Base, "the VM harness's console reader"),
    tool("tar", Origin::Base, "unpacking kernel packages"),
    tool("ldd", Origin::Base, "copying binaries into the initramfs"),
    tool("uname", Origin::Base, "the matrix's host row"),
    tool("mount", Origin::Base, "loop mounts"),
    tool("umount", Origin::Base, "loop mounts"),
    tool(
        "unshare",
        Origin::Base,
        "the fresh-host test (a namespace without tracefs)",
    ),
    tool("dpkg-query", Origin::Base, "setup"),
    tool(
        "dpkg-deb",
        Origin::Base,
        "unpacking kernel packages, building the .deb",
    ),
    tool("apt-get", Origin::Base, "setup, kernel downloads"),
    tool("apt-cache", Origin::Base, "kernel lookups"),
    tool("gzip", Origin::Base, "decompressing kernel modules"),
    tool("xz", Origin::Base, "decompressing kernel modules"),
    tool("zstd", Origin::Base, "decompressing kernel modules"),
    tool("mkfs.ext4", Origin::Base, "ext4 loop mounts and VM disks"),
    tool(
        "mkfs.xfs",
        Origin::Apt("xfsprogs"),
        "xfs loop mounts and VM disks",
    ),
    tool("mkfs.btrfs", Origin::Apt("btrfs-progs"), "btrfs VM disks"),
    tool("mkfs.f2fs", Origin::Apt("f2fs-tools"), "f2fs VM disks"),
    tool("mkntfs", Origin::Apt("ntfs-3g"), "ntfs3 and ntfs VM disks"),
    tool(
        "mkfs.gfs2",
        Origin::Apt("gfs2-utils"),
        "gfs2 VM disks (lock_nolock)",
    ),
    tool(
        "mkfs.ocfs2",
        Origin::Apt("ocfs2-tools"),
        "ocfs2 VM disks (local mount)",
    ),
    tool("cpio", Origin::Apt("cpio"), "the VM initramfs"),
    tool("busybox", Origin::Apt("busybox-static"), "the VM initramfs"),
    tool(
        "qemu-system-x86_64",
        Origin::Backports("qemu-system-x86", 10),
        "the VM tests and the matrix",
    ),
    tool(
        "bpftool",
        Origin::Apt("bpftool"),
        "the detach tests (what stays loaded)",
    ),
    tool(
        "bpftrace",
        Origin::Apt("bpftrace"),
        "the benchmark's peer (a hand-written bpftrace script)",
    ),
    tool(
        "stress-ng",
        Origin::Apt("stress-ng"),
        "the third-party suite tests",
    ),
    tool(
        "prometheus",
        Origin::Apt("prometheus"),
        "the metrics test (a real Prometheus scrapes the observer)",
    ),
    tool(
        "systemd-analyze",
        Origin::Apt("systemd"),
        "the unit test (systemd-analyze verify)",
    ),
    tool(
        "mmdebstrap",
        Origin::Apt("mmdebstrap"),
        "the package test (a clean Debian root)",
    ),
    tool(
        "dpkg",
        Origin::Base,
        "the package test (dpkg -i in the root)",
    ),
    tool(
        "chroot",
        Origin::Base,
        "the package test (running it there)",
    ),
];

/// Libraries, not programs: bpf-linker needs the LLVM 22 development files
/// (the distro's default llvm-config is LLVM 14, too old).
const LIBRARIES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
];

/// What apt installs: the libraries and every tool's package.
fn apt_packages_wanted() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = LIBRARIES.to_vec();
    for t in TOOLS {
        if let Origin::Apt(p) = t.origin
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run_setup() -> Result<()> {
    apt_packages().context("installing apt packages")?;
    backports().context("installing from bookworm-backports")?;
    nightly_rust_src().context("installing the nightly rust-src component")?;
    bpf_linker().context("installing bpf-linker")?;
    check_tools()
}

/// Every tool of [`TOOLS`] is on PATH now, whatever provided it.
fn check_tools() -> Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|t| find_program(t.command).is_none())
        .map(|t| match t.origin {
            Origin::Apt(p) | Origin::Backports(p, _) => {
                format!("{} (package {p}, for {})", t.command, t.used_by)
            }
            _ => format!("{} (for {})", t.command, t.used_by),
        })
        .collect();
    if !missing.is_empty() {
        bail!("not found after setup: {}", missing.join("; "));
    }
    Ok(())
}

/// Debian's bookworm-backports, for the packages of [`Origin::Backports`]
/// (apt pins backports low: nothing else comes from it).
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BACKPORTS: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
                         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// The major version `command --version` prints first ("QEMU emulator
/// version 10.0.2 ..." → 10).
fn major_version(command: &str) -> Option<u32> {
    let out = raw_output(Command::new(command).arg("--version")).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.contains('.'))
        .and_then(|w| w.split('.').next()?.parse().ok())
}

fn backports() -> Result<()> {
    let wanted: Vec<(&Tool, &str, u32)> = TOOLS
        .iter()
        .filter_map(|t| match t.origin {
            Origin::Backports(p, major) => Some((t, p, major)),
            _ => None,
        })
        .filter(|(t, _, major)| major_version(t.command).is_none_or(|v| v < *major))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "apt-get needs root; run as root or install from bookworm-backports: {}",
            wanted.iter().map(|w| w.1).collect::<Vec<_>>().join(" ")
        );
    }
    if !std::path::Path::new(BACKPORTS_SOURCES).exists() {
        say(format!(
            "setup: adding bookworm-backports ({BACKPORTS_SOURCES})"
        ));
        std::fs::write(BACKPORTS_SOURCES, BACKPORTS)
            .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ])
        .args(wanted.iter().map(|w| w.1))
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (t, p, major) in wanted {
        match major_version(t.command) {
            Some(v) if v >= major => say(format!("setup: {} {v} from {p}", t.command)),
            v => bail!(
                "{} is version {v:?} after installing {p}, want {major}",
                t.command
            ),
        }
    }
    Ok(())
}

/// The first `name` on PATH (which util::fix_path extended with the sbin
/// directories and cargo's bin).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_packages() -> Result<()> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        say(format!(
            "setup: apt packages already installed ({})",
            apt_packages_wanted().join(" ")
        ));
        return Ok(());
    }
    say(format!(
        "setup: installing missing apt packages: {}",
        missing.join(" ")
    ));
    if !crate::util::is_root() {
        bail!(
            "apt-get needs root; run as root or install: {}",
            missing.join(" ")
        );
    }
    // The package lists on a fresh machine are often empty or stale.
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing_apt_packages()?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

fn missing_apt_packages() -> Result<Vec<String>> {
    // dpkg-query exits non-zero when some package is unknown but still
    // reports the known ones, so only its stdout matters.
    let out = raw_output(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
            .args(apt_packages_wanted()),
    )?;
    let installed: HashSet<&str> = std::str::from_utf8(&out.stdout)
        .context("dpkg-query printed non-UTF-8")?
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(apt_packages_wanted()
        .iter()
        .filter(|p| !installed.contains(*p))
        .map(|p| p.to_string())
        .collect())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("setup: installing the nightly toolchain (needed for -Z build-std of the eBPF crate)");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components
        .lines()
        .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src-"))
    {
        say("setup: nightly rust-src already installed");
        return Ok(());
    }
    say("setup: adding rust-src to nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let current = raw_output(Command::new("bpf-linker").arg("--version"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match &current {
        Some(v) if v.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION) => {
            say(format!("setup: {v} already installed"));
            return Ok(());
        }
        Some(v) => say(format!(
            "setup: replacing {v} with bpf-linker {BPF_LINKER_VERSION}"
        )),
        None => say(format!(
            "setup: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)"
        )),
    }
    // llvm-sys finds LLVM through the first llvm-config on PATH, and
    // /usr/bin/llvm-config is LLVM 14; put LLVM 22's first.
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path_with(LLVM_BIN)))
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::TOOLS;

    /// The program names a source text runs: `Command::new("x")`,
    /// `.command("x")`, and `"mkfs.*"` literals (picked from tables).
    fn programs_run(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for opener in ["Command::new(\"", ".command(\"", "\"mkfs."] {
            let mut rest = text;
            while let Some(i) = rest.find(opener) {
                rest = &rest[i + opener.len()..];
                let Some(end) = rest.find('"') else { break };
                let name = &rest[..end];
                // A message that merely names a tool is not a call.
                if name.contains(char::is_whitespace) {
                    continue;
                }
                let name = if opener == "\"mkfs." {
                    format!("mkfs.{name}")
                } else {
                    name.to_owned()
                };
                out.push(name);
            }
        }
        out
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_program_the_sources_run_is_in_the_tool_table() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut files = Vec::new();
        sources(root, &mut files);
        assert!(files.len() > 20, "found only {files:?}");
        let known: Vec<&str> = TOOLS.iter().map(|t| t.command).collect();
        let mut unknown = Vec::new();
        for f in &files {
            if f.ends_with("xtask/src/setup.rs") {
                continue;
            }
            for p in programs_run(&fs::read_to_string(f).unwrap()) {
                if !known.contains(&p.as_str()) {
                    unknown.push(format!("{}: {p}", f.display()));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "programs run but missing from setup::TOOLS: {unknown:?}"
        );
    }

    #[test]
    fn the_scanner_sees_calls_and_mkfs_tables() {
        let text = r#"Command::new("bpftool").arg(x); apt.command("apt-get"); ("mkfs.xfs", &[])"#;
        assert_eq!(programs_run(text), ["bpftool", "apt-get", "mkfs.xfs"]);
    }
}
