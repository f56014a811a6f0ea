//! Kernel modules of an unpacked Debian kernel: which filesystems it
//! offers, and the modules to insmod for a list, dependencies first.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use observer_tests::FsType;

use super::kernel::Kernel;
use crate::util::say;

/// Why `kernel` cannot mount `fs`, from its config; None when it can: every
/// module the filesystem needs is built in or shipped (for tmpfs:
/// CONFIG_TMPFS in its config, assumed when the config is missing).
pub fn missing(kernel: &Kernel, fs: &str) -> Result<Option<String>> {
    let config = fs::read_to_string(&kernel.config).ok();
    let Some(t) = super::fs_type(fs) else {
        bail!("no such filesystem: {fs}");
    };
    if t == FsType::Tmpfs {
        let set = config
            .as_deref()
            .is_none_or(|c| c.lines().any(|l| l == "CONFIG_TMPFS=y"));
        return Ok((!set).then(|| "CONFIG_TMPFS is not set".to_string()));
    }
    let builtin = builtin_modules(&kernel.moddir)?;
    let shipped = index_modules(&kernel.moddir.join("kernel"))?;
    for &(module, option) in t.modules() {
        let name = normalize(module);
        if builtin.contains(&name) || shipped.contains_key(&name) {
            continue;
        }
        return Ok(Some(
            match config.as_deref().map(|c| config_value(c, option)) {
                Some(Some(v)) if v != "y" && v != "m" => format!("{option} is not set"),
                Some(Some(v)) => format!("{option}={v}, but no {module} module ships with it"),
                Some(None) => format!("its config has no {option}: the source lacks {module}"),
                None => format!("no {module} module (and no config to say why)"),
            },
        ));
    }
    Ok(t.untestable_here()
        .map(|why| format!("the kernel has {fs}, but {why}")))
}

/// The value of `option` in a kernel config: `y`, `m`, or `n` for `# ... is
/// not set`; None when the option is absent.
fn config_value<'a>(config: &'a str, option: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        if let Some(v) = l.strip_prefix(option).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
        let unset = l.strip_prefix("# ")?.strip_prefix(option)?;
        (unset == " is not set").then_some("n")
    })
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
        aliases: None,
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
    /// Crypto algorithm aliases (`crc32c`, `crypto-crc32c`) to the modules
    /// that provide them, read once a soft dependency needs one.
    aliases: Option<HashMap<String, Vec<String>>>,
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
        // Soft "pre" dependencies (libcrc32c → crc32c, f2fs → crc32) name a
        // crypto algorithm, which the kernel would otherwise request_module
        // at mount time, and the guest has no modprobe: the module of that
        // name, else the one that provides it (the generic C one first),
        // unless a built-in does.
        for soft in info.get("softdep").into_iter().flatten() {
            for dep in soft_pre(soft) {
                let dep = normalize(dep);
                if self.files.contains_key(&dep) {
                    self.visit(&dep, stack)?;
                } else if let Some(provider) = self.provider(&dep)? {
                    self.visit(&provider, stack)?;
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

impl Closure<'_> {
    /// The module that provides crypto algorithm `alias`, None when a
    /// built-in does or none does.
    fn provider(&mut self, alias: &str) -> Result<Option<String>> {
        if self.aliases.is_none() {
            let mut index: HashMap<String, Vec<String>> = HashMap::new();
            for (name, path) in self.files {
                if !path.to_string_lossy().contains("/crypto/") {
                    continue;
                }
                let info = modinfo(&decompress(path)?)
                    .with_context(|| format!("reading .modinfo of {}", path.display()))?;
                for a in info.get("alias").into_iter().flatten() {
                    index.entry(normalize(a)).or_default().push(name.clone());
                }
            }
            for providers in index.values_mut() {
                providers.sort_by_key(|p| (!p.ends_with("_generic"), p.clone()));
            }
            self.aliases = Some(index);
        }
        let providers = self.aliases.as_ref().and_then(|a| a.get(alias));
        let Some(providers) = providers else {
            return Ok(None);
        };
        if providers.iter().any(|p| self.builtin.contains(p)) {
            return Ok(None);
        }
        Ok(providers.first().cloned())
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
