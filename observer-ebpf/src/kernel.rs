//! Reading kernel objects through offsets that came from the running kernel's
//! BTF. Rust eBPF has no CO-RE, so every offset is looked up in `CONFIG`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use observer_abi::{Config, FileKey, LOCK_EXPOSED, LOCK_OWNER_SHIFT, LOCK_WRITE_HELD, TMPFS_MAGIC};

use crate::maps::CONFIG;

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

/// A page-cache folio (or 5.10 head page) as the raw tracepoints see it.
pub struct Folio {
    pub flags: u64,
    /// Pages in the folio: 1, or 1 << order for a large one.
    pub nr: u64,
}

impl Folio {
    #[inline(always)]
    pub fn read(cfg: &Config, folio: u64) -> Option<Folio> {
        let flags = read_u64(folio, cfg.page_flags)?;
        let mut nr = 1;
        if is_large(cfg, flags) {
            // Order > 20 would be a misread; say one page rather than lie.
            let order = read_u8(folio, cfg.folio_order).unwrap_or(0) as u64;
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

/// Whether any page table still maps `folio`, as folio_mapped() decides;
/// None when it could not be read exactly. Mapcounts are -1 based.
#[inline(always)]
pub fn folio_mapped(cfg: &Config, folio: u64, f: &Folio) -> Option<bool> {
    if !is_large(cfg, f.flags) {
        return Some(read_i32(folio, cfg.page_mapcount)? >= 0);
    }
    let whole = read_i32(folio, cfg.large_mapcount)?;
    if whole >= 0 || cfg.large_mapcount_exact != 0 {
        return Some(whole >= 0);
    }
    // Only the PMD mapcount so far: PTE mappings count in each subpage.
    if f.nr > MAX_SUBPAGES {
        return None;
    }
    let mut at = folio;
    for _ in 0..MAX_SUBPAGES as u32 {
        if at >= folio + f.nr * cfg.page_size as u64 {
            break;
        }
        if read_i32(at, cfg.page_mapcount)? >= 0 {
            return Some(true);
        }
        at += cfg.page_size as u64;
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
