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
}

impl Binaries {
    pub fn in_profile(ws: &Workspace, debug: bool) -> Self {
        let dir = ws.target.join(if debug { "debug" } else { "release" });
        Self {
            observer: dir.join("observer"),
            racer: dir.join("racer"),
            faultbench: dir.join("faultbench"),
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
        "building observer, racer and faultbench ({})",
        if debug { "debug" } else { "release" }
    ));
    run(&mut cmd).context("building the workspace")?;
    let bins = Binaries::in_profile(ws, debug);
    for (name, path) in [
        ("observer", &bins.observer),
        ("racer", &bins.racer),
        ("faultbench", &bins.faultbench),
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
