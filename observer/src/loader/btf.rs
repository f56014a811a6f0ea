//! Just enough of a BTF reader to find struct member offsets in the running
//! kernel. Rust eBPF emits no CO-RE relocations, so the programs read kernel
//! memory at offsets this module resolves at load time.

use std::path::Path;

use anyhow::{Context, Result, bail};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

/// A type's common header; what follows it (members, parameters,
/// enumerators) stays in `Btf::tdata` and is read when asked for, so the
/// whole kernel's BTF costs about its own size in memory.
#[derive(Clone, Copy, Debug, Default)]
struct Type {
    name: u32,
    info: u32,
    /// Referenced type for modifiers, typedefs, pointers and functions; the
    /// byte size for structs, unions and enums.
    ty: u32,
    /// Offset in `tdata` of what follows the header.
    at: u32,
}

impl Type {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

pub struct Btf {
    /// Index 0 is `void`. Split BTF (a module's) continues its base's ids.
    types: Vec<Type>,
    /// The blob as read (a split one behind its base's): types and strings
    /// are read in place.
    tdata: Vec<u8>,
    /// Where string offsets point in `tdata`: the base's strings, and from
    /// `own_from` on a split blob's own (its offsets continue the base's).
    strings_at: usize,
    own_from: u32,
    own_strings_at: usize,
    /// This blob's string section length.
    str_len: usize,
    /// The named types' ids, sorted by name.
    by_name: Vec<u32>,
}

/// Where a member lives: byte offset from the start of the outer struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset(pub u32);

fn u32_in(data: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        data.get(o..o + 4).context("truncated")?.try_into()?,
    ))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| {
            format!(
                "cannot read BTF at {}: the kernel needs CONFIG_DEBUG_INFO_BTF=y (or pass --btf FILE)",
                path.display()
            )
        })?;
        Btf::parse(data).with_context(|| format!("{} is not valid BTF", path.display()))
    }

    pub fn parse(data: impl Into<Vec<u8>>) -> Result<Btf> {
        Self::parse_on(data.into(), None)
    }

    /// A kernel module's split BTF (`/sys/kernel/btf/<module>`), whose type
    /// ids and string offsets continue those of `base` (vmlinux). The result
    /// holds both, so module structs resolve members of vmlinux types.
    pub fn parse_split(data: &[u8], base: &Btf) -> Result<Btf> {
        Self::parse_on(data.to_vec(), Some(base))
    }

    /// Reads a module's split BTF on top of `base`.
    pub fn module_from_file(path: &Path, base: &Btf) -> Result<Btf> {
        let data = std::fs::read(path)
            .with_context(|| format!("cannot read module BTF at {}", path.display()))?;
        Btf::parse_split(&data, base)
            .with_context(|| format!("{} is not valid split BTF", path.display()))
    }

    fn parse_on(blob: Vec<u8>, base: Option<&Btf>) -> Result<Btf> {
        let data = blob.as_slice();
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2).context("truncated")?.try_into()?,
            ))
        };
        if u16_at(0)? != MAGIC {
            bail!("bad magic (only little-endian BTF is supported)");
        }
        let hdr_len = u32_in(data, 4)? as usize;
        let type_off = u32_in(data, 8)? as usize;
        let type_len = u32_in(data, 12)? as usize;
        let str_off = u32_in(data, 16)? as usize;
        let str_len = u32_in(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        if data.len() < types_at + type_len || data.len() < strings_at + str_len {
            bail!("a section runs past the end of the blob");
        }
        // A split blob goes behind its base's, whose offsets stay valid.
        let (mut btf, shift) = match base {
            Some(b) => {
                let shift = b.tdata.len();
                let base_strings = b.own_strings_len();
                (
                    Btf {
                        types: b.types.clone(),
                        tdata: [b.tdata.as_slice(), data].concat(),
                        strings_at: b.strings_at,
                        own_from: base_strings,
                        own_strings_at: shift + strings_at,
                        str_len: 0,
                        by_name: Vec::new(),
                    },
                    shift,
                )
            }
            None => (
                Btf {
                    types: vec![Type::default()],
                    tdata: blob,
                    strings_at,
                    own_from: u32::MAX,
                    own_strings_at: strings_at,
                    str_len: 0,
                    by_name: Vec::new(),
                },
                0,
            ),
        };
        let mut pos = shift + types_at;
        let end = pos + type_len;
        while pos < end {
            let t = Type {
                name: u32_in(&btf.tdata, pos)?,
                info: u32_in(&btf.tdata, pos + 4)?,
                ty: u32_in(&btf.tdata, pos + 8)?,
                at: u32::try_from(pos + 12).context("type section too large")?,
            };
            pos += 12
                + match t.kind() {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | KIND_ENUM64 | KIND_DATASEC => 12 * t.vlen(),
                    KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen(),
                    _ => 0,
                };
            btf.types.push(t);
        }
        btf.str_len = str_len;
        if pos != end {
            bail!("the last type runs past the type section");
        }
        let mut named: Vec<u32> = (1..btf.types.len() as u32)
            .filter(|&id| btf.types[id as usize].name != 0)
            .collect();
        named.sort_by(|&a, &b| btf.name_bytes(a).cmp(btf.name_bytes(b)));
        btf.by_name = named;
        Ok(btf)
    }

    /// The string section's length of a blob that is not split: where a
    /// split blob's own string offsets begin.
    fn own_strings_len(&self) -> u32 {
        self.str_len as u32
    }

    fn str_bytes(&self, off: u32) -> &[u8] {
        let at = if off >= self.own_from {
            self.own_strings_at + (off - self.own_from) as usize
        } else {
            self.strings_at + off as usize
        };
        let rest = self.tdata.get(at..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..len]
    }

    fn name_bytes(&self, id: u32) -> &[u8] {
        self.str_bytes(self.types[id as usize].name)
    }

    fn str(&self, off: u32) -> &str {
        std::str::from_utf8(self.str_bytes(off)).unwrap_or_default()
    }

    fn ty(&self, id: u32) -> Type {
        self.types.get(id as usize).copied().unwrap_or_default()
    }

    /// Struct and union members; function prototype parameters (with
    /// `bit_offset` 0).
    fn members(&self, t: Type) -> impl Iterator<Item = Member> + '_ {
        let (stride, n) = match t.kind() {
            KIND_STRUCT | KIND_UNION => (12, t.vlen()),
            KIND_FUNC_PROTO => (8, t.vlen()),
            _ => (12, 0),
        };
        (0..n).filter_map(move |i| {
            let at = t.at as usize + i * stride;
            let bit_offset = if stride == 12 {
                let raw = u32_in(&self.tdata, at + 8).ok()?;
                // With kind_flag, the top 8 bits are a bitfield size.
                if t.kind_flag() { raw & 0xff_ffff } else { raw }
            } else {
                0
            };
            Some(Member {
                name: u32_in(&self.tdata, at).ok()?,
                ty: u32_in(&self.tdata, at + 4).ok()?,
                bit_offset,
            })
        })
    }

    /// Enumerators (name, value) of enums.
    fn values(&self, t: Type) -> impl Iterator<Item = (u32, i64)> + '_ {
        let (stride, n) = match t.kind() {
            KIND_ENUM => (8, t.vlen()),
            KIND_ENUM64 => (12, t.vlen()),
            _ => (8, 0),
        };
        (0..n).filter_map(move |i| {
            let at = t.at as usize + i * stride;
            let name = u32_in(&self.tdata, at).ok()?;
            let lo = u32_in(&self.tdata, at + 4).ok()?;
            let v = if stride == 12 {
                let hi = u32_in(&self.tdata, at + 8).ok()? as u64;
                (hi << 32 | lo as u64) as i64
            } else if t.kind_flag() {
                // kind_flag: signed values.
                lo as i32 as i64
            } else {
                lo as i64
            };
            Some((name, v))
        })
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> u32 {
        while let Some(t) = self.types.get(id as usize) {
            match t.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// The type id of function `name` (what an fentry program attaches by).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.ids(name).find(|&id| self.ty(id).kind() == KIND_FUNC)
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.ids(name).any(|id| self.ty(id).kind() == KIND_FUNC)
    }

    /// The value of enumerator `name` of `enum enum_name`, e.g.
    /// `("pageflags", "PG_head")`.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Option<i64> {
        self.ids(enum_name)
            .map(|id| self.ty(id))
            .filter(|t| matches!(t.kind(), KIND_ENUM | KIND_ENUM64))
            .flat_map(|t| self.values(t))
            .find(|(n, _)| self.str(*n) == name)
            .map(|(_, v)| v)
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.ids(name)
            .map(|id| self.ty(id))
            .find(|t| t.kind() == KIND_STRUCT && t.vlen() > 0)
            .map(|t| t.ty)
    }

    /// Whether the kernel has `struct name` with `member` (no error text).
    pub fn has_member(&self, outer: &str, member: &str) -> bool {
        self.member_offset(outer, member).is_ok()
    }

    /// The prototype of function `func`.
    fn proto(&self, func: &str) -> Option<Type> {
        let f = self
            .ids(func)
            .map(|id| self.ty(id))
            .find(|t| t.kind() == KIND_FUNC)?;
        let proto = self.ty(self.strip(f.ty));
        (proto.kind() == KIND_FUNC_PROTO).then_some(proto)
    }

    /// Number of parameters of function `func`, from its prototype.
    pub fn param_count(&self, func: &str) -> Option<usize> {
        self.proto(func).map(Type::vlen)
    }

    /// Name of the struct that parameter `n` of function `func` points to
    /// (`"inode"` for `struct inode *`), if it is a pointer to a struct.
    pub fn param_struct(&self, func: &str, n: usize) -> Option<&str> {
        let param = self.members(self.proto(func)?).nth(n)?;
        let ptr = self.ty(self.strip(param.ty));
        if ptr.kind() != KIND_PTR {
            return None;
        }
        let target = self.ty(self.strip(ptr.ty));
        (target.kind() == KIND_STRUCT).then(|| self.str(target.name))
    }

    fn ids(&self, name: &str) -> impl Iterator<Item = u32> + '_ {
        let key = name.as_bytes();
        let from = self
            .by_name
            .partition_point(|&id| self.name_bytes(id) < key);
        let to = from + self.by_name[from..].partition_point(|&id| self.name_bytes(id) == key);
        self.by_name[from..to].iter().copied()
    }

    /// Byte offset of `member` in `struct outer`, looking through anonymous
    /// structs and unions (e.g. `vm_fault.vma` sits in an anonymous struct
    /// since 5.13).
    pub fn member_offset(&self, outer: &str, member: &str) -> Result<Offset> {
        let mut found_struct = false;
        for id in self.ids(outer) {
            let t = self.ty(id);
            if t.kind() != KIND_STRUCT || t.vlen() == 0 {
                continue;
            }
            found_struct = true;
            if let Some(bits) = self.find_member(id, member) {
                if bits % 8 != 0 {
                    bail!("{outer}.{member} is a bitfield");
                }
                return Ok(Offset(bits / 8));
            }
        }
        if !found_struct {
            bail!("the kernel's BTF has no struct {outer}");
        }
        bail!("the kernel's struct {outer} has no member {member}")
    }

    fn find_member(&self, id: u32, member: &str) -> Option<u32> {
        let t = self.ty(self.strip(id));
        for m in self.members(t) {
            if m.name == 0 {
                let inner = self.strip(m.ty);
                if matches!(self.ty(inner).kind(), KIND_STRUCT | KIND_UNION)
                    && let Some(bits) = self.find_member(inner, member)
                {
                    return Some(m.bit_offset + bits);
                }
            } else if self.str(m.name) == member {
                return Some(m.bit_offset);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(t: &mut Vec<u8>, name: u32, kind: u32, vlen: u32, size: u32) {
        t.extend(name.to_le_bytes());
        t.extend(((kind << 24) | vlen).to_le_bytes());
        t.extend(size.to_le_bytes());
    }

    fn mem(t: &mut Vec<u8>, name: u32, typ: u32, bits: u32) {
        t.extend(name.to_le_bytes());
        t.extend(typ.to_le_bytes());
        t.extend(bits.to_le_bytes());
    }

    /// Offset of `name` in `strings` (which starts with a NUL), plus `base`.
    fn at(strings: &[u8], base: u32, name: &str) -> u32 {
        let pat: Vec<u8> = [b"\0".as_slice(), name.as_bytes(), b"\0"].concat();
        base + strings.windows(pat.len()).position(|w| w == pat).unwrap() as u32 + 1
    }

    fn wrap(types: Vec<u8>, strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        out.extend(24u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    const STRINGS: &[u8] =
        b"\0u64\0inner\0a\0b\0outer\0x\0pad\0p\0y\0f\0pageflags\0PG_locked\0PG_head\0g\0ip\0n\0neg\0e64\0BIG\0";

    /// Builds a tiny BTF blob: struct inner { u64 a; u64 b; };
    /// struct outer { u64 x; struct { u64 pad; struct inner *p; }; u64 y; };
    /// enum pageflags { PG_locked, PG_head = 6 }; int g(struct inner *ip,
    /// u64 n); enum neg { PG_locked = -1 } (signed); enum64 e64 { BIG }.
    fn blob() -> Vec<u8> {
        let s = |name: &str| at(STRINGS, 0, name);
        let mut t = Vec::new();
        // 1: int u64
        ty(&mut t, s("u64"), KIND_INT, 0, 8);
        t.extend(64u32.to_le_bytes());
        // 2: struct inner
        ty(&mut t, s("inner"), KIND_STRUCT, 2, 16);
        mem(&mut t, s("a"), 1, 0);
        mem(&mut t, s("b"), 1, 64);
        // 3: ptr to inner
        ty(&mut t, 0, KIND_PTR, 0, 2);
        // 4: anonymous struct
        ty(&mut t, 0, KIND_STRUCT, 2, 16);
        mem(&mut t, s("pad"), 1, 0);
        mem(&mut t, s("p"), 3, 64);
        // 5: const anon
        ty(&mut t, 0, KIND_CONST, 0, 4);
        // 6: struct outer
        ty(&mut t, s("outer"), KIND_STRUCT, 3, 32);
        mem(&mut t, s("x"), 1, 0);
        mem(&mut t, 0, 5, 64);
        mem(&mut t, s("y"), 1, 192);
        // 7: func f
        ty(&mut t, s("f"), KIND_FUNC, 0, 0);
        // 8: enum pageflags
        ty(&mut t, s("pageflags"), KIND_ENUM, 2, 4);
        t.extend(s("PG_locked").to_le_bytes());
        t.extend(0u32.to_le_bytes());
        t.extend(s("PG_head").to_le_bytes());
        t.extend(6u32.to_le_bytes());
        // 9: int g(struct inner *ip, u64 n): proto, then 10: func
        ty(&mut t, 0, KIND_FUNC_PROTO, 2, 1);
        t.extend(s("ip").to_le_bytes());
        t.extend(3u32.to_le_bytes());
        t.extend(s("n").to_le_bytes());
        t.extend(1u32.to_le_bytes());
        ty(&mut t, s("g"), KIND_FUNC, 0, 9);
        // 11: signed enum neg (kind_flag)
        ty(&mut t, s("neg"), KIND_ENUM, 1, 4);
        let last = t.len() - 8;
        t[last..last + 4].copy_from_slice(&((1u32 << 31) | (KIND_ENUM << 24) | 1).to_le_bytes());
        t.extend(s("PG_locked").to_le_bytes());
        t.extend((-1i32).to_le_bytes());
        // 12: enum64 e64 { BIG = 1 << 40 }
        ty(&mut t, s("e64"), KIND_ENUM64, 1, 8);
        t.extend(s("BIG").to_le_bytes());
        t.extend(0u32.to_le_bytes());
        t.extend(256u32.to_le_bytes());
        wrap(t, STRINGS)
    }

    #[test]
    fn reads_enums_sizes_and_prototypes() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.enum_value("pageflags", "PG_head"), Some(6));
        assert_eq!(btf.enum_value("pageflags", "PG_locked"), Some(0));
        assert_eq!(btf.enum_value("neg", "PG_locked"), Some(-1));
        assert_eq!(btf.enum_value("e64", "BIG"), Some(1 << 40));
        assert_eq!(btf.enum_value("pageflags", "PG_nope"), None);
        assert_eq!(btf.enum_value("inner", "a"), None);
        assert_eq!(btf.struct_size("outer"), Some(32));
        assert_eq!(btf.struct_size("pageflags"), None);
        assert_eq!(btf.param_count("g"), Some(2));
        assert_eq!(btf.param_struct("g", 0), Some("inner"));
        assert_eq!(btf.param_struct("g", 1), None);
        assert_eq!(btf.param_struct("g", 2), None);
        assert_eq!(btf.param_count("f"), None);
        assert!(btf.has_member("outer", "p"));
        assert!(!btf.has_member("outer", "q"));
    }

    /// A module's split BTF: struct modinode { u64 z; struct inner vfs; },
    /// whose member types and strings continue the base's.
    #[test]
    fn split_btf_continues_the_base() {
        let base = Btf::parse(blob()).unwrap();
        let base_types = base.types.len() as u32;
        let strings = b"\0modinode\0z\0vfs\0";
        let s = |name: &str| at(strings, STRINGS.len() as u32, name);
        let mut t = Vec::new();
        // base_types + 0: struct modinode
        ty(&mut t, s("modinode"), KIND_STRUCT, 2, 24);
        mem(&mut t, s("z"), 1, 0);
        mem(&mut t, s("vfs"), 2, 64);
        // base_types + 1: pointer to it, base_types + 2: void h(struct modinode *)
        ty(&mut t, 0, KIND_PTR, 0, base_types);
        ty(&mut t, 0, KIND_FUNC_PROTO, 1, 0);
        t.extend(0u32.to_le_bytes());
        t.extend((base_types + 1).to_le_bytes());
        let h = at(strings, STRINGS.len() as u32, "z");
        ty(&mut t, h, KIND_FUNC, 0, base_types + 2);
        // The split blob's strings start with their own NUL.
        let module = Btf::parse_split(&wrap(t, strings), &base).unwrap();
        assert_eq!(module.member_offset("modinode", "vfs").unwrap(), Offset(8));
        assert_eq!(module.struct_size("modinode"), Some(24));
        assert_eq!(module.param_struct("z", 0), Some("modinode"));
        // The base's types are still there.
        assert_eq!(module.member_offset("outer", "y").unwrap(), Offset(24));
        assert!(module.has_function("g"));
    }

    #[test]
    fn finds_plain_and_anonymous_members() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.member_offset("inner", "b").unwrap(), Offset(8));
        assert_eq!(btf.member_offset("outer", "x").unwrap(), Offset(0));
        assert_eq!(btf.member_offset("outer", "p").unwrap(), Offset(16));
        assert_eq!(btf.member_offset("outer", "y").unwrap(), Offset(24));
        assert!(btf.has_function("f"));
        assert!(!btf.has_function("inner"));
    }

    #[test]
    fn says_what_is_missing() {
        let btf = Btf::parse(blob()).unwrap();
        let e = btf.member_offset("outer", "nope").unwrap_err().to_string();
        assert_eq!(e, "the kernel's struct outer has no member nope");
        let e = btf.member_offset("nostruct", "a").unwrap_err().to_string();
        assert_eq!(e, "the kernel's BTF has no struct nostruct");
        assert!(Btf::parse(b"garbage!".to_vec()).is_err());
    }

    #[test]
    fn running_kernel_has_the_offsets_we_need() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        for (s, m) in [
            ("vm_fault", "vma"),
            ("vm_area_struct", "vm_file"),
            ("file", "f_mapping"),
            ("address_space", "host"),
            ("inode", "i_ino"),
            ("super_block", "s_dev"),
            ("task_struct", "files"),
            ("fdtable", "max_fds"),
        ] {
            btf.member_offset(s, m).unwrap();
        }
        assert!(btf.has_function("filemap_map_pages"));
        assert!(btf.enum_value("pageflags", "PG_head").is_some());
        assert!(btf.enum_value("pageflags", "PG_uptodate").is_some());
        assert_eq!(btf.struct_size("page"), Some(64));
    }
}
