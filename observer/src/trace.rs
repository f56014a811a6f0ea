//! Recorded event streams: the raw ring-buffer records, byte for byte, behind
//! a small header, so `observer replay` feeds the correlator exactly what the
//! live run saw, in the same order.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use anyhow::{Context, Result, bail};
use observer_abi as abi;

use crate::{event::Event, source::decode};

const MAGIC: &[u8; 8] = b"PCROBS\0\x02";
const HEADER: usize = 24;

/// How the recorded run was wired: the correlator needs to know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    pub syscall_windows: bool,
    pub folio_deletes: bool,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC of the recording host, so replayed
    /// alerts carry the wall-clock times the live run printed.
    pub boot_to_realtime_ns: i64,
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
        header[12] = wiring.syscall_windows as u8;
        header[13] = wiring.folio_deletes as u8;
        header[16..24].copy_from_slice(&wiring.boot_to_realtime_ns.to_le_bytes());
        out.write_all(&header)?;
        Ok(Recorder { out })
    }

    pub fn record(&mut self, raw: &[u8]) -> std::io::Result<()> {
        let n = size_of::<abi::Event>();
        if raw.len() >= n {
            self.out.write_all(&raw[..n])?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads a whole recording. Records of unknown kinds are counted, not fatal.
pub fn read(path: &Path) -> Result<(Wiring, Vec<Event>, u64)> {
    let mut input = BufReader::new(
        File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut header = [0u8; HEADER];
    input
        .read_exact(&mut header)
        .with_context(|| format!("{} is not an observer recording", path.display()))?;
    if &header[..8] != MAGIC {
        bail!(
            "{} is not an observer recording (bad magic)",
            path.display()
        );
    }
    let size = u32::from_le_bytes(header[8..12].try_into()?) as usize;
    if size != size_of::<abi::Event>() {
        bail!(
            "{} holds {size}-byte records; this observer reads {}",
            path.display(),
            size_of::<abi::Event>()
        );
    }
    let wiring = Wiring {
        syscall_windows: header[12] != 0,
        folio_deletes: header[13] != 0,
        boot_to_realtime_ns: i64::from_le_bytes(header[16..24].try_into()?),
    };
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    if bytes.len() % size != 0 {
        bail!("{} ends in a torn record", path.display());
    }
    let mut events = Vec::with_capacity(bytes.len() / size);
    let mut undecodable = 0;
    for raw in bytes.chunks_exact(size) {
        match decode(raw) {
            Some(ev) => events.push(ev),
            None => undecodable += 1,
        }
    }
    Ok((wiring, events, undecodable))
}

/// Encodes a record as the kernel would, for synthetic traces.
pub fn encode(ev: &abi::Event) -> Vec<u8> {
    let p = ev as *const abi::Event as *const u8;
    unsafe { std::slice::from_raw_parts(p, size_of::<abi::Event>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_and_wiring() {
        let dir = std::env::temp_dir().join(format!("trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcro");
        let wiring = Wiring {
            syscall_windows: true,
            folio_deletes: false,
            boot_to_realtime_ns: -42,
        };
        let mut r = Recorder::create(&path, wiring).unwrap();
        let ev = abi::Event {
            ts: 7,
            ino: 131,
            kind: abi::Kind::MapPages as u8,
            fidelity: abi::FIDELITY_FENTRY,
            ..Default::default()
        };
        r.record(&encode(&ev)).unwrap();
        r.finish().unwrap();
        let (w, events, bad) = read(&path).unwrap();
        assert_eq!(w, wiring);
        assert_eq!(bad, 0);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].file.ino, 131);
        std::fs::write(&path, b"nonsense-nonsense").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("not an observer recording")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
