//! Kernel symbols from /proc/kallsyms: addresses of kernel variables for the
//! loader, and `func+0x1a` names for the addresses of kernel stacks.

use anyhow::{Context, Result};

const KALLSYMS: &str = "/proc/kallsyms";

/// One line of kallsyms; its strings are ranges of the file's text, so the
/// table costs little more than the file (a hundred thousand symbols and
/// more: owned strings in maps would cost five times that).
#[derive(Clone, Copy, Debug)]
struct Sym {
    addr: u64,
    name: u32,
    /// The module's name, or an empty range for vmlinux.
    module: u32,
    name_len: u16,
    module_len: u16,
    /// t/T/w/W: a function, what a kprobe can be placed on.
    function: bool,
}

pub struct Kallsyms {
    text: String,
    /// Every symbol, sorted by name (stable: the file's order within a name).
    by_name: Vec<Sym>,
    /// Functions with an address, sorted by it: (address, index in by_name).
    by_addr: Vec<(u64, u32)>,
}

impl Kallsyms {
    pub fn load() -> Result<Kallsyms> {
        let text =
            std::fs::read_to_string(KALLSYMS).with_context(|| format!("cannot read {KALLSYMS}"))?;
        Ok(Kallsyms::parse(text))
    }

    /// Only the symbols named in `names`: what the loader asks about,
    /// without holding the whole table through the load.
    pub fn load_only(names: &[&str]) -> Result<Kallsyms> {
        let text =
            std::fs::read_to_string(KALLSYMS).with_context(|| format!("cannot read {KALLSYMS}"))?;
        let wanted: std::collections::HashSet<&str> = names.iter().copied().collect();
        let mut kept = String::new();
        for line in text.lines() {
            if line
                .split_whitespace()
                .nth(2)
                .is_some_and(|n| wanted.contains(n))
            {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        Ok(Kallsyms::parse(kept))
    }

    /// Lines of `ADDRESS TYPE NAME [MODULE]`. Addresses read as 0 when
    /// kptr_restrict hides them: names still answer `has_function`, but
    /// nothing symbolizes.
    pub fn parse(text: impl Into<String>) -> Kallsyms {
        let text = text.into();
        let base = text.as_ptr() as usize;
        let range = |s: &str| {
            (
                (s.as_ptr() as usize - base) as u32,
                s.len().min(u16::MAX as usize) as u16,
            )
        };
        let mut by_name = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let (name, name_len) = range(name);
            let (module, module_len) = match it.next() {
                Some(m) => range(m.trim_start_matches('[').trim_end_matches(']')),
                None => (0, 0),
            };
            by_name.push(Sym {
                addr,
                name,
                module,
                name_len,
                module_len,
                function: matches!(kind, "t" | "T" | "w" | "W"),
            });
        }
        let at = |s: &Sym| &text[s.name as usize..s.name as usize + s.name_len as usize];
        by_name.sort_by(|a, b| at(a).cmp(at(b)));
        let mut k = Kallsyms {
            text,
            by_name,
            by_addr: Vec::new(),
        };
        k.by_addr = (0..k.by_name.len() as u32)
            .filter(|&i| {
                let s = k.by_name[i as usize];
                // Skip the ftrace padding stubs: they would name the gap
                // before every function.
                s.function && s.addr != 0 && !k.str(s.name, s.name_len).starts_with("__pfx_")
            })
            .map(|i| (k.by_name[i as usize].addr, i))
            .collect();
        k.by_addr.sort_unstable();
        k
    }

    fn str(&self, at: u32, len: u16) -> &str {
        self.text
            .get(at as usize..at as usize + len as usize)
            .unwrap_or_default()
    }

    /// The symbols named `name`, in the file's order.
    fn named(&self, name: &str) -> &[Sym] {
        let from = self
            .by_name
            .partition_point(|s| self.str(s.name, s.name_len) < name);
        let n = self.by_name[from..].partition_point(|s| self.str(s.name, s.name_len) == name);
        &self.by_name[from..from + n]
    }

    /// Whether `name` is a function in the kernel or a loaded module (what a
    /// kprobe needs; an inlined one is absent).
    pub fn has_function(&self, name: &str) -> bool {
        self.named(name).iter().any(|s| s.function)
    }

    /// The module a function lives in; None for vmlinux (or unknown).
    pub fn module_of(&self, name: &str) -> Option<&str> {
        self.named(name)
            .iter()
            .find(|s| s.function && s.module_len > 0)
            .map(|s| self.str(s.module, s.module_len))
    }

    /// Address of any symbol (0 when kptr_restrict hides it: None then).
    pub fn address(&self, name: &str) -> Option<u64> {
        self.named(name).first().map(|s| s.addr).filter(|&a| a != 0)
    }

    /// `func+0x1a` for an address inside a function, or the address in hex
    /// when no symbol precedes it.
    pub fn symbolize(&self, addr: u64) -> String {
        let i = self.by_addr.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).map(|i| self.by_addr[i]) {
            Some((start, at)) => {
                let s = self.by_name[at as usize];
                format!("{}+{:#x}", self.str(s.name, s.name_len), addr - start)
            }
            None => format!("{addr:#x}"),
        }
    }

    /// A kernel stack (`source::stack`), innermost first, without the BPF
    /// machinery that fentry/fexit and raw tracepoints leave on top (the
    /// program, its trampoline or `bpf_trace_run*`): the first frame is then
    /// the probed function or the tracepoint's caller.
    pub fn symbolize_stack(&self, ips: &[u64]) -> Vec<String> {
        let names: Vec<String> = ips.iter().map(|&a| self.symbolize(a)).collect();
        let skip = names
            .iter()
            .take_while(|n| {
                [
                    "bpf_prog_",
                    "bpf_trampoline_",
                    "bpf_trace_run",
                    "__bpf_trace_",
                ]
                .iter()
                .any(|p| n.starts_with(p))
            })
            .count();
        names.into_iter().skip(skip).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t __pfx_do_thing
ffffffff81001010 t do_thing
ffffffff81001100 T filemap_map_pages
ffffffff82554598 D vmemmap_base
ffffffffc0100000 t xfs_free_file_space\t[xfs]
0000000000000000 A fixed_percpu_data
garbage line
";

    #[test]
    fn symbolizes_addresses() {
        let k = Kallsyms::parse(TEXT);
        assert_eq!(k.symbolize(0xffffffff81001010), "do_thing+0x0");
        assert_eq!(k.symbolize(0xffffffff8100102a), "do_thing+0x1a");
        // The __pfx_ stub does not hide the previous function.
        assert_eq!(k.symbolize(0xffffffff81001008), "_stext+0x1008");
        assert_eq!(k.symbolize(0xffffffff81001180), "filemap_map_pages+0x80");
        assert_eq!(k.symbolize(0xffffffffc0100042), "xfs_free_file_space+0x42");
        assert_eq!(k.symbolize(0x1000), "0x1000");
    }

    #[test]
    fn stacks_lose_the_bpf_frames_on_top() {
        let k = Kallsyms::parse(
            "ffffffffc0000000 t bpf_prog_ce2459fe5a4b72e8_set_pte_range_fentry\t[bpf]
ffffffffc0001000 t bpf_trampoline_6442490067\t[bpf]
ffffffff81002000 T set_pte_range
ffffffff81003000 T filemap_map_pages
",
        );
        let ips = [
            0xffffffffc00004c6,
            0xffffffffc0001053,
            0xffffffff81002009,
            0xffffffff810031f8,
        ];
        assert_eq!(
            k.symbolize_stack(&ips),
            ["set_pte_range+0x9", "filemap_map_pages+0x1f8"]
        );
        assert_eq!(k.symbolize_stack(&ips[2..]).len(), 2);
        assert!(k.symbolize_stack(&[]).is_empty());
    }

    #[test]
    fn answers_names() {
        let k = Kallsyms::parse(TEXT);
        assert!(k.has_function("xfs_free_file_space"));
        assert!(k.has_function("do_thing"));
        assert_eq!(k.module_of("xfs_free_file_space"), Some("xfs"));
        assert_eq!(k.module_of("do_thing"), None);
        assert!(!k.has_function("vmemmap_base"));
        assert_eq!(k.address("vmemmap_base"), Some(0xffffffff82554598));
        assert_eq!(k.address("fixed_percpu_data"), None);
        assert_eq!(k.address("nope"), None);
    }

    #[test]
    fn hidden_addresses_still_name_functions() {
        let k = Kallsyms::parse("0000000000000000 T filemap_map_pages\n");
        assert!(k.has_function("filemap_map_pages"));
        assert_eq!(k.symbolize(0xffffffff81000000), "0xffffffff81000000");
    }
}
