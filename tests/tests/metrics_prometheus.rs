//! `--metrics`, scraped by a real Prometheus (Debian's `prometheus`): after
//! an `observer run` of the racer, what Prometheus stored last equals the
//! observer's own summary at exit, count for count.
//!
//! Needs root (BPF, a loop mount); ignored by default, run by `cargo xtask
//! test`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use observer_report::metrics::{self, Metric};
use observer_tests::{
    FsType, LoopMount, ObserverProcess, Stream, is_root, observer_bin, racer_bin,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A free loopback port (another process could take it before us: unlikely).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus on loopback with its own config and storage, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: u16) -> Prometheus {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: pcro\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus; cargo xtask setup installs it)");
        let p = Prometheus {
            child,
            port,
            dir: dir.to_owned(),
        };
        let t0 = Instant::now();
        while !matches!(get(port, "/-/ready"), Ok((200, _))) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each result's labels and value.
    fn query(&self, q: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", url_encode(q)))
            .expect("query prometheus");
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).expect("prometheus answers JSON");
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|r| {
                let labels = r["metric"].as_object().cloned().unwrap_or_default();
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The last value scraped of every series of `m` (stale markers, written
    /// once the observer is gone, are not samples), by its labels.
    fn last(&self, m: &Metric) -> Vec<(Vec<String>, u64)> {
        let mut out: Vec<(Vec<String>, u64)> = self
            .query(&format!("last_over_time({}[10m])", m.series()))
            .into_iter()
            .map(|(labels, v)| {
                let key = m
                    .labels
                    .iter()
                    .map(|l| {
                        labels
                            .get(*l)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    })
                    .collect();
                assert!(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53), "{v}");
                (key, v as u64)
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sorted(mut v: Vec<(Vec<String>, u64)>) -> Vec<(Vec<String>, u64)> {
    v.sort();
    v
}

fn labelled<'a>(it: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<(Vec<String>, u64)> {
    sorted(
        it.into_iter()
            .map(|(k, v)| (vec![k.to_owned()], v))
            .collect(),
    )
}

#[test]
#[ignore = "needs root: BPF, loop mounts; run by cargo xtask test"]
fn prometheus_scrapes_exactly_the_summary() {
    assert!(is_root(), "needs root (BPF, loop mounts)");
    let m = LoopMount::new(FsType::Xfs, 512).expect("xfs loop mount");
    let file = m.path().join("racer.dat");
    let out = m.image().with_file_name("metrics.jsonl");
    let target = free_port();
    let prom = Prometheus::start(
        &std::env::temp_dir().join(format!("pcro-prometheus-{}", std::process::id())),
        target,
    );

    // Prometheus hands new targets to its scrapers at most every 5 s: wait
    // for its first (failed) scrape, so that the run itself is scraped.
    let t0 = Instant::now();
    while prom.query("up").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "prometheus never scraped: {}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The observer keeps serving its final counts for 3 scrape intervals
    // after the summary, so that a scrape lands after the drain.
    let racer = racer_bin();
    let observer = ObserverProcess::spawn(
        &observer_bin(),
        [
            "run",
            "--metrics",
            &format!("127.0.0.1:{target}"),
            "--metrics-linger",
            "3",
            "--json",
            "-o",
            out.to_str().unwrap(),
            "--scope",
            "cmd",
            "--",
            racer.to_str().unwrap(),
            "--file",
            file.to_str().unwrap(),
            "--duration",
            "4",
        ],
    )
    .expect("start the observer");
    // /healthz: 200 once attached (every core probe, none silent).
    let t0 = Instant::now();
    let health = loop {
        match get(target, "/healthz") {
            Ok((200, body)) => break body,
            other => assert!(
                t0.elapsed() < Duration::from_secs(30),
                "/healthz never 200: {other:?}\n{}",
                observer.stderr_so_far()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(health.starts_with("ok: "), "{health}");
    let exit = observer.wait(TIMEOUT).expect("the run ends");
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&format!(
            "observer: metrics at http://127.0.0.1:{target}/metrics"
        )),
        "{}",
        exit.stderr
    );
    let stream = Stream::read(&out).expect("the observer's output");
    let s = &stream.summary;
    assert!(s.alerts > 0 && s.windows > 0, "the racer raced: {s:?}");

    // A scrape saw the final values (the gauge is 1 only after the summary).
    let t0 = Instant::now();
    while prom.last(&metrics::RUN_FINISHED) != [(vec![], 1)] {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no scrape after the summary: {:?}\n{}",
            prom.query("up"),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Live, not only at exit: the scrapes during the racer's 4 s saw the
    // counts grow.
    let live = prom.query(&format!("max(changes({}[10m]))", metrics::EVENTS.series()));
    assert!(
        live.len() == 1 && live[0].1 >= 2.0,
        "the events counts changed only {live:?} times while scraped; up {:?}",
        prom.query("up[10m]"),
    );

    assert_eq!(prom.last(&metrics::EVENTS), labelled(s.events.iter()));
    assert_eq!(
        prom.last(&metrics::EVENTS_LOST),
        labelled(metrics::lost_stages(&s.lost))
    );
    assert_eq!(
        prom.last(&metrics::WINDOWS),
        labelled(s.windows_by_op.iter())
    );
    let alerts: Vec<(Vec<String>, u64)> = metrics::alert_series(s).collect();
    assert_eq!(prom.last(&metrics::ALERTS), sorted(alerts));
    let by_kind: u64 = s
        .alerts_by_kind
        .values()
        .map(|b| b.info + b.warning + b.critical)
        .sum();
    assert_eq!(by_kind, s.alerts, "alerts_by_kind adds up to alerts");
    assert_eq!(
        prom.last(&metrics::PTES_IN_WINDOW),
        labelled(metrics::pte_outcomes(&s.classes.a))
    );
    assert_eq!(
        prom.last(&metrics::INSTALLS_PAST_EOF),
        labelled(metrics::eof_outcomes(&s.classes.c))
    );
    assert_eq!(
        prom.last(&metrics::KERNEL_REPORTS),
        [(vec![], s.kernel_reports)]
    );
    let probes: Vec<(Vec<String>, u64)> = stream
        .startup
        .probes
        .iter()
        .map(|p| {
            let method = p.method.clone().unwrap_or_else(|| "none".into());
            (vec![p.function.clone(), method], 1)
        })
        .collect();
    assert_eq!(prom.last(&metrics::PROBE), sorted(probes));
    assert_eq!(
        prom.last(&metrics::KERNEL),
        [(vec![stream.startup.kernel.clone()], 1)]
    );
    assert_eq!(
        prom.last(&metrics::PROBES_SILENT),
        [(vec![], s.health.silent.len() as u64)]
    );
    m.unmount().expect("unmount");
}

/// Bad addresses and ports in use are one line each, before anything loads.
#[test]
#[ignore = "needs root; run by cargo xtask test"]
fn bad_metrics_addresses_are_one_line() {
    assert!(is_root(), "needs root");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (arg, says) in [
        (
            "nonsense:x",
            "bad --metrics nonsense:x: expected [ADDR:]PORT".to_owned(),
        ),
        (
            &port.to_string() as &str,
            format!("cannot serve --metrics on 127.0.0.1:{port}: "),
        ),
    ] {
        let exit = ObserverProcess::spawn(&observer_bin(), ["--metrics", arg, "--duration", "1"])
            .expect("start the observer")
            .wait(TIMEOUT)
            .expect("it ends");
        assert_eq!(exit.code(), Some(1), "{}", exit.stderr);
        assert_eq!(exit.stderr.lines().count(), 1, "{}", exit.stderr);
        assert!(
            exit.stderr.starts_with(&format!("observer: error: {says}")),
            "{}",
            exit.stderr
        );
    }
}
