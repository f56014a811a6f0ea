//! Reading kernel objects through offsets that came from the running kernel's
//! BTF. Rust eBPF has no CO-RE, so every offset is looked up in `CONFIG`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use observer_abi::{Config, FileKey, LOCK_EXPOSED, LOCK_OWNER_SHIFT, LOCK_WRITE_HELD, TMPFS_MAGIC};

use crate::maps::{CONFIG, FOLIO_HEAD, FOLIO_HEAD_BYTES};

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn read_u64(base: u64, off: u32) -> Option<u64> {
    if base == 0 || off == Config::UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

#[inline(always)]
pub fn read_u32(base: u64, off: u32) -> Option<u32> {
    if base == 0 || off == Config::UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.ok()
}

/// `mapping->invalidate_lock` as LOCK_* bits for `Event::aux`; 0 when the
/// kernel has none. A writer sets RWSEM_WRITER_LOCKED (bit 0 of `count`) and
/// stores its task in `owner` (flag bits 0-1): the same in 5.15 to 6.18.
#[inline(always)]
pub fn invalidate_lock(cfg: &Config, mapping: u64) -> u64 {
    if cfg.mapping_invalidate_lock == Config::UNKNOWN || mapping == 0 {
        return 0;
    }
    let sem = mapping + cfg.mapping_invalidate_lock as u64;
    let Some(count) = read_u64(sem, cfg.rwsem_count) else {
        return 0;
    };
    if count & 1 == 0 {
        return LOCK_EXPOSED;
    }
    let owner = read_u64(sem, cfg.rwsem_owner).unwrap_or(0) & !7;
    let tid = read_u32(owner, cfg.task_pid).unwrap_or(0);
    LOCK_EXPOSED | LOCK_WRITE_HELD | ((tid as u64) << LOCK_OWNER_SHIFT)
}

/// (dev, ino) of an inode.
#[inline(always)]
pub fn file_of_inode(cfg: &Config, inode: u64) -> Option<FileKey> {
    let ino = read_u64(inode, cfg.inode_i_ino)?;
    let sb = read_u64(inode, cfg.inode_i_sb)?;
    let dev = read_u32(sb, cfg.sb_s_dev)?;
    Some(FileKey { dev, _pad: 0, ino })
}

/// `address_space::host` is the inode the page cache belongs to.
#[inline(always)]
pub fn file_of_mapping(cfg: &Config, mapping: u64) -> Option<FileKey> {
    file_of_inode(cfg, read_u64(mapping, cfg.mapping_host)?)
}

/// vmf->vma->vm_file->f_mapping->host, the way filemap_map_pages finds it.
#[inline(always)]
pub fn file_of_fault(cfg: &Config, vmf: u64) -> Option<FileKey> {
    file_of_vma(cfg, read_u64(vmf, cfg.vm_fault_vma)?)
}

#[inline(always)]
pub fn file_of_vma(cfg: &Config, vma: u64) -> Option<FileKey> {
    file_of_inode(cfg, inode_of_vma(cfg, vma)?)
}

/// vma->vm_file->f_mapping->host: the inode whose page cache the vma's
/// faults map.
#[inline(always)]
pub fn inode_of_vma(cfg: &Config, vma: u64) -> Option<u64> {
    let file = read_u64(vma, cfg.vma_vm_file)?;
    let mapping = read_u64(file, cfg.file_f_mapping)?;
    read_u64(mapping, cfg.mapping_host)
}

/// `inode.i_size` (a loff_t, never negative for a regular file).
#[inline(always)]
pub fn i_size(cfg: &Config, inode: u64) -> Option<u64> {
    read_u64(inode, cfg.inode_i_size)
}

/// Whether the inode is tmpfs's (its superblock's magic), whose huge pages
/// may be mapped by a PMD across EOF by design.
#[inline(always)]
pub fn on_tmpfs(cfg: &Config, inode: u64) -> bool {
    read_u64(inode, cfg.inode_i_sb)
        .and_then(|sb| read_u64(sb, cfg.sb_s_magic))
        .is_some_and(|m| m == TMPFS_MAGIC)
}

#[inline(always)]
fn read_i32(base: u64, off: u32) -> Option<i32> {
    read_u32(base, off).map(|v| v as i32)
}

#[inline(always)]
fn read_u8(base: u64, off: u32) -> Option<u8> {
    if base == 0 || off == Config::UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u8) }.ok()
}

/// Where a folio's fields are read from: kernel memory one probe read per
/// field, or a copy of its first two `struct page`s.
pub trait Fields {
    fn u64_at(&self, off: u32) -> Option<u64>;
    fn u32_at(&self, off: u32) -> Option<u32>;
    fn u8_at(&self, off: u32) -> Option<u8>;
}

/// A kernel object read field by field.
pub struct Direct(pub u64);

impl Fields for Direct {
    #[inline(always)]
    fn u64_at(&self, off: u32) -> Option<u64> {
        read_u64(self.0, off)
    }
    #[inline(always)]
    fn u32_at(&self, off: u32) -> Option<u32> {
        read_u32(self.0, off)
    }
    #[inline(always)]
    fn u8_at(&self, off: u32) -> Option<u8> {
        read_u8(self.0, off)
    }
}

/// The head page and the first tail page of a folio, copied with one probe
/// read: its mapping, index, flags and mapcount lie in the first, a large
/// folio's order and folio-wide mapcount in the second. A removal needed a
/// probe read for each (about 40 ns apiece on the 2-CPU build host). Fields
/// past the copy are read directly.
pub struct FolioHead {
    at: u64,
    buf: *const u8,
}

impl FolioHead {
    #[inline(always)]
    pub fn read(folio: u64) -> Option<FolioHead> {
        let buf = FOLIO_HEAD.get_ptr_mut(0)?;
        let whole: &mut [u8; FOLIO_HEAD_BYTES + 8] = unsafe { &mut *buf };
        let dst = &mut whole[..FOLIO_HEAD_BYTES];
        unsafe { bpf_probe_read_kernel_buf(folio as *const u8, dst) }.ok()?;
        Some(FolioHead {
            at: folio,
            buf: buf as *const u8,
        })
    }

    /// The copy's offset of `len` bytes at `off`, if they lie inside it. The
    /// mask bounds it for the verifier (the map value has `len` bytes of
    /// slack), the test for the truth.
    #[inline(always)]
    fn inside(off: u32, len: usize) -> Option<usize> {
        let o = off as usize & (FOLIO_HEAD_BYTES - 1);
        (off != Config::UNKNOWN && o == off as usize && o + len <= FOLIO_HEAD_BYTES).then_some(o)
    }
}

impl Fields for FolioHead {
    #[inline(always)]
    fn u64_at(&self, off: u32) -> Option<u64> {
        match Self::inside(off, 8) {
            Some(o) => Some(unsafe { core::ptr::read_unaligned(self.buf.add(o) as *const u64) }),
            None => read_u64(self.at, off),
        }
    }
    #[inline(always)]
    fn u32_at(&self, off: u32) -> Option<u32> {
        match Self::inside(off, 4) {
            Some(o) => Some(unsafe { core::ptr::read_unaligned(self.buf.add(o) as *const u32) }),
            None => read_u32(self.at, off),
        }
    }
    #[inline(always)]
    fn u8_at(&self, off: u32) -> Option<u8> {
        match Self::inside(off, 1) {
            Some(o) => Some(unsafe { *self.buf.add(o) }),
            None => read_u8(self.at, off),
        }
    }
}

/// A page-cache folio (or 5.10 head page) as the raw tracepoints see it.
pub struct Folio {
    pub flags: u64,
    /// Pages in the folio: 1, or 1 << order for a large one.
    pub nr: u64,
}

impl Folio {
    #[inline(always)]
    pub fn read<F: Fields>(cfg: &Config, folio: &F) -> Option<Folio> {
        let flags = folio.u64_at(cfg.page_flags)?;
        let mut nr = 1;
        if is_large(cfg, flags) {
            // Order > 20 would be a misread; say one page rather than lie.
            let order = folio.u8_at(cfg.folio_order).unwrap_or(0) as u64;
            if order <= 20 {
                nr = 1 << order;
            }
        }
        Some(Folio { flags, nr })
    }

    #[inline(always)]
    pub fn test(&self, bit: u32) -> bool {
        bit < 64 && (self.flags >> bit) & 1 != 0
    }
}

#[inline(always)]
fn is_large(cfg: &Config, flags: u64) -> bool {
    cfg.pg_head < 64 && (flags >> cfg.pg_head) & 1 != 0
}

/// Subpages read one by one at most, for kernels without a folio-wide
/// mapcount (5.10, 6.1..6.9): a PMD-sized folio of 4 KiB pages.
const MAX_SUBPAGES: u64 = 512;

/// Whether any page table still maps the folio at `at` (its fields in
/// `fields`), as folio_mapped() decides; None when it could not be read
/// exactly. Mapcounts are -1 based.
#[inline(always)]
pub fn folio_mapped<F: Fields>(cfg: &Config, at: u64, fields: &F, f: &Folio) -> Option<bool> {
    if !is_large(cfg, f.flags) {
        return Some(fields.u32_at(cfg.page_mapcount)? as i32 >= 0);
    }
    let whole = fields.u32_at(cfg.large_mapcount)? as i32;
    if whole >= 0 || cfg.large_mapcount_exact != 0 {
        return Some(whole >= 0);
    }
    // Only the PMD mapcount so far: PTE mappings count in each subpage.
    if f.nr > MAX_SUBPAGES {
        return None;
    }
    let mut page = at;
    for _ in 0..MAX_SUBPAGES as u32 {
        if page >= at + f.nr * cfg.page_size as u64 {
            break;
        }
        if read_i32(page, cfg.page_mapcount)? >= 0 {
            return Some(true);
        }
        page += cfg.page_size as u64;
    }
    Some(false)
}

/// The page frame number of a `struct page *`, when the agent found where
/// the kernel keeps `vmemmap_base`; 0 otherwise.
#[inline(always)]
pub fn pfn_of(cfg: &Config, page: u64) -> u64 {
    if cfg.vmemmap_base_addr == 0 || cfg.page_size == 0 {
        return 0;
    }
    match unsafe { bpf_probe_read_kernel(cfg.vmemmap_base_addr as *const u64) } {
        Ok(base) if base != 0 && page >= base => (page - base) / cfg.page_size as u64,
        _ => 0,
    }
}

/// The file behind a descriptor of the current task, for syscall tracepoints
/// that only see an fd.
#[inline(always)]
pub fn file_of_fd(cfg: &Config, fd: u64) -> Option<FileKey> {
    let task = unsafe { bpf_get_current_task() };
    let files = read_u64(task, cfg.task_files)?;
    let fdt = read_u64(files, cfg.files_fdt)?;
    let max_fds = read_u32(fdt, cfg.fdtable_max_fds)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let table = read_u64(fdt, cfg.fdtable_fd)?;
    let file = unsafe { bpf_probe_read_kernel((table + fd * 8) as *const u64) }.ok()?;
    let inode = read_u64(file, cfg.file_f_inode)?;
    file_of_inode(cfg, inode)
}
