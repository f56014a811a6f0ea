//! Recordings: what a live run fed its pipeline, in order, so that `observer
//! replay` feeds the same pipeline the same things and reproduces the live
//! alerts and summary exactly. A recording is a header (how the run was
//! wired) and framed entries: every raw ring-buffer record byte for byte,
//! every clock tick the live agent applied (it decides which late records
//! are late), and at the end the kernel's counters. A recording cut short
//! (a killed agent, a full disk) replays every whole entry and says how
//! many bytes were torn.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::{Context, Result, bail};
use observer_abi as abi;
use serde::{Deserialize, Serialize};

use crate::source::KernelCounters;

const MAGIC: &[u8; 8] = b"PCROBS\0\x03";
const HEADER: usize = 32;
const TAG_RECORD: u8 = b'R';
const TAG_TICK: u8 = b'T';
const TAG_END: u8 = b'E';
const TAG_STARTUP: u8 = b'S';
const TAG_KMSG: u8 = b'K';

/// How the recorded run was wired: the correlator must be configured alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    pub syscall_windows: bool,
    pub folio_deletes: bool,
    pub pte_installs: bool,
    /// `--no-shmem-exemption` (tests only).
    pub no_shmem_exemption: bool,
    pub reorder_horizon_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC of the recording host, so replayed
    /// alerts carry the wall-clock times the live run printed.
    pub boot_to_realtime_ns: i64,
}

/// What only the end of a live run knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trailer {
    pub counters: KernelCounters,
    /// The programs that were attached (names, as in the probe table).
    pub attached: Vec<String>,
    pub duration_s: f64,
}

/// One thing the live pipeline was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A raw ring-buffer record.
    Record(Vec<u8>),
    /// The agent vouched that CLOCK_MONOTONIC reached this.
    Tick(u64),
    /// A kernel-log record, and the event time it was given.
    Kmsg(String, u64),
}

pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    pub fn create(path: &Path, wiring: Wiring) -> Result<Recorder> {
        let file =
            File::create(path).with_context(|| format!("cannot write to {}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&(size_of::<abi::Event>() as u32).to_le_bytes());
        header[12] = wiring.syscall_windows as u8
            | (wiring.folio_deletes as u8) << 1
            | (wiring.pte_installs as u8) << 2
            | (wiring.no_shmem_exemption as u8) << 3;
        header[16..24].copy_from_slice(&wiring.reorder_horizon_ns.to_le_bytes());
        header[24..32].copy_from_slice(&wiring.boot_to_realtime_ns.to_le_bytes());
        out.write_all(&header)?;
        Ok(Recorder { out })
    }

    fn entry(&mut self, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&[tag])?;
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(payload)
    }

    /// The live run's startup record, so that replay prints it too.
    pub fn startup(&mut self, startup: &observer_report::Startup) -> std::io::Result<()> {
        self.entry(TAG_STARTUP, startup.to_json().as_bytes())
    }

    pub fn record(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.entry(TAG_RECORD, raw)
    }

    pub fn tick(&mut self, now: u64) -> std::io::Result<()> {
        self.entry(TAG_TICK, &now.to_le_bytes())
    }

    pub fn kmsg(&mut self, raw: &str, ts: u64) -> std::io::Result<()> {
        let mut payload = ts.to_le_bytes().to_vec();
        payload.extend_from_slice(raw.as_bytes());
        self.entry(TAG_KMSG, &payload)
    }

    pub fn finish(mut self, trailer: &Trailer) -> Result<()> {
        let json = serde_json::to_vec(trailer)?;
        self.entry(TAG_END, &json)?;
        self.out.flush()?;
        Ok(())
    }
}

/// A recording as read back.
#[derive(Debug)]
pub struct Recording {
    pub wiring: Wiring,
    pub entries: Vec<Entry>,
    pub startup: Option<observer_report::Startup>,
    /// None when the recording was cut short.
    pub trailer: Option<Trailer>,
    /// Bytes after the last whole entry.
    pub torn_bytes: usize,
}

pub fn read(path: &Path) -> Result<Recording> {
    let mut input = BufReader::new(
        File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{}", path.display()))
}

pub fn parse(bytes: &[u8]) -> Result<Recording> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        bail!("not an observer recording (bad magic)");
    }
    let size = u32::from_le_bytes(bytes[8..12].try_into()?) as usize;
    if size != size_of::<abi::Event>() {
        bail!(
            "holds {size}-byte records; this observer reads {}",
            size_of::<abi::Event>()
        );
    }
    let flags = bytes[12];
    let wiring = Wiring {
        syscall_windows: flags & 1 != 0,
        folio_deletes: flags & 2 != 0,
        pte_installs: flags & 4 != 0,
        no_shmem_exemption: flags & 8 != 0,
        reorder_horizon_ns: u64::from_le_bytes(bytes[16..24].try_into()?),
        boot_to_realtime_ns: i64::from_le_bytes(bytes[24..32].try_into()?),
    };
    let mut rest = &bytes[HEADER..];
    let mut entries = Vec::new();
    let mut trailer = None;
    let mut startup = None;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_le_bytes(rest[1..5].try_into()?) as usize;
        let Some(payload) = rest.get(5..5 + len) else {
            break;
        };
        match tag {
            TAG_RECORD => entries.push(Entry::Record(payload.to_vec())),
            TAG_TICK if len == 8 => {
                entries.push(Entry::Tick(u64::from_le_bytes(payload.try_into()?)))
            }
            TAG_KMSG if len >= 8 => entries.push(Entry::Kmsg(
                String::from_utf8_lossy(&payload[8..]).into_owned(),
                u64::from_le_bytes(payload[..8].try_into()?),
            )),
            TAG_STARTUP => match observer_report::Record::parse(std::str::from_utf8(payload)?)? {
                observer_report::Record::Startup(s) => startup = Some(s),
                _ => bail!("a startup entry that is no startup record"),
            },
            TAG_END => {
                trailer = Some(serde_json::from_slice(payload).context("a bad trailer")?);
            }
            _ => bail!("an unknown entry (tag {tag:#x}, {len} bytes)"),
        }
        rest = &rest[5 + len..];
        if trailer.is_some() {
            break;
        }
    }
    Ok(Recording {
        wiring,
        entries,
        startup,
        trailer,
        torn_bytes: rest.len(),
    })
}

/// Encodes a record as the kernel would, for synthetic traces.
pub fn encode(ev: &abi::Event) -> Vec<u8> {
    let p = ev as *const abi::Event as *const u8;
    unsafe { std::slice::from_raw_parts(p, size_of::<abi::Event>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(path: &Path) -> (Wiring, Trailer, Vec<u8>) {
        let wiring = Wiring {
            syscall_windows: true,
            folio_deletes: false,
            pte_installs: true,
            no_shmem_exemption: true,
            reorder_horizon_ns: 7_000_000,
            boot_to_realtime_ns: -42,
        };
        let mut r = Recorder::create(path, wiring).unwrap();
        let ev = abi::Event {
            ts: 7,
            ino: 131,
            kind: abi::Kind::MapPages as u8,
            fidelity: abi::probes::Method::Fentry.code(),
            ..Default::default()
        };
        let raw = encode(&ev);
        r.record(&raw).unwrap();
        r.tick(99).unwrap();
        let mut trailer = Trailer {
            attached: vec!["mm_filemap_map_pages".into()],
            duration_s: 1.5,
            ..Trailer::default()
        };
        trailer.counters.emitted[5] = 1;
        r.finish(&trailer).unwrap();
        (wiring, trailer, raw)
    }

    #[test]
    fn round_trips_records_ticks_wiring_and_counters() {
        let dir = std::env::temp_dir().join(format!("trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcro");
        let (wiring, trailer, raw) = sample(&path);
        let rec = read(&path).unwrap();
        assert_eq!(rec.wiring, wiring);
        assert_eq!(
            rec.entries,
            vec![Entry::Record(raw.clone()), Entry::Tick(99)]
        );
        assert_eq!(rec.trailer.as_ref(), Some(&trailer));
        assert_eq!(rec.torn_bytes, 0);

        // Cut anywhere: every whole entry before the cut, and the torn rest.
        let bytes = std::fs::read(&path).unwrap();
        let cut = HEADER + 5 + raw.len() + 3;
        let rec = parse(&bytes[..cut]).unwrap();
        assert_eq!(rec.entries, vec![Entry::Record(raw)]);
        assert!(rec.trailer.is_none());
        assert_eq!(rec.torn_bytes, 3);

        std::fs::write(&path, b"nonsense-nonsense").unwrap();
        assert!(format!("{:#}", read(&path).unwrap_err()).contains("not an observer recording"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
