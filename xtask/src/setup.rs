use std::{collections::HashSet, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{output, path_with, raw_output, run, say};

/// bpf-linker needs the LLVM 22 development files (the distro's default
/// llvm-config is LLVM 14, too old); the rest is for `cargo xtask vm`.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "qemu-system-x86",
    "busybox-static",
    "xfsprogs",
    "e2fsprogs",
    "btrfs-progs",
    "cpio",
    "xz-utils",
    "zstd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run_setup() -> Result<()> {
    apt_packages().context("installing apt packages")?;
    nightly_rust_src().context("installing the nightly rust-src component")?;
    bpf_linker().context("installing bpf-linker")?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        say(format!(
            "setup: apt packages already installed ({})",
            APT_PACKAGES.join(" ")
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
            .args(APT_PACKAGES),
    )?;
    let installed: HashSet<&str> = std::str::from_utf8(&out.stdout)
        .context("dpkg-query printed non-UTF-8")?
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(APT_PACKAGES
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
