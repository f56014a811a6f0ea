//! Fills the programs' [`Config`] from the running kernel: struct offsets from
//! BTF, tracepoint field offsets from tracefs. No build-host layout is used.

use anyhow::{Context, Result};
use observer_abi::Config;

use super::{btf::Btf, tracefs::Format};

pub fn resolve(btf: &Btf) -> Result<Config> {
    let off = |s: &str, m: &str| -> Result<u32> {
        Ok(btf
            .member_offset(s, m)
            .with_context(|| format!("cannot resolve {s}.{m}"))?
            .0)
    };
    Ok(Config {
        vm_fault_vma: off("vm_fault", "vma")?,
        vma_vm_file: off("vm_area_struct", "vm_file")?,
        file_f_mapping: off("file", "f_mapping")?,
        file_f_inode: off("file", "f_inode")?,
        mapping_host: off("address_space", "host")?,
        inode_i_ino: off("inode", "i_ino")?,
        inode_i_sb: off("inode", "i_sb")?,
        sb_s_dev: off("super_block", "s_dev")?,
        task_files: off("task_struct", "files")?,
        files_fdt: off("files_struct", "fdt")?,
        fdtable_fd: off("fdtable", "fd")?,
        fdtable_max_fds: off("fdtable", "max_fds")?,
        tp_del_ino: Config::UNKNOWN,
        tp_del_dev: Config::UNKNOWN,
        tp_del_index: Config::UNKNOWN,
        tp_del_pfn: Config::UNKNOWN,
        full_stream: 0,
        syscall_windows: 0,
        self_tgid: std::process::id(),
        _pad: 0,
    })
}

/// The map_pages program reads its record at fixed offsets; refuse the
/// tracepoint rung on a kernel whose layout differs.
pub fn check_map_pages_layout() -> Result<()> {
    let f = Format::read("filemap", "mm_filemap_map_pages")?;
    let found = [
        f.offset("i_ino", 8)?,
        f.offset("s_dev", 4)?,
        f.offset("index", 8)?,
        f.offset("last_index", 8)?,
    ];
    if found != observer_abi::TP_MAP_PAGES_LAYOUT {
        anyhow::bail!(
            "filemap:mm_filemap_map_pages has fields at {found:?}, the probe reads {:?}",
            observer_abi::TP_MAP_PAGES_LAYOUT
        );
    }
    Ok(())
}

pub fn delete_fields(cfg: &mut Config) -> Result<()> {
    let f = Format::read("filemap", "mm_filemap_delete_from_page_cache")?;
    cfg.tp_del_ino = f.offset("i_ino", 8)?;
    cfg.tp_del_dev = f.offset("s_dev", 4)?;
    cfg.tp_del_index = f.offset("index", 8)?;
    cfg.tp_del_pfn = f.offset("pfn", 8)?;
    Ok(())
}
