//! What the running kernel lets programs do, found by loading the smallest
//! program of a kind, as libbpf's feature probes do: a kind the kernel
//! refuses everywhere is refused once here, without the cost of trying it
//! (for fentry/fexit, parsing the kernel's BTF a second time for aya, which
//! is most of the agent's peak memory).

use std::io;

use super::btf::Btf;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to attach_btf_id
/// (uapi/linux/bpf.h); the kernel takes a shorter attr than its own.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// Whether an fentry program loads at all, against `function` (from the
/// kernel's BTF). Err only for a refusal that holds for every function
/// (EPERM, EACCES: lockdown or an LSM); any other answer leaves the real
/// attempts to say what they meet.
pub fn fentry(btf: &Btf, function: &str) -> Result<(), String> {
    let Some(id) = btf.func_id(function) else {
        return Ok(());
    };
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_FENTRY,
        attach_btf_id: id,
        ..ProgLoad::default()
    };
    // SAFETY: attr and the buffers it points to outlive the call; the size
    // passed is that of the struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Err(format!(
            "the kernel refuses fentry/fexit programs: BPF_PROG_LOAD: {e}"
        )),
        _ => Ok(()),
    }
}
