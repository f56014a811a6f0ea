//! Debian cloud kernels: download, extraction and module dependencies.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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
}

/// Resolves `spec` (a series such as `6.12`, or an exact release such as
/// `6.1.0-50-cloud-amd64`) to an extracted kernel in the cache, downloading
/// it if needed.
pub fn prepare(ws: &Workspace, spec: &str) -> Result<Kernel> {
    let cache = ws.root.join(".cache").join("kernels");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let apt = Apt::for_spec(ws, spec)?;
    let release = resolve(spec, &cache, &apt)?;
    let dir = cache.join(&release);
    if dir.join(".complete").exists() {
        say(format!("kernel {release}: using cached {}", dir.display()));
    } else {
        let deb = download(&release, &cache, &apt)?;
        extract(&deb, &dir)?;
    }
    let kernel = Kernel {
        vmlinuz: dir.join("boot").join(format!("vmlinuz-{release}")),
        moddir: dir.join("lib").join("modules").join(&release),
        release,
    };
    if !kernel.vmlinuz.is_file() || !kernel.moddir.is_dir() {
        bail!(
            "{} does not hold boot/vmlinuz-{r} and lib/modules/{r}; delete it and retry",
            dir.display(),
            r = kernel.release
        );
    }
    Ok(kernel)
}

/// Debian suites other than the host's (bookworm) that a kernel series
/// comes from, with their apt sources.
struct ExtraSuite {
    /// Kernel series, e.g. `5.10`.
    series: &'static str,
    name: &'static str,
    sources: &'static str,
}

const EXTRA_SUITES: &[ExtraSuite] = &[ExtraSuite {
    series: "5.10",
    name: "bullseye",
    sources: "deb http://deb.debian.org/debian bullseye main\n\
              deb http://deb.debian.org/debian-security bullseye-security main\n",
}];

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

fn resolve(spec: &str, cache: &Path, apt: &Apt) -> Result<String> {
    if !is_series(spec) {
        let release = spec.strip_prefix("linux-image-").unwrap_or(spec);
        return Ok(if release.ends_with("-cloud-amd64") {
            release.to_string()
        } else {
            format!("{release}-cloud-amd64")
        });
    }
    // `6\.1\.` cannot match 6.12.x; the `$` anchor drops -dbg and -unsigned.
    let pattern = format!(
        r"^linux-image-{}\.[0-9].*-cloud-amd64$",
        spec.replace('.', r"\.")
    );
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
    if let Some(newest) = found
        .into_iter()
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
    {
        let release = newest.trim_start_matches("linux-image-").to_string();
        say(format!("kernel {spec}: newest available is {release}"));
        return Ok(release);
    }
    // Offline: fall back to the newest kernel of the series already cached.
    let prefix = format!("{spec}.");
    let cached = fs::read_dir(cache)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .max_by(|a, b| version_key(a).cmp(&version_key(b)));
    match cached {
        Some(release) => {
            say(format!(
                "kernel {spec}: apt knows no package, using cached {release}"
            ));
            Ok(release)
        }
        None => bail!("no package matches {pattern} (apt-cache search), and none is cached"),
    }
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

fn download(release: &str, cache: &Path, apt: &Apt) -> Result<PathBuf> {
    let package = format!("linux-image-{release}");
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
        say(format!(
            "kernel {release}: using downloaded {}",
            deb.display()
        ));
        return Ok(deb);
    }
    say(format!("kernel {release}: downloading {package}"));
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
    cmd.args(["download", &package]).current_dir(&tmp);
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

fn extract(deb: &Path, dir: &Path) -> Result<()> {
    say(format!(
        "extracting {} into {}",
        deb.display(),
        dir.display()
    ));
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.with_file_name(format!(".extract-{name}-{}", process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
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

/// Whether `kernel` can mount `fs`: built in or shipped as a module (for
/// tmpfs: CONFIG_TMPFS in its config, assumed when the config is missing).
pub fn offers(kernel: &Kernel, fs: &str) -> Result<bool> {
    if fs.starts_with("tmpfs") {
        let config = kernel
            .vmlinuz
            .with_file_name(format!("config-{}", kernel.release));
        return Ok(match fs::read_to_string(&config) {
            Ok(text) => text.lines().any(|l| l == "CONFIG_TMPFS=y"),
            Err(_) => true,
        });
    }
    let name = normalize(fs);
    Ok(builtin_modules(&kernel.moddir)?.contains(&name)
        || index_modules(&kernel.moddir.join("kernel"))?.contains_key(&name))
}

pub struct Module {
    pub name: String,
    /// Decompressed: busybox insmod passes the file straight to init_module.
    pub data: Vec<u8>,
}

/// The modules to insmod, dependencies first, for `wanted`; built-in ones
/// are left out.
///
/// Debian's package ships no modules.dep (depmod runs at install time), so
/// the dependencies come from each module's own .modinfo section.
pub fn modules(kernel: &Kernel, wanted: &[String]) -> Result<Vec<Module>> {
    let files = index_modules(&kernel.moddir.join("kernel"))?;
    let builtin = builtin_modules(&kernel.moddir)?;
    let mut ctx = Closure {
        files: &files,
        builtin: &builtin,
        seen: HashSet::new(),
        order: Vec::new(),
    };
    for name in wanted {
        let name = normalize(name);
        if builtin.contains(&name) {
            say(format!("module {name}: built into {}", kernel.release));
            continue;
        }
        if !files.contains_key(&name) {
            bail!(
                "module {name} is neither built into {} nor shipped with it",
                kernel.release
            );
        }
        ctx.visit(&name, &mut Vec::new())?;
    }
    let names: Vec<&str> = ctx.order.iter().map(|m| m.name.as_str()).collect();
    say(format!("modules to load, in order: {}", names.join(" → ")));
    Ok(ctx.order)
}

struct Closure<'a> {
    files: &'a HashMap<String, PathBuf>,
    builtin: &'a HashSet<String>,
    seen: HashSet<String>,
    order: Vec<Module>,
}

impl Closure<'_> {
    fn visit(&mut self, name: &str, stack: &mut Vec<String>) -> Result<()> {
        if self.builtin.contains(name) || !self.seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = self.files.get(name).with_context(|| {
            format!("module {name} (needed by {}) not found", stack.join(" ← "))
        })?;
        let data = decompress(path)?;
        let info =
            modinfo(&data).with_context(|| format!("reading .modinfo of {}", path.display()))?;
        stack.push(name.to_string());
        for dep in info.get("depends").into_iter().flatten() {
            for dep in dep.split(',').filter(|d| !d.is_empty()) {
                self.visit(&normalize(dep), stack)?;
            }
        }
        // Soft "pre" dependencies (libcrc32c → crc32c) often name an alias
        // that a built-in provides; load them only when a module file of
        // that exact name exists.
        for soft in info.get("softdep").into_iter().flatten() {
            for dep in soft_pre(soft) {
                let dep = normalize(dep);
                if self.files.contains_key(&dep) {
                    self.visit(&dep, stack)?;
                }
            }
        }
        stack.pop();
        self.order.push(Module {
            name: name.to_string(),
            data,
        });
        Ok(())
    }
}

fn soft_pre(softdep: &str) -> Vec<&str> {
    let mut pre = Vec::new();
    let mut in_pre = false;
    for word in softdep.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            w if in_pre => pre.push(w),
            _ => {}
        }
    }
    pre
}

/// Module names treat `-` and `_` alike; the kernel reports `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = base.split_once(".ko").map(|(s, _)| s)?;
    Some(normalize(stem))
}

fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut found = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.to_str().and_then(module_name) {
                found.insert(name, path);
            }
        }
    }
    Ok(found)
}

fn builtin_modules(moddir: &Path) -> Result<HashSet<String>> {
    let path = moddir.join("modules.builtin");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text.lines().filter_map(module_name).collect())
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<(&str, &[&str])> = if name.ends_with(".ko.xz") {
        Some(("xz", &["-dc"]))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", &["-dcq"]))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", &["-dc"]))
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some((prog, args)) => {
            let out = crate::util::raw_output(Command::new(prog).args(args).arg(path))?;
            if !out.status.success() {
                bail!(
                    "{prog} could not decompress {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

/// Key/value pairs from the .modinfo section of a relocatable ELF64 module.
fn modinfo(elf: &[u8]) -> Result<BTreeMap<String, Vec<String>>> {
    let u16_at = |o: usize| -> Result<u64> {
        Ok(u16::from_le_bytes(elf.get(o..o + 2).context("truncated ELF")?.try_into()?) as u64)
    };
    let u32_at = |o: usize| -> Result<u64> {
        Ok(u32::from_le_bytes(elf.get(o..o + 4).context("truncated ELF")?.try_into()?) as u64)
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(o..o + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let section = |i: usize| -> Result<(u64, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(h)?,
            u64_at(h + 24)? as usize,
            u64_at(h + 32)? as usize,
        ))
    };
    let (_, strtab_off, strtab_size) = section(shstrndx)?;
    let strtab = elf
        .get(strtab_off..strtab_off + strtab_size)
        .context("section names out of bounds")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = elf.get(off..off + size).context(".modinfo out of bounds")?;
        let mut info: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in data.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            if let Some((k, v)) = entry.split_once('=') {
                info.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        return Ok(info);
    }
    bail!("no .modinfo section")
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
                "6.1.0-50",
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

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/fs/xfs/xfs.ko.xz").as_deref(),
            Some("xfs")
        );
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(soft_pre("pre: crc32c post: foo"), vec!["crc32c"]);
    }
}
