use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{
    setup,
    util::{Workspace, run, say},
};

pub struct Binaries {
    pub observer: PathBuf,
    pub racer: PathBuf,
    pub faultbench: PathBuf,
    /// The FUSE server the fuse tests mount.
    pub fusefs: PathBuf,
    /// Writes the man pages and completions (`cargo xtask package`).
    pub docs: PathBuf,
}

impl Binaries {
    pub fn in_profile(ws: &Workspace, debug: bool) -> Self {
        let dir = ws.target.join(if debug { "debug" } else { "release" });
        Self {
            observer: dir.join("observer"),
            racer: dir.join("racer"),
            faultbench: dir.join("faultbench"),
            fusefs: dir.join("fusefs"),
            docs: dir.join("observer-docs"),
        }
    }
}

pub fn build(ws: &Workspace, debug: bool) -> Result<Binaries> {
    setup::run_setup()?;
    let mut cmd = ws.cargo();
    cmd.arg("build");
    if !debug {
        cmd.arg("--release");
    }
    cmd.args(["-p", "observer", "-p", "observer-tests"]);
    say(format!(
        "building observer, racer, faultbench and fusefs ({})",
        if debug { "debug" } else { "release" }
    ));
    run(&mut cmd).context("building the workspace")?;
    let bins = Binaries::in_profile(ws, debug);
    for (name, path) in [
        ("observer", &bins.observer),
        ("racer", &bins.racer),
        ("faultbench", &bins.faultbench),
        ("fusefs", &bins.fusefs),
    ] {
        if path.exists() {
            say(format!("  {name:<10} {}", path.display()));
        } else {
            say(format!(
                "  {name:<10} {} (not produced by this build)",
                path.display()
            ));
        }
    }
    Ok(bins)
}

/// The release binaries: built now, or as they are with `no_build` or under
/// `cargo xtask test` (XTASK_VM=1), where they are fresh and a nested cargo
/// build would wait forever on the lock the outer `cargo test` holds.
pub fn fresh_or_as_they_are(ws: &Workspace, no_build: bool) -> Result<Binaries> {
    let nested = std::env::var_os("XTASK_VM").is_some_and(|v| v == "1");
    if nested && !no_build {
        say("XTASK_VM=1: using the binaries `cargo xtask test` built");
    }
    if no_build || nested {
        Ok(Binaries::in_profile(ws, false))
    } else {
        build(ws, false)
    }
}
