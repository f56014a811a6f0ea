use super::*;
use crate::event::Invalidator;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
/// Far from zero, like real CLOCK_MONOTONIC values.
const T0: u64 = 1_000_000 * MS;

fn file(ino: u64) -> FileId {
    FileId { dev: 7 << 20, ino }
}

fn task(tid: u32) -> Task {
    Task {
        pid: tid - tid % 100,
        tid,
        comm: format!("t{tid}"),
    }
}

fn ev(ts: u64, f: FileId, tid: u32, body: Body) -> Event {
    Event {
        ts,
        file: f,
        task: task(tid),
        fidelity: Fidelity::Fentry,
        body,
        stack_id: None,
    }
}

fn pages(start: u64, end: u64) -> PageRange {
    PageRange::new(start, end)
}

fn enter(ts: u64, f: FileId, tid: u32, which: Invalidator, range: PageRange) -> Event {
    ev(
        ts,
        f,
        tid,
        Body::InvalidateEnter {
            which,
            range,
            lock: InvalidateLock::NotExposed,
        },
    )
}

fn exit(ts: u64, f: FileId, tid: u32, which: Invalidator, range: PageRange) -> Event {
    ev(ts, f, tid, Body::InvalidateExit { which, range })
}

fn map(entry_ts: u64, ts: u64, f: FileId, tid: u32, range: PageRange) -> Event {
    ev(ts, f, tid, Body::MapPages { entry_ts, range })
}

fn sys_enter(ts: u64, f: FileId, tid: u32, op: Op, range: PageRange) -> Event {
    ev(ts, f, tid, Body::SyscallEnter { op, range })
}

fn sys_exit(ts: u64, f: FileId, tid: u32, op: Op) -> Event {
    ev(ts, f, tid, Body::SyscallExit { op, ret: 0 })
}

fn folio(ts: u64, f: FileId, index: u64) -> Event {
    ev(
        ts,
        f,
        1,
        Body::FolioDelete {
            range: PageRange::new(index, index),
            folios: 1,
            removed_ts: ts,
            pfn: 0x1000 + index,
            still_mapped: None,
        },
    )
}

/// unmap then truncate of `range`, 10 us each, starting at `t`: a hole punch
/// as the kernel performs it.
fn punch(t: u64, f: FileId, tid: u32, range: PageRange) -> Vec<Event> {
    vec![
        enter(t, f, tid, Invalidator::Unmap, range),
        exit(t + 10 * US, f, tid, Invalidator::Unmap, range),
        enter(t + 11 * US, f, tid, Invalidator::Truncate, range),
        exit(t + 20 * US, f, tid, Invalidator::Truncate, range),
    ]
}

fn run_with(cfg: Config, events: impl IntoIterator<Item = Event>) -> (Vec<Alert>, Stats) {
    let mut c = Correlator::new(cfg);
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    c.flush(&mut out);
    (out, c.stats().clone())
}

fn run(events: impl IntoIterator<Item = Event>) -> (Vec<Alert>, Stats) {
    run_with(Config::default(), events)
}

/// The alert's identity as the tests assert it: file, faulting tid, mapped
/// pages, window pages, window op, window tid.
fn summary(a: &Alert) -> (u64, u32, PageRange, PageRange, Op, u32) {
    (
        a.file.ino,
        a.task.tid,
        a.pages,
        a.win().pages,
        a.win().op,
        a.win().task.tid,
    )
}

/// Deterministic xorshift, so shuffles are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn fault_around_inside_punch_window_alerts_with_all_fields() {
    let f = file(131);
    let mut events = vec![sys_enter(T0 - US, f, 1236, Op::PunchHole, pages(20, 35))];
    events.extend(punch(T0, f, 1236, pages(20, 35)));
    events.push(sys_exit(T0 + 21 * US, f, 1236, Op::PunchHole));
    events.push(map(T0 + 12 * US, T0 + 15 * US, f, 1240, pages(16, 31)));
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a.kind(), AlertKind::PteInPunchWindow);
    assert_eq!(a.kind().as_str(), "pte_in_punch_window");
    assert_eq!(a.ts, T0 + 15 * US);
    assert_eq!(a.map_entry_ts(), T0 + 12 * US);
    assert_eq!(a.file, f);
    assert_eq!(a.task, task(1240));
    assert_eq!(a.pages, pages(16, 31));
    assert_eq!(
        *a.win(),
        WindowInfo {
            id: 1,
            op: Op::PunchHole,
            pages: pages(20, 35),
            task: task(1236),
            opened_ts: T0,
            closed_ts: Some(T0 + 20 * US),
            open_for_ns: 15 * US,
            test: None,
        }
    );
    assert_eq!(a.fidelity, Fidelity::Fentry);
    assert_eq!(a.folios_removed(), None);
    assert_eq!(stats.windows_opened, 1);
    assert_eq!(stats.windows_closed, 1);
    assert_eq!(stats.alerts, 1);
    assert_eq!(stats.late_events, 0);
    assert_eq!(stats.events, 7);
    assert_eq!(stats.open_windows, 0);
}

#[test]
fn out_of_order_delivery_within_horizon_gives_the_in_order_result() {
    // Four "CPUs" each deliver their own records in order, but the consumer
    // sees them interleaved with up to 20 ms of skew (< 50 ms horizon).
    let mut events = Vec::new();
    for i in 0..40u64 {
        let f = file(10 + i % 5);
        let t = T0 + i * 3 * MS;
        events.extend(punch(t, f, 200 + i as u32 % 3, pages(i * 10, i * 10 + 9)));
        // Inside the window for even i, well after it for odd i.
        let (entry, exit_ts) = if i % 2 == 0 {
            (t + 5 * US, t + 15 * US)
        } else {
            (t + 2 * MS + 600 * US, t + 2 * MS + 700 * US)
        };
        events.push(map(entry, exit_ts, f, 900, pages(i * 10 + 5, i * 10 + 20)));
    }
    events.sort_by_key(|e| e.ts);
    let (expected, expected_stats) = run(events.clone());
    assert_eq!(expected.len(), 20);
    assert!(
        expected
            .iter()
            .all(|a| (a.pages.start - 5) % 20 == 0 && a.win().pages.start == a.pages.start - 5)
    );

    for seed in 1..20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut cpus: Vec<Vec<Event>> = vec![Vec::new(); 4];
        for e in &events {
            cpus[(rng.next() % 4) as usize].push(e.clone());
        }
        // Each CPU's stream is delayed by its own skew; delivery order is by
        // arrival time.
        let mut arrivals: Vec<(u64, Event)> = Vec::new();
        for (cpu, stream) in cpus.into_iter().enumerate() {
            let skew = (cpu as u64 * 7 + seed) % 20 * MS;
            arrivals.extend(stream.into_iter().map(|e| (e.ts + skew, e)));
        }
        arrivals.sort_by_key(|(t, _)| *t);
        let (alerts, stats) = run(arrivals.into_iter().map(|(_, e)| e));
        assert_eq!(alerts.len(), expected.len(), "seed {seed}");
        let mut got: Vec<_> = alerts.iter().map(summary).collect();
        let mut want: Vec<_> = expected.iter().map(summary).collect();
        got.sort_by_key(|s| (s.2, s.0));
        want.sort_by_key(|s| (s.2, s.0));
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(stats.late_events, 0, "seed {seed}");
        assert_eq!(stats.windows_opened, expected_stats.windows_opened);
    }
}

#[test]
fn unmap_truncate_unmap_is_one_window() {
    let f = file(5);
    let tail = pages(100, PageRange::EOF);
    let events = vec![
        enter(T0, f, 300, Invalidator::Unmap, tail),
        exit(T0 + 5 * US, f, 300, Invalidator::Unmap, tail),
        enter(T0 + 6 * US, f, 300, Invalidator::Truncate, tail),
        exit(T0 + 50 * US, f, 300, Invalidator::Truncate, tail),
        // Within op gap of the truncate's exit.
        enter(T0 + 1050 * US, f, 300, Invalidator::Unmap, tail),
        exit(T0 + 1060 * US, f, 300, Invalidator::Unmap, tail),
        map(T0 + 20 * US, T0 + 30 * US, f, 301, pages(96, 111)),
        // Between the truncate and the second unmap: still the operation.
        map(T0 + 500 * US, T0 + 510 * US, f, 301, pages(112, 127)),
    ];
    let mut sorted = events;
    sorted.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(sorted);
    assert_eq!(stats.windows_opened, 1);
    assert_eq!(stats.windows_closed, 1);
    let got: Vec<_> = alerts.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            (5, 301, pages(96, 111), tail, Op::Unknown, 300),
            (5, 301, pages(112, 127), tail, Op::Unknown, 300),
        ]
    );
    assert!(alerts.iter().all(|a| a.win().id == 1));
    assert_eq!(alerts[0].win().closed_ts, Some(T0 + 1060 * US));
}

#[test]
fn re_entry_after_op_gap_opens_a_new_window() {
    let f = file(5);
    let mut events = punch(T0, f, 300, pages(0, 9));
    events.extend(punch(T0 + 5 * MS, f, 300, pages(0, 9)));
    // Between the two operations: in neither window.
    events.push(map(
        T0 + 3 * MS,
        T0 + 3 * MS + 10 * US,
        f,
        301,
        pages(0, 15),
    ));
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    assert_eq!(stats.windows_opened, 2);
    assert!(alerts.is_empty());
}

#[test]
fn fault_around_in_the_gap_counts_only_if_the_operation_resumes() {
    let f = file(6);
    // Operation A: unmap, pause of 1 ms, truncate. Fault-around in the pause.
    let mut events = vec![
        enter(T0, f, 300, Invalidator::Unmap, pages(0, 9)),
        exit(T0 + 10 * US, f, 300, Invalidator::Unmap, pages(0, 9)),
        map(T0 + 100 * US, T0 + 110 * US, f, 301, pages(0, 3)),
        enter(T0 + MS, f, 300, Invalidator::Truncate, pages(0, 9)),
        exit(
            T0 + MS + 10 * US,
            f,
            300,
            Invalidator::Truncate,
            pages(0, 9),
        ),
    ];
    // Operation B on another file: one unmap, then a fault-around after its
    // exit, and no further call: final-closed without it.
    let g = file(7);
    events.extend([
        enter(T0, g, 400, Invalidator::Unmap, pages(0, 9)),
        exit(T0 + 10 * US, g, 400, Invalidator::Unmap, pages(0, 9)),
        map(T0 + 100 * US, T0 + 110 * US, g, 401, pages(0, 3)),
        map(T0 + 5 * MS, T0 + 5 * MS, g, 401, pages(0, 3)),
    ]);
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    let got: Vec<_> = alerts.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![(6, 301, pages(0, 3), pages(0, 9), Op::Unknown, 300)]
    );
}

#[test]
fn overlapping_and_adjacent_ranges() {
    let f = file(8);
    let mut events = punch(T0, f, 300, pages(20, 35));
    let during = |s, e| map(T0 + 2 * US, T0 + 8 * US, f, 301, pages(s, e));
    events.extend([
        during(16, 19), // adjacent below: end + 1 == start
        during(36, 40), // adjacent above
        during(16, 20), // one page in common
        during(35, 50),
        during(22, 25), // inside
        during(0, 100), // covering
    ]);
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    let mapped: Vec<_> = alerts.iter().map(|a| a.pages).collect();
    assert_eq!(
        mapped,
        vec![pages(16, 20), pages(35, 50), pages(22, 25), pages(0, 100)]
    );
    assert!(alerts.iter().all(|a| a.win().pages == pages(20, 35)));
}

#[test]
fn many_files_alert_only_where_ranges_meet() {
    // 1000 files punched concurrently by 1000 tasks; every file also sees a
    // fault-around during its window, but only files with ino % 7 == 0 fault
    // pages of the hole.
    let mut events = Vec::new();
    for i in 0..1000u64 {
        let f = file(1000 + i);
        let tid = 10_000 + i as u32;
        let t = T0 + i * 7 * US;
        events.extend(punch(t, f, tid, pages(64, 127)));
        let range = if f.ino.is_multiple_of(7) {
            pages(120, 135)
        } else {
            pages(128, 143)
        };
        events.push(map(t + 3 * US, t + 9 * US, f, 20_000, range));
    }
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    let mut inos: Vec<u64> = alerts.iter().map(|a| a.file.ino).collect();
    inos.sort_unstable();
    let want: Vec<u64> = (1000u64..2000)
        .filter(|&ino| ino.is_multiple_of(7))
        .collect();
    assert_eq!(inos, want);
    assert!(
        alerts
            .iter()
            .all(|a| a.win().task.tid as u64 == a.file.ino + 9000)
    );
    assert_eq!(stats.windows_opened, 1000);
    assert!(stats.max_open_windows > 1);
    assert_eq!(stats.open_windows, 0);
}

#[test]
fn window_opening_while_fault_around_is_in_flight() {
    let f = file(9);
    let mut events = punch(T0, f, 300, pages(0, 63));
    events.push(map(T0 - 5 * US, T0 + 3 * US, f, 301, pages(0, 15)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].map_entry_ts(), T0 - 5 * US);
    assert_eq!(alerts[0].win().opened_ts, T0);
    assert_eq!(alerts[0].win().open_for_ns, 3 * US);
}

#[test]
fn fault_around_that_ended_before_the_window_opened() {
    let f = file(9);
    let mut events = vec![map(T0 - 5 * US, T0 - US, f, 301, pages(0, 15))];
    events.extend(punch(T0, f, 300, pages(0, 63)));
    // The boundary: exit at the very instant the window opens still meets it.
    events.push(map(T0 - 5 * US, T0, f, 302, pages(0, 15)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    let tids: Vec<u32> = alerts.iter().map(|a| a.task.tid).collect();
    assert_eq!(tids, vec![302]);
}

#[test]
fn fault_around_that_entered_after_final_close() {
    let f = file(9);
    let mut events = punch(T0, f, 300, pages(0, 63));
    events.push(map(T0 + 5 * MS, T0 + 5 * MS + US, f, 301, pages(0, 15)));
    let (alerts, stats) = run(events);
    assert!(alerts.is_empty());
    assert_eq!(stats.windows_closed, 1);
}

#[test]
fn long_fault_around_that_outlives_the_window() {
    // Entered during the punch, returned 10 ms later, after the window
    // final-closed: the retained window still matches, and the alert goes
    // out at once.
    let f = file(10);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for e in punch(T0, f, 300, pages(0, 63)) {
        c.push(e, &mut out);
    }
    c.push(folio(T0 + 15 * US, f, 3), &mut out);
    c.push(
        map(T0 + 5 * US, T0 + 10 * MS, f, 301, pages(0, 15)),
        &mut out,
    );
    // Drive time so that everything settles without flushing.
    c.advance(T0 + 100 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].win().closed_ts, Some(T0 + 20 * US));
    assert_eq!(out[0].win().open_for_ns, 10 * MS);
    // The folio went before the fault-around returned: not a stale PTE.
    assert_eq!(out[0].folios_removed(), Some(0));
    assert_eq!(c.stats().alerts, 1);
}

#[test]
fn retained_windows_are_forgotten_after_retain_ns() {
    let f = file(11);
    let cfg = Config {
        retain_ns: 10 * MS,
        ..Config::default()
    };
    let mut c = Correlator::new(cfg);
    let mut out = Vec::new();
    for e in punch(T0, f, 300, pages(0, 63)) {
        c.push(e, &mut out);
    }
    c.advance(T0 + 200 * MS, &mut out);
    assert_eq!(c.stats().windows_closed, 1);
    // Retention counts from when the close became final (here: noticed at
    // T0 + 150 ms), never less than retain_ns after the close itself.
    assert_eq!(c.files.len(), 1);
    c.advance(T0 + 211 * MS, &mut out);
    assert!(c.files.is_empty(), "expired windows must not accumulate");
    // A very late record of a fault-around during the punch finds nothing.
    c.push(
        map(T0 + 5 * US, T0 + 8 * US, f, 301, pages(0, 15)),
        &mut out,
    );
    c.flush(&mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().late_events, 1);
}

#[test]
fn eof_ranges() {
    let f = file(12);
    let tail = pages(10, PageRange::EOF);
    let mut events = vec![
        enter(T0, f, 300, Invalidator::Unmap, tail),
        exit(T0 + 10 * US, f, 300, Invalidator::Unmap, tail),
    ];
    events.push(map(
        T0 + US,
        T0 + 2 * US,
        f,
        301,
        pages(1_000_000, 1_000_015),
    ));
    events.push(map(T0 + US, T0 + 2 * US, f, 302, pages(0, 9)));
    events.push(map(T0 + US, T0 + 3 * US, f, 303, pages(9, PageRange::EOF)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    let got: Vec<_> = alerts.iter().map(|a| (a.task.tid, a.pages)).collect();
    assert_eq!(
        got,
        vec![
            (301, pages(1_000_000, 1_000_015)),
            (303, pages(9, PageRange::EOF))
        ]
    );
    assert!(alerts.iter().all(|a| a.win().pages == tail));
}

#[test]
fn syscall_windows_mode_brackets_the_syscall() {
    let cfg = Config {
        syscall_windows: true,
        ..Config::default()
    };
    let f = file(13);
    let tp = |mut e: Event| {
        e.fidelity = Fidelity::Tracepoint;
        e
    };
    let events = vec![
        tp(sys_enter(T0, f, 300, Op::PunchHole, pages(4, 7))),
        // Tracepoint map_pages: a point at its exit.
        tp(map(T0 + 5 * MS, T0 + 5 * MS, f, 301, pages(0, 15))),
        tp(sys_exit(T0 + 6 * MS, FileId::default(), 300, Op::PunchHole)),
        // After the exit: outside, op gap or not.
        tp(map(
            T0 + 6 * MS + US,
            T0 + 6 * MS + US,
            f,
            302,
            pages(0, 15),
        )),
        // truncate(2) by path: file unknown, no window.
        tp(sys_enter(
            T0 + 10 * MS,
            FileId::default(),
            303,
            Op::Truncate,
            pages(0, PageRange::EOF),
        )),
        tp(map(T0 + 11 * MS, T0 + 11 * MS, f, 304, pages(0, 15))),
        tp(sys_exit(T0 + 12 * MS, FileId::default(), 303, Op::Truncate)),
        // fallocate that does not invalidate: no window either.
        tp(sys_enter(
            T0 + 20 * MS,
            f,
            305,
            Op::Fallocate { mode: 0 },
            pages(0, 15),
        )),
        tp(map(T0 + 21 * MS, T0 + 21 * MS, f, 306, pages(0, 15))),
        tp(sys_exit(T0 + 22 * MS, f, 305, Op::Fallocate { mode: 0 })),
    ];
    let (alerts, stats) = run_with(cfg, events);
    let got: Vec<_> = alerts.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![(13, 301, pages(0, 15), pages(4, 7), Op::PunchHole, 300)]
    );
    let a = &alerts[0];
    assert_eq!(a.win().opened_ts, T0);
    assert_eq!(a.win().closed_ts, Some(T0 + 6 * MS));
    assert_eq!(a.window_fidelity, Fidelity::Tracepoint);
    assert_eq!(a.fidelity, Fidelity::Tracepoint);
    assert_eq!(stats.windows_opened, 1);
}

/// stress-ng's fpunch makes unaligned collapse and insert calls that fail
/// with EINVAL before touching the page cache. In tracepoint mode their
/// syscall opened a window all the same; a failed call that removed nothing
/// is dropped (no alert, no window) and counted as a failed call, while a
/// failed call that did remove folios stays a window of its operation.
#[test]
fn failed_calls_that_removed_nothing_are_no_windows() {
    let cfg = Config {
        syscall_windows: true,
        ..Config::default()
    };
    let f = file(16);
    let tp = |mut e: Event| {
        e.fidelity = Fidelity::Tracepoint;
        e
    };
    let failed = |ts, op| tp(ev(ts, f, 400, Body::SyscallExit { op, ret: -22 }));
    let deleted_by = |ts, tid, index| {
        let mut e = tp(folio(ts, f, index));
        e.task = task(tid);
        e
    };
    let events = vec![
        // Fails, removes nothing, a fault-around meanwhile: not a window.
        tp(sys_enter(
            T0,
            f,
            400,
            Op::CollapseRange,
            pages(3, PageRange::EOF),
        )),
        tp(map(T0 + MS, T0 + MS, f, 401, pages(0, 15))),
        // Another task's removal does not make it an invalidation.
        deleted_by(T0 + MS + US, 402, 5),
        failed(T0 + 2 * MS, Op::CollapseRange),
        // Fails after removing a folio (say, ENOSPC midway): a window.
        tp(sys_enter(
            T0 + 10 * MS,
            f,
            400,
            Op::InsertRange,
            pages(3, PageRange::EOF),
        )),
        deleted_by(T0 + 10 * MS + US, 400, 4),
        tp(map(T0 + 11 * MS, T0 + 11 * MS, f, 401, pages(0, 15))),
        failed(T0 + 12 * MS, Op::InsertRange),
        // A success that removed nothing is a window as always.
        tp(sys_enter(T0 + 20 * MS, f, 400, Op::PunchHole, pages(4, 7))),
        tp(map(T0 + 21 * MS, T0 + 21 * MS, f, 401, pages(0, 15))),
        tp(sys_exit(T0 + 22 * MS, f, 400, Op::PunchHole)),
    ];
    let (alerts, stats) = run_with(cfg, events);
    let got: Vec<_> = alerts.iter().map(|a| (a.win().op, a.ts)).collect();
    assert_eq!(
        got,
        vec![
            (Op::InsertRange, T0 + 11 * MS),
            (Op::PunchHole, T0 + 21 * MS)
        ]
    );
    assert_eq!(stats.windows_opened, 2);
    assert_eq!(stats.windows_closed, 2);
    assert_eq!(stats.open_windows, 0);
    assert_eq!(stats.windows_by_op.get(Op::CollapseRange), 0);
    assert_eq!(stats.windows_by_op.get(Op::InsertRange), 1);
    assert_eq!(stats.failed_calls.get(Op::CollapseRange), 1);
    assert_eq!(stats.failed_calls.total(), 1);
}

/// With function probes, a failed syscall that called no invalidator is a
/// failed call; one whose unmap and truncate ran stays a window.
#[test]
fn failed_calls_are_counted_with_function_probes_too() {
    let f = file(17);
    let mut events = vec![
        sys_enter(T0, f, 500, Op::CollapseRange, pages(3, 9)),
        ev(
            T0 + MS,
            f,
            500,
            Body::SyscallExit {
                op: Op::CollapseRange,
                ret: -22,
            },
        ),
        sys_enter(T0 + 10 * MS, f, 500, Op::ZeroRange, pages(3, 9)),
    ];
    events.extend(punch(T0 + 10 * MS + US, f, 500, pages(3, 9)));
    events.push(ev(
        T0 + 11 * MS,
        f,
        500,
        Body::SyscallExit {
            op: Op::ZeroRange,
            ret: -28,
        },
    ));
    let (_, stats) = run(events);
    assert_eq!(stats.failed_calls.get(Op::CollapseRange), 1);
    assert_eq!(stats.failed_calls.get(Op::ZeroRange), 0);
    assert_eq!(stats.windows_by_op.get(Op::ZeroRange), 1);
}

/// Tracepoint mode: truncate(2) and madvise(MADV_REMOVE) name no file at
/// entry; the first folio the task removes names it, and the window runs
/// from there to the syscall's exit. Another task's removals name nothing.
#[test]
fn syscall_windows_adopt_the_file_of_the_first_removal() {
    let cfg = Config {
        syscall_windows: true,
        ..Config::default()
    };
    let f = file(14);
    let g = file(15);
    let tp = |mut e: Event| {
        e.fidelity = Fidelity::Tracepoint;
        e
    };
    let events = vec![
        tp(sys_enter(
            T0,
            FileId::default(),
            303,
            Op::Truncate,
            pages(8, PageRange::EOF),
        )),
        // Before any removal: no window yet.
        tp(map(T0 + MS, T0 + MS, f, 304, pages(0, 15))),
        // Reclaim by another task on g names nothing for 303.
        tp(delete(T0 + 2 * MS, g, 3, None)),
        {
            let mut d = tp(delete(T0 + 3 * MS, f, 8, Some(false)));
            d.task = task(303);
            d
        },
        tp(map(T0 + 4 * MS, T0 + 4 * MS, f, 305, pages(0, 15))),
        tp(sys_exit(T0 + 5 * MS, f, 303, Op::Truncate)),
        tp(sys_enter(
            T0 + 10 * MS,
            FileId::default(),
            306,
            Op::MadvRemove,
            pages(0, PageRange::EOF),
        )),
        {
            let mut d = tp(delete(T0 + 11 * MS, g, 0, Some(false)));
            d.task = task(306);
            d
        },
        tp(map(T0 + 12 * MS, T0 + 12 * MS, g, 307, pages(0, 15))),
        tp(sys_exit(T0 + 13 * MS, g, 306, Op::MadvRemove)),
    ];
    let (alerts, stats) = run_with(cfg, events);
    let got: Vec<_> = alerts.iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            (
                14,
                305,
                pages(0, 15),
                pages(8, PageRange::EOF),
                Op::Truncate,
                303
            ),
            (
                15,
                307,
                pages(0, 15),
                pages(0, PageRange::EOF),
                Op::MadvRemove,
                306
            ),
        ]
    );
    assert_eq!(alerts[0].win().opened_ts, T0 + 3 * MS);
    assert_eq!(alerts[0].win().closed_ts, Some(T0 + 5 * MS));
    assert_eq!(stats.windows_opened, 2);
    assert_eq!(stats.windows_by_op.get(Op::Truncate), 1);
    assert_eq!(stats.windows_by_op.get(Op::MadvRemove), 1);
}

#[test]
fn syscall_windows_are_tracepoint_fidelity_even_beside_fentry_maps() {
    let cfg = Config {
        syscall_windows: true,
        ..Config::default()
    };
    let f = file(14);
    let events = vec![
        sys_enter(T0, f, 300, Op::ZeroRange, pages(0, 7)),
        map(T0 + US, T0 + 2 * US, f, 301, pages(0, 15)),
        sys_exit(T0 + 3 * US, f, 300, Op::ZeroRange),
    ];
    let (alerts, _) = run_with(cfg, events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].win().op, Op::ZeroRange);
    assert_eq!(alerts[0].map_fidelity, Fidelity::Fentry);
    assert_eq!(alerts[0].window_fidelity, Fidelity::Tracepoint);
    assert_eq!(alerts[0].fidelity, Fidelity::Tracepoint);
}

#[test]
fn op_comes_from_the_enclosing_syscall() {
    let (f, g, h) = (file(15), file(16), file(17));
    let mut events = vec![sys_enter(T0, f, 300, Op::PunchHole, pages(0, 9))];
    events.extend(punch(T0 + US, f, 300, pages(0, 9)));
    events.push(sys_exit(T0 + 30 * US, f, 300, Op::PunchHole));
    // ftruncate: unmap, truncate, unmap.
    events.push(sys_enter(
        T0,
        g,
        400,
        Op::Ftruncate,
        pages(0, PageRange::EOF),
    ));
    events.extend(punch(T0 + US, g, 400, pages(0, PageRange::EOF)));
    events.push(enter(
        T0 + 25 * US,
        g,
        400,
        Invalidator::Unmap,
        pages(0, PageRange::EOF),
    ));
    events.push(exit(
        T0 + 26 * US,
        g,
        400,
        Invalidator::Unmap,
        pages(0, PageRange::EOF),
    ));
    events.push(sys_exit(T0 + 30 * US, g, 400, Op::Ftruncate));
    // No syscall record at all (e.g. invalidation from the kernel itself).
    events.extend(punch(T0 + US, h, 500, pages(0, 9)));
    for x in [f, g, h] {
        events.push(map(T0 + 5 * US, T0 + 6 * US, x, 600, pages(0, 3)));
    }
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    let mut got: Vec<_> = alerts.iter().map(|a| (a.file.ino, a.win().op)).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![(15, Op::PunchHole), (16, Op::Ftruncate), (17, Op::Unknown)]
    );
    assert_eq!(stats.windows_opened, 3);
}

#[test]
fn syscall_exit_ends_the_operation_so_back_to_back_punches_stay_apart() {
    let f = file(18);
    let mut events = Vec::new();
    for k in 0..3u64 {
        let t = T0 + k * 100 * US;
        events.push(sys_enter(
            t,
            f,
            300,
            Op::PunchHole,
            pages(k * 10, k * 10 + 9),
        ));
        events.extend(punch(t + US, f, 300, pages(k * 10, k * 10 + 9)));
        events.push(sys_exit(t + 30 * US, f, 300, Op::PunchHole));
    }
    // Between the first and second punch, inside the op gap of the first.
    events.push(map(T0 + 50 * US, T0 + 60 * US, f, 301, pages(0, 30)));
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    assert_eq!(stats.windows_opened, 3);
    assert!(alerts.is_empty());
}

#[test]
fn folios_removed_counts_deletions_in_range_after_the_fault_around() {
    let f = file(19);
    let mut events = punch(T0, f, 300, pages(0, 63));
    events.push(map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 15)));
    events.extend([
        folio(T0 + 4 * US, f, 1),           // before the fault-around returned
        folio(T0 + 12 * US, f, 2),          // counted
        folio(T0 + 13 * US, f, 15),         // counted
        folio(T0 + 14 * US, f, 16),         // outside the mapped range
        folio(T0 + 15 * US, file(20), 3),   // another file
        folio(T0 + 20 * US + MS, f, 3),     // within op gap after close
        folio(T0 + 20 * US + 3 * MS, f, 4), // after final close
    ]);
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].folios_removed(), Some(3));
}

#[test]
fn folios_removed_is_unknown_without_deletion_records() {
    let f = file(21);
    let mut events = punch(T0, f, 300, pages(0, 63));
    events.push(map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 15)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].folios_removed(), None);
}

#[test]
fn folios_removed_is_zero_when_the_source_is_known_attached() {
    let f = file(21);
    let mut c = Correlator::new(Config::default());
    c.expect_folio_deletes();
    let mut out = Vec::new();
    for e in punch(T0, f, 300, pages(0, 63)) {
        c.push(e, &mut out);
    }
    c.push(
        map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 15)),
        &mut out,
    );
    c.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].folios_removed(), Some(0));
}

#[test]
fn punch_loop_on_one_file_stays_cheap() {
    // A racer punching in a tight loop: 20000 syscalls 50 us apart, with a
    // fault-around between each pair. Retained windows must not be scanned
    // in full by every fault-around, nor accumulate past retain_ns.
    let f = file(30);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for k in 0..20_000u64 {
        let t = T0 + k * 50 * US;
        c.push(sys_enter(t, f, 300, Op::PunchHole, pages(0, 15)), &mut out);
        for e in punch(t + US, f, 300, pages(0, 15)) {
            c.push(e, &mut out);
        }
        c.push(sys_exit(t + 25 * US, f, 300, Op::PunchHole), &mut out);
        c.push(
            map(t + 30 * US, t + 40 * US, f, 301, pages(0, 15)),
            &mut out,
        );
    }
    c.flush(&mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().windows_opened, 20_000);
    assert_eq!(c.stats().max_open_windows, 1);
}

#[test]
fn late_event_is_counted_and_still_correlated() {
    let f = file(22);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for e in punch(T0, f, 300, pages(0, 63)) {
        c.push(e, &mut out);
    }
    // Something 100 ms later settles the punch (horizon is 50 ms).
    c.push(
        map(T0 + 100 * MS, T0 + 100 * MS, file(99), 1, pages(0, 0)),
        &mut out,
    );
    assert_eq!(c.stats().late_events, 0);
    // A CPU lagging more than the horizon delivers a fault-around from
    // during the punch.
    c.push(
        map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 15)),
        &mut out,
    );
    assert_eq!(c.stats().late_events, 1);
    c.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].task.tid, 301);
    assert_eq!(out[0].win().pages, pages(0, 63));
}

#[test]
fn two_tasks_punching_one_file_concurrently() {
    let f = file(23);
    let mut events = punch(T0, f, 300, pages(0, 31));
    events.extend(punch(T0 + 5 * US, f, 400, pages(16, 47)));
    // Meets both windows.
    events.push(map(T0 + 12 * US, T0 + 14 * US, f, 500, pages(24, 27)));
    // Meets only the second (first closed at T0 + 20us; second at T0 + 25us).
    events.push(map(T0 + 22 * US, T0 + 23 * US, f, 500, pages(24, 27)));
    // Pages only the first window covers, during both.
    events.push(map(T0 + 12 * US, T0 + 14 * US, f, 500, pages(0, 3)));
    events.sort_by_key(|e| e.ts);
    let (alerts, stats) = run(events);
    let got: Vec<_> = alerts
        .iter()
        .map(|a| (a.win().id, a.win().task.tid, a.pages, a.ts))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 300, pages(24, 27), T0 + 14 * US),
            (1, 300, pages(0, 3), T0 + 14 * US),
            (2, 400, pages(24, 27), T0 + 14 * US),
            (2, 400, pages(24, 27), T0 + 23 * US),
        ]
    );
    assert_eq!(stats.windows_opened, 2);
    assert_eq!(stats.max_open_windows, 2);
}

#[test]
fn a_task_faulting_its_own_punch_window() {
    let f = file(24);
    let mut events = punch(T0, f, 300, pages(0, 31));
    events.push(map(T0 + 12 * US, T0 + 14 * US, f, 300, pages(0, 3)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].task.tid, alerts[0].win().task.tid);
}

#[test]
fn nested_calls_keep_the_window_open() {
    let f = file(25);
    let r = pages(0, 31);
    let events = vec![
        enter(T0, f, 300, Invalidator::Truncate, r),
        enter(T0 + US, f, 300, Invalidator::Unmap, r),
        exit(T0 + 2 * US, f, 300, Invalidator::Unmap, r),
        // depth 1 still: a fault-around entering 3 ms later is inside.
        map(T0 + 3 * MS, T0 + 3 * MS + US, f, 301, pages(0, 3)),
        exit(T0 + 4 * MS, f, 300, Invalidator::Truncate, r),
    ];
    let (alerts, stats) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].win().closed_ts, Some(T0 + 4 * MS));
    assert_eq!(stats.windows_opened, 1);
}

#[test]
fn window_still_open_at_end_of_stream() {
    let f = file(26);
    let events = vec![
        enter(T0, f, 300, Invalidator::Unmap, pages(0, 31)),
        map(T0 + US, T0 + 2 * US, f, 301, pages(0, 3)),
    ];
    let (alerts, stats) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].win().closed_ts, None);
    assert_eq!(stats.windows_closed, 1);
    assert_eq!(stats.open_windows, 0);
}

#[test]
fn stray_exit_and_unknown_file_events_are_harmless() {
    let f = file(27);
    let events = vec![
        exit(T0, f, 300, Invalidator::Unmap, pages(0, 31)),
        map(T0 + US, T0 + 2 * US, f, 301, pages(0, 3)),
        folio(T0 + 3 * US, f, 1),
        sys_exit(T0 + 4 * US, f, 999, Op::PunchHole),
    ];
    let (alerts, stats) = run(events);
    assert!(alerts.is_empty());
    assert_eq!(stats.windows_opened, 0);
    assert_eq!(stats.events, 4);
}

#[test]
fn alerts_wait_for_final_close_then_advance_releases_them() {
    let f = file(28);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for e in punch(T0, f, 300, pages(0, 31)) {
        c.push(e, &mut out);
    }
    c.push(map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 3)), &mut out);
    assert!(out.is_empty(), "held for reordering");
    // Settled up to T0 + 1 ms: within op gap of the close, still pending.
    c.advance(T0 + 51 * MS, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().open_windows, 1);
    c.advance(T0 + 53 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(c.stats().open_windows, 0);
    assert_eq!(c.buffered(), 0);
}

// ---- Class A (page-exact PTE outcomes) and class B (refills in a punch) ----

use crate::event::{FsRemover, LockHolder};

fn with_stack(mut e: Event, id: u32) -> Event {
    e.stack_id = Some(id);
    e
}

fn install(ts: u64, f: FileId, tid: u32, range: PageRange) -> Event {
    ev(
        ts,
        f,
        tid,
        Body::PteInstall {
            range,
            i_size: None,
            pmd: false,
            shmem: false,
        },
    )
}

fn delete(ts: u64, f: FileId, index: u64, still_mapped: Option<bool>) -> Event {
    ev(
        ts,
        f,
        1,
        Body::FolioDelete {
            range: PageRange::new(index, index),
            folios: 1,
            removed_ts: ts,
            pfn: 0x1000 + index,
            still_mapped,
        },
    )
}

/// A run of `folios` unmapped folios on `range`, the last removed at `ts`.
fn delete_run(ts: u64, f: FileId, range: PageRange, folios: u64) -> Event {
    ev(
        ts,
        f,
        1,
        Body::FolioDelete {
            range,
            folios,
            removed_ts: ts,
            pfn: 0,
            still_mapped: Some(false),
        },
    )
}

fn add(ts: u64, f: FileId, tid: u32, range: PageRange, uptodate: bool) -> Event {
    add_locked(ts, f, tid, range, uptodate, InvalidateLock::NotExposed)
}

fn add_locked(
    ts: u64,
    f: FileId,
    tid: u32,
    range: PageRange,
    uptodate: bool,
    lock: InvalidateLock,
) -> Event {
    ev(
        ts,
        f,
        tid,
        Body::FolioAdd {
            range,
            uptodate,
            lock,
        },
    )
}

fn fs_enter(ts: u64, f: FileId, tid: u32) -> Event {
    fs_enter_locked(ts, f, tid, InvalidateLock::NotExposed)
}

fn fs_enter_locked(ts: u64, f: FileId, tid: u32, lock: InvalidateLock) -> Event {
    ev(
        ts,
        f,
        tid,
        Body::FsRemoveEnter {
            fs: FsRemover::from_code(observer_abi::FS_REMOVE_EXT4_EXT).unwrap(),
            lock,
        },
    )
}

fn fs_exit(ts: u64, f: FileId, tid: u32) -> Event {
    ev(
        ts,
        f,
        tid,
        Body::FsRemoveExit {
            fs: FsRemover::from_code(observer_abi::FS_REMOVE_EXT4_EXT).unwrap(),
        },
    )
}

/// An ext4 hole punch as the kernel performs it, inside its syscall:
/// fallocate enter at t, unmap of the whole pages `unmapped` 1-10 us,
/// truncate of `truncated` 11-20 us (stack 77 at its entry), block removal
/// 30-40 us (stack 88 at its exit), fallocate exit at 50 us.
fn ext4_punch(
    t: u64,
    f: FileId,
    tid: u32,
    unmapped: PageRange,
    truncated: PageRange,
) -> Vec<Event> {
    vec![
        sys_enter(t, f, tid, Op::PunchHole, truncated),
        enter(t + US, f, tid, Invalidator::Unmap, unmapped),
        exit(t + 10 * US, f, tid, Invalidator::Unmap, unmapped),
        with_stack(
            enter(t + 11 * US, f, tid, Invalidator::Truncate, truncated),
            77,
        ),
        exit(t + 20 * US, f, tid, Invalidator::Truncate, truncated),
        fs_enter(t + 30 * US, f, tid),
        with_stack(fs_exit(t + 40 * US, f, tid), 88),
        sys_exit(t + 50 * US, f, tid, Op::PunchHole),
    ]
}

fn sorted(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| e.ts);
    events
}

fn of_kind(alerts: &[Alert], kind: AlertKind) -> Vec<&Alert> {
    alerts.iter().filter(|a| a.kind() == kind).collect()
}

#[test]
fn stale_pte_when_a_pte_installed_in_the_window_outlives_its_folio() {
    let f = file(40);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        // Fault-around between the unmap and the truncate, installing 20-23.
        map(
            T0 + 10 * US + 500,
            T0 + 10 * US + 900,
            f,
            301,
            pages(16, 31),
        ),
        with_stack(install(T0 + 10 * US + 700, f, 301, pages(20, 23)), 5),
        // The truncate removes them: 21 still mapped, 20 and 22 clean, 23
        // with an unreadable mapcount.
        delete(T0 + 12 * US, f, 20, Some(false)),
        delete(T0 + 13 * US, f, 21, Some(true)),
        delete(T0 + 14 * US, f, 22, Some(false)),
        delete(T0 + 15 * US, f, 23, None),
    ]);
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StalePte);
    assert_eq!(stale.len(), 1, "{alerts:#?}");
    let a = stale[0];
    assert!(a.kind().is_critical());
    assert_eq!(a.ts, T0 + 10 * US + 700);
    assert_eq!(a.map_entry_ts(), a.ts);
    assert_eq!(a.file, f);
    assert_eq!(a.task, task(301));
    assert_eq!(a.pages, pages(21, 21));
    assert_eq!(
        *a.win(),
        WindowInfo {
            id: 1,
            op: Op::PunchHole,
            pages: r,
            task: task(300),
            opened_ts: T0 + US,
            closed_ts: Some(T0 + 20 * US),
            open_for_ns: 9 * US + 700,
            test: None,
        }
    );
    assert_eq!(a.fidelity, Fidelity::Fentry);
    assert_eq!(
        a.finding,
        Finding::StalePte {
            deleted_ts: T0 + 13 * US,
            pfn: 0x1000 + 21
        }
    );
    assert_eq!(
        a.evidence.stack_ids,
        StackIds {
            victim: Some(5),
            punch: Some(77)
        }
    );
    assert_eq!((a.folios_removed(), a.ptes()), (None, None));
    // The fault-around alert carries the page-exact counts of its PTEs.
    let race = of_kind(&alerts, AlertKind::PteInPunchWindow);
    assert_eq!(race.len(), 1);
    assert_eq!(
        race[0].ptes(),
        Some(PteCounts {
            installed: 4,
            rezapped: 2,
            stale: 1,
            still_mapped: 0,
            unknown: 1
        })
    );
    assert_eq!(race[0].folios_removed(), Some(4));
    assert_eq!(
        stats.classes.a,
        ClassA {
            ptes_in_window: 4,
            rezapped: 2,
            stale_pte: 1,
            still_mapped_after_window: 0,
            unknown: 1,
            still_mapped_unattributed: 0,
        }
    );
    assert_eq!(stats.classes.critical(), 1);
    assert_eq!(stats.alerts, 2);
    assert_eq!(stats.windows_by_op.get(Op::PunchHole), 1);
}

#[test]
fn pages_left_in_the_cache_are_still_mapped_after_the_window_not_alerts() {
    // A partial page at the punch's edge keeps its folio, and its PTE
    // legitimately: classified, never an alert.
    let f = file(41);
    let mut events = ext4_punch(T0, f, 300, pages(21, 34), pages(20, 35));
    events.extend([
        install(T0 + 15 * US, f, 301, pages(20, 21)),
        delete(T0 + 16 * US, f, 21, Some(false)),
    ]);
    let (alerts, stats) = run(sorted(events));
    assert!(of_kind(&alerts, AlertKind::StalePte).is_empty());
    assert_eq!(stats.classes.a.ptes_in_window, 2);
    assert_eq!(stats.classes.a.rezapped, 1);
    assert_eq!(stats.classes.a.still_mapped_after_window, 1);

    // Without any removal source, "not removed" is not known.
    let g = file(42);
    let mut events = ext4_punch(T0, g, 300, pages(21, 34), pages(20, 35));
    events.push(install(T0 + 15 * US, g, 301, pages(20, 21)));
    let (_, stats) = run(sorted(events));
    assert_eq!(stats.classes.a.still_mapped_after_window, 0);
    assert_eq!(stats.classes.a.unknown, 2);
    // Unless the agent vouches that the source is attached.
    let mut c = Correlator::new(Config::default());
    c.expect_folio_deletes();
    let mut out = Vec::new();
    let mut events = ext4_punch(T0, g, 300, pages(21, 34), pages(20, 35));
    events.push(install(T0 + 15 * US, g, 301, pages(20, 21)));
    for e in sorted(events) {
        c.push(e, &mut out);
    }
    c.flush(&mut out);
    assert_eq!(c.stats().classes.a.still_mapped_after_window, 2);
}

#[test]
fn installs_outside_the_window_in_time_or_pages_are_not_counted() {
    let f = file(43);
    let mut events = ext4_punch(T0, f, 300, pages(20, 35), pages(20, 35));
    events.extend([
        install(T0 - US, f, 301, pages(20, 23)), // before it opened
        install(T0 + 5 * US, f, 301, pages(36, 40)), // beside it
        install(T0 + 5 * US, file(44), 301, pages(20, 23)), // another file
        install(T0 + 60 * US, f, 301, pages(20, 23)), // after its syscall
        delete(T0 + 61 * US, f, 20, Some(true)),
    ]);
    let (alerts, stats) = run(sorted(events));
    assert!(alerts.is_empty());
    assert_eq!(stats.classes.a.ptes_in_window, 0);
    // The removal with a PTE on it that no window install accounts for.
    assert_eq!(stats.classes.a.still_mapped_unattributed, 1);
    // Only the window's own pages of an overlapping install count.
    let mut events = ext4_punch(T0, f, 300, pages(20, 35), pages(20, 35));
    events.push(install(T0 + 5 * US, f, 301, pages(30, 40)));
    let (_, stats) = run(sorted(events));
    assert_eq!(stats.classes.a.ptes_in_window, 6);
}

#[test]
fn removal_before_the_install_does_not_settle_it() {
    let f = file(45);
    let mut events = ext4_punch(T0, f, 300, pages(20, 35), pages(20, 35));
    events.extend([
        delete(T0 + 12 * US, f, 25, Some(true)),
        install(T0 + 13 * US, f, 301, pages(25, 25)),
    ]);
    let (alerts, stats) = run(sorted(events));
    assert!(of_kind(&alerts, AlertKind::StalePte).is_empty());
    assert_eq!(stats.classes.a.still_mapped_after_window, 1);
    assert_eq!(stats.classes.a.still_mapped_unattributed, 1);
}

#[test]
fn two_tasks_mapping_one_page_and_reinstalls_by_one_task() {
    let f = file(46);
    let mut events = ext4_punch(T0, f, 300, pages(20, 35), pages(20, 35));
    events.extend([
        with_stack(install(T0 + 11 * US, f, 301, pages(20, 20)), 1),
        // The same task again before any removal: one PTE, the newer install.
        with_stack(install(T0 + 12 * US, f, 301, pages(20, 20)), 2),
        with_stack(install(T0 + 12 * US, f, 302, pages(20, 20)), 3),
        delete(T0 + 14 * US, f, 20, Some(true)),
    ]);
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StalePte);
    let got: Vec<_> = stale
        .iter()
        .map(|a| (a.task.tid, a.ts, a.evidence.stack_ids.victim))
        .collect();
    assert_eq!(
        got,
        vec![(301, T0 + 12 * US, Some(2)), (302, T0 + 12 * US, Some(3))]
    );
    assert_eq!(stats.classes.a.ptes_in_window, 2);
    assert_eq!(stats.classes.a.stale_pte, 2);
}

#[test]
fn install_in_the_gap_counts_only_if_the_operation_resumes() {
    let (f, g) = (file(47), file(48));
    let r = pages(0, 9);
    let mut events = Vec::new();
    for (x, resumes) in [(f, true), (g, false)] {
        events.extend([
            enter(T0, x, 300 + x.ino as u32, Invalidator::Unmap, r),
            exit(T0 + 10 * US, x, 300 + x.ino as u32, Invalidator::Unmap, r),
            install(T0 + 100 * US, x, 400, pages(0, 1)),
            delete(T0 + 200 * US, x, 0, Some(true)),
        ]);
        if resumes {
            events.extend([
                enter(T0 + MS, x, 300 + x.ino as u32, Invalidator::Truncate, r),
                exit(
                    T0 + MS + 10 * US,
                    x,
                    300 + x.ino as u32,
                    Invalidator::Truncate,
                    r,
                ),
            ]);
        }
    }
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StalePte);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].file, f);
    assert_eq!(stats.classes.a.ptes_in_window, 2);
    assert_eq!(stats.classes.a.still_mapped_after_window, 1);
    // The gap install on g was in no window; its removal is unaccounted.
    assert_eq!(stats.classes.a.still_mapped_unattributed, 1);
}

#[test]
fn install_record_after_its_window_final_closed_is_unknown() {
    let f = file(49);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for e in ext4_punch(T0, f, 300, pages(0, 63), pages(0, 63)) {
        c.push(e, &mut out);
    }
    c.advance(T0 + 100 * MS, &mut out);
    assert_eq!(c.stats().windows_closed, 1);
    c.push(install(T0 + 15 * US, f, 301, pages(0, 3)), &mut out);
    c.flush(&mut out);
    assert_eq!(c.stats().late_events, 1);
    assert_eq!(c.stats().classes.a.ptes_in_window, 4);
    assert_eq!(c.stats().classes.a.unknown, 4);
    assert!(out.is_empty());
}

#[test]
fn shmem_undo_is_an_invalidator_and_opens_an_unbounded_class_b_window() {
    // tmpfs punch: unmap, then shmem_undo_range; no block removal exists.
    let f = file(50);
    let r = pages(8, 15);
    let events = vec![
        sys_enter(T0, f, 300, Op::PunchHole, r),
        enter(T0 + US, f, 300, Invalidator::Unmap, r),
        exit(T0 + 5 * US, f, 300, Invalidator::Unmap, r),
        install(T0 + 6 * US, f, 301, pages(8, 9)),
        with_stack(enter(T0 + 7 * US, f, 300, Invalidator::ShmemUndo, r), 66),
        delete(T0 + 8 * US, f, 8, Some(true)),
        delete(T0 + 9 * US, f, 9, Some(false)),
        add(T0 + 10 * US, f, 302, pages(12, 12), false),
        exit(T0 + 12 * US, f, 300, Invalidator::ShmemUndo, r),
        sys_exit(T0 + 20 * US, f, 300, Op::PunchHole),
    ];
    let (alerts, stats) = run(events);
    let stale = of_kind(&alerts, AlertKind::StalePte);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].pages, pages(8, 8));
    assert_eq!(stale[0].win().op, Op::PunchHole);
    assert_eq!(stale[0].win().closed_ts, Some(T0 + 12 * US));
    assert_eq!(stale[0].evidence.stack_ids.punch, Some(66));
    assert_eq!(stats.classes.a.rezapped, 1);
    assert_eq!(
        stats.classes.b,
        ClassB {
            windows: 1,
            unbounded: 1,
            ..ClassB::default()
        }
    );
    assert!(of_kind(&alerts, AlertKind::StaleData).is_empty());
}

#[test]
fn windows_by_op_counts_final_closed_windows() {
    let mut events = Vec::new();
    let ops = [
        Op::PunchHole,
        Op::PunchHole,
        Op::ZeroRange,
        Op::CollapseRange,
        Op::InsertRange,
        Op::Ftruncate,
        Op::Truncate,
        Op::MadvRemove,
        Op::CloneRange,
        Op::CloneRange,
        Op::DedupeRange,
    ];
    for (i, op) in ops.iter().enumerate() {
        let f = file(60 + i as u64);
        let t = T0 + i as u64 * MS;
        events.push(sys_enter(t, f, 300, *op, pages(0, 9)));
        events.extend(punch(t + US, f, 300, pages(0, 9)));
        events.push(sys_exit(t + 30 * US, f, 300, *op));
    }
    // No syscall at all: unknown.
    events.extend(punch(T0 + 20 * MS, file(80), 301, pages(0, 9)));
    let (_, stats) = run(sorted(events));
    let by: Vec<_> = stats.windows_by_op.by_op().to_vec();
    assert_eq!(
        by,
        vec![
            ("punch_hole", 2),
            ("zero_range", 1),
            ("collapse_range", 1),
            ("insert_range", 1),
            ("ftruncate", 1),
            ("truncate", 1),
            ("madv_remove", 1),
            ("clone", 0),
            ("clone_range", 2),
            ("dedupe_range", 1),
            ("unknown", 1),
        ]
    );
    assert_eq!(stats.windows_by_op.total(), stats.windows_closed);
}

#[test]
fn stale_data_for_a_disk_read_between_truncate_and_block_removal() {
    let f = file(80);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    // A reader fills pages 24-27 from disk after the truncate, before the
    // blocks are freed (ext4 on 5.10: no invalidate_lock on reads).
    events.push(with_stack(
        add(T0 + 25 * US, f, 400, pages(24, 27), false),
        12,
    ));
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StaleData);
    assert_eq!(stale.len(), 1, "{alerts:#?}");
    let a = stale[0];
    assert!(a.kind().is_critical());
    assert_eq!(a.ts, T0 + 25 * US);
    assert_eq!(a.task, task(400));
    assert_eq!(a.pages, pages(24, 27));
    assert_eq!(
        *a.win(),
        WindowInfo {
            id: 1,
            op: Op::PunchHole,
            pages: r,
            task: task(300),
            opened_ts: T0 + 11 * US,
            closed_ts: Some(T0 + 40 * US),
            open_for_ns: 14 * US,
            test: None,
        }
    );
    assert_eq!(
        a.finding,
        Finding::StaleData {
            truncate_exit_ts: Some(T0 + 20 * US),
            fs_remove: FsRemover::from_code(observer_abi::FS_REMOVE_EXT4_EXT).unwrap(),
            fs_remove_exit_ts: T0 + 40 * US,
            invalidate_lock: LockHolder::NotExposed,
        }
    );
    assert_eq!(
        a.evidence.stack_ids,
        StackIds {
            victim: Some(12),
            punch: Some(88)
        }
    );
    assert_eq!(a.fidelity, Fidelity::Fentry);
    assert_eq!(
        stats.classes.b,
        ClassB {
            windows: 1,
            unbounded: 0,
            refills: 1,
            survived: 1,
            stale_data: 1,
            ..ClassB::default()
        }
    );
    assert_eq!(stats.classes.critical(), 1);
}

#[test]
fn refill_the_truncate_removes_again_did_not_survive() {
    let f = file(81);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        // Read in ahead of the truncate's walk, which then removes it.
        add(T0 + 12 * US, f, 400, pages(30, 30), false),
        delete(T0 + 18 * US, f, 30, Some(false)),
    ]);
    let (alerts, stats) = run(sorted(events));
    assert!(of_kind(&alerts, AlertKind::StaleData).is_empty());
    assert_eq!(stats.classes.b.refills, 1);
    assert_eq!(stats.classes.b.survived, 0);
    assert_eq!(stats.classes.b.stale_data, 0);
}

#[test]
fn refill_after_the_block_removal_is_fine() {
    let f = file(82);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    // After the blocks were freed (still inside the syscall, and after it).
    events.push(add(T0 + 45 * US, f, 400, pages(24, 24), false));
    events.push(add(T0 + 55 * US, f, 400, pages(25, 25), false));
    let (alerts, stats) = run(sorted(events));
    assert!(alerts.is_empty());
    assert_eq!(stats.classes.b.windows, 1);
    assert_eq!(stats.classes.b.refills, 0);
}

#[test]
fn uptodate_refill_is_not_stale_data() {
    let f = file(83);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.push(add(T0 + 25 * US, f, 400, pages(24, 24), true));
    let (alerts, stats) = run(sorted(events));
    assert!(alerts.is_empty());
    assert_eq!(stats.classes.b.refills, 1);
    assert_eq!(stats.classes.b.survived, 1);
    assert_eq!(stats.classes.b.stale_data, 0);
}

#[test]
fn without_a_block_removal_record_class_b_is_not_evaluated() {
    let f = file(84);
    let r = pages(20, 35);
    let events: Vec<Event> = ext4_punch(T0, f, 300, r, r)
        .into_iter()
        .filter(|e| {
            !matches!(
                e.body,
                Body::FsRemoveEnter { .. } | Body::FsRemoveExit { .. }
            )
        })
        .chain([add(T0 + 25 * US, f, 400, pages(24, 24), false)])
        .collect();
    let (alerts, stats) = run(sorted(events));
    assert!(alerts.is_empty());
    assert_eq!(
        stats.classes.b,
        ClassB {
            windows: 1,
            unbounded: 1,
            ..ClassB::default()
        }
    );
}

#[test]
fn edge_pages_and_the_punchers_own_reads_are_not_stale_data() {
    // Unaligned punch: the truncate covers partial pages 19 and 36, the
    // unmap only the whole pages 20-35, whose blocks alone are freed.
    let f = file(85);
    let mut events = ext4_punch(T0, f, 300, pages(20, 35), pages(19, 36));
    events.extend([
        // Another task reads the partial edge page.
        add(T0 + 22 * US, f, 400, pages(19, 19), false),
        // The puncher zeroes the other edge through the cache.
        add(T0 + 23 * US, f, 300, pages(36, 36), false),
        // The puncher's own read of a whole page (not a race either).
        add(T0 + 24 * US, f, 300, pages(30, 30), false),
        // A large folio straddling the edge: only its whole pages count.
        add(T0 + 25 * US, f, 400, pages(16, 23), false),
    ]);
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StaleData);
    let got: Vec<_> = stale.iter().map(|a| (a.task.tid, a.pages)).collect();
    assert_eq!(got, vec![(400, pages(20, 23))]);
    assert_eq!(stats.classes.b.refills, 4);
    assert_eq!(stats.classes.b.survived, 4);
    assert_eq!(stats.classes.b.stale_data, 1);
}

#[test]
fn class_b_needs_an_invalidating_syscall() {
    // No syscall record: the operation's end is unknown, so no class B.
    let f = file(86);
    let r = pages(20, 35);
    let events: Vec<Event> = ext4_punch(T0, f, 300, r, r)
        .into_iter()
        .filter(|e| !matches!(e.body, Body::SyscallEnter { .. } | Body::SyscallExit { .. }))
        .chain([add(T0 + 25 * US, f, 400, pages(24, 24), false)])
        .collect();
    let (alerts, stats) = run(sorted(events));
    assert!(alerts.is_empty());
    assert_eq!(stats.classes.b, ClassB::default());
}

#[test]
fn several_block_removals_close_class_b_at_the_last_exit() {
    let f = file(87);
    let r = pages(20, 35);
    let mut events: Vec<Event> = ext4_punch(T0, f, 300, r, r)
        .into_iter()
        .filter(|e| !matches!(e.body, Body::SyscallExit { .. }))
        .collect();
    events.extend([
        // Between the first removal's exit and the second's entry.
        add(T0 + 42 * US, f, 400, pages(33, 33), false),
        fs_enter(T0 + 45 * US, f, 300),
        fs_exit(T0 + 48 * US, f, 300),
        // After the last exit.
        add(T0 + 49 * US, f, 400, pages(34, 34), false),
        sys_exit(T0 + 60 * US, f, 300, Op::PunchHole),
    ]);
    let (alerts, stats) = run(sorted(events));
    let stale = of_kind(&alerts, AlertKind::StaleData);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].pages, pages(33, 33));
    assert_eq!(stale[0].win().closed_ts, Some(T0 + 48 * US));
    // The last transition with a stack was the first exit's.
    assert_eq!(stale[0].evidence.stack_ids.punch, Some(88));
    assert_eq!(stats.classes.b.refills, 1);
}

#[test]
fn large_folio_refill_removed_at_its_head_is_gone_whole() {
    let f = file(88);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        add(T0 + 12 * US, f, 400, pages(24, 27), false),
        delete(T0 + 15 * US, f, 24, Some(false)),
        // Split: only page 29 of this one is removed.
        add(T0 + 12 * US, f, 401, pages(28, 31), false),
        delete(T0 + 16 * US, f, 29, Some(false)),
        add(T0 + 12 * US, f, 402, pages(32, 35), false),
        delete(T0 + 16 * US, f, 32, Some(false)),
        delete(T0 + 16 * US, f, 35, Some(false)),
    ]);
    let (alerts, stats) = run(sorted(events));
    let got: Vec<_> = of_kind(&alerts, AlertKind::StaleData)
        .iter()
        .map(|a| (a.task.tid, a.pages))
        .collect();
    assert_eq!(got, vec![(401, pages(28, 31))]);
    assert_eq!(stats.classes.b.refills, 3);
    assert_eq!(stats.classes.b.survived, 1);
}

#[test]
fn class_b_of_a_syscall_that_never_returned_is_evaluated_at_the_end() {
    let f = file(89);
    let r = pages(20, 35);
    let mut events: Vec<Event> = ext4_punch(T0, f, 300, r, r)
        .into_iter()
        .filter(|e| !matches!(e.body, Body::SyscallExit { .. }))
        .collect();
    events.push(add(T0 + 25 * US, f, 400, pages(24, 24), false));
    let (alerts, stats) = run(sorted(events.clone()));
    assert_eq!(of_kind(&alerts, AlertKind::StaleData).len(), 1);
    assert_eq!(stats.classes.b.windows, 1);
    // A lost exit superseded by the task's next syscall ends it too.
    events.push(sys_enter(T0 + 5 * MS, file(90), 300, Op::Ftruncate, r));
    events.push(sys_exit(T0 + 6 * MS, file(90), 300, Op::Ftruncate));
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    for e in sorted(events) {
        c.push(e, &mut out);
    }
    c.advance(T0 + 100 * MS, &mut out);
    assert_eq!(of_kind(&out, AlertKind::StaleData).len(), 1);
    assert!(
        c.files.values().all(|fw| fw.refills.is_empty()),
        "class-B state must not linger"
    );
    c.advance(T0 + 2_000 * MS, &mut out);
    assert!(c.files.is_empty());
}

#[test]
fn classes_are_the_same_under_out_of_order_delivery_within_the_horizon() {
    // Ten punches on five files, each with a stale PTE, a rezapped one, a
    // surviving disk read and a truncated-away read; CPUs deliver with up to
    // 20 ms of skew.
    let mut events = Vec::new();
    for i in 0..10u64 {
        let f = file(100 + i % 5);
        let t = T0 + i * 3 * MS;
        let tid = 300 + i as u32;
        events.extend(ext4_punch(t, f, tid, pages(0, 31), pages(0, 31)));
        events.extend([
            install(t + 10 * US + 500, f, 900, pages(4, 5)),
            delete(t + 12 * US, f, 4, Some(true)),
            delete(t + 13 * US, f, 5, Some(false)),
            add(t + 12 * US, f, 901, pages(8, 8), false),
            delete(t + 14 * US, f, 8, Some(false)),
            add(t + 25 * US, f, 902, pages(9, 9), false),
        ]);
    }
    let events = sorted(events);
    let (expected, expected_stats) = run(events.clone());
    assert_eq!(of_kind(&expected, AlertKind::StalePte).len(), 10);
    assert_eq!(of_kind(&expected, AlertKind::StaleData).len(), 10);
    assert_eq!(expected_stats.classes.a.rezapped, 10);
    assert_eq!(expected_stats.classes.b.refills, 20);
    assert_eq!(expected_stats.classes.b.survived, 10);
    let key = |a: &Alert| {
        (
            a.kind().as_str(),
            a.file.ino,
            a.win().task.tid,
            a.task.tid,
            a.pages,
        )
    };
    let mut want: Vec<_> = expected.iter().map(key).collect();
    want.sort();
    for seed in 1..10u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut arrivals: Vec<(u64, Event)> = events
            .iter()
            .map(|e| {
                let cpu = rng.next() % 4;
                ((e.ts + (cpu * 7 + seed) % 20 * MS), e.clone())
            })
            .collect();
        arrivals.sort_by_key(|(t, _)| *t);
        let (alerts, stats) = run(arrivals.into_iter().map(|(_, e)| e));
        let mut got: Vec<_> = alerts.iter().map(key).collect();
        got.sort();
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(stats.classes, expected_stats.classes, "seed {seed}");
        assert_eq!(stats.late_events, 0, "seed {seed}");
    }
}

#[test]
fn btrfs_refill_inside_the_punch_is_not_stale_data() {
    let f = file(81);
    let r = pages(20, 35);
    // The same punch, but bounded by btrfs's block removal: a folio added
    // inside it is read under the extent lock the punch holds, after the
    // extents were replaced.
    let mut events: Vec<Event> = ext4_punch(T0, f, 300, r, r)
        .into_iter()
        .map(|mut e| {
            match &mut e.body {
                Body::FsRemoveEnter { fs, .. } | Body::FsRemoveExit { fs } => {
                    *fs = FsRemover::from_code(observer_abi::FS_REMOVE_BTRFS).unwrap()
                }
                _ => {}
            }
            e
        })
        .collect();
    events.push(add(T0 + 25 * US, f, 400, pages(24, 27), false));
    let (alerts, stats) = run(sorted(events));
    assert!(
        of_kind(&alerts, AlertKind::StaleData).is_empty(),
        "{alerts:#?}"
    );
    assert_eq!(stats.classes.b.refills, 1);
    assert_eq!(stats.classes.b.survived, 1);
    assert_eq!(stats.classes.b.stale_data, 0);
    // Exempted by btrfs's policy, and counted as such.
    assert_eq!(stats.classes.b.exempt, 1);
}

/// A 5.15+ punch holds invalidate_lock for writing from before its truncate
/// to after its block removal: the removal is counted under the lock, and a
/// refill that got in anyway is counted as bypassing it and named on its
/// stale_data alert.
#[test]
fn invalidate_lock_at_removal_and_at_refill() {
    let held = InvalidateLock::WriteHeld { tid: 300 };
    let r = pages(20, 35);
    let locked = |t: u64, f: FileId| {
        let mut events = ext4_punch(t, f, 300, r, r);
        for e in &mut events {
            if let Body::FsRemoveEnter { lock, .. } = &mut e.body {
                *lock = held;
            }
        }
        events
    };
    let f = file(90);
    let mut events = locked(T0, f);
    // A reader adds a folio after the truncate, the lock write-held by the
    // puncher (a bypass), and a second one on another locked punch while
    // only readers hold it.
    events.push(add_locked(T0 + 25 * US, f, 301, pages(24, 27), false, held));
    let g = file(91);
    events.extend(locked(T0 + MS, g));
    events.push(add_locked(
        T0 + MS + 25 * US,
        g,
        301,
        pages(24, 27),
        false,
        InvalidateLock::NotWriteHeld,
    ));
    // btrfs-like: the removal runs without invalidate_lock.
    let h = file(92);
    let mut free = ext4_punch(T0 + 2 * MS, h, 302, r, r);
    for e in &mut free {
        if let Body::FsRemoveEnter { lock, .. } = &mut e.body {
            *lock = InvalidateLock::NotWriteHeld;
        }
    }
    events.extend(free);
    // 5.10: no lock at all.
    events.extend(ext4_punch(T0 + 3 * MS, file(93), 303, r, r));
    // xfs on 6.12 truncates inside xfs_free_file_space, after the removal
    // entry: the truncate's entry carries the lock.
    let mut xfs = ext4_punch(T0 + 4 * MS, file(94), 304, r, r);
    for e in &mut xfs {
        if let Body::InvalidateEnter {
            which: Invalidator::Truncate,
            lock,
            ..
        } = &mut e.body
        {
            *lock = InvalidateLock::WriteHeld { tid: 304 };
        }
    }
    events.extend(xfs);
    let (alerts, stats) = run(sorted(events));
    let b = stats.classes.b;
    assert_eq!(b.windows, 5);
    assert_eq!(b.removals_under_lock, 3, "{b:?}");
    assert_eq!(b.removals_without_lock, 1, "{b:?}");
    assert_eq!(b.refills, 2);
    assert_eq!(b.refills_under_lock, 1, "{b:?}");
    let stale = of_kind(&alerts, AlertKind::StaleData);
    assert_eq!(stale.len(), 2, "{alerts:#?}");
    let lock_of = |f: FileId| {
        stale
            .iter()
            .find(|a| a.file == f)
            .and_then(|a| match a.finding {
                Finding::StaleData {
                    invalidate_lock, ..
                } => Some(invalidate_lock),
                _ => None,
            })
    };
    assert_eq!(lock_of(f), Some(LockHolder::Puncher));
    assert_eq!(lock_of(g), Some(LockHolder::NotHeld));
}

#[test]
fn invalidate_lock_decodes_from_the_record() {
    use observer_abi::{LOCK_EXPOSED, LOCK_OWNER_SHIFT, LOCK_WRITE_HELD};
    assert_eq!(InvalidateLock::from_aux(3), InvalidateLock::NotExposed);
    assert_eq!(
        InvalidateLock::from_aux(LOCK_EXPOSED | 3),
        InvalidateLock::NotWriteHeld
    );
    let held = InvalidateLock::from_aux(
        LOCK_EXPOSED | LOCK_WRITE_HELD | (4242u64 << LOCK_OWNER_SHIFT) | 3,
    );
    assert_eq!(held, InvalidateLock::WriteHeld { tid: 4242 });
    assert_eq!(held.seen_by(4242), LockHolder::Puncher);
    assert_eq!(held.seen_by(1), LockHolder::Other);
    assert_eq!(
        InvalidateLock::NotExposed.seen_by(1),
        LockHolder::NotExposed
    );
}

fn log(ts: u64, body: Body) -> Event {
    Event::from_log(ts, body)
}

/// A kernel report is whole only well after its header (its lines trickle
/// in, then the log goes quiet): it joins the windows on its inode as they
/// were at the header, under the test running then, even though retention
/// alone would have forgotten them; it is not counted late.
#[test]
fn a_kernel_report_joins_the_windows_at_its_header() {
    let (ours, other) = (file(21), file(22));
    let cfg = Config {
        retain_ns: 10 * MS,
        ..Config::default()
    };
    let mut c = Correlator::new(cfg);
    let mut out = Vec::new();
    let test = |name: &str| Body::TestStart { name: name.into() };
    c.push(log(T0 - MS, test("generic/127")), &mut out);
    for e in punch(T0, ours, 300, pages(0, 15)).into_iter().chain(punch(
        T0 + 100 * US,
        other,
        400,
        pages(0, 15),
    )) {
        c.push(e, &mut out);
    }
    c.push(log(T0 + MS, Body::ReportBegins), &mut out);
    c.push(log(T0 + 2 * MS, test("generic/128")), &mut out);
    for e in punch(T0 + 3 * MS, ours, 300, pages(32, 47)) {
        c.push(e, &mut out);
    }
    c.advance(T0 + 500 * MS, &mut out);
    assert!(c.take_reports().is_empty());
    let report = crate::kmsg::KernelReport {
        kind: crate::kmsg::ReportKind::BadPageCache,
        ts: T0 + MS,
        lines: vec!["BUG: Bad page cache in process x  pfn:1".into()],
        ino: Some(21),
        last: T0 + MS + 50 * US,
    };
    c.push(log(T0 + 500 * MS, Body::KernelReport(report)), &mut out);
    c.advance(T0 + 600 * MS, &mut out);
    let reports = c.take_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.test.as_deref(), Some("generic/127"));
    let joined: Vec<(u64, PageRange)> = r.windows.iter().map(|(f, w)| (f.ino, w.pages)).collect();
    assert_eq!(
        joined,
        [(21, pages(0, 15))],
        "only the window before the header, on its inode"
    );
    assert_eq!(c.stats().late_events, 0);
    assert_eq!(c.stats().kernel_reports, 1);
    assert_eq!(c.stats().critical_reports, 1);
    assert_eq!(
        c.stats()
            .tests
            .iter()
            .find(|t| t.0 == "generic/127")
            .map(|t| t.1.kernel_reports),
        Some(1)
    );
    // Held no longer: retention applies again.
    c.advance(T0 + 700 * MS, &mut out);
    assert!(c.files.is_empty(), "windows outlived the report");
}

/// A `WARNING:` in fs/ is often made on purpose (error injection): it stays
/// a warning, unless its page dump names a file with a window open.
#[test]
fn a_warning_in_fs_is_critical_only_on_a_windowed_file() {
    let f = file(23);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    c.push(
        enter(T0, f, 300, Invalidator::Unmap, pages(0, 15)),
        &mut out,
    );
    let warning = |ino, at| crate::kmsg::KernelReport {
        kind: crate::kmsg::ReportKind::Other,
        ts: at,
        lines: vec!["WARNING: CPU: 0 PID: 1 at fs/xfs/xfs_bmap.c:1 x+0x1/0x2".into()],
        ino,
        last: at,
    };
    for (i, ino) in [None, Some(23), Some(24)].into_iter().enumerate() {
        let at = T0 + (i as u64 + 1) * US;
        c.push(log(at, Body::ReportBegins), &mut out);
        c.push(log(at, Body::KernelReport(warning(ino, at))), &mut out);
    }
    c.flush(&mut out);
    let got: Vec<(Severity, usize)> = c
        .take_reports()
        .iter()
        .map(|r| (r.severity, r.windows.len()))
        .collect();
    assert_eq!(
        got,
        [
            (Severity::Warning, 1),
            (Severity::Critical, 1),
            (Severity::Warning, 0)
        ]
    );
    assert_eq!(c.stats().critical_reports, 1);
}

// --- Class C: installs past EOF --------------------------------------------

fn eof_install(ts: u64, f: FileId, range: PageRange, i_size: u64, pmd: bool, shmem: bool) -> Event {
    ev(
        ts,
        f,
        5,
        Body::PteInstall {
            range,
            i_size: Some(i_size),
            pmd,
            shmem,
        },
    )
}

/// A 10-page file (40960 bytes): page 9 is its last, page 10 is past EOF.
const TEN_PAGES: u64 = 10 * 4096;

#[test]
fn an_install_past_eof_with_no_size_change_is_beyond_eof() {
    let f = file(1);
    let (alerts, st) = run([
        eof_install(T0, f, pages(8, 9), TEN_PAGES, false, false),
        eof_install(T0 + MS, f, pages(9, 10), TEN_PAGES, false, false),
        // A punch keeps the size: it explains nothing.
        sys_enter(T0 + 2 * MS, f, 1, Op::PunchHole, pages(0, 3)),
    ]
    .into_iter()
    .chain(punch(T0 + 2 * MS + 10 * US, f, 1, pages(0, 3)))
    .chain([sys_exit(T0 + 3 * MS, f, 1, Op::PunchHole)]));
    let c = st.classes.c;
    assert_eq!((c.installs_past_eof, c.beyond_eof), (1, 1), "{c:?}");
    assert_eq!((c.during_size_change, c.shmem, c.pmd), (0, 0, 0));
    assert_eq!(st.classes.critical(), 1);
    // The one install that reached EOF is an alert, with what it saw.
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind(), AlertKind::BeyondEof);
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!((a.ts, a.file, a.pages), (T0 + MS, f, pages(9, 10)));
    assert_eq!(
        a.finding,
        Finding::BeyondEof {
            i_size: TEN_PAGES,
            pmd: false
        }
    );
    assert_eq!(a.window, None);
    assert_eq!(st.alerts_by_kind[AlertKind::BeyondEof as usize], [0, 0, 1]);
}

#[test]
fn an_install_past_eof_before_a_truncate_unmaps_is_legitimate() {
    let f = file(1);
    // fentry mode, no syscall record: the truncate's window opens at its
    // unmap, after it wrote the smaller i_size the install was judged by.
    let (_, st) = run([eof_install(T0, f, pages(4, 11), 4 * 4096, false, false)]
        .into_iter()
        .chain(punch(T0 + MS, f, 1, pages(4, PageRange::EOF))));
    let c = st.classes.c;
    assert_eq!(
        (c.installs_past_eof, c.during_size_change, c.beyond_eof),
        (1, 1, 0)
    );
    // The same install long before the truncate: nothing explains it.
    let (_, st) = run([eof_install(T0, f, pages(4, 11), 4 * 4096, false, false)]
        .into_iter()
        .chain(punch(T0 + 50 * MS, f, 1, pages(4, PageRange::EOF))));
    assert_eq!(st.classes.c.beyond_eof, 1);
}

#[test]
fn an_install_past_eof_inside_a_size_changing_syscall_is_legitimate() {
    let f = file(1);
    let (_, st) = run([
        sys_enter(T0, f, 1, Op::Ftruncate, pages(4, PageRange::EOF)),
        eof_install(T0 + 10 * US, f, pages(4, 11), 4 * 4096, false, false),
        sys_exit(T0 + 100 * MS, f, 1, Op::Ftruncate),
    ]);
    let c = st.classes.c;
    assert_eq!((c.during_size_change, c.beyond_eof), (1, 0), "{c:?}");
    // truncate(2) names no file: it may be any.
    let (_, st) = run([
        sys_enter(
            T0,
            FileId::default(),
            1,
            Op::Truncate,
            pages(4, PageRange::EOF),
        ),
        eof_install(T0 + 10 * US, f, pages(4, 11), 4 * 4096, false, false),
    ]);
    assert_eq!(st.classes.c.during_size_change, 1);
}

#[test]
fn shmem_installs_past_eof_are_by_design_and_pmds_are_counted() {
    let f = file(1);
    let (_, st) = run([
        eof_install(T0, f, pages(0, 511), TEN_PAGES, true, true),
        eof_install(T0 + MS, f, pages(512, 1023), TEN_PAGES, true, false),
        // Below EOF: not class C.
        eof_install(T0 + 2 * MS, f, pages(0, 9), TEN_PAGES, false, false),
    ]);
    let c = st.classes.c;
    assert_eq!(
        (c.installs_past_eof, c.pmd, c.shmem, c.beyond_eof),
        (2, 2, 1, 1),
        "{c:?}"
    );
}

#[test]
fn without_the_shmem_exemption_a_tmpfs_pmd_past_eof_is_beyond_eof() {
    let cfg = Config {
        shmem_eof_exempt: false,
        ..Config::default()
    };
    let (alerts, st) = run_with(
        cfg,
        [eof_install(
            T0,
            file(1),
            pages(0, 511),
            TEN_PAGES,
            true,
            true,
        )],
    );
    let c = st.classes.c;
    assert_eq!(
        (c.installs_past_eof, c.shmem, c.beyond_eof),
        (1, 0, 1),
        "{c:?}"
    );
    let got: Vec<_> = alerts.iter().map(|a| (a.kind(), a.finding)).collect();
    assert_eq!(
        got,
        vec![(
            AlertKind::BeyondEof,
            Finding::BeyondEof {
                i_size: TEN_PAGES,
                pmd: true
            }
        )]
    );
}

#[test]
fn a_pending_install_past_eof_settles_as_the_clock_passes_its_op_gap() {
    let f = file(1);
    let mut c = Correlator::new(Config::default());
    let mut out = Vec::new();
    c.push(
        eof_install(T0, f, pages(10, 10), TEN_PAGES, false, false),
        &mut out,
    );
    c.advance(T0 + Config::default().reorder_horizon_ns + MS, &mut out);
    assert_eq!(c.stats().classes.c.beyond_eof, 0, "still within the op gap");
    assert!(out.is_empty());
    c.advance(
        T0 + Config::default().reorder_horizon_ns + 10 * MS,
        &mut out,
    );
    assert_eq!(c.stats().classes.c.beyond_eof, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(c.stats().alerts, 1);
}

#[test]
fn a_run_of_removals_settles_every_pte_and_refill_on_its_pages() {
    let f = file(120);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        map(
            T0 + 10 * US + 500,
            T0 + 10 * US + 900,
            f,
            301,
            pages(16, 31),
        ),
        install(T0 + 10 * US + 700, f, 301, pages(20, 27)),
        // Read in ahead of the truncate's walk: before the run began.
        add(T0 + 11 * US + 500, f, 400, pages(30, 30), false),
        // One record for folios 20-31 and one for 32-35 (the run broke).
        delete_run(T0 + 15 * US, f, pages(20, 31), 12),
        delete_run(T0 + 16 * US, f, pages(32, 35), 4),
        // Read in after the runs: it survives the punch.
        add(T0 + 17 * US, f, 401, pages(33, 33), false),
    ]);
    let (alerts, stats) = run(sorted(events));
    assert_eq!(
        stats.classes.a,
        ClassA {
            ptes_in_window: 8,
            rezapped: 8,
            ..ClassA::default()
        }
    );
    let race = of_kind(&alerts, AlertKind::PteInPunchWindow);
    assert_eq!(race.len(), 1);
    assert_eq!(race[0].folios_removed(), Some(12));
    assert_eq!(stats.classes.b.refills, 2);
    assert_eq!(stats.classes.b.survived, 1);
    let got: Vec<_> = of_kind(&alerts, AlertKind::StaleData)
        .iter()
        .map(|a| (a.task.tid, a.pages))
        .collect();
    assert_eq!(got, vec![(401, pages(33, 33))]);
}

#[test]
fn a_large_folio_removal_takes_the_ptes_of_all_its_pages() {
    let f = file(121);
    let r = pages(16, 47);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        install(T0 + 10 * US + 700, f, 301, pages(18, 19)),
        // The 16-page folio at 16 leaves whole; before, only a PTE on its
        // first page was settled, and 18-19 looked still mapped after.
        ev(
            T0 + 12 * US,
            f,
            1,
            Body::FolioDelete {
                range: pages(16, 31),
                folios: 1,
                removed_ts: T0 + 12 * US,
                pfn: 0x1010,
                still_mapped: Some(false),
            },
        ),
    ]);
    let (_, stats) = run(sorted(events));
    assert_eq!(stats.classes.a.ptes_in_window, 2);
    assert_eq!(stats.classes.a.rezapped, 2);
    assert_eq!(stats.classes.a.still_mapped_after_window, 0);
}

#[test]
fn a_run_counts_its_share_of_an_alerts_folios() {
    // 64 pages in 4 folios; the alert's 8 pages lie in one of them.
    let f = file(122);
    let r = pages(0, 63);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        map(T0 + 10 * US + 500, T0 + 10 * US + 900, f, 301, pages(8, 15)),
        delete_run(T0 + 15 * US, f, pages(0, 63), 4),
    ]);
    let (alerts, _) = run(sorted(events));
    let race = of_kind(&alerts, AlertKind::PteInPunchWindow);
    assert_eq!(race[0].folios_removed(), Some(1));
}

/// ftruncate of a 10-page file to 4 pages, as the kernel runs it
/// (truncate_pagecache: unmap, truncate, unmap again), from `t`; the second
/// unmap returns at t + 30 us.
fn shrink_to_four_pages(t: u64, f: FileId) -> Vec<Event> {
    let r = pages(4, PageRange::EOF);
    vec![
        enter(t, f, 1, Invalidator::Unmap, r),
        exit(t + 10 * US, f, 1, Invalidator::Unmap, r),
        enter(t + 11 * US, f, 1, Invalidator::Truncate, r),
        exit(t + 20 * US, f, 1, Invalidator::Truncate, r),
        enter(t + 21 * US, f, 1, Invalidator::Unmap, r),
        exit(t + 30 * US, f, 1, Invalidator::Unmap, r),
    ]
}

#[test]
fn a_mapping_past_the_new_eof_that_outlives_the_truncate_is_beyond_eof() {
    let f = file(130);
    let mut events = vec![sys_enter(T0, f, 1, Op::Ftruncate, pages(4, PageRange::EOF))];
    events.extend(shrink_to_four_pages(T0 + US, f));
    events.extend([
        // Read the old size, installed before the last unmap: zapped by it.
        eof_install(T0 + 15 * US, f, pages(6, 7), 4 * 4096, false, false),
        // After the last zap pass, and its folio never left: it survived.
        eof_install(T0 + 35 * US, f, pages(8, 9), 4 * 4096, false, false),
        // The same, but the folio then left the cache unmapped.
        eof_install(T0 + 36 * US, f, pages(12, 12), 4 * 4096, false, false),
        delete(T0 + 38 * US, f, 12, Some(false)),
        sys_exit(T0 + 40 * US, f, 1, Op::Ftruncate),
    ]);
    let (alerts, st) = run(sorted(events));
    let c = st.classes.c;
    assert_eq!(
        (c.installs_past_eof, c.during_size_change, c.beyond_eof),
        (3, 2, 1),
        "{c:?}"
    );
    let eof = of_kind(&alerts, AlertKind::BeyondEof);
    assert_eq!(eof.len(), 1, "{alerts:#?}");
    let a = eof[0];
    assert_eq!((a.ts, a.pages), (T0 + 35 * US, pages(8, 9)));
    assert_eq!(
        a.finding,
        Finding::BeyondEof {
            i_size: 4 * 4096,
            pmd: false
        }
    );
    // The truncate it outlived is its window.
    assert_eq!(a.win().op, Op::Ftruncate);
    assert_eq!(a.win().pages, pages(4, PageRange::EOF));
}

#[test]
fn a_grown_file_maps_its_new_pages_legitimately() {
    // ftruncate up from 4 to 10 pages: installs below the new size, after
    // the last unmap, are no finding.
    let f = file(131);
    let mut events = vec![sys_enter(T0, f, 1, Op::Ftruncate, pages(4, PageRange::EOF))];
    events.extend(shrink_to_four_pages(T0 + US, f));
    events.extend([
        eof_install(T0 + 35 * US, f, pages(6, 7), TEN_PAGES, false, false),
        sys_exit(T0 + 40 * US, f, 1, Op::Ftruncate),
    ]);
    let (alerts, st) = run(sorted(events));
    assert_eq!(st.classes.c.installs_past_eof, 0);
    assert!(of_kind(&alerts, AlertKind::BeyondEof).is_empty());
}

#[test]
fn a_run_sent_at_its_invalidations_exit_settles_by_its_last_removal() {
    // The run's last removal at 14 us; it is sent at 19 us, after a refill
    // and an install of its pages that came after the removal.
    let f = file(123);
    let r = pages(20, 35);
    let mut events = ext4_punch(T0, f, 300, r, r);
    events.extend([
        add(T0 + 15 * US, f, 400, pages(30, 30), false),
        install(T0 + 16 * US, f, 301, pages(25, 25)),
        ev(
            T0 + 19 * US,
            f,
            300,
            Body::FolioDelete {
                range: pages(20, 35),
                folios: 16,
                removed_ts: T0 + 14 * US,
                pfn: 0,
                still_mapped: Some(false),
            },
        ),
    ]);
    let (alerts, stats) = run(sorted(events));
    // The refill came after the removal: it survived, read before the
    // block removal.
    assert_eq!(stats.classes.b.survived, 1, "{:?}", stats.classes.b);
    assert_eq!(of_kind(&alerts, AlertKind::StaleData).len(), 1);
    // The install came after the removal too: its page stayed mapped.
    assert_eq!(stats.classes.a.ptes_in_window, 1);
    assert_eq!(stats.classes.a.rezapped, 0);
    assert_eq!(stats.classes.a.still_mapped_after_window, 1);
    assert_eq!(stats.late_events, 0);
}
