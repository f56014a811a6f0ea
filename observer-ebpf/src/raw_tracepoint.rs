//! Raw tracepoints: the tracepoints' own arguments (a `struct folio *`, or a
//! `struct page *` on 5.10) rather than their formatted records, so the
//! program can read what the record leaves out: the mapcount at removal and
//! the folio's size and flags at insertion. They attach where fentry is
//! refused (the host) and on every VM kernel.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use observer_abi::probes::{Method, Prog};

use crate::{
    emit::hit,
    probe::{folio_add, folio_delete},
};

/// A raw tracepoint is a point, as a tracepoint is: its records carry
/// tracepoint fidelity.
const POINT: u8 = Method::Tracepoint.code();

#[raw_tracepoint(tracepoint = "mm_filemap_delete_from_page_cache")]
pub fn folio_delete_raw_tp(ctx: RawTracePointContext) -> u32 {
    hit(Prog::FolioDeleteRawTp);
    folio_delete(ctx.arg::<u64>(0), POINT);
    0
}

#[raw_tracepoint(tracepoint = "mm_filemap_add_to_page_cache")]
pub fn folio_add_raw_tp(ctx: RawTracePointContext) -> u32 {
    hit(Prog::FolioAddRawTp);
    folio_add(&ctx, POINT, ctx.arg::<u64>(0), None);
    0
}
