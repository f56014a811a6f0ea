//! Ring-buffer records (observer-abi's `Event`, byte for byte) decoded into
//! the correlator's typed [`Event`]s. The live source and a recording's
//! reader both hand their bytes here.

use observer_abi as abi;

use crate::event::{
    Body, Event, Fidelity, FileId, FsRemover, InvalidateLock, Invalidator, Op, PageRange, Task,
};

/// The record's kind byte, when the record is long enough to have one.
pub fn kind_of(bytes: &[u8]) -> Option<abi::Kind> {
    if bytes.len() < size_of::<abi::Event>() {
        return None;
    }
    abi::Kind::from_u8(bytes[std::mem::offset_of!(abi::Event, kind)])
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
        abi::Kind::FolioDelete if raw.flags & abi::FLAG_RUN != 0 => Body::FolioDelete {
            range,
            folios: raw.aux.max(1),
            removed_ts: raw
                .ts
                .saturating_sub((raw.ret.max(0) as u64).saturating_mul(1000)),
            pfn: 0,
            still_mapped: Some(false),
        },
        abi::Kind::FolioDelete => Body::FolioDelete {
            range,
            folios: 1,
            removed_ts: raw.ts,
            pfn: raw.aux,
            still_mapped: (raw.flags & abi::FLAG_MAPCOUNT_KNOWN != 0)
                .then_some(raw.flags & abi::FLAG_STILL_MAPPED != 0),
        },
        abi::Kind::PteInstall => Body::PteInstall {
            range,
            i_size: (raw.flags & abi::FLAG_ISIZE_KNOWN != 0).then_some(raw.aux),
            pmd: raw.flags & abi::FLAG_PMD != 0,
            shmem: raw.flags & abi::FLAG_SHMEM != 0,
        },
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
    let fidelity = Fidelity::from_code(raw.fidelity)?;
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
    FsRemover::from_code(aux & abi::FS_REMOVE_MASK)
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
            fidelity: Fidelity::Kprobe.code(),
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
        r[std::mem::offset_of!(abi::Event, kind)] = 200;
        assert!(decode(&r).is_none());
    }
}
