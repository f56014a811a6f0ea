//! `cargo xtask package`: a Debian package of the observer, built with
//! `dpkg-deb --build` from a staged tree: the binary, the systemd unit, the
//! man pages (clap_mangen, gzipped as Debian policy wants) and the bash, zsh
//! and fish completions (clap_complete), both from the clap definitions
//! through `observer-docs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    build_cmd::Binaries,
    util::{Workspace, output, run, say},
};

pub const PACKAGE: &str = "pagecache-race-observer";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the .deb from release binaries already built; returns its path.
pub fn build(ws: &Workspace, bins: &Binaries) -> Result<PathBuf> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let out_dir = ws.target.join("package");
    let stage = out_dir.join(format!("{PACKAGE}_{VERSION}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    let docs = out_dir.join("docs");
    let _ = fs::remove_dir_all(&docs);
    run(Command::new(&bins.docs).arg(&docs)).context("generating man pages and completions")?;

    install(&bins.observer, &stage.join("usr/bin/observer"), 0o755)?;
    install(
        &ws.root.join("packaging/observer.service"),
        &stage.join("usr/lib/systemd/system/observer.service"),
        0o644,
    )?;
    let man1 = stage.join("usr/share/man/man1");
    for e in fs::read_dir(docs.join("man"))? {
        let p = e?.path();
        let dest = man1.join(p.file_name().context("a man page name")?);
        install(&p, &dest, 0o644)?;
        // -n: no name or time stamp in the header, so builds repeat.
        run(Command::new("gzip").args(["-9n", "--force"]).arg(&dest))?;
    }
    let completions = docs.join("completions");
    for (file, dir) in [
        (
            "observer.bash",
            "usr/share/bash-completion/completions/observer",
        ),
        ("_observer", "usr/share/zsh/vendor-completions/_observer"),
        (
            "observer.fish",
            "usr/share/fish/vendor_completions.d/observer.fish",
        ),
    ] {
        install(&completions.join(file), &stage.join(dir), 0o644)?;
    }
    let doc = stage.join(format!("usr/share/doc/{PACKAGE}"));
    fs::create_dir_all(&doc)?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: pagecache-race-observer\n\n\
         Files: *\nLicense: MIT or GPL-2.0\n See /usr/share/common-licenses/GPL-2.\n",
    )?;
    let size_kib = du_kib(&stage)?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(debian.join("control"), control(&arch, size_kib))?;
    let deb = out_dir.join(format!("{PACKAGE}_{VERSION}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&deb))?;
    say(format!("package: {}", deb.display()));
    Ok(deb)
}

fn control(arch: &str, size_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: pagecache-race-observer developers <root@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6 (>= 2.34), libgcc-s1\n\
         Section: admin\n\
         Priority: optional\n\
         Description: page-cache race observer (eBPF)\n \
         Watches a running kernel for page-table entries that fault-around\n \
         installs inside hole-punch and truncate invalidation windows, and\n \
         for the stale PTEs and stale data such races leave. Ships a systemd\n \
         unit (JSON lines to the journal, Prometheus metrics on 127.0.0.1:9464),\n \
         man pages and bash, zsh and fish completions.\n"
    )
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().context("a parent")?)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Installed-Size: the staged files, in KiB.
fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            du_kib(&e.path())? * 1024
        } else {
            m.len()
        };
    }
    Ok(total.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_control_file_has_what_dpkg_requires() {
        let c = super::control("amd64", 12);
        for field in [
            "Package: pagecache-race-observer\n",
            "Version: ",
            "Architecture: amd64\n",
            "Maintainer: ",
            "Installed-Size: 12\n",
            "Description: ",
        ] {
            assert!(c.contains(field), "{field}: {c}");
        }
        // Continuation lines of the description begin with a space.
        let desc = c.split_once("Description: ").unwrap().1;
        assert!(desc.lines().skip(1).all(|l| l.starts_with(' ')), "{c}");
    }
}
