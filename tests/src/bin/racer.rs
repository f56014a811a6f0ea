//! racer: provoke fault-around (filemap_map_pages) and buffered reads on file
//! ranges that are being invalidated, by any of the kernel's invalidators.
//!
//! Fault threads each own a MAP_SHARED, PROT_READ mapping of the whole file and
//! loop { MADV_DONTNEED; read one byte per page }, so every read fault on a
//! not-yet-mapped page runs do_fault_around() → filemap_map_pages(), which maps
//! up to 16 cached pages around the fault without taking the invalidate lock
//! (class A: a PTE installed inside the invalidation window).
//! Reader threads (--readers) loop { pread() or readahead() the range being
//! invalidated right now }, so that a read can bring pages back into the cache
//! between the invalidation and the filesystem's block removal (class B).
//! Punch threads loop { invalidate a random range; pwrite it back } so there is
//! always fresh page cache in the ranges being invalidated. With --check-holes
//! the punch thread reads a punched or zeroed range back before it writes it
//! again: nothing else writes the file, so any byte that is not zero is data
//! the hole should have dropped, seen through read(2) (class B from
//! userspace, independent of the observer).
//!
//! Prints one JSON line on stdout at the end:
//! {"file":…,"dev":"MAJ:MIN","ino":N,"pages":N,"punch_pages":N,"op":"punch",
//!  "punches":N,"faults":N,"reads":N,"punched":{"start":N,"end":N},
//!  "holes":{"checked":N,"pages_not_zero":N,"by_offset":{"OFFSET":N,...},
//!           "first":{"page":N,"at_s":F}|null}|null,
//!  "duration_s":F,"seed":N}
//!
//! Exit status: 0 when done, 77 when the file system does not support the
//! operation (EOPNOTSUPP and the like: nothing was raced), 1 on any other error.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use observer_tests::ops::Op;
use observer_tests::workload::{self, Lcg, os_error};

/// Exit status when the file system does not support the operation.
const EXIT_UNSUPPORTED: u8 = 77;

/// Race page-cache invalidation (hole punch / zero range / truncate) against
/// fault-around on a shared file mapping.
#[derive(Debug, Parser)]
#[command(name = "racer", version)]
struct Args {
    /// File to create (truncated if it exists) and race on.
    #[arg(long)]
    file: PathBuf,
    /// Run time in seconds (fractions allowed).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    duration: f64,
    /// File size in pages.
    #[arg(long, default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1 << 28))]
    pages: u64,
    /// Pages each fault mapping spans [default: --pages]. More maps past
    /// EOF, 2 MiB aligned (faults still touch only the file's pages): on a
    /// huge=always tmpfs the first fault maps one PMD across EOF, the live
    /// control of the observer's class C.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1 << 28))]
    map_pages: Option<u64>,
    /// Pages per invalidated range.
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    punch_pages: u64,
    /// Threads faulting the mapping (0 = invalidate only).
    #[arg(long, default_value_t = 2, value_name = "N")]
    fault_threads: usize,
    /// Threads invalidating ranges.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    punch_threads: u64,
    /// How ranges are invalidated.
    #[arg(long, value_enum, default_value_t = Op::Punch)]
    op: Op,
    /// Threads reading the range being invalidated with pread() and
    /// readahead() (buffered reads that refill the page cache).
    #[arg(long, default_value_t = 0, value_name = "N",
          value_parser = clap::value_parser!(u64).range(0..=1024))]
    readers: u64,
    /// After each punch or zero range (one punch thread), read the range
    /// back and count the pages that are not all zeroes: the report's
    /// `holes`.
    #[arg(long)]
    check_holes: bool,
    /// Only check that the file system supports --op: create the file, run
    /// one invalidation without other threads, exit 0 (or 77), print nothing.
    #[arg(long)]
    probe: bool,
    /// Seed of the range chooser (default: time and pid based).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

// --- SIGBUS recovery (truncate mode) ---------------------------------------
//
// With --op truncate a fault thread can touch a page beyond the current EOF
// and get SIGBUS. Skipping pages near EOF cannot be made race-free without a
// lock that would serialise exactly the race we want, and siglongjmp out of a
// Rust frame is undefined behaviour. Instead the handler maps an anonymous
// zero page (MAP_FIXED) over the faulting page and returns: the faulting load
// is restarted, reads 0 and the thread carries on. mmap is a bare syscall
// (async-signal-safe in practice); the handler touches only atomics and
// preserves errno. It flags the owning slot, the thread abandons the current
// pass and re-mmaps its whole file mapping MAP_FIXED (which also drops every
// PTE, like MADV_DONTNEED). A SIGBUS outside the fault mappings restores the
// default action and returns, so the fault repeats and kills the process as
// it would have without the handler.

/// Fault mappings live in one reservation: slot i at BASE + i * SLOT_LEN.
static REGION_BASE: AtomicUsize = AtomicUsize::new(0);
static REGION_SLOT_LEN: AtomicUsize = AtomicUsize::new(0);
static REGION_SLOTS: AtomicUsize = AtomicUsize::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// Leaked `[AtomicBool; REGION_SLOTS]`: slot needs re-mmapping.
static PATCHED: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; all
    // other state is atomics and the leaked PATCHED array.
    unsafe {
        let errno = *libc::__errno_location();
        let addr = (*info).si_addr() as usize;
        let base = REGION_BASE.load(Ordering::Acquire);
        let slot_len = REGION_SLOT_LEN.load(Ordering::Acquire);
        let slots = REGION_SLOTS.load(Ordering::Acquire);
        let patched = PATCHED.load(Ordering::Acquire);
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        if base != 0 && !patched.is_null() && addr >= base && addr - base < slot_len * slots {
            let p = libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if p != libc::MAP_FAILED {
                (*patched.add((addr - base) / slot_len)).store(true, Ordering::Release);
                *libc::__errno_location() = errno;
                return;
            }
        }
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
        *libc::__errno_location() = errno;
    }
}

fn install_sigbus_handler() -> Result<(), String> {
    // SAFETY: sigaction with a zeroed, filled-in struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "cannot install SIGBUS handler: {}",
                os_error(&std::io::Error::last_os_error())
            ));
        }
    }
    Ok(())
}

// --- threads ----------------------------------------------------------------

/// Why the run failed; `unsupported` when the file system refuses the
/// operation itself (exit status 77).
#[derive(Debug)]
struct Failure {
    msg: String,
    unsupported: bool,
}

impl From<String> for Failure {
    fn from(msg: String) -> Self {
        Failure {
            msg,
            unsupported: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(msg: &str) -> Self {
        msg.to_string().into()
    }
}

/// An invalidating call failed: `what` on the file, with a hint when the
/// file system lacks the operation.
fn op_failure(what: &str, path: &str, e: &std::io::Error) -> Failure {
    let unsupported = matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
    );
    let hint = if unsupported {
        " (the file system does not support it)"
    } else {
        ""
    };
    Failure {
        msg: format!("{what} on {path}: {}{hint}", os_error(e)),
        unsupported,
    }
}

struct Shared {
    file: File,
    path: String,
    /// NUL-terminated `path`, for truncate(2).
    cpath: std::ffi::CString,
    op: Op,
    page: usize,
    pages: u64,
    /// Pages each fault mapping spans (≥ pages).
    map_pages: u64,
    punch_pages: u64,
    stop: AtomicBool,
    /// First page + 1 of the range being invalidated now (0: none yet).
    current: AtomicU64,
    /// Serialises the ops that change the file size.
    resize: Mutex<()>,
    /// Clone/dedupe source: same size, same contents.
    source: Option<File>,
    /// MADV_REMOVE: a shared writable mapping of the whole file.
    rw_map: AtomicPtr<u8>,
    check_holes: bool,
    t0: Instant,
}

impl Shared {
    fn file_pages(&self) -> Result<u64, Failure> {
        let len = self
            .file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {}", self.path, os_error(&e)))?
            .len();
        Ok(len / self.page as u64)
    }

    fn set_len(&self, pages: u64) -> Result<(), Failure> {
        self.file
            .set_len(pages * self.page as u64)
            .map_err(|e| op_failure("ftruncate", &self.path, &e))
    }

    fn truncate_path(&self, pages: u64) -> Result<(), Failure> {
        // SAFETY: cpath is a valid NUL-terminated path.
        let r = unsafe { libc::truncate(self.cpath.as_ptr(), (pages * self.page as u64) as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(op_failure(
                "truncate",
                &self.path,
                &std::io::Error::last_os_error(),
            ))
        }
    }

    fn fill(&self, first: u64, count: u64) -> Result<(), Failure> {
        workload::fill_pages(&self.file, self.page, first, count)
            .map_err(|e| format!("cannot write {}: {}", self.path, os_error(&e)).into())
    }
}

#[derive(Default)]
struct PunchStats {
    punches: u64,
    lo: u64,
    hi: u64,
    holes: Holes,
}

/// What --check-holes read back.
#[derive(Clone, Default)]
struct Holes {
    /// Ranges read back.
    checked: u64,
    /// Pages of them holding a byte that is not zero.
    pages_not_zero: u64,
    /// Those pages by their offset in the punched range: where a
    /// filesystem's guard falls short shows (one page, the last, or all).
    by_offset: std::collections::BTreeMap<u64, u64>,
    /// The first such page, and when (seconds into the run).
    first: Option<(u64, f64)>,
}

impl Holes {
    fn add(&mut self, other: Holes) {
        self.checked += other.checked;
        self.pages_not_zero += other.pages_not_zero;
        for (offset, n) in other.by_offset {
            *self.by_offset.entry(offset).or_default() += n;
        }
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
    }

    fn json(&self) -> String {
        let first = self.first.map_or("null".to_string(), |(page, at)| {
            format!(r#"{{"page":{page},"at_s":{at:.6}}}"#)
        });
        let by_offset: Vec<String> = self
            .by_offset
            .iter()
            .map(|(o, n)| format!(r#""{o}":{n}"#))
            .collect();
        format!(
            r#"{{"checked":{},"pages_not_zero":{},"by_offset":{{{}}},"first":{first}}}"#,
            self.checked,
            self.pages_not_zero,
            by_offset.join(",")
        )
    }
}

/// Reads pages `start..start + count` and counts those that are not all
/// zeroes into `holes`.
fn check_hole(sh: &Shared, holes: &mut Holes, start: u64, count: u64) -> Result<(), Failure> {
    let page = sh.page;
    let mut buf = vec![0u8; count as usize * page];
    workload::pread(&sh.file, &mut buf, start * page as u64)
        .map_err(|e| format!("cannot read back {}: {}", sh.path, os_error(&e)))?;
    holes.checked += 1;
    for (i, p) in buf.chunks(page).enumerate() {
        if p.iter().any(|&b| b != 0) {
            holes.pages_not_zero += 1;
            *holes.by_offset.entry(i as u64).or_default() += 1;
            holes
                .first
                .get_or_insert((start + i as u64, sh.t0.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}

/// Invalidates random ranges and refills them until told to stop (at least once).
fn punch_loop(sh: &Shared, seed: u64) -> Result<PunchStats, Failure> {
    let page = sh.page as u64;
    let mut rng = Lcg::new(seed);
    let mut st = PunchStats {
        lo: u64::MAX,
        ..Default::default()
    };
    loop {
        // Collapse needs the range to end before EOF.
        let room = match sh.op {
            Op::Collapse => sh.pages.saturating_sub(sh.punch_pages).max(1),
            _ => sh.pages - sh.punch_pages + 1,
        };
        let start = rng.below(room);
        let (off, len) = (start * page, sh.punch_pages * page);
        sh.current.store(start + 1, Ordering::Relaxed);
        let _resizing = sh
            .op
            .resizes()
            .then(|| sh.resize.lock().unwrap_or_else(|e| e.into_inner()));
        // Last page index invalidated by this operation (inclusive), and the
        // pages to write back afterwards.
        let (end, refill) = match sh.op {
            Op::Punch => {
                workload::punch_hole(&sh.file, off, len)
                    .map_err(|e| op_failure("fallocate(FALLOC_FL_PUNCH_HOLE)", &sh.path, &e))?;
                (start + sh.punch_pages - 1, (start, sh.punch_pages))
            }
            Op::Zero => {
                workload::zero_range(&sh.file, off, len)
                    .map_err(|e| op_failure("fallocate(FALLOC_FL_ZERO_RANGE)", &sh.path, &e))?;
                (start + sh.punch_pages - 1, (start, sh.punch_pages))
            }
            Op::MadvRemove => {
                let base = sh.rw_map.load(Ordering::Relaxed);
                // SAFETY: the mapping covers the whole file, [off, off + len)
                // lies inside it.
                let at = unsafe { base.add(off as usize) };
                workload::madv_remove(at, len as usize)
                    .map_err(|e| op_failure("madvise(MADV_REMOVE)", &sh.path, &e))?;
                (start + sh.punch_pages - 1, (start, sh.punch_pages))
            }
            Op::Collapse => {
                let before = sh.file_pages()?;
                if start + sh.punch_pages >= before {
                    // Cannot collapse through EOF; restore and retry.
                    sh.set_len(sh.pages)?;
                    sh.fill(0, sh.pages)?;
                    continue;
                }
                workload::collapse_range(&sh.file, off, len)
                    .map_err(|e| op_failure("fallocate(FALLOC_FL_COLLAPSE_RANGE)", &sh.path, &e))?;
                // The tail moved down: write back what fell off the end.
                let now = before - sh.punch_pages;
                (sh.pages - 1, (now, sh.pages.saturating_sub(now)))
            }
            Op::Insert => {
                workload::insert_range(&sh.file, off, len)
                    .map_err(|e| op_failure("fallocate(FALLOC_FL_INSERT_RANGE)", &sh.path, &e))?;
                if sh.file_pages()? >= 2 * sh.pages {
                    sh.set_len(sh.pages)?;
                }
                (sh.pages - 1, (start, sh.punch_pages))
            }
            Op::Truncate => {
                // Shrinking drops the page cache (and PTEs) of the whole tail.
                sh.set_len(start)?;
                sh.set_len(sh.pages)?;
                (sh.pages - 1, (start, sh.pages - start))
            }
            Op::TruncatePath => {
                sh.truncate_path(start)?;
                sh.truncate_path(sh.pages)?;
                (sh.pages - 1, (start, sh.pages - start))
            }
            Op::Clone => {
                let src = sh.source.as_ref().ok_or("clone without a source file")?;
                workload::clone_range(src, off, &sh.file, off, len)
                    .map_err(|e| op_failure("ioctl(FICLONERANGE)", &sh.path, &e))?;
                (start + sh.punch_pages - 1, (start, sh.punch_pages))
            }
            Op::Dedupe => {
                let src = sh.source.as_ref().ok_or("dedupe without a source file")?;
                workload::dedupe_range(src, off, &sh.file, off, len)
                    .map_err(|e| op_failure("ioctl(FIDEDUPERANGE)", &sh.path, &e))?;
                (start + sh.punch_pages - 1, (start, sh.punch_pages))
            }
        };
        if sh.check_holes && matches!(sh.op, Op::Punch | Op::Zero) {
            check_hole(sh, &mut st.holes, start, sh.punch_pages)?;
        }
        // Refill so the next fault-around finds cached pages in the range.
        sh.fill(refill.0, refill.1)?;
        st.punches += 1;
        st.lo = st.lo.min(start);
        st.hi = st.hi.max(end);
        if sh.stop.load(Ordering::Relaxed) {
            return Ok(st);
        }
    }
}

/// Reads the range being invalidated (or a random one before the first
/// invalidation) until told to stop, alternating pread() and readahead();
/// returns the reads made.
fn read_loop(sh: &Shared, file: &File, seed: u64) -> Result<u64, Failure> {
    let page = sh.page as u64;
    let mut rng = Lcg::new(seed);
    let mut buf = vec![0u8; (sh.punch_pages * page) as usize];
    let mut reads = 0u64;
    loop {
        let start = match sh.current.load(Ordering::Relaxed) {
            0 => rng.below(sh.pages - sh.punch_pages + 1),
            n => n - 1,
        };
        let off = start * page;
        let r = if reads.is_multiple_of(2) {
            workload::pread(file, &mut buf, off).map(drop)
        } else {
            workload::readahead(file, off, sh.punch_pages * page)
        };
        r.map_err(|e| format!("cannot read {}: {}", sh.path, os_error(&e)))?;
        reads += 1;
        if sh.stop.load(Ordering::Relaxed) {
            return Ok(reads);
        }
    }
}

/// Reads one byte per page until told to stop; returns the page faults taken.
///
/// Even threads walk the pages in order, odd threads in 16-page strides
/// (0, 16, 32, …, then 1, 17, …) so their faults sweep the whole file quickly.
fn fault_loop(sh: &Shared, slot: usize, base: *mut u8) -> Result<u64, String> {
    const STRIDE: u64 = 16;
    let len = sh.map_pages as usize * sh.page;
    let patched = PATCHED.load(Ordering::Acquire);
    let my_flag = (!patched.is_null()).then(|| {
        // SAFETY: PATCHED has REGION_SLOTS entries and slot < REGION_SLOTS.
        unsafe { &*patched.add(slot) }
    });
    let faults0 = workload::thread_faults();
    let mut sum = 0u8;
    loop {
        if my_flag.is_some_and(|f| f.swap(false, Ordering::Acquire)) {
            workload::map_shared_read(&sh.file, len, Some(base))
                .map_err(|e| format!("cannot re-mmap {}: {}", sh.path, os_error(&e)))?;
        } else {
            workload::dontneed(base, len)
                .map_err(|e| format!("madvise(MADV_DONTNEED): {}", os_error(&e)))?;
        }
        let touch = |p: u64| {
            // SAFETY: p < pages, inside this thread's live mapping; a SIGBUS
            // (truncate mode) is absorbed by on_sigbus.
            unsafe { std::ptr::read_volatile(base.add(p as usize * sh.page)) }
        };
        let abandoned = || my_flag.is_some_and(|f| f.load(Ordering::Relaxed));
        'pass: {
            if slot.is_multiple_of(2) {
                for p in 0..sh.pages {
                    sum = sum.wrapping_add(touch(p));
                    if abandoned() {
                        break 'pass;
                    }
                }
            } else {
                for phase in 0..STRIDE.min(sh.pages) {
                    for p in (phase..sh.pages).step_by(STRIDE as usize) {
                        sum = sum.wrapping_add(touch(p));
                        if abandoned() {
                            break 'pass;
                        }
                    }
                }
            }
        }
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    std::hint::black_box(sum);
    Ok(workload::thread_faults().saturating_sub(faults0))
}

/// Reserves `slots * len` bytes (64 KiB aligned, so fault-around windows line
/// up with 16-page file windows; 2 MiB when mapping past EOF, so a PMD can
/// map it) and maps the file into every slot.
fn map_slots(sh: &Shared, slots: usize) -> Result<*mut u8, String> {
    let align: usize = if sh.map_pages > sh.pages {
        2 << 20
    } else {
        64 * 1024
    };
    let len = sh.map_pages as usize * sh.page;
    let total = len
        .checked_mul(slots)
        .and_then(|t| t.checked_add(align))
        .ok_or("mapping too large")?;
    // SAFETY: fresh anonymous PROT_NONE reservation; never unmapped (the
    // process exits after the run).
    let res = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if res == libc::MAP_FAILED {
        return Err(format!(
            "cannot reserve {total} bytes of address space: {}",
            os_error(&std::io::Error::last_os_error())
        ));
    }
    let base = (res as usize).next_multiple_of(align) as *mut u8;
    for i in 0..slots {
        // SAFETY: inside the reservation.
        let at = unsafe { base.add(i * len) };
        workload::map_shared_read(&sh.file, len, Some(at))
            .map_err(|e| format!("cannot mmap {}: {}", sh.path, os_error(&e)))?;
    }
    Ok(base)
}

fn default_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    })
}

fn run(args: Args) -> Result<String, Failure> {
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        return Err(format!(
            "--duration must be a non-negative number of seconds, not {}",
            args.duration
        )
        .into());
    }
    if args.punch_pages > args.pages {
        return Err(format!(
            "--punch-pages ({}) must not exceed --pages ({})",
            args.punch_pages, args.pages
        )
        .into());
    }
    if args.op == Op::Collapse && args.punch_pages >= args.pages {
        return Err("--op collapse needs --punch-pages below --pages".into());
    }
    // Another puncher's write-back would read as data left in the hole.
    if args.check_holes && args.punch_threads > 1 {
        return Err("--check-holes needs --punch-threads 1".into());
    }
    let page = workload::page_size();
    PAGE_SIZE.store(page, Ordering::Relaxed);
    let shown = args.file.display().to_string();
    let file = workload::create(&args.file)
        .map_err(|e| format!("cannot create {shown}: {}", os_error(&e)))?;
    file.set_len(args.pages * page as u64)
        .map_err(|e| format!("cannot resize {shown}: {}", os_error(&e)))?;
    workload::fill_pages(&file, page, 0, args.pages)
        .map_err(|e| format!("cannot write {shown}: {}", os_error(&e)))?;
    file.sync_all()
        .map_err(|e| format!("cannot fsync {shown}: {}", os_error(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {shown}: {}", os_error(&e)))?;
    let abs = absolute(&args.file);
    let seed = args.seed.unwrap_or_else(default_seed);

    // Clone and dedupe take their blocks from a twin file next to it.
    let source = if args.op.needs_source() {
        let mut name = args.file.clone().into_os_string();
        name.push(".src");
        let src_path = PathBuf::from(name);
        let src = workload::create(&src_path)
            .and_then(|f| {
                f.set_len(args.pages * page as u64)?;
                workload::fill_pages(&f, page, 0, args.pages)?;
                f.sync_all()?;
                Ok(f)
            })
            .map_err(|e| format!("cannot create {}: {}", src_path.display(), os_error(&e)))?;
        Some(src)
    } else {
        None
    };
    let cpath = std::ffi::CString::new(abs.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{shown}: path contains a NUL byte"))?;

    let sh = Arc::new(Shared {
        file,
        path: abs.display().to_string(),
        cpath,
        op: args.op,
        page,
        pages: args.pages,
        map_pages: args.map_pages.unwrap_or(args.pages).max(args.pages),
        punch_pages: args.punch_pages,
        stop: AtomicBool::new(false),
        current: AtomicU64::new(0),
        resize: Mutex::new(()),
        source,
        rw_map: AtomicPtr::new(std::ptr::null_mut()),
        check_holes: args.check_holes,
        t0: Instant::now(),
    });
    if args.op == Op::MadvRemove {
        let p = workload::map_shared_write(&sh.file, args.pages as usize * page)
            .map_err(|e| format!("cannot mmap {shown} writable: {}", os_error(&e)))?;
        sh.rw_map.store(p, Ordering::Relaxed);
    }

    let slots = args.fault_threads;
    let base = if slots > 0 {
        map_slots(&sh, slots)?
    } else {
        std::ptr::null_mut()
    };
    if args.op.shrinks() && slots > 0 {
        let flags: &'static [AtomicBool] =
            Box::leak((0..slots).map(|_| AtomicBool::new(false)).collect());
        PATCHED.store(flags.as_ptr().cast_mut(), Ordering::Release);
        REGION_SLOT_LEN.store(sh.map_pages as usize * page, Ordering::Release);
        REGION_SLOTS.store(slots, Ordering::Release);
        REGION_BASE.store(base as usize, Ordering::Release);
        install_sigbus_handler()?;
    }

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.duration);
    let spawn_err = |e: std::io::Error| format!("cannot spawn thread: {}", os_error(&e));

    let mut faulters = Vec::new();
    for slot in 0..slots {
        let sh = Arc::clone(&sh);
        // Raw pointers are not Send; pass the slot address as an integer.
        let at = base as usize + slot * sh.map_pages as usize * page;
        let h = thread::Builder::new()
            .name("racer-fault".into())
            .spawn(move || {
                let r = fault_loop(&sh, slot, at as *mut u8);
                if r.is_err() {
                    sh.stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(spawn_err)?;
        faulters.push(h);
    }
    let mut readers = Vec::new();
    for i in 0..args.readers {
        let sh = Arc::clone(&sh);
        // Each reader has its own open file (and so its own readahead state).
        let file =
            File::open(&args.file).map_err(|e| format!("cannot open {shown}: {}", os_error(&e)))?;
        let s = seed ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let h = thread::Builder::new()
            .name("racer-read".into())
            .spawn(move || {
                let r = read_loop(&sh, &file, s);
                if r.is_err() {
                    sh.stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(spawn_err)?;
        readers.push(h);
    }
    let mut punchers = Vec::new();
    for i in 0..args.punch_threads {
        let sh = Arc::clone(&sh);
        let s = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let h = thread::Builder::new()
            .name("racer-punch".into())
            .spawn(move || {
                let r = punch_loop(&sh, s);
                if r.is_err() {
                    sh.stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(spawn_err)?;
        punchers.push(h);
    }

    while !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
    sh.stop.store(true, Ordering::Relaxed);

    // A puncher's failure names the cause; a faulter or reader failing
    // afterwards (e.g. on the shrunk file) is a consequence.
    let mut first_err: Option<Failure> = None;
    let (mut punches, mut lo, mut hi) = (0u64, u64::MAX, 0u64);
    let mut holes = Holes::default();
    for h in punchers {
        match h.join() {
            Ok(Ok(st)) => {
                punches += st.punches;
                lo = lo.min(st.lo);
                hi = hi.max(st.hi);
                holes.add(st.holes);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("a punch thread panicked".into());
            }
        }
    }
    let mut faults = 0u64;
    for h in faulters {
        match h.join() {
            Ok(Ok(n)) => faults += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e.into());
            }
            Err(_) => {
                first_err.get_or_insert("a fault thread panicked".into());
            }
        }
    }
    let mut reads = 0u64;
    for h in readers {
        match h.join() {
            Ok(Ok(n)) => reads += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("a reader thread panicked".into());
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    // Insert grows the file; every operation ends at the full size.
    if args.op == Op::Insert {
        sh.set_len(args.pages)?;
    }

    Ok(format!(
        concat!(
            r#"{{"file":{},"dev":"{}:{}","ino":{},"pages":{},"punch_pages":{},"op":"{}","#,
            r#""punches":{},"faults":{},"reads":{},"punched":{{"start":{},"end":{}}},"#,
            r#""holes":{},"duration_s":{:.3},"seed":{}}}"#
        ),
        serde_json::Value::from(abs.to_string_lossy()),
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
        args.pages,
        args.punch_pages,
        args.op.name(),
        punches,
        faults,
        reads,
        lo,
        hi,
        if args.check_holes {
            holes.json()
        } else {
            "null".into()
        },
        elapsed,
        seed,
    ))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let probe = args.probe;
    if probe {
        args.duration = 0.0;
        args.fault_threads = 0;
        args.readers = 0;
        args.punch_threads = 1;
    }
    match run(args) {
        Ok(line) => {
            if !probe {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("racer: {}", e.msg.replace('\n', " "));
            if e.unsupported {
                ExitCode::from(EXIT_UNSUPPORTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
