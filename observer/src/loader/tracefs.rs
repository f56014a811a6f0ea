//! Tracepoint layouts as the running kernel describes them in tracefs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn root() -> Option<PathBuf> {
    ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

pub fn exists(category: &str, name: &str) -> bool {
    root().is_some_and(|r| r.join("events").join(category).join(name).is_dir())
}

/// A tracepoint's field layout: (name, offset, size) from its `format` file.
pub struct Format {
    fields: Vec<(String, u32, u32)>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Format> {
        let root =
            root().context("tracefs is not mounted (mount -t tracefs none /sys/kernel/tracing)")?;
        let path = root.join("events").join(category).join(name).join("format");
        Self::parse(&std::fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is missing ({})",
                path.display()
            )
        })?)
    }

    pub fn parse(text: &str) -> Result<Format> {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default().to_owned();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            if let (Some(o), Some(s)) = (offset, size) {
                fields.push((name, o, s));
            }
        }
        if fields.is_empty() {
            bail!("no fields in tracepoint format");
        }
        Ok(Format { fields })
    }

    /// Offset of `name`, checking its width matches what the program reads.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32> {
        let (_, off, sz) = self
            .fields
            .iter()
            .find(|(n, _, _)| n == name)
            .with_context(|| format!("tracepoint has no field {name}"))?;
        if *sz != size {
            bail!("tracepoint field {name} is {sz} bytes, expected {size}");
        }
        Ok(*off)
    }
}

/// Whether `name` is a function the kernel exposes in kallsyms (kprobes need
/// it; a missing one was inlined or never built).
pub fn in_kallsyms(name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(Path::new("/proc/kallsyms")) else {
        return false;
    };
    text.lines().any(|l| {
        let mut it = l.split_whitespace();
        let (_, kind, sym) = (it.next(), it.next(), it.next());
        sym == Some(name) && matches!(kind, Some("t" | "T"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP_PAGES: &str = "name: mm_filemap_map_pages
ID: 598
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long i_ino;\toffset:8;\tsize:8;\tsigned:0;
\tfield:dev_t s_dev;\toffset:16;\tsize:4;\tsigned:0;
\tfield:unsigned long index;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long last_index;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_field_offsets() {
        let f = Format::parse(MAP_PAGES).unwrap();
        assert_eq!(f.offset("i_ino", 8).unwrap(), 8);
        assert_eq!(f.offset("s_dev", 4).unwrap(), 16);
        assert_eq!(f.offset("last_index", 8).unwrap(), 32);
        assert!(f.offset("s_dev", 8).is_err());
        assert!(f.offset("nope", 8).is_err());
    }
}
