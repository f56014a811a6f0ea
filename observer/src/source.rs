//! Event source: drains the ring buffer, record by record, into whoever
//! consumes raw records (the pipeline decodes and, for `record`, saves
//! them); reads the kernel's per-CPU counters and stacks for the summary.

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use observer_abi as abi;
use tokio::io::unix::AsyncFd;

pub struct Source {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Times the ring woke the agent.
    pub wakeups: u64,
}

impl Source {
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Source> {
        let map = ebpf
            .take_map("EVENTS")
            .context("eBPF object has no EVENTS map")?;
        let ring = RingBuf::try_from(map)?;
        Ok(Source {
            // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives
            // the registration.
            ring: unsafe { AsyncFd::register(ring) }
                .map_err(|e| anyhow::anyhow!("cannot poll the ring buffer: {e}"))?,
            wakeups: 0,
        })
    }

    /// Waits until records are ready, then copies every one into `batch`.
    pub async fn next_batch(&mut self, batch: &mut Batch) -> Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        self.wakeups += 1;
        take_all(guard.get_inner_mut(), batch);
        guard.clear_ready();
        Ok(())
    }

    /// Whatever is in the ring, without waiting.
    pub fn drain(&mut self, batch: &mut Batch) {
        take_all(self.ring.get_mut(), batch)
    }
}

/// Raw records copied out of the ring, back to back; reused between batches
/// so that reading costs no allocation per record.
#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Hands every record to `take`, in ring order, and empties the batch.
    pub fn drain(&mut self, take: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut start = 0;
        let mut result = Ok(());
        for &end in &self.ends {
            result = take(&self.bytes[start..end]);
            if result.is_err() {
                break;
            }
            start = end;
        }
        self.bytes.clear();
        self.ends.clear();
        result
    }
}

fn take_all(ring: &mut RingBuf<MapData>, batch: &mut Batch) {
    while let Some(item) = ring.next() {
        batch.bytes.extend_from_slice(&item);
        batch.ends.push(batch.bytes.len());
    }
}

/// Kernel-side counters summed over CPUs.
#[derive(Default, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub emitted: [u64; abi::KIND_MAX],
    /// Records the ring buffer had no room for.
    pub lost: [u64; abi::KIND_MAX],
    pub filtered: u64,
    pub filtered_outside_range: u64,
    /// Page-exact installs judged against EOF and not sent: below it, and
    /// no window on their file.
    #[serde(default)]
    pub pte_filtered: u64,
    /// Records not sent because a kernel pointer chain could not be read.
    pub unresolved: [u64; abi::KIND_MAX],
    /// Exits that found no entry in STASH (an LRU: evicted, or the call
    /// began before the observer attached).
    pub no_entry: [u64; abi::KIND_MAX],
    /// Runs of each program, by `Prog` index.
    pub hits: Vec<u64>,
}

pub fn read_counters(ebpf: &aya::Ebpf) -> Result<KernelCounters> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("COUNTERS").context("no COUNTERS map")?)?;
    let sum = |slot: u32| -> Result<u64> { Ok(map.get(&slot, 0)?.iter().sum()) };
    let mut c = KernelCounters::default();
    for k in 1..abi::KIND_MAX as u32 {
        c.emitted[k as usize] = sum(abi::COUNTER_EMITTED + k)?;
        c.lost[k as usize] = sum(abi::COUNTER_LOST + k)?;
        c.unresolved[k as usize] = sum(abi::COUNTER_UNRESOLVED + k)?;
        c.no_entry[k as usize] = sum(abi::COUNTER_NO_ENTRY + k)?;
    }
    c.filtered = sum(abi::COUNTER_FILTERED)?;
    c.filtered_outside_range = sum(abi::COUNTER_FILTERED_RANGE)?;
    c.pte_filtered = sum(abi::COUNTER_PTE_FILTERED)?;
    let hits: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map("HITS").context("no HITS map")?)?;
    c.hits = (0..abi::probes::PROG_COUNT as u32)
        .map(|i| Ok(hits.get(&i, 0)?.iter().sum()))
        .collect::<Result<_>>()?;
    Ok(c)
}

/// The kernel stack `id` of a record (`Event::stack_id`): return addresses,
/// innermost first. None when the id is unknown to the STACKS map (evicted,
/// or the map is gone). Ids are reused: look a stack up when its record
/// arrives, not long after.
pub fn stack(ebpf: &aya::Ebpf, id: u32) -> Option<Vec<u64>> {
    let map = StackTraceMap::try_from(ebpf.map("STACKS")?).ok()?;
    let trace = map.get(&id, 0).ok()?;
    Some(trace.frames().iter().map(|f| f.ip).collect())
}

/// The kernel log, read as it grows: /dev/kmsg from the moment the observer
/// started, or (tests) a file of records in its format, each released when
/// the clock reaches its offset from the file's first record.
pub enum KernelLog {
    Device(std::fs::File),
    File {
        records: std::collections::VecDeque<(u64, String)>,
        /// When the first record counts (CLOCK_MONOTONIC ns).
        start: u64,
    },
}

impl KernelLog {
    /// /dev/kmsg, positioned at its end: what the kernel logs from now on.
    pub fn device() -> Result<KernelLog> {
        use std::os::unix::{fs::OpenOptionsExt, io::AsRawFd};
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("cannot read /dev/kmsg")?;
        // SAFETY: lseek on an fd we own.
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        Ok(KernelLog::Device(f))
    }

    /// Records from `path` (one per line, ` KEY=value` continuation lines
    /// kept with theirs), their times kept relative to each other and the
    /// first one at `start`.
    pub fn file(path: &std::path::Path, start: u64) -> Result<KernelLog> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --kmsg-file {}", path.display()))?;
        let mut raw: Vec<String> = Vec::new();
        for line in text.lines() {
            match raw.last_mut() {
                Some(last) if line.starts_with(' ') => {
                    last.push('\n');
                    last.push_str(line);
                }
                _ if line.trim().is_empty() => {}
                _ => raw.push(line.to_owned()),
            }
        }
        let mut first = None;
        let mut records = std::collections::VecDeque::new();
        for r in raw {
            let Some(rec) = crate::kmsg::KmsgRecord::parse(&r) else {
                anyhow::bail!(
                    "--kmsg-file {}: not a /dev/kmsg record: {r}",
                    path.display()
                );
            };
            let f = *first.get_or_insert(rec.usec);
            records.push_back((start + rec.usec.saturating_sub(f) * 1000, r));
        }
        Ok(KernelLog::File { records, start })
    }

    /// The records due by `now`, each with the event time it counts at.
    pub fn read(&mut self, now: u64, out: &mut Vec<(String, u64)>) -> Result<()> {
        match self {
            KernelLog::Device(f) => {
                use std::io::Read;
                let mut buf = [0u8; 8192];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let ts =
                                crate::kmsg::KmsgRecord::parse(&text).map_or(now, |r| r.ts_ns());
                            out.push((text, ts));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // Overwritten before it was read: the next read goes on.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Err(e) => return Err(e).context("reading /dev/kmsg"),
                    }
                }
            }
            KernelLog::File { records, .. } => {
                while records.front().is_some_and(|(ts, _)| *ts <= now) {
                    let (ts, r) = records.pop_front().expect("checked");
                    out.push((r, ts));
                }
            }
        }
        Ok(())
    }
}
