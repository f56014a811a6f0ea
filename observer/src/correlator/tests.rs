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
    ev(ts, f, tid, Body::InvalidateEnter { which, range })
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
    ev(ts, f, tid, Body::SyscallExit { op })
}

fn folio(ts: u64, f: FileId, index: u64) -> Event {
    ev(
        ts,
        f,
        1,
        Body::FolioDelete {
            index,
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
        a.window.pages,
        a.window.op,
        a.window.task.tid,
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
    assert_eq!(a.kind, AlertKind::PteInPunchWindow);
    assert_eq!(a.kind.as_str(), "pte_in_punch_window");
    assert_eq!(a.ts, T0 + 15 * US);
    assert_eq!(a.map_entry_ts, T0 + 12 * US);
    assert_eq!(a.file, f);
    assert_eq!(a.task, task(1240));
    assert_eq!(a.pages, pages(16, 31));
    assert_eq!(
        a.window,
        WindowInfo {
            id: 1,
            op: Op::PunchHole,
            pages: pages(20, 35),
            task: task(1236),
            opened_ts: T0,
            closed_ts: Some(T0 + 20 * US),
            open_for_ns: 15 * US,
        }
    );
    assert_eq!(a.fidelity, Fidelity::Fentry);
    assert_eq!(a.folios_removed, None);
    assert_eq!(stats.windows_opened, 1);
    assert_eq!(stats.windows_closed, 1);
    assert_eq!(stats.alerts, 1);
    assert_eq!(stats.late_events, 0);
    assert_eq!(stats.events.map_pages, 1);
    assert_eq!(stats.events.invalidate_enter, 2);
    assert_eq!(stats.events.syscall_enter, 1);
    assert_eq!(stats.events.total(), 7);
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
            .all(|a| (a.pages.start - 5) % 20 == 0 && a.window.pages.start == a.pages.start - 5)
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
    assert!(alerts.iter().all(|a| a.window.id == 1));
    assert_eq!(alerts[0].window.closed_ts, Some(T0 + 1060 * US));
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
    assert!(alerts.iter().all(|a| a.window.pages == pages(20, 35)));
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
            .all(|a| a.window.task.tid as u64 == a.file.ino + 9000)
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
    assert_eq!(alerts[0].map_entry_ts, T0 - 5 * US);
    assert_eq!(alerts[0].window.opened_ts, T0);
    assert_eq!(alerts[0].window.open_for_ns, 3 * US);
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
    assert_eq!(out[0].window.closed_ts, Some(T0 + 20 * US));
    assert_eq!(out[0].window.open_for_ns, 10 * MS);
    // The folio went before the fault-around returned: not a stale PTE.
    assert_eq!(out[0].folios_removed, Some(0));
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
    assert!(alerts.iter().all(|a| a.window.pages == tail));
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
    assert_eq!(a.window.opened_ts, T0);
    assert_eq!(a.window.closed_ts, Some(T0 + 6 * MS));
    assert_eq!(a.window_fidelity, Fidelity::Tracepoint);
    assert_eq!(a.fidelity, Fidelity::Tracepoint);
    assert_eq!(stats.windows_opened, 1);
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
    assert_eq!(alerts[0].window.op, Op::ZeroRange);
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
    let mut got: Vec<_> = alerts.iter().map(|a| (a.file.ino, a.window.op)).collect();
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
    assert_eq!(alerts[0].folios_removed, Some(3));
}

#[test]
fn folios_removed_is_unknown_without_deletion_records() {
    let f = file(21);
    let mut events = punch(T0, f, 300, pages(0, 63));
    events.push(map(T0 + 2 * US, T0 + 5 * US, f, 301, pages(0, 15)));
    events.sort_by_key(|e| e.ts);
    let (alerts, _) = run(events);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].folios_removed, None);
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
    assert_eq!(out[0].folios_removed, Some(0));
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
    assert_eq!(out[0].window.pages, pages(0, 63));
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
        .map(|a| (a.window.id, a.window.task.tid, a.pages, a.ts))
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
    assert_eq!(alerts[0].task.tid, alerts[0].window.task.tid);
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
    assert_eq!(alerts[0].window.closed_ts, Some(T0 + 4 * MS));
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
    assert_eq!(alerts[0].window.closed_ts, None);
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
    assert_eq!(stats.events.total(), 4);
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
