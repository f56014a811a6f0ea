//! Kernel side of the page-cache race observer.
//!
//! Three kernel functions matter: `unmap_mapping_range` and
//! `truncate_inode_pages_range` bound an invalidation window, and
//! `filemap_map_pages` (fault-around) installs PTEs. Each is probed three ways
//! (fentry/fexit, kprobe/kretprobe, tracepoints); the agent's attach ladder
//! loads whichever the running kernel accepts. All three ways funnel into
//! [`probe`], so every method reports the same records.
//!
//! Optional sources of truth, attached when the kernel has them: the
//! per-version PTE installer (page-exact PteInstall), folio removal and
//! insertion as raw tracepoints (mapcount, size, uptodate), the
//! filesystems' block removal (FsRemove*) and tmpfs's shmem_undo_range.
// Built for real only for the BPF target (by observer/build.rs, with
// nightly); a host build, as `cargo clippy --workspace` does, gets an empty
// program so the workspace checks stay green.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// For the XADD instruction in emit.rs.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod fentry;
#[cfg(target_arch = "bpf")]
mod functions;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod kprobe;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probe;
#[cfg(target_arch = "bpf")]
mod raw_tracepoint;
#[cfg(target_arch = "bpf")]
mod tracepoint;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
