//! Debian kernels: finding, downloading and unpacking them. A spec is a
//! series (`6.12`) or an exact release (`6.1.0-50`), with an optional
//! flavour after a colon: `cloud-amd64` (the default: small, what test VMs
//! boot) or `amd64` (the generic one, whose modules include the filesystems
//! the cloud flavour leaves out: f2fs, ntfs3, gfs2, ocfs2).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{self, Command},
};

use anyhow::{Context, Result, bail};

use crate::util::{Workspace, output, run, say};

pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub moddir: PathBuf,
    /// The kernel's .config (`CONFIG_TMPFS`).
    pub config: PathBuf,
    /// Where it came from: `SUITE VERSION` of its `linux-image-RELEASE`
    /// package, e.g. `sid 7.2.13-1`.
    pub package: String,
}

/// Where an unpacked kernel records its suite and package version.
const PACKAGE_FILE: &str = ".package";

/// A Debian kernel flavour: the suffix of its releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    Generic,
}

impl Flavour {
    const ALL: [Flavour; 2] = [Flavour::Cloud, Flavour::Generic];

    /// Debian's name, the last part of a release such as
    /// `7.3.4+deb13-cloud-amd64`.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Cloud => "cloud-amd64",
            Flavour::Generic => "amd64",
        }
    }

    /// Whether `release` (or a package name ending in one) is of this
    /// flavour: `-amd64` alone is the generic one, not `-cloud-amd64` nor
    /// `-rt-amd64`.
    fn owns(self, release: &str) -> bool {
        let Some(rest) = release.strip_suffix(self.name()) else {
            return false;
        };
        let Some(rest) = rest.strip_suffix('-') else {
            return false;
        };
        // What precedes the flavour is the ABI or version: it ends in a
        // digit (`6.1.0-40`, `7.3.4+deb13`), never in `-cloud` or `-rt`.
        rest.ends_with(|c: char| c.is_ascii_digit())
    }
}

/// A parsed `--kernel` spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec<'a> {
    /// The series (`6.12`) or release (`6.1.0-50`) part.
    pub version: &'a str,
    pub flavour: Flavour,
}

impl<'a> Spec<'a> {
    pub fn parse(spec: &'a str) -> Result<Self> {
        let spec = spec.strip_prefix("linux-image-").unwrap_or(spec);
        let (version, flavour) = match spec.split_once(':') {
            None => (spec, Flavour::Cloud),
            Some((version, name)) => match Flavour::ALL.into_iter().find(|f| f.name() == name) {
                Some(f) => (version, f),
                None => bail!(
                    "kernel {spec}: flavour {name:?} is not one of {}",
                    Flavour::ALL.map(Flavour::name).join(", ")
                ),
            },
        };
        if version.is_empty() {
            bail!("kernel {spec:?}: no series or release before the flavour");
        }
        Ok(Spec { version, flavour })
    }

    fn is_series(&self) -> bool {
        is_series(self.version)
    }
}

/// Resolves `spec` (a series such as `6.12`, or an exact release such as
/// `6.1.0-50-cloud-amd64`, optionally `:FLAVOUR`) to an extracted kernel in
/// the cache, downloading it if needed. A series whose newest package can
/// no longer be downloaded (sid drops superseded versions at once) falls
/// back to the newest kernel of that series and flavour already in the
/// cache.
pub fn prepare(ws: &Workspace, spec: &str) -> Result<Kernel> {
    let cache = ws.root.join(".cache").join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let spec = Spec::parse(spec)?;
    let apt = Apt::for_spec(ws, spec.version)?;
    let mut release = resolve(spec, &cache, &apt)?;
    let dir = cache.join(&release);
    if dir.join(".complete").exists() {
        say(format!("kernel {release}: using cached {}", dir.display()));
    } else if let Err(e) = fetch(&release, &cache, &apt) {
        if !spec.is_series() {
            return Err(e);
        }
        say(format!("kernel {release}: {e:#}"));
        release = refetch(spec, &release, &cache, &apt).map_err(|again| {
            e.context(format!(
                "and no other kernel of {} could be had: {again:#}",
                spec.version
            ))
        })?;
    }
    locate(&cache.join(&release), release)
}

/// After `failed` could not be downloaded: the package lists were stale
/// (the suite has moved on); fresh lists may name a newer kernel of the
/// series, else the newest one in the cache is used.
fn refetch(spec: Spec, failed: &str, cache: &Path, apt: &Apt) -> Result<String> {
    if crate::util::is_root() && apt.update().is_ok() {
        let available = apt_search(apt, &series_pattern(spec.version))?;
        let available: Vec<String> = available
            .iter()
            .map(|p| p.trim_start_matches("linux-image-").to_string())
            .collect();
        if let Some(Choice::Apt(release)) = choose(spec, &available, &[])
            && release != failed
        {
            match fetch(&release, cache, apt) {
                Ok(()) => return Ok(release),
                Err(e) => say(format!("kernel {release}: {e:#}")),
            }
        }
    }
    match choose(spec, &[], &cached_releases(cache)?) {
        Some(Choice::Cached(release)) => {
            say(format!(
                "kernel {}: {failed} is gone from the archive; using the newest cached, {release}",
                spec.version
            ));
            Ok(release)
        }
        _ => bail!(
            "no {} kernel of {} is cached",
            spec.flavour.name(),
            spec.version
        ),
    }
}

/// The unpacked kernel in `dir`: up to 6.x Debian ships
/// `boot/vmlinuz-RELEASE` and `lib/modules/RELEASE`; from 7.x the image is
/// `usr/lib/modules/RELEASE/vmlinuz` (in linux-binary-RELEASE) beside the
/// modules (linux-modules-RELEASE) and modules.builtin and config
/// (linux-base-RELEASE).
fn locate(dir: &Path, release: String) -> Result<Kernel> {
    let moddir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| dir.join(d).join(&release))
        .find(|d| d.is_dir());
    let split = moddir.as_ref().map(|m| m.join("vmlinuz"));
    let (vmlinuz, config) = match split.filter(|v| v.is_file()) {
        Some(v) => (v.clone(), v.with_file_name("config")),
        None => (
            dir.join("boot").join(format!("vmlinuz-{release}")),
            dir.join("boot").join(format!("config-{release}")),
        ),
    };
    let Some(moddir) = moddir.filter(|_| vmlinuz.is_file()) else {
        bail!(
            "{} holds neither boot/vmlinuz-{r} with lib/modules/{r} nor \
             usr/lib/modules/{r}/vmlinuz; delete it and retry",
            dir.display(),
            r = release
        );
    };
    let package = fs::read_to_string(dir.join(PACKAGE_FILE))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Ok(Kernel {
        release,
        vmlinuz,
        moddir,
        config,
        package,
    })
}

/// Debian suites other than the host's (bookworm) that a kernel series
/// comes from, with their apt sources.
struct ExtraSuite {
    /// Kernel series, e.g. `5.10`.
    series: &'static str,
    name: &'static str,
    sources: &'static str,
}

const EXTRA_SUITES: &[ExtraSuite] = &[
    ExtraSuite {
        series: "5.10",
        name: "bullseye",
        sources: "deb http://deb.debian.org/debian bullseye main\n\
                  deb http://deb.debian.org/debian-security bullseye-security main\n",
    },
    // sid drops a version as soon as the next one is uploaded: see
    // `refetch` for what happens when its lists are stale.
    ExtraSuite {
        series: "7.2",
        name: "sid",
        sources: "deb http://deb.debian.org/debian sid main\n",
    },
    ExtraSuite {
        series: "7.3",
        name: "trixie-backports",
        sources: "deb http://deb.debian.org/debian trixie-backports main\n",
    },
];

/// How to ask apt about kernel packages: the host's own configuration, or
/// a private sources list and package lists under `.cache/apt/SUITE` that
/// leave the host's apt state alone. apt verifies the suite's signatures
/// with the keyrings Debian 12 ships (debian-archive-keyring).
struct Apt {
    /// `-o` options for apt-get and apt-cache; empty for the host's apt.
    options: Vec<String>,
    /// `(suite, lists directory)` for a private suite.
    private: Option<(&'static str, PathBuf)>,
}

impl Apt {
    fn for_spec(ws: &Workspace, spec: &str) -> Result<Self> {
        let release = spec.strip_prefix("linux-image-").unwrap_or(spec);
        let Some(suite) = EXTRA_SUITES.iter().find(|s| {
            release == s.series
                || release
                    .strip_prefix(s.series)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
        }) else {
            return Ok(Self {
                options: Vec::new(),
                private: None,
            });
        };
        let dir = ws.root.join(".cache").join("apt").join(suite.name);
        let lists = dir.join("lists");
        fs::create_dir_all(lists.join("partial"))
            .with_context(|| format!("creating {}", lists.display()))?;
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(suite.sources) {
            fs::write(&sources, suite.sources)
                .with_context(|| format!("writing {}", sources.display()))?;
        }
        let options = [
            format!("Dir::Etc::sourcelist={}", sources.display()),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={}", lists.display()),
            // No binary caches: the host's pkgcache.bin must not end up
            // describing another suite.
            "Dir::Cache::pkgcache=".to_string(),
            "Dir::Cache::srcpkgcache=".to_string(),
            "Acquire::Languages=none".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Self {
            options,
            private: Some((suite.name, lists)),
        })
    }

    /// The suite that offers `version` of `package`; the private suite's
    /// name, or `unknown`, when apt cannot tell (offline, no lists).
    fn suite_of(&self, package: &str, version: &str) -> String {
        output(self.command("apt-cache").args(["policy", package]))
            .ok()
            .and_then(|p| policy_suite(&p, version))
            .or_else(|| self.private.as_ref().map(|(s, _)| s.to_string()))
            .unwrap_or_else(|| "unknown".into())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// Whether the private lists hold any package index yet.
    fn has_lists(&self) -> bool {
        let Some((_, lists)) = &self.private else {
            return true;
        };
        fs::read_dir(lists).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    fn update(&self) -> Result<()> {
        if let Some((suite, lists)) = &self.private {
            say(format!(
                "apt: fetching the {suite} package lists into {}",
                lists.display()
            ));
        }
        run(self
            .command("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

fn is_series(spec: &str) -> bool {
    let mut parts = spec.split('.');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn resolve(spec: Spec, cache: &Path, apt: &Apt) -> Result<String> {
    if !spec.is_series() {
        let release = spec.version;
        return Ok(if Flavour::ALL.into_iter().any(|f| f.owns(release)) {
            release.to_string()
        } else {
            format!("{release}-{}", spec.flavour.name())
        });
    }
    let pattern = series_pattern(spec.version);
    // Private lists are fetched once and kept; the host's are the host's.
    if !apt.has_lists()
        && crate::util::is_root()
        && let Err(e) = apt.update()
    {
        say(format!("apt-get update failed: {e:#}"));
    }
    let mut found = apt_search(apt, &pattern)?;
    if found.is_empty() && crate::util::is_root() {
        say("no kernel packages in the apt lists; running apt-get update");
        match apt.update() {
            Ok(()) => found = apt_search(apt, &pattern)?,
            Err(e) => say(format!("apt-get update failed: {e:#}")),
        }
    }
    let available: Vec<String> = found
        .iter()
        .map(|p| p.trim_start_matches("linux-image-").to_string())
        .collect();
    match choose(spec, &available, &cached_releases(cache)?) {
        Some(Choice::Apt(release)) => {
            say(format!(
                "kernel {}: newest available is {release}",
                spec.version
            ));
            Ok(release)
        }
        Some(Choice::Cached(release)) => {
            say(format!(
                "kernel {}: apt knows no package (offline, or the suite has moved on), using cached {release}",
                spec.version
            ));
            Ok(release)
        }
        None => bail!(
            "no {} package matches {pattern} (apt-cache search), and none is cached",
            spec.flavour.name()
        ),
    }
}

/// `apt-cache search` pattern for a series' amd64 kernels of every flavour
/// (`choose` keeps the one asked for): `6\.1\.` cannot match 6.12.x; the `$`
/// anchor drops -dbg and -unsigned.
fn series_pattern(series: &str) -> String {
    format!(
        r"^linux-image-{}\.[0-9].*-amd64$",
        series.replace('.', r"\.")
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// The newest release of the series in the package lists.
    Apt(String),
    /// None there: the newest one already unpacked in the cache.
    Cached(String),
}

/// Which release of series `spec` to use, among those the package lists
/// offer and those unpacked in the cache: the newest of its flavour the
/// lists offer, else the newest cached one (when the suite has moved on to
/// another series, or there is no network). Versions compare numerically,
/// and `7.2` does not take 7.20.x.
fn choose(spec: Spec, available: &[String], cached: &[String]) -> Option<Choice> {
    let prefix = format!("{}.", spec.version);
    let newest = |names: &[String]| {
        names
            .iter()
            .filter(|n| n.starts_with(&prefix) && spec.flavour.owns(n))
            .max_by(|a, b| version_key(a).cmp(&version_key(b)))
            .cloned()
    };
    newest(available)
        .map(Choice::Apt)
        .or_else(|| newest(cached).map(Choice::Cached))
}

/// Releases unpacked completely in the cache.
fn cached_releases(cache: &Path) -> Result<Vec<String>> {
    Ok(fs::read_dir(cache)
        .with_context(|| format!("listing {}", cache.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

fn apt_search(apt: &Apt, pattern: &str) -> Result<Vec<String>> {
    let out = output(
        apt.command("apt-cache")
            .args(["search", "--names-only", pattern]),
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Orders `6.1.0-9` before `6.1.0-56`, which a plain string sort would not.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Downloads `linux-image-RELEASE` and the packages it depends on that
/// carry the kernel (from 7.x it is an empty package that depends on
/// linux-binary-, linux-modules- and linux-base-RELEASE), and unpacks them
/// all into `cache/RELEASE`, with the suite and version in [`PACKAGE_FILE`].
fn fetch(release: &str, cache: &Path, apt: &Apt) -> Result<()> {
    let image = format!("linux-image-{release}");
    let deb = download(&image, cache, apt)?;
    let field = |deb: &Path, name: &str| -> Result<String> {
        Ok(
            output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?
                .trim()
                .to_string(),
        )
    };
    let version = field(&deb, "Version")?;
    let mut debs = vec![deb.clone()];
    for dep in kernel_depends(&field(&deb, "Depends")?, release) {
        debs.push(download(&dep, cache, apt)?);
    }
    let suite = apt.suite_of(&image, &version);
    extract(&debs, &cache.join(release), &format!("{suite} {version}"))
}

/// The packages of a `Depends` field that hold part of the kernel: plain
/// (no alternatives) `linux-*` names that carry the release. Tools such as
/// `initramfs-tools | dracut` and 6.x's unversioned `linux-base` are not.
fn kernel_depends(depends: &str, release: &str) -> Vec<String> {
    depends
        .split(',')
        .map(str::trim)
        .filter(|group| !group.contains('|'))
        .filter_map(|group| group.split_whitespace().next())
        .filter(|name| name.starts_with("linux-") && name.contains(release))
        .map(str::to_string)
        .collect()
}

/// `PACKAGE_*.deb` in the cache, downloaded first if need be.
fn download(package: &str, cache: &Path, apt: &Apt) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    let find = |dir: &Path| -> Result<Option<PathBuf>> {
        Ok(fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            }))
    };
    if let Some(deb) = find(cache)? {
        say(format!("{package}: using downloaded {}", deb.display()));
        return Ok(deb);
    }
    say(format!("downloading {package}"));
    // A private directory, renamed into place, keeps concurrent runs from
    // seeing half-written files.
    let tmp = cache.join(format!(".download-{}", process::id()));
    fs::create_dir_all(&tmp)?;
    let mut cmd = apt.command("apt-get");
    // As root, apt drops to the _apt user to download and then complains
    // that _apt cannot write to our directory; stay root instead.
    if crate::util::is_root() {
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args(["download", package]).current_dir(&tmp);
    let result = run(&mut cmd)
        .with_context(|| format!("downloading {package}; is it still in the apt archive?"))
        .and_then(|()| find(&tmp)?.context("apt-get download produced no .deb"))
        .and_then(|deb| {
            let dest = cache.join(deb.file_name().unwrap());
            fs::rename(&deb, &dest)?;
            Ok(dest)
        });
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn extract(debs: &[PathBuf], dir: &Path, package: &str) -> Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.with_file_name(format!(".extract-{name}-{}", process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for deb in debs {
        say(format!(
            "extracting {} into {}",
            deb.display(),
            dir.display()
        ));
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    fs::write(tmp.join(PACKAGE_FILE), format!("{package}\n"))?;
    fs::write(tmp.join(".complete"), "")?;
    if fs::rename(&tmp, dir).is_err() {
        // Another run finished first, or a stale partial directory is in
        // the way (no .complete marker); only the latter needs replacing.
        if dir.join(".complete").exists() {
            let _ = fs::remove_dir_all(&tmp);
        } else {
            fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
            fs::rename(&tmp, dir).with_context(|| format!("moving into {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The suite `apt-cache policy` names for `version` of a package: the
/// distribution part of the first source line under that version, e.g.
/// `bookworm-backports` from `100 http://deb.debian.org/debian
/// bookworm-backports/main amd64 Packages`.
fn policy_suite(policy: &str, version: &str) -> Option<String> {
    let mut lines = policy.lines().skip_while(|l| l.trim() != "Version table:");
    lines.find(|l| {
        l.trim_start_matches([' ', '*'].as_slice())
            .split_whitespace()
            .next()
            == Some(version)
    })?;
    let source = lines.next()?;
    let dist = source.split_whitespace().nth(2)?;
    Some(dist.split('/').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-6.1.0-56-cloud-amd64");
        assert!(
            version_key("6.12.117+deb12-cloud-amd64") > version_key("6.12.99+deb12-cloud-amd64")
        );
    }

    #[test]
    fn series_or_exact() {
        assert!(is_series("6.12"));
        assert!(is_series("6.1"));
        assert!(!is_series("6.1.0-50"));
        assert_eq!(
            resolve(
                spec("6.1.0-50"),
                Path::new("/nonexistent"),
                &Apt {
                    options: Vec::new(),
                    private: None
                }
            )
            .unwrap(),
            "6.1.0-50-cloud-amd64"
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn spec(s: &str) -> Spec<'_> {
        Spec::parse(s).unwrap()
    }

    #[test]
    fn specs_name_a_flavour_after_a_colon() {
        assert_eq!(
            spec("7.3"),
            Spec {
                version: "7.3",
                flavour: Flavour::Cloud
            }
        );
        assert_eq!(spec("7.3:amd64").flavour, Flavour::Generic);
        assert_eq!(spec("7.3:cloud-amd64").flavour, Flavour::Cloud);
        assert_eq!(spec("linux-image-6.1.0-50:amd64").version, "6.1.0-50");
        let e = Spec::parse("7.3:generic").unwrap_err().to_string();
        assert!(e.contains("cloud-amd64, amd64"), "{e}");
        assert!(Spec::parse(":amd64").is_err());
    }

    #[test]
    fn the_generic_flavour_is_amd64_alone() {
        let g = Flavour::Generic;
        assert!(g.owns("7.3.4+deb13-amd64"));
        assert!(g.owns("6.1.0-40-amd64"));
        assert!(!g.owns("7.3.4+deb13-cloud-amd64"));
        assert!(!g.owns("6.1.0-40-rt-amd64"));
        assert!(Flavour::Cloud.owns("6.1.0-40-cloud-amd64"));
        assert!(!Flavour::Cloud.owns("6.1.0-40-amd64"));
        let lists = names(&[
            "7.3.4+deb13-cloud-amd64",
            "7.3.4+deb13-amd64",
            "7.3.4+deb13-rt-amd64",
        ]);
        assert_eq!(
            choose(spec("7.3:amd64"), &lists, &[]),
            Some(Choice::Apt("7.3.4+deb13-amd64".into()))
        );
        assert_eq!(
            choose(spec("7.3"), &lists, &[]),
            Some(Choice::Apt("7.3.4+deb13-cloud-amd64".into()))
        );
        // A cached cloud kernel is no fallback for the generic flavour.
        assert_eq!(
            choose(spec("7.3:amd64"), &[], &names(&["7.3.4+deb13-cloud-amd64"])),
            None
        );
        let none = Apt {
            options: Vec::new(),
            private: None,
        };
        let cache = Path::new("/nonexistent");
        assert_eq!(
            resolve(spec("6.1.0-50:amd64"), cache, &none).unwrap(),
            "6.1.0-50-amd64"
        );
        assert_eq!(
            resolve(spec("6.1.0-50-amd64"), cache, &none).unwrap(),
            "6.1.0-50-amd64"
        );
    }

    /// sid keeps one version per series and drops it when the suite moves
    /// on: then the newest cached kernel of the series is used, compared
    /// numerically, never one of another series.
    #[test]
    fn a_series_the_suite_left_falls_back_to_the_newest_cached() {
        let cached = names(&[
            "7.2.9+deb14-cloud-amd64",
            "7.2.13+deb14-cloud-amd64",
            "7.20.1+deb14-cloud-amd64",
            "7.3.4+deb13-cloud-amd64",
            "6.12.85+deb12-cloud-amd64",
        ]);
        // sid moved on to 7.4: nothing of 7.2 in its lists any more.
        let sid = names(&["7.4.1+deb14-cloud-amd64"]);
        assert_eq!(
            choose(spec("7.2"), &sid, &cached),
            Some(Choice::Cached("7.2.13+deb14-cloud-amd64".into()))
        );
        assert_eq!(
            choose(spec("7.2"), &[], &cached),
            Some(Choice::Cached("7.2.13+deb14-cloud-amd64".into()))
        );
        // The lists still offer the series: their newest wins, even over a
        // newer cached one (the lists are what the suite holds).
        let lists = names(&["7.2.12+deb14-cloud-amd64", "7.2.10+deb14-cloud-amd64"]);
        assert_eq!(
            choose(spec("7.2"), &lists, &cached),
            Some(Choice::Apt("7.2.12+deb14-cloud-amd64".into()))
        );
        assert_eq!(choose(spec("7.5"), &sid, &cached), None);
        assert_eq!(choose(spec("7.2"), &[], &[]), None);
    }

    #[test]
    fn the_kernel_parts_of_a_meta_package() {
        let r = "7.2.13+deb14-cloud-amd64";
        let depends = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
            linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
            linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
            linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)";
        assert_eq!(
            kernel_depends(depends, r),
            names(&[
                "linux-base-7.2.13+deb14-cloud-amd64",
                "linux-binary-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64",
            ])
        );
        // 6.x: the image is the package itself.
        let old =
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool";
        assert!(kernel_depends(old, "6.12.85+deb12-cloud-amd64").is_empty());
    }

    #[test]
    fn the_suite_of_a_version_from_apt_policy() {
        let policy = "linux-image-6.12.85+deb12-cloud-amd64:
  Installed: (none)
  Candidate: 6.12.85-1~bpo12+1
  Version table:
     6.12.85-1~bpo12+1 100
        100 http://deb.debian.org/debian bookworm-backports/main amd64 Packages
     6.12.80-1~bpo12+1 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
";
        assert_eq!(
            policy_suite(policy, "6.12.85-1~bpo12+1").as_deref(),
            Some("bookworm-backports")
        );
        assert_eq!(
            policy_suite(policy, "6.12.80-1~bpo12+1").as_deref(),
            Some("bookworm")
        );
        assert_eq!(policy_suite(policy, "6.12.1-1"), None);
    }

    #[test]
    fn both_package_layouts_are_found() {
        let root = std::env::temp_dir().join(format!("xtask-kernel-layout-{}", process::id()));
        let _ = fs::remove_dir_all(&root);
        let split = root.join("7.2.13+deb14-cloud-amd64");
        let m = split.join("usr/lib/modules/7.2.13+deb14-cloud-amd64");
        fs::create_dir_all(&m).unwrap();
        fs::write(m.join("vmlinuz"), "").unwrap();
        fs::write(split.join(PACKAGE_FILE), "sid 7.2.13-1\n").unwrap();
        let k = locate(&split, "7.2.13+deb14-cloud-amd64".into()).unwrap();
        assert_eq!(
            (k.vmlinuz, k.moddir.clone()),
            (m.join("vmlinuz"), m.clone())
        );
        assert_eq!(k.config, m.join("config"));
        assert_eq!(k.package, "sid 7.2.13-1");

        let old = root.join("6.12.85+deb12-cloud-amd64");
        let m = old.join("lib/modules/6.12.85+deb12-cloud-amd64");
        fs::create_dir_all(&m).unwrap();
        fs::create_dir_all(old.join("boot")).unwrap();
        fs::write(old.join("boot/vmlinuz-6.12.85+deb12-cloud-amd64"), "").unwrap();
        let k = locate(&old, "6.12.85+deb12-cloud-amd64".into()).unwrap();
        assert_eq!(k.moddir, m);
        assert_eq!(k.package, "unknown");
        assert!(locate(&root.join("none"), "7.3.4+deb13-cloud-amd64".into()).is_err());
        let _ = fs::remove_dir_all(&root);
    }
}
