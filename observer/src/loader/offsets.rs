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
    let mut cfg = Config {
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
        page_flags: Config::UNKNOWN,
        page_mapping: Config::UNKNOWN,
        page_index: Config::UNKNOWN,
        page_mapcount: Config::UNKNOWN,
        page_size: 0,
        pg_head: Config::UNKNOWN,
        pg_uptodate: Config::UNKNOWN,
        folio_order: Config::UNKNOWN,
        large_mapcount: Config::UNKNOWN,
        large_mapcount_exact: 0,
        vmf_flags: Config::UNKNOWN,
        vmf_address: Config::UNKNOWN,
        vma_vm_start: Config::UNKNOWN,
        vma_vm_flags: Config::UNKNOWN,
        vma_vm_pgoff: Config::UNKNOWN,
        fault_flag_write: 1,
        pte_addr_arg: 0,
        inode_i_blkbits: Config::UNKNOWN,
        remover_inode: [Config::UNKNOWN; observer_abi::FS_REMOVE_CODES],
        mapping_invalidate_lock: Config::UNKNOWN,
        rwsem_count: Config::UNKNOWN,
        rwsem_owner: Config::UNKNOWN,
        task_pid: Config::UNKNOWN,
        inode_i_mapping: Config::UNKNOWN,
        inode_i_size: Config::UNKNOWN,
        sb_s_magic: Config::UNKNOWN,
        vmemmap_base_addr: 0,
        scope: observer_abi::SCOPE_HOST,
        scope_cgroup_level: 0,
        scope_cgroup_id: 0,
        tp_fork_parent_pid: Config::UNKNOWN,
        tp_fork_child_pid: Config::UNKNOWN,
        wakeup_bytes: 0,
        _pad3: 0,
    };
    // folio_layout and fault_layout, which only the optional probes need,
    // are the loader's to call: their errors say why a probe is missing.
    cfg.inode_i_blkbits = btf
        .member_offset("inode", "i_blkbits")
        .map_or(Config::UNKNOWN, |o| o.0);
    // Class C only: without them no install is judged against EOF.
    cfg.inode_i_size = btf
        .member_offset("inode", "i_size")
        .map_or(Config::UNKNOWN, |o| o.0);
    cfg.sb_s_magic = btf
        .member_offset("super_block", "s_magic")
        .map_or(Config::UNKNOWN, |o| o.0);
    invalidate_lock_layout(btf, &mut cfg);
    Ok(cfg)
}

/// Offsets to read `mapping->invalidate_lock` (5.15+). A kernel without it
/// (5.10) or with the PREEMPT_RT rw_semaphore (no count/owner words) keeps
/// them UNKNOWN, and the records say the lock is not exposed.
fn invalidate_lock_layout(btf: &Btf, cfg: &mut Config) {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map(|o| o.0);
    if let (Ok(lock), Ok(count), Ok(owner), Ok(pid), Ok(i_mapping)) = (
        off("address_space", "invalidate_lock"),
        off("rw_semaphore", "count"),
        off("rw_semaphore", "owner"),
        off("task_struct", "pid"),
        off("inode", "i_mapping"),
    ) {
        cfg.mapping_invalidate_lock = lock;
        cfg.rwsem_count = count;
        cfg.rwsem_owner = owner;
        cfg.task_pid = pid;
        cfg.inode_i_mapping = i_mapping;
    }
}

/// The first of `candidates` (struct, member) the kernel has.
fn first_member(btf: &Btf, candidates: &[(&str, &str)]) -> Result<u32> {
    for (s, m) in candidates {
        if let Ok(o) = btf.member_offset(s, m) {
            return Ok(o.0);
        }
    }
    let names: Vec<String> = candidates.iter().map(|(s, m)| format!("{s}.{m}")).collect();
    anyhow::bail!("the kernel's BTF has none of {}", names.join(", "))
}

/// struct page / folio: what the folio raw tracepoints read. Fails with the
/// reason when something is missing (the probes are then not attached).
pub fn folio_layout(btf: &Btf, cfg: &mut Config) -> Result<()> {
    // folio first: 6.18 renamed page.index to __folio_index.
    cfg.page_flags = first_member(btf, &[("folio", "flags"), ("page", "flags")])?;
    cfg.page_mapping = first_member(btf, &[("folio", "mapping"), ("page", "mapping")])?;
    cfg.page_index = first_member(btf, &[("folio", "index"), ("page", "index")])?;
    cfg.page_mapcount = first_member(btf, &[("folio", "_mapcount"), ("page", "_mapcount")])?;
    let page_size = btf
        .struct_size("page")
        .context("the kernel's BTF has no struct page")?;
    cfg.page_size = page_size;
    let bit = |name: &str| -> Result<u32> {
        let v = btf
            .enum_value("pageflags", name)
            .with_context(|| format!("the kernel's enum pageflags has no {name}"))?;
        u32::try_from(v)
            .ok()
            .filter(|&b| b < 64)
            .with_context(|| format!("{name} = {v} is not a bit of page.flags"))
    };
    cfg.pg_head = bit("PG_head")?;
    cfg.pg_uptodate = bit("PG_uptodate")?;
    // The order of a large folio, as folio_order() reads it.
    cfg.folio_order = if let Ok(o) = btf.member_offset("folio", "_folio_order") {
        o.0
    } else if let Ok(o) = btf.member_offset("folio", "_flags_1") {
        o.0 // low byte (little endian): folio->_flags_1 & 0xff
    } else {
        page_size + first_member(btf, &[("page", "compound_order")])?
    };
    // A large folio's mapcount, as folio_mapped() reads it.
    (cfg.large_mapcount, cfg.large_mapcount_exact) =
        if let Ok(o) = btf.member_offset("folio", "_large_mapcount") {
            (o.0, 1)
        } else if let Ok(o) = btf.member_offset("folio", "_entire_mapcount") {
            (o.0, 0)
        } else if let Ok(o) = btf.member_offset("folio", "_total_mapcount") {
            (o.0, 0)
        } else {
            (
                page_size + first_member(btf, &[("page", "compound_mapcount")])?,
                0,
            )
        };
    Ok(())
}

/// vm_fault and vm_area_struct fields the PTE installer probes read.
pub fn fault_layout(btf: &Btf, cfg: &mut Config) -> Result<()> {
    cfg.vmf_flags = first_member(btf, &[("vm_fault", "flags")])?;
    cfg.vmf_address = first_member(btf, &[("vm_fault", "address")])?;
    cfg.vma_vm_start = first_member(btf, &[("vm_area_struct", "vm_start")])?;
    cfg.vma_vm_flags = first_member(btf, &[("vm_area_struct", "vm_flags")])?;
    cfg.vma_vm_pgoff = first_member(btf, &[("vm_area_struct", "vm_pgoff")])?;
    // An enum since 5.13; a #define of 1 before.
    cfg.fault_flag_write = btf
        .enum_value("fault_flag", "FAULT_FLAG_WRITE")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1);
    Ok(())
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

/// sched:sched_process_fork's pids, for `--scope cmd` without cgroup2.
pub fn fork_fields(cfg: &mut Config) -> Result<()> {
    let f = Format::read("sched", "sched_process_fork")?;
    cfg.tp_fork_parent_pid = f.offset("parent_pid", 4)?;
    cfg.tp_fork_child_pid = f.offset("child_pid", 4)?;
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
