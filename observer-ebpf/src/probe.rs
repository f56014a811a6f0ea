//! What each probe point does, whatever mechanism fired it.

use observer_abi::{COUNTER_UNRESOLVED, Config, EOF_PAGE, FileKey, Kind};

use crate::{
    emit::{count, is_self, now, send, tid, window_close, window_open, worth_sending},
    kernel::{config, file_of_fault, file_of_mapping},
    maps::{STASH, Stash},
};

const PAGE_SHIFT: u64 = 12;

#[inline(always)]
fn stash_key(kind: Kind) -> u64 {
    ((tid() as u64) << 8) | kind as u64
}

/// Page range of `unmap_mapping_range(mapping, holebegin, holelen, even_cows)`,
/// computed as mm/memory.c does (a partial page counts; holelen 0 = to EOF).
#[inline(always)]
pub fn unmap_pages(holebegin: i64, holelen: i64) -> (u64, u64) {
    let first = (holebegin as u64) >> PAGE_SHIFT;
    if holelen <= 0 {
        return (first, EOF_PAGE);
    }
    let count = ((holelen as u64) + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT;
    (first, first + count - 1)
}

/// Page range of `truncate_inode_pages_range(mapping, lstart, lend)`; lend is an
/// inclusive byte offset, -1 meaning EOF. Partial pages are zeroed, not
/// dropped, but their PTEs are as interesting, so they count.
#[inline(always)]
pub fn truncate_pages(lstart: i64, lend: i64) -> (u64, u64) {
    let first = (lstart as u64) >> PAGE_SHIFT;
    if lend < 0 {
        return (first, EOF_PAGE);
    }
    (first, (lend as u64) >> PAGE_SHIFT)
}

/// Entry of unmap_mapping_range / truncate_inode_pages_range.
#[inline(always)]
pub fn invalidate_enter(enter: Kind, fidelity: u8, mapping: u64, start: u64, end: u64) {
    let Some(cfg) = config() else { return };
    if is_self(cfg) {
        return;
    }
    let Some(key) = file_of_mapping(cfg, mapping) else {
        count(COUNTER_UNRESOLVED + enter as u32);
        return;
    };
    let ts = now();
    window_open(&key);
    let stash = Stash {
        ts,
        key,
        start,
        end,
        aux: 0,
    };
    let _ = STASH.insert(&stash_key(enter), &stash, 0);
    send(enter, fidelity, ts, ts, &key, start, end, 0);
}

/// Exit of the same call; `enter` names the entry record to pair with.
#[inline(always)]
pub fn invalidate_exit(enter: Kind, exit: Kind, fidelity: u8) {
    let skey = stash_key(enter);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        return;
    };
    let _ = STASH.remove(&skey);
    let ts = now();
    window_close(&stash.key, ts);
    send(
        exit,
        fidelity,
        ts,
        stash.ts,
        &stash.key,
        stash.start,
        stash.end,
        0,
    );
}

#[inline(always)]
pub fn map_pages_enter(vmf: u64, start: u64, end: u64) {
    let Some(cfg) = config() else { return };
    if is_self(cfg) {
        return;
    }
    let Some(key) = file_of_fault(cfg, vmf) else {
        count(COUNTER_UNRESOLVED + Kind::MapPages as u32);
        return;
    };
    let stash = Stash {
        ts: now(),
        key,
        start,
        end,
        aux: 0,
    };
    let _ = STASH.insert(&stash_key(Kind::MapPages), &stash, 0);
}

/// The PTEs are in place once filemap_map_pages returns; report the call with
/// its whole [entry, exit] interval.
#[inline(always)]
pub fn map_pages_exit(fidelity: u8) {
    let Some(cfg) = config() else { return };
    let skey = stash_key(Kind::MapPages);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        return;
    };
    let _ = STASH.remove(&skey);
    if worth_sending(cfg, &stash.key, stash.ts) {
        send(
            Kind::MapPages,
            fidelity,
            now(),
            stash.ts,
            &stash.key,
            stash.start,
            stash.end,
            0,
        );
    }
}

/// A point observation of fault-around (the tracepoint fires after the PTEs
/// were installed, and only when at least one folio was mapped).
#[inline(always)]
pub fn map_pages_point(cfg: &Config, key: FileKey, start: u64, end: u64, fidelity: u8) {
    // A point has no entry: only a window open right now can meet it, so the
    // clock is read only for the rare record that is sent.
    if worth_sending(cfg, &key, u64::MAX) && !is_self(cfg) {
        let ts = now();
        send(Kind::MapPages, fidelity, ts, ts, &key, start, end, 0);
    }
}

/// Syscall-level window (tracepoint fallback) or operation label.
#[inline(always)]
pub fn syscall_enter(cfg: &Config, key: FileKey, start: u64, end: u64, aux: u64, fidelity: u8) {
    if is_self(cfg) {
        return;
    }
    let ts = now();
    if cfg.syscall_windows != 0 && key.ino != 0 {
        window_open(&key);
    }
    let stash = Stash {
        ts,
        key,
        start,
        end,
        aux,
    };
    let _ = STASH.insert(&stash_key(Kind::SyscallEnter), &stash, 0);
    send(Kind::SyscallEnter, fidelity, ts, ts, &key, start, end, aux);
}

#[inline(always)]
pub fn syscall_exit(cfg: &Config, fidelity: u8) {
    let skey = stash_key(Kind::SyscallEnter);
    let Some(stash) = (unsafe { STASH.get(&skey) }).copied() else {
        return;
    };
    let _ = STASH.remove(&skey);
    let ts = now();
    if cfg.syscall_windows != 0 && stash.key.ino != 0 {
        window_close(&stash.key, ts);
    }
    send(
        Kind::SyscallExit,
        fidelity,
        ts,
        stash.ts,
        &stash.key,
        stash.start,
        stash.end,
        stash.aux,
    );
}
