//! Event source: drains the ring buffer and decodes records into [`Event`]s;
//! reads the kernel's per-CPU counters for the summary.

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray, RingBuf, StackTraceMap};
use observer_abi as abi;
use tokio::io::unix::AsyncFd;

use crate::event::{
    Body, Event, Fidelity, FileId, FsRemover, InvalidateLock, Invalidator, Op, PageRange, Task,
};

pub struct Source {
    ring: AsyncFd<RingBuf<MapData>>,
    /// `observer record`: every raw record also goes here, before decoding.
    pub recorder: Option<crate::trace::Recorder>,
    /// Records the agent could not decode (a kind it does not know).
    pub undecodable: u64,
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
            recorder: None,
            undecodable: 0,
        })
    }

    /// Waits until records are ready, then decodes all of them into `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let taken = take_all(
            guard.get_inner_mut(),
            &mut self.recorder,
            &mut self.undecodable,
            out,
        );
        guard.clear_ready();
        taken
    }

    /// Whatever is left in the ring, without waiting (on shutdown).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> Result<()> {
        take_all(
            self.ring.get_mut(),
            &mut self.recorder,
            &mut self.undecodable,
            out,
        )
    }
}

/// Records, then decodes, every record in the ring.
fn take_all(
    ring: &mut RingBuf<MapData>,
    recorder: &mut Option<crate::trace::Recorder>,
    undecodable: &mut u64,
    out: &mut Vec<Event>,
) -> Result<()> {
    while let Some(item) = ring.next() {
        if let Some(r) = recorder {
            r.record(&item).context("cannot write the recording")?;
        }
        match decode(&item) {
            Some(ev) => out.push(ev),
            None => *undecodable += 1,
        }
    }
    Ok(())
}

pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<abi::Event>() {
        return None;
    }
    let raw: abi::Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let range = PageRange::new(raw.start, raw.end);
    let body = match abi::Kind::from_u8(raw.kind)? {
        abi::Kind::UnmapEnter => Body::InvalidateEnter {
            lock: InvalidateLock::from_aux(raw.aux),
            which: Invalidator::Unmap,
            range,
        },
        abi::Kind::UnmapExit => Body::InvalidateExit {
            which: Invalidator::Unmap,
            range,
        },
        abi::Kind::TruncateEnter => Body::InvalidateEnter {
            lock: InvalidateLock::from_aux(raw.aux),
            which: Invalidator::Truncate,
            range,
        },
        abi::Kind::TruncateExit => Body::InvalidateExit {
            which: Invalidator::Truncate,
            range,
        },
        abi::Kind::MapPages => Body::MapPages {
            entry_ts: raw.entry_ts,
            range,
        },
        abi::Kind::SyscallEnter => Body::SyscallEnter {
            op: op_of(raw.aux),
            range,
        },
        abi::Kind::SyscallExit => Body::SyscallExit {
            op: op_of(raw.aux),
            ret: raw.ret,
        },
        abi::Kind::FolioDelete => Body::FolioDelete {
            index: raw.start,
            pfn: raw.aux,
            still_mapped: (raw.flags & abi::FLAG_MAPCOUNT_KNOWN != 0)
                .then_some(raw.flags & abi::FLAG_STILL_MAPPED != 0),
        },
        abi::Kind::PteInstall => Body::PteInstall { range },
        abi::Kind::FolioAdd => Body::FolioAdd {
            range,
            uptodate: raw.flags & abi::FLAG_UPTODATE != 0,
            lock: InvalidateLock::from_aux(raw.aux),
        },
        abi::Kind::FsRemoveEnter => Body::FsRemoveEnter {
            fs: fs_remover(raw.aux)?,
            lock: InvalidateLock::from_aux(raw.aux),
        },
        abi::Kind::FsRemoveExit => Body::FsRemoveExit {
            fs: fs_remover(raw.aux)?,
        },
        abi::Kind::ShmemUndoEnter => Body::InvalidateEnter {
            lock: InvalidateLock::NotExposed,
            which: Invalidator::ShmemUndo,
            range,
        },
        abi::Kind::ShmemUndoExit => Body::InvalidateExit {
            which: Invalidator::ShmemUndo,
            range,
        },
    };
    let fidelity = match raw.fidelity {
        abi::FIDELITY_FENTRY => Fidelity::Fentry,
        abi::FIDELITY_KPROBE => Fidelity::Kprobe,
        _ => Fidelity::Tracepoint,
    };
    let comm_len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    Some(Event {
        ts: raw.ts,
        stack_id: u32::try_from(raw.stack_id).ok(),
        file: FileId {
            dev: raw.dev,
            ino: raw.ino,
        },
        task: Task {
            pid: raw.pid,
            tid: raw.tid,
            comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
        },
        fidelity,
        body,
    })
}

fn fs_remover(aux: u64) -> Option<FsRemover> {
    Some(match aux & abi::FS_REMOVE_MASK {
        abi::FS_REMOVE_EXT4_EXT => FsRemover::Ext4Extents,
        abi::FS_REMOVE_EXT4_IND => FsRemover::Ext4Indirect,
        abi::FS_REMOVE_XFS => FsRemover::Xfs,
        abi::FS_REMOVE_BTRFS => FsRemover::Btrfs,
        _ => return None,
    })
}

fn op_of(aux: u64) -> Op {
    match aux & 0xff {
        abi::OP_FALLOCATE => {
            let mode = aux >> 8;
            if mode & abi::FALLOC_FL_PUNCH_HOLE != 0 {
                Op::PunchHole
            } else if mode & abi::FALLOC_FL_ZERO_RANGE != 0 {
                Op::ZeroRange
            } else if mode & abi::FALLOC_FL_COLLAPSE_RANGE != 0 {
                Op::CollapseRange
            } else if mode & abi::FALLOC_FL_INSERT_RANGE != 0 {
                Op::InsertRange
            } else {
                Op::Fallocate { mode: mode as u32 }
            }
        }
        abi::OP_FTRUNCATE => Op::Ftruncate,
        abi::OP_TRUNCATE => Op::Truncate,
        abi::OP_MADV_REMOVE => Op::MadvRemove,
        abi::OP_CLONE => Op::Clone,
        abi::OP_CLONE_RANGE => Op::CloneRange,
        abi::OP_DEDUPE_RANGE => Op::DedupeRange,
        _ => Op::Unknown,
    }
}

/// Kernel-side counters summed over CPUs.
#[derive(Default, Clone)]
pub struct KernelCounters {
    pub emitted: [u64; abi::KIND_MAX],
    pub lost: [u64; abi::KIND_MAX],
    pub filtered: u64,
    /// Records not sent because a kernel pointer chain could not be read.
    pub unresolved: [u64; abi::KIND_MAX],
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
    }
    c.filtered = sum(abi::COUNTER_FILTERED)?;
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

pub fn kind_name(kind: usize) -> &'static str {
    match abi::Kind::from_u8(kind as u8) {
        Some(abi::Kind::UnmapEnter) => "unmap_mapping_range:enter",
        Some(abi::Kind::UnmapExit) => "unmap_mapping_range:exit",
        Some(abi::Kind::TruncateEnter) => "truncate_inode_pages_range:enter",
        Some(abi::Kind::TruncateExit) => "truncate_inode_pages_range:exit",
        Some(abi::Kind::MapPages) => "filemap_map_pages",
        Some(abi::Kind::SyscallEnter) => "syscall:enter",
        Some(abi::Kind::SyscallExit) => "syscall:exit",
        Some(abi::Kind::FolioDelete) => "folio_delete",
        Some(abi::Kind::PteInstall) => "pte_install",
        Some(abi::Kind::FolioAdd) => "folio_add",
        Some(abi::Kind::FsRemoveEnter) => "fs_remove:enter",
        Some(abi::Kind::FsRemoveExit) => "fs_remove:exit",
        Some(abi::Kind::ShmemUndoEnter) => "shmem_undo_range:enter",
        Some(abi::Kind::ShmemUndoExit) => "shmem_undo_range:exit",
        None => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: abi::Kind, aux: u64) -> Vec<u8> {
        let mut ev = abi::Event {
            ts: 10,
            entry_ts: 5,
            ino: 131,
            start: 16,
            end: 31,
            aux,
            dev: (7 << 20) | 3,
            pid: 100,
            tid: 101,
            kind: kind as u8,
            fidelity: abi::FIDELITY_KPROBE,
            ..Default::default()
        };
        ev.comm[..5].copy_from_slice(b"racer");
        let p = &ev as *const abi::Event as *const u8;
        unsafe { std::slice::from_raw_parts(p, size_of::<abi::Event>()) }.to_vec()
    }

    #[test]
    fn decodes_map_pages() {
        let ev = decode(&raw(abi::Kind::MapPages, 0)).unwrap();
        assert_eq!(
            ev.file,
            FileId {
                dev: (7 << 20) | 3,
                ino: 131
            }
        );
        assert_eq!(ev.task.comm, "racer");
        assert_eq!(ev.fidelity, Fidelity::Kprobe);
        assert_eq!(
            ev.body,
            Body::MapPages {
                entry_ts: 5,
                range: PageRange::new(16, 31)
            }
        );
    }

    #[test]
    fn decodes_syscall_ops() {
        let punch = abi::OP_FALLOCATE | (0x03 << 8); // PUNCH_HOLE | KEEP_SIZE
        let ev = decode(&raw(abi::Kind::SyscallEnter, punch)).unwrap();
        assert!(matches!(
            ev.body,
            Body::SyscallEnter {
                op: Op::PunchHole,
                ..
            }
        ));
        let ev = decode(&raw(abi::Kind::SyscallExit, abi::OP_FTRUNCATE)).unwrap();
        assert_eq!(
            ev.body,
            Body::SyscallExit {
                op: Op::Ftruncate,
                ret: 0
            }
        );
        for (aux, op) in [
            (abi::OP_MADV_REMOVE, Op::MadvRemove),
            (abi::OP_CLONE, Op::Clone),
            (abi::OP_CLONE_RANGE, Op::CloneRange),
            (abi::OP_DEDUPE_RANGE, Op::DedupeRange),
            (99, Op::Unknown),
        ] {
            let ev = decode(&raw(abi::Kind::SyscallExit, aux)).unwrap();
            assert_eq!(ev.body, Body::SyscallExit { op, ret: 0 });
        }
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(decode(&[0u8; 10]).is_none());
        let mut r = raw(abi::Kind::MapPages, 0);
        r[60] = 200; // kind byte (offset of Event::kind)
        assert!(decode(&r).is_none());
    }
}
