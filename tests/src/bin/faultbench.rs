//! faultbench: a fault-around-heavy benchmark (to measure probe overhead on
//! filemap_map_pages).
//!
//! Maps the file MAP_SHARED, PROT_READ and, each round, drops the PTEs with
//! MADV_DONTNEED and reads one byte from every page in order. With the default
//! fault_around_bytes (64 KiB) that is one read fault per 16 pages, each served
//! by do_fault_around() → filemap_map_pages() mapping the 16-page window from
//! the (hot) page cache. The file is written in 16-page chunks so its folios
//! are no larger than that window (6.18 maps a whole large folio per fault).
//! With --punch a second thread keeps punching 16-page
//! holes and refilling them, as racer does.
//!
//! With --mix, one thread instead runs an fsx-like mix, one call after
//! another: mapped reads of a random range (mmap, touch, munmap: through
//! fault-around), punch, zero range, collapse, insert, truncate down and
//! back up, and writes; `rounds` is then the number of operations.
//!
//! Prints one JSON line:
//! {"rounds":N,"pages":N,"faults":N,"elapsed_s":F,"faults_per_s":F,"ops":N,"ops_per_s":F}
//! where faults are the page faults (minor + major) taken by the measuring
//! thread during the rounds, and ops its faults (fault loop) or its calls
//! (mix).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use clap::Parser;
use observer_tests::workload::{self, Lcg, os_error};

/// Benchmark read faults with fault-around on a shared file mapping.
#[derive(Debug, Parser)]
#[command(name = "faultbench", version)]
struct Args {
    /// File to create (truncated if it exists) and map.
    #[arg(long)]
    file: PathBuf,
    /// File size in pages.
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = clap::value_parser!(u64).range(16..=1 << 28))]
    pages: u64,
    /// Rounds of MADV_DONTNEED + touch every page.
    #[arg(long, default_value_t = 50, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Concurrently punch (and refill) 16-page holes.
    #[arg(long, conflicts_with = "mix")]
    punch: bool,
    /// Run the fsx-like op mix instead of the fault loop.
    #[arg(long)]
    mix: bool,
}

const PUNCH_PAGES: u64 = 16;

fn run(args: Args) -> Result<String, String> {
    let page = workload::page_size();
    let shown = args.file.display().to_string();
    let file = workload::create(&args.file)
        .map_err(|e| format!("cannot create {shown}: {}", os_error(&e)))?;
    file.set_len(args.pages * page as u64)
        .map_err(|e| format!("cannot resize {shown}: {}", os_error(&e)))?;
    workload::fill_pages(&file, page, 0, args.pages)
        .map_err(|e| format!("cannot write {shown}: {}", os_error(&e)))?;
    file.sync_all()
        .map_err(|e| format!("cannot fsync {shown}: {}", os_error(&e)))?;
    if args.mix {
        return mix(&args, &file, page).map_err(|e| format!("{shown}: {e}"));
    }
    let len = args.pages as usize * page;
    let base = workload::map_shared_read(&file, len, None)
        .map_err(|e| format!("cannot mmap {shown}: {}", os_error(&e)))?;
    let file = Arc::new(file);
    let stop = Arc::new(AtomicBool::new(false));

    let puncher = if args.punch {
        let (file, stop, shown) = (Arc::clone(&file), Arc::clone(&stop), shown.clone());
        let pages = args.pages;
        let h = thread::Builder::new()
            .name("faultbench-pun".into())
            .spawn(move || -> Result<u64, String> {
                let mut rng = Lcg::new(1);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let start = rng.below(pages - PUNCH_PAGES + 1);
                    let p = page as u64;
                    workload::punch_hole(&file, start * p, PUNCH_PAGES * p)
                        .and_then(|()| workload::fill_pages(&file, page, start, PUNCH_PAGES))
                        .map_err(|e| format!("punch/refill {shown}: {}", os_error(&e)))?;
                    n += 1;
                }
                Ok(n)
            })
            .map_err(|e| format!("cannot spawn thread: {}", os_error(&e)))?;
        Some(h)
    } else {
        None
    };

    let faults0 = workload::thread_faults();
    let t0 = Instant::now();
    let mut sum = 0u8;
    let mut result = Ok(());
    for _ in 0..args.rounds {
        if let Err(e) = workload::dontneed(base, len) {
            result = Err(format!("madvise(MADV_DONTNEED): {}", os_error(&e)));
            break;
        }
        for p in 0..args.pages as usize {
            // SAFETY: p < pages, inside the live mapping; the size never changes.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(base.add(p * page)) });
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let faults = workload::thread_faults().saturating_sub(faults0);
    std::hint::black_box(sum);

    stop.store(true, Ordering::Relaxed);
    if let Some(h) = puncher {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the punch thread panicked".into()),
        }
    }
    result?;
    Ok(report(&args, faults, elapsed, faults))
}

fn report(args: &Args, faults: u64, elapsed: f64, ops: u64) -> String {
    let per_s = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    format!(
        r#"{{"rounds":{},"pages":{},"faults":{},"elapsed_s":{:.6},"faults_per_s":{:.1},"ops":{},"ops_per_s":{:.1}}}"#,
        args.rounds,
        args.pages,
        faults,
        elapsed,
        per_s(faults),
        ops,
        per_s(ops)
    )
}

/// The size changes (collapse, insert, truncate) keep the file between a
/// quarter of --pages and --pages.
const MIX_RANGE_PAGES: u64 = 64;

/// fsx's kinds of operation, one process, one at a time, on one file:
/// every invalidation opens a window, and the mapped reads between them go
/// through fault-around, most of them outside any window (fsx's own shape).
fn mix(args: &Args, file: &std::fs::File, page: usize) -> Result<String, String> {
    let p = page as u64;
    let (min, max) = ((args.pages / 4).max(2 * MIX_RANGE_PAGES), args.pages);
    let mut size = args.pages;
    let mut rng = Lcg::new(7);
    let mut sum = 0u8;
    let faults0 = workload::thread_faults();
    let t0 = Instant::now();
    for _ in 0..args.rounds {
        let len = 1 + rng.below(MIX_RANGE_PAGES);
        let start = rng.below(size - len);
        let done = match rng.below(8) {
            // Mapped reads are a quarter of the mix, as fsx's default weights
            // make them.
            0 | 1 => {
                let bytes = (size * p) as usize;
                workload::map_shared_read(file, bytes, None).and_then(|base| {
                    for i in start..start + len {
                        // SAFETY: i < size, inside the mapping made just now.
                        sum = sum.wrapping_add(unsafe {
                            std::ptr::read_volatile(base.add(i as usize * page))
                        });
                    }
                    workload::unmap(base, bytes)
                })
            }
            2 => workload::punch_hole(file, start * p, len * p),
            3 => workload::zero_range(file, start * p, len * p),
            4 if size - len >= min => {
                workload::collapse_range(file, start * p, len * p).inspect(|()| size -= len)
            }
            5 if size + len <= max => {
                workload::insert_range(file, start * p, len * p).inspect(|()| size += len)
            }
            6 => file
                .set_len((size - len) * p)
                .and_then(|()| file.set_len(size * p)),
            _ => workload::fill_pages(file, page, start, len),
        };
        done.map_err(|e| format!("op mix: {}", os_error(&e)))?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let faults = workload::thread_faults().saturating_sub(faults0);
    std::hint::black_box(sum);
    Ok(report(args, faults, elapsed, args.rounds))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("faultbench: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
