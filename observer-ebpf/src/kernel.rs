//! Reading kernel objects through offsets that came from the running kernel's
//! BTF. Rust eBPF has no CO-RE, so every offset is looked up in `CONFIG`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use observer_abi::{Config, FileKey};

use crate::maps::CONFIG;

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
fn read_u64(base: u64, off: u32) -> Option<u64> {
    if base == 0 || off == Config::UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.ok()
}

#[inline(always)]
fn read_u32(base: u64, off: u32) -> Option<u32> {
    if base == 0 || off == Config::UNKNOWN {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.ok()
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
    let vma = read_u64(vmf, cfg.vm_fault_vma)?;
    let file = read_u64(vma, cfg.vma_vm_file)?;
    let mapping = read_u64(file, cfg.file_f_mapping)?;
    file_of_mapping(cfg, mapping)
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
