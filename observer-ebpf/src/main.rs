//! Kernel side of the page-cache race observer.
//!
//! Three kernel functions matter: `unmap_mapping_range` and
//! `truncate_inode_pages_range` bound an invalidation window, and
//! `filemap_map_pages` (fault-around) installs PTEs. Each is probed three ways
//! (fentry/fexit, kprobe/kretprobe, tracepoints); the agent's attach ladder
//! loads whichever the running kernel accepts. All three ways funnel into
//! [`probe`], so every method reports the same records.
#![no_std]
#![no_main]
// For the XADD instruction in emit.rs (this crate is only built by nightly).
#![feature(asm_experimental_arch)]

mod emit;
mod fentry;
mod kernel;
mod kprobe;
mod maps;
mod probe;
mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
