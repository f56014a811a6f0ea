//! `--metrics [ADDR:]PORT`: the summary's counts as Prometheus metrics at
//! `/metrics` (OpenMetrics text, encoded by prometheus-client from the
//! families of `observer_report::metrics`), and `/healthz`.
//!
//! The agent publishes a snapshot of the pipeline every half second and the
//! final summary once at exit, so the last values served equal the summary.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result};
use observer_report::{
    Startup, Summary,
    metrics::{self, Family, Type},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the agent publishes a snapshot.
pub const UPDATE_EVERY: Duration = Duration::from_millis(500);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `PORT` (on 127.0.0.1) or `ADDR:PORT` (`0.0.0.0:9464`, `[::1]:9464`).
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        anyhow::anyhow!("bad --metrics {s}: expected [ADDR:]PORT, e.g. 9464 or 0.0.0.0:9464")
    })
}

/// Binds now, before anything is loaded: a port in use is one error line.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot serve --metrics on {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

struct State {
    summary: Summary,
    startup: Startup,
    finished: bool,
}

/// What `/metrics` and `/healthz` answer from; cloned into the server.
#[derive(Clone)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

impl Metrics {
    pub fn new(startup: Startup) -> Metrics {
        Metrics {
            state: Arc::new(Mutex::new(State {
                summary: Summary::default(),
                startup,
                finished: false,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live snapshot.
    pub fn update(&self, summary: Summary) {
        self.state().summary = summary;
    }

    /// The summary at exit: the values are final from now on.
    pub fn finish(&self, summary: Summary) {
        let mut s = self.state();
        s.summary = summary;
        s.finished = true;
    }

    /// The `/metrics` body.
    pub fn render(&self) -> String {
        let families = {
            let s = self.state();
            metrics::families(
                &s.summary,
                &s.startup,
                env!("CARGO_PKG_VERSION"),
                s.finished,
            )
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(families)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The `/healthz` verdict and body.
    pub fn healthz(&self) -> Result<String, String> {
        let s = self.state();
        crate::health::healthz(&s.startup.probes, &s.summary.health, s.finished)
    }

    /// Serves on `listener` until the runtime ends.
    pub fn serve(&self, listener: std::net::TcpListener) -> Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let m = me.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), m.answer(sock)).await;
                });
            }
        });
        Ok(())
    }

    async fn answer(&self, mut sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&req);
        let mut words = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, kind, body) = route(method, path, self);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(reply.as_bytes()).await?;
        if method != "HEAD" {
            sock.write_all(body.as_bytes()).await?;
        }
        sock.shutdown().await
    }
}

fn route(method: &str, path: &str, m: &Metrics) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => ("200 OK", OPENMETRICS, m.render()),
        "/healthz" => match m.healthz() {
            Ok(body) => ("200 OK", TEXT, body),
            Err(body) => ("503 Service Unavailable", TEXT, body),
        },
        "/" => (
            "200 OK",
            TEXT,
            "pagecache-race-observer: /metrics, /healthz\n".into(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "not found: /metrics, /healthz\n".into(),
        ),
    }
}

/// The families of one scrape, for the encoder.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let m = f.metric;
            let kind = match m.kind {
                Type::Counter => MetricType::Counter,
                Type::Gauge => MetricType::Gauge,
                Type::Info => MetricType::Info,
            };
            let mut enc = encoder.encode_descriptor(m.name, m.help, None, kind)?;
            for s in &f.samples {
                let labels: Vec<(String, String)> = m
                    .labels
                    .iter()
                    .map(|l| (*l).to_owned())
                    .zip(s.labels.iter().cloned())
                    .collect();
                // An empty label set writes no braces.
                match m.kind {
                    Type::Info => enc.encode_info(&labels)?,
                    Type::Counter => {
                        ConstCounter::new(s.value).encode(enc.encode_family(&labels)?)?
                    }
                    Type::Gauge => ConstGauge::new(i64::try_from(s.value).unwrap_or(i64::MAX))
                        .encode(enc.encode_family(&labels)?)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            parse_addr("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(parse_addr("[::1]:9100").unwrap().to_string(), "[::1]:9100");
        let e = parse_addr("localhost:x").unwrap_err().to_string();
        assert!(
            e.starts_with("bad --metrics localhost:x: expected [ADDR:]PORT"),
            "{e}"
        );
        assert!(parse_addr("70000").is_err());
    }

    #[test]
    fn a_port_in_use_is_one_line() {
        let first = bind(parse_addr("127.0.0.1:0").unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let e = format!("{:#}", bind(addr).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot serve --metrics on {addr}: ")),
            "{e}"
        );
        assert!(e.contains("in use"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn the_encoder_writes_every_family() {
        let mut s = Summary::default();
        s.events.add("filemap_map_pages", 12);
        s.kernel_reports = 2;
        s.alerts_by_kind
            .insert("pte_in_punch_window".into(), Default::default());
        let m = Metrics::new(Startup {
            kernel: "6.18.0".into(),
            ..Startup::default()
        });
        m.update(s.clone());
        let text = m.render();
        assert!(text.contains("# TYPE pcro_events counter\n"), "{text}");
        assert!(
            text.contains("pcro_events_total{probe=\"filemap_map_pages\"} 12\n"),
            "{text}"
        );
        assert!(text.contains("pcro_kernel_reports_total 2\n"), "{text}");
        assert!(
            text.contains(
                "pcro_alerts_total{kind=\"pte_in_punch_window\",severity=\"critical\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("pcro_kernel_info{release=\"6.18.0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pcro_run_finished 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        m.finish(s);
        assert!(m.render().contains("pcro_run_finished 1\n"));
        assert!(m.healthz().unwrap_err().contains("run ended"));
    }
}
