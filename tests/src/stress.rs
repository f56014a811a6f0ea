//! The stress-ng invocations the tests and the matrix run under the
//! observer, in one place. Measured on this project's kind of host:
//! `fallocate` punches, zero-ranges, collapses, inserts and truncates its
//! file successfully; `fpunch` (four children on one file) mostly fails its
//! collapse and insert calls with EINVAL (unaligned ranges); `mmap
//! --mmap-file` maps, faults and punches a file. None faults on a file it
//! punches at the same time: they cover naming, losses, memory and the exit
//! codes, not detection.

use std::{ffi::OsString, path::Path};

pub struct Stressor {
    pub name: &'static str,
    args: &'static [&'static str],
}

pub const FALLOCATE: Stressor = Stressor {
    name: "fallocate",
    args: &["--fallocate", "1"],
};

pub const FPUNCH: Stressor = Stressor {
    name: "fpunch",
    args: &["--fpunch", "1"],
};

pub const MMAP_FILE: Stressor = Stressor {
    name: "mmap-file",
    args: &["--mmap", "1", "--mmap-file"],
};

pub const ALL: [&Stressor; 3] = [&FALLOCATE, &FPUNCH, &MMAP_FILE];

impl Stressor {
    /// `stress-ng ARGS --temp-path DIR --timeout SECSs`: the command line,
    /// program first.
    pub fn command(&self, dir: &Path, secs: u32) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["stress-ng".into()];
        argv.extend(self.args.iter().map(OsString::from));
        argv.push("--temp-path".into());
        argv.push(dir.into());
        argv.push("--timeout".into());
        argv.push(format!("{secs}s").into());
        argv
    }
}
