//! Helpers shared by the end-to-end tests and by the workload binaries.
//!
//! * [`racer_bin`], [`faultbench_bin`], [`observer_bin`]: locate the binaries
//!   under test (environment overrides first, then the cargo target directory).
//! * [`LoopMount`]: an RAII XFS/ext4/btrfs loop mount on a sparse image, or a
//!   tmpfs (needs root).
//! * [`ObserverProcess`]: a running observer, its output read as it comes.
//! * [`ops`]: the invalidators: racer `--op`, matrix column, window name.
//! * [`RacerReport`], [`FaultbenchReport`]: parse the one-line JSON reports the
//!   workload binaries print.
//! * [`workload`]: the file/mmap/fallocate plumbing used by `racer` and
//!   `faultbench`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

mod bpf;
mod mount;
mod observer;
pub mod ops;
pub mod stream;
pub mod stress;

pub use bpf::{BpfObject, HeldBpf, bpf_held_by, bpf_links, bpf_programs, bpftool_bin};
pub use mount::{FsType, LoopMount, statfs_type};
pub use observer::{ObserverExit, ObserverProcess, tee_lines};
pub use stream::{Ends, Stream, assert_nothing_vanished, comparable};

/// One observer test at a time within a test binary: each loads programs
/// and reads host-wide counts. A failed test must not block the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The observer's three core functions, by the probe table.
pub fn core_functions() -> Vec<&'static str> {
    observer_abi::probes::functions(&observer_abi::probes::Role::CORE).collect()
}

// ---------------------------------------------------------------------------
// Locating binaries
// ---------------------------------------------------------------------------

/// Root of the cargo workspace (the parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Directories of the running executable that may hold sibling binaries:
/// `target/<profile>/deps/<test>-<hash>` → `deps/` and `target/<profile>/`.
fn exe_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if dir.file_name() == Some(OsStr::new("deps"))
            && let Some(profile) = dir.parent()
        {
            dirs.push(profile.to_path_buf());
        }
    }
    dirs
}

/// `$CARGO_TARGET_DIR` (when set at run time) and `<workspace>/target`.
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        let t = PathBuf::from(t);
        dirs.push(if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        });
    }
    dirs.push(workspace_root().join("target"));
    dirs
}

pub(crate) fn env_override(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn first_file(name: &str, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            panic!(
                "cannot find the `{name}` binary; looked at: {} (build it, or set the \
                 environment override)",
                list.join(", ")
            )
        })
}

/// Candidate locations of a binary of this crate, in search order: next to the
/// running (test) executable, then `<target>/{debug,release}/`.
fn sibling_candidates(name: &str) -> Vec<PathBuf> {
    let mut c: Vec<PathBuf> = exe_dirs().into_iter().map(|d| d.join(name)).collect();
    for t in target_dirs() {
        c.push(t.join("debug").join(name));
        c.push(t.join("release").join(name));
    }
    c
}

/// Path of the `racer` workload binary: `$RACER_BIN`, else next to the running
/// test executable (`target/<profile>/racer`), else `<target>/{debug,release}`.
///
/// Panics with the list of searched paths when none exists.
pub fn racer_bin() -> PathBuf {
    env_override("RACER_BIN").unwrap_or_else(|| first_file("racer", &sibling_candidates("racer")))
}

/// Path of the `fusefs` FUSE server: `$FUSEFS_BIN`, else like [`racer_bin`].
pub fn fusefs_bin() -> PathBuf {
    env_override("FUSEFS_BIN")
        .unwrap_or_else(|| first_file("fusefs", &sibling_candidates("fusefs")))
}

/// Path of the `faultbench` binary: `$FAULTBENCH_BIN`, else like [`racer_bin`].
pub fn faultbench_bin() -> PathBuf {
    env_override("FAULTBENCH_BIN")
        .unwrap_or_else(|| first_file("faultbench", &sibling_candidates("faultbench")))
}

/// Path of the `observer` agent: `$OBSERVER_BIN`, else
/// `<workspace>/target/release/observer`, else `<workspace>/target/debug/observer`,
/// else the same under `$CARGO_TARGET_DIR` / next to the running executable.
///
/// Panics with the list of searched paths when none exists.
pub fn observer_bin() -> PathBuf {
    if let Some(p) = env_override("OBSERVER_BIN") {
        return p;
    }
    let ws_target = workspace_root().join("target");
    let mut c = vec![
        ws_target.join("release").join("observer"),
        ws_target.join("debug").join("observer"),
    ];
    for t in target_dirs() {
        c.push(t.join("release").join("observer"));
        c.push(t.join("debug").join("observer"));
    }
    c.extend(exe_dirs().into_iter().map(|d| d.join("observer")));
    c.dedup();
    first_file("observer", &c)
}

/// Whether the effective user is root (loop mounts, BPF).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// The JSON line printed by `racer`.
#[derive(Debug, Clone, PartialEq)]
pub struct RacerReport {
    /// Absolute path of the raced file.
    pub file: PathBuf,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
    pub pages: u64,
    pub punch_pages: u64,
    /// racer's --op: "punch", "zero", "collapse", "insert", "truncate",
    /// "truncate-path", "madv-remove", "clone" or "dedupe".
    pub op: String,
    pub punches: u64,
    pub faults: u64,
    /// Buffered reads by the reader threads (0 without --readers).
    pub reads: u64,
    /// Inclusive page index range covering every invalidated range.
    pub punched_start: u64,
    pub punched_end: u64,
    /// What --check-holes read back; None without it.
    pub holes: Option<HoleCheck>,
    pub duration_s: f64,
    pub seed: u64,
}

/// racer --check-holes: punched (or zeroed) ranges read back right after
/// the operation, before anything writes them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoleCheck {
    pub checked: u64,
    /// Pages that read back a byte that is not zero: data the hole should
    /// have dropped.
    pub pages_not_zero: u64,
    /// Those pages by their offset in the punched range.
    pub by_offset: std::collections::BTreeMap<u64, u64>,
    /// The first such page.
    pub first_page: Option<u64>,
}

impl RacerReport {
    /// Parses one `racer` output line.
    pub fn parse(json_line: &str) -> Result<RacerReport> {
        let v: Value =
            serde_json::from_str(json_line.trim()).context("racer report is not valid JSON")?;
        let dev = get_str(&v, "dev")?;
        let (maj, min) = dev
            .split_once(':')
            .ok_or_else(|| anyhow!("racer report: dev {dev:?} is not MAJ:MIN"))?;
        let punched = field(&v, "punched")?;
        Ok(RacerReport {
            file: PathBuf::from(get_str(&v, "file")?),
            dev_major: maj
                .parse()
                .with_context(|| format!("racer report: bad dev {dev:?}"))?,
            dev_minor: min
                .parse()
                .with_context(|| format!("racer report: bad dev {dev:?}"))?,
            ino: get_u64(&v, "ino")?,
            pages: get_u64(&v, "pages")?,
            punch_pages: get_u64(&v, "punch_pages")?,
            op: get_str(&v, "op")?.to_string(),
            punches: get_u64(&v, "punches")?,
            faults: get_u64(&v, "faults")?,
            // Optional: absent before --readers existed.
            reads: get_u64(&v, "reads").unwrap_or(0),
            punched_start: get_u64(punched, "start")?,
            punched_end: get_u64(punched, "end")?,
            holes: match v.get("holes") {
                None | Some(Value::Null) => None,
                Some(h) => Some(HoleCheck {
                    checked: get_u64(h, "checked")?,
                    pages_not_zero: get_u64(h, "pages_not_zero")?,
                    by_offset: h
                        .get("by_offset")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_u64()?)))
                        .collect(),
                    first_page: h
                        .get("first")
                        .and_then(|f| f.get("page"))
                        .and_then(Value::as_u64),
                }),
            },
            duration_s: get_f64(&v, "duration_s")?,
            // Optional: absent in hand-written reports.
            seed: get_u64(&v, "seed").unwrap_or(0),
        })
    }

    /// `st_dev` as the kernel encodes it (`makedev(major, minor)`).
    pub fn dev(&self) -> u64 {
        libc::makedev(self.dev_major, self.dev_minor)
    }
}

/// The JSON line printed by `faultbench`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultbenchReport {
    pub rounds: u64,
    pub pages: u64,
    pub faults: u64,
    pub elapsed_s: f64,
    pub faults_per_s: f64,
    /// Operations done: faults of the fault loop, or the op mix's calls.
    pub ops: u64,
    /// The throughput a slowdown is measured on.
    pub ops_per_s: f64,
}

impl FaultbenchReport {
    pub fn parse(json_line: &str) -> Result<FaultbenchReport> {
        let v: Value = serde_json::from_str(json_line.trim())
            .context("faultbench report is not valid JSON")?;
        Ok(FaultbenchReport {
            rounds: get_u64(&v, "rounds")?,
            pages: get_u64(&v, "pages")?,
            faults: get_u64(&v, "faults")?,
            elapsed_s: get_f64(&v, "elapsed_s")?,
            faults_per_s: get_f64(&v, "faults_per_s")?,
            ops: get_u64(&v, "ops")?,
            ops_per_s: get_f64(&v, "ops_per_s")?,
        })
    }
}

/// Member `key` of object `v`.
fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value> {
    match v {
        Value::Object(m) => m.get(key).ok_or_else(|| anyhow!("missing field {key:?}")),
        _ => bail!("not an object (looking for {key:?})"),
    }
}

pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    match field(v, key)? {
        Value::String(s) => Ok(s),
        other => bail!("field {key:?} is not a string: {other}"),
    }
}

pub(crate) fn get_u64(v: &Value, key: &str) -> Result<u64> {
    match field(v, key)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("field {key:?} is not an unsigned integer: {n}")),
        other => bail!("field {key:?} is not a number: {other}"),
    }
}

fn get_f64(v: &Value, key: &str) -> Result<f64> {
    match field(v, key)? {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| anyhow!("field {key:?} is not a number: {n}")),
        other => bail!("field {key:?} is not a number: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Workload plumbing shared by racer and faultbench
// ---------------------------------------------------------------------------

/// File, mapping and hole-punching primitives for the workload binaries.
pub mod workload {
    use observer_abi::{FICLONERANGE, FIDEDUPERANGE, FileCloneRange, FileDedupeRange};
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// The byte every filled page holds (non-zero, so a read of 0 means a hole).
    pub const FILL_BYTE: u8 = 0xA5;

    /// The system page size (4096 on x86-64).
    pub fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 { n as usize } else { 4096 }
    }

    /// An io::Error as "Permission denied", without Rust's " (os error 13)".
    pub fn os_error(e: &io::Error) -> String {
        let s = e.to_string();
        match s.rfind(" (os error ") {
            Some(i) if s.ends_with(')') => s[..i].to_string(),
            _ => s,
        }
    }

    /// Deterministic 64-bit LCG (Knuth MMIX constants) with an output mix.
    #[derive(Debug, Clone)]
    pub struct Lcg(u64);

    impl Lcg {
        pub fn new(seed: u64) -> Lcg {
            let mut l = Lcg(seed ^ 0x9E37_79B9_7F4A_7C15);
            l.next_u64();
            l
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // The low bits of an LCG are weak; fold the high half in.
            let x = self.0;
            (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (x >> 32)
        }

        /// Uniform-ish value in `0..n` (`n > 0`).
        pub fn below(&mut self, n: u64) -> u64 {
            ((self.next_u64() as u128 * n as u128) >> 64) as u64
        }
    }

    /// Opens `path` read-write, creating or truncating it.
    pub fn create(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// Pages per fill write: the default fault-around window (fault_around_bytes
    /// = 64 KiB).
    pub const FILL_CHUNK_PAGES: usize = 16;

    /// pwrite()s [`FILL_BYTE`] over pages `first..first + count`, at most
    /// [`FILL_CHUNK_PAGES`] pages per write.
    ///
    /// Bigger writes let XFS build bigger folios, and since 6.18
    /// filemap_map_pages() maps a whole large folio per fault (e.g. 64 pages per
    /// fault after 256 KiB writes, one PMD after 2 MiB writes), so fewer
    /// fault-around calls happen. Window-sized writes keep one fault-around
    /// call per 16 touched pages.
    pub fn fill_pages(file: &File, page: usize, first: u64, count: u64) -> io::Result<()> {
        static BUF: [u8; 64 * 1024] = [FILL_BYTE; 64 * 1024];
        let chunk = (FILL_CHUNK_PAGES * page).min(BUF.len());
        let mut off = first * page as u64;
        let end = (first + count) * page as u64;
        while off < end {
            let n = ((end - off) as usize).min(chunk);
            file.write_all_at(&BUF[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }

    fn fallocate(file: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on a valid fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
    pub fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
        fallocate(
            file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    }

    /// `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`.
    pub fn zero_range(file: &File, off: u64, len: u64) -> io::Result<()> {
        fallocate(
            file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    }

    /// `fallocate(FALLOC_FL_COLLAPSE_RANGE)`: removes the range and shifts
    /// the rest of the file down; the file shrinks by `len`.
    pub fn collapse_range(file: &File, off: u64, len: u64) -> io::Result<()> {
        fallocate(file, libc::FALLOC_FL_COLLAPSE_RANGE, off, len)
    }

    /// `fallocate(FALLOC_FL_INSERT_RANGE)`: inserts a hole at `off`, shifting
    /// the rest of the file up; the file grows by `len`.
    pub fn insert_range(file: &File, off: u64, len: u64) -> io::Result<()> {
        fallocate(file, libc::FALLOC_FL_INSERT_RANGE, off, len)
    }

    /// `ioctl(dest, FICLONERANGE)`: makes `dest[dest_off..+len]` share the
    /// blocks of `src[src_off..+len]` (reflink).
    pub fn clone_range(
        src: &File,
        src_off: u64,
        dest: &File,
        dest_off: u64,
        len: u64,
    ) -> io::Result<()> {
        let arg = FileCloneRange {
            src_fd: i64::from(src.as_raw_fd()),
            src_offset: src_off,
            src_length: len,
            dest_offset: dest_off,
        };
        // SAFETY: the ioctl reads a struct file_clone_range we own.
        let r = unsafe { libc::ioctl(dest.as_raw_fd(), FICLONERANGE as _, &arg) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `ioctl(src, FIDEDUPERANGE)` with one destination: shares the blocks
    /// of identical ranges. Returns the bytes deduplicated; a range whose
    /// data differ is not an error (0 bytes).
    pub fn dedupe_range(
        src: &File,
        src_off: u64,
        dest: &File,
        dest_off: u64,
        len: u64,
    ) -> io::Result<u64> {
        let mut arg = FileDedupeRange {
            src_offset: src_off,
            src_length: len,
            dest_count: 1,
            reserved1: 0,
            reserved2: 0,
            dest_fd: i64::from(dest.as_raw_fd()),
            dest_offset: dest_off,
            bytes_deduped: 0,
            status: 0,
            reserved: 0,
        };
        // SAFETY: the ioctl reads the header and one info record, and writes
        // the info record's results, all inside `arg`.
        let r = unsafe { libc::ioctl(src.as_raw_fd(), FIDEDUPERANGE as _, &mut arg) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if arg.status < 0 {
            return Err(io::Error::from_raw_os_error(-arg.status));
        }
        Ok(arg.bytes_deduped)
    }

    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
    pub fn map_shared_write(file: &File, len: usize) -> io::Result<*mut u8> {
        // SAFETY: a fresh mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(p.cast())
        }
    }

    /// `madvise(MADV_REMOVE)` on part of a shared writable file mapping:
    /// the kernel punches a hole in the file behind it.
    pub fn madv_remove(addr: *mut u8, len: usize) -> io::Result<()> {
        // SAFETY: the range lies in a shared writable mapping owned by the
        // caller; REMOVE frees the file's blocks, which the caller wants.
        let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_REMOVE) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `readahead(2)`: starts reading the range into the page cache.
    pub fn readahead(file: &File, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on a valid fd.
        let r = unsafe { libc::readahead(file.as_raw_fd(), off as libc::off64_t, len as usize) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `pread(2)` into `buf`; returns the bytes read (short at EOF).
    pub fn pread(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
        file.read_at(buf, off)
    }

    /// `mmap(addr, len, PROT_READ, MAP_SHARED [| MAP_FIXED], fd, 0)`.
    ///
    /// With `fixed`, replaces whatever is mapped at `addr` (dropping its PTEs).
    pub fn map_shared_read(file: &File, len: usize, fixed: Option<*mut u8>) -> io::Result<*mut u8> {
        let (addr, flags) = match fixed {
            Some(a) => (a.cast(), libc::MAP_SHARED | libc::MAP_FIXED),
            None => (std::ptr::null_mut(), libc::MAP_SHARED),
        };
        // SAFETY: a MAP_FIXED target is memory this process reserved for it.
        let p = unsafe { libc::mmap(addr, len, libc::PROT_READ, flags, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(p.cast())
        }
    }

    /// `munmap(addr, len)` of a mapping the caller made.
    pub fn unmap(addr: *mut u8, len: usize) -> io::Result<()> {
        // SAFETY: the caller owns the mapping and no longer reads it.
        if unsafe { libc::munmap(addr.cast(), len) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `madvise(MADV_DONTNEED)`: drop the PTEs so the next reads fault again.
    pub fn dontneed(addr: *mut u8, len: usize) -> io::Result<()> {
        // SAFETY: the range is a mapping owned by the caller; DONTNEED on a
        // shared file mapping only drops PTEs, the data stays in the file.
        let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Page faults (minor + major) taken by the calling thread so far.
    pub fn thread_faults() -> u64 {
        // SAFETY: getrusage writes into the zeroed struct we pass.
        unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_THREAD, &mut ru) != 0 {
                return 0;
            }
            (ru.ru_minflt as u64).wrapping_add(ru.ru_majflt as u64)
        }
    }

    /// Sets the calling thread's kernel comm (truncated to 15 bytes).
    pub fn set_thread_name(name: &str) {
        let mut buf = [0u8; 16];
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of ≤ 16 bytes.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"file":"/mnt/x \"q\"\\y","dev":"7:3","ino":18446744073709551615,"pages":256,"punch_pages":16,"op":"punch","punches":120,"faults":4567,"punched":{"start":0,"end":255},"duration_s":2.001,"seed":42}"#;

    #[test]
    fn parse_racer_report() {
        let r = RacerReport::parse(SAMPLE).unwrap();
        assert_eq!(r.file, PathBuf::from("/mnt/x \"q\"\\y"));
        assert_eq!((r.dev_major, r.dev_minor), (7, 3));
        assert_eq!(r.ino, u64::MAX);
        assert_eq!((r.pages, r.punch_pages), (256, 16));
        assert_eq!(r.op, "punch");
        assert_eq!((r.punches, r.faults), (120, 4567));
        assert_eq!((r.punched_start, r.punched_end), (0, 255));
        assert!((r.duration_s - 2.001).abs() < 1e-9);
        assert_eq!(r.seed, 42);
        assert_eq!(r.dev(), libc::makedev(7, 3));
        // With a trailing newline and no seed.
        let no_seed = SAMPLE.replace(r#","seed":42"#, "") + "\n";
        assert_eq!(RacerReport::parse(&no_seed).unwrap().seed, 0);
    }

    #[test]
    fn reject_bad_reports() {
        for bad in [
            "",
            "{}",
            "not json",
            &SAMPLE.replace(r#""dev":"7:3""#, r#""dev":"7""#),
            &SAMPLE.replace(r#""ino":18446744073709551615"#, r#""ino":-1"#),
            &SAMPLE.replace(r#""punches":120"#, r#""punches":"120""#),
            &SAMPLE.replace(r#","punched":{"start":0,"end":255}"#, ""),
            &format!("{SAMPLE} trailing"),
            &SAMPLE[..SAMPLE.len() - 1],
        ] {
            assert!(RacerReport::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parse_faultbench_report() {
        let r = FaultbenchReport::parse(
            r#"{"rounds":50,"pages":4096,"faults":12800,"elapsed_s":0.5,"faults_per_s":25600.0,"ops":100,"ops_per_s":200.0}"#,
        )
        .unwrap();
        assert_eq!((r.rounds, r.pages, r.faults), (50, 4096, 12800));
        assert_eq!(r.faults_per_s, 25600.0);
        assert_eq!((r.ops, r.ops_per_s), (100, 200.0));
        // A report from before ops were counted is refused, not read as zero ops.
        assert!(FaultbenchReport::parse(
            r#"{"rounds":50,"pages":4096,"faults":12800,"elapsed_s":0.5,"faults_per_s":25600.0}"#
        )
        .is_err());
    }

    #[test]
    fn lcg_is_deterministic_and_in_range() {
        let mut a = workload::Lcg::new(7);
        let mut b = workload::Lcg::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        assert_ne!(
            workload::Lcg::new(1).next_u64(),
            workload::Lcg::new(2).next_u64()
        );
    }

    #[test]
    fn os_error_strips_code() {
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(workload::os_error(&e), "Permission denied");
    }
}
