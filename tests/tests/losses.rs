//! Every loss counted: with the pre-filter off (`--full-stream`) and a tiny
//! ring buffer, faultbench's fault-arounds overflow the ring. Per record
//! kind, what the kernel emitted is exactly what the agent received, and
//! what it could not emit is counted per kind as dropped; nothing vanishes
//! unseen. Needs root; `cargo xtask test` runs it.

use std::process::Command;
use std::time::{Duration, Instant};

use observer_tests::{
    FaultbenchReport, FsType, LoopMount, ObserverProcess, Stream, faultbench_bin, is_root,
    observer_bin,
};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "needs root: loop mounts and BPF; run by cargo xtask test"]
fn a_burst_over_the_ring_is_counted_exactly_per_kind() {
    assert!(is_root(), "needs root");
    let m = LoopMount::new(FsType::Xfs, 512).expect("xfs loop mount");
    let out = m.image().with_file_name("burst.jsonl");
    let mut p = ObserverProcess::spawn(
        &observer_bin(),
        [
            "--json",
            "-o",
            out.to_str().unwrap(),
            "--full-stream",
            "--ringbuf-kib",
            "4",
            // The agent's longest tick (50 ms) between reads: the ring must
            // overflow, however fast this host drains it.
            "--reorder-ms",
            "200",
        ],
    )
    .expect("start the observer");
    p.wait_ready(TIMEOUT).expect("ready");
    let started = Instant::now();
    let mut rounds = 0;
    // About ten seconds of fault-around, without punches.
    while started.elapsed() < Duration::from_secs(10) {
        let bench = Command::new(faultbench_bin())
            .arg("--file")
            .arg(m.path().join("burst.dat"))
            .args(["--pages", "4096", "--rounds", "40"])
            .output()
            .expect("run faultbench");
        assert!(bench.status.success(), "faultbench failed");
        FaultbenchReport::parse(&String::from_utf8_lossy(&bench.stdout)).expect("a report");
        rounds += 1;
    }
    p.signal(libc::SIGINT).expect("stop");
    let exit = p.wait(TIMEOUT).expect("observer ends");
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let s = Stream::read(&out).expect("output").summary;
    eprintln!(
        "{rounds} faultbench runs: emitted {:?}; dropped {:?}; lost {:?}",
        s.kernel_emitted, s.kernel_dropped, s.lost
    );
    assert!(
        s.kernel_dropped.get("filemap_map_pages") > 0,
        "the ring never overflowed: {:?}",
        s.kernel_dropped
    );
    assert_eq!(s.lost.ringbuf_full, s.kernel_dropped.total());
    assert_eq!(s.lost.undecodable, 0);
    for (kind, emitted) in s.kernel_emitted.iter() {
        assert_eq!(
            s.events.get(kind),
            emitted,
            "{kind}: the kernel emitted {emitted}, the agent received {}",
            s.events.get(kind)
        );
    }
    assert_eq!(s.events.total(), s.kernel_emitted.total());
    // A verdict that admits the losses.
    assert_ne!(s.verdict, observer_report::Verdict::NoRace);
}
