//! The guest's initramfs: busybox, /init, the binaries under test with their
//! shared libraries, and the kernel modules, as an uncompressed newc cpio.
//!
//! The archive is written directly rather than through cpio(1) so that
//! /dev/console can be a device node and every file is owned by root,
//! without staging a directory as root.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufWriter, Write},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::modules::Module;
use crate::util::{raw_output, say};

const BUSYBOX: &str = "/bin/busybox";

pub struct Contents<'a> {
    pub release: &'a str,
    pub modules: &'a [Module],
    pub observer: &'a Path,
    pub extra_bins: &'a [std::path::PathBuf],
    pub observer_args: &'a str,
    /// `FS:/dev/vdX ...` (see `qemu::Disks::guest_devices`).
    pub devices: &'a str,
    /// Also mount a tmpfs on /mnt/tmpfs and a huge=always one on /mnt/tmpfs-huge.
    pub tmpfs: bool,
    pub scenario: &'a Scenario<'a>,
}

/// One racer run under its own observer, in the guest.
#[derive(Clone, Debug)]
pub struct Step {
    /// Prefix of its result files (`NAME.racer.json`, `NAME.alerts.json`,
    /// ...): letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Filesystem (mounted on /mnt/FS) whose racer.dat it races on.
    pub fs: String,
    pub seconds: f64,
    /// More racer arguments, split by the guest shell.
    pub racer_args: String,
}

impl Step {
    fn line(&self) -> Result<String> {
        let word = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !word(&self.name) || !word(&self.fs) {
            bail!("bad step name {:?} or filesystem {:?}", self.name, self.fs);
        }
        if self.racer_args.contains(['\n', '\r']) {
            bail!("step {}: racer arguments span lines", self.name);
        }
        Ok(format!(
            "{} {} {} {}\n",
            self.name, self.fs, self.seconds, self.racer_args
        ))
    }
}

/// What /init does once the disks are mounted.
pub enum Scenario<'a> {
    /// Each step in turn: the racer (if any; else an idle wait) under the
    /// observer. With `trim`, only the observer's startup record, summary
    /// and alert counts by kind are kept, not every alert.
    Steps {
        racer: Option<&'a Path>,
        steps: &'a [Step],
        trim: bool,
        /// Each step as `observer run -- CMD`, where CMD runs the racer and
        /// then exits with this status: the exit-code contract, in a guest.
        run_exit: Option<u8>,
    },
    /// The guest side of `cargo xtask bench --kernel`: faultbench bare and
    /// under the observer, alternating, on the XFS disk.
    Bench {
        faultbench: &'a Path,
        rounds: u32,
        pages: u64,
        fault_rounds: u64,
        /// When not 0, fewer fault rounds if the two warm-up runs (bare,
        /// without and with punching) take longer than this many ms.
        budget_ms: u64,
    },
}

pub fn build(c: &Contents, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "results",
        "mnt",
        "etc/xtask",
        "root",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before anything can
    // mount devtmpfs; without the node init runs with no output at all.
    cpio.char_dev("dev/console", 0o600, 5, 1);

    add_binary(&mut cpio, Path::new(BUSYBOX), BUSYBOX)
        .context("adding busybox (apt-get install busybox-static)")?;
    add_binary(&mut cpio, c.observer, "/bin/observer").context("adding the observer")?;
    match *c.scenario {
        Scenario::Steps {
            racer: Some(racer), ..
        } => add_binary(&mut cpio, racer, "/bin/racer").context("adding the racer")?,
        Scenario::Steps { racer: None, .. } => {}
        Scenario::Bench { faultbench, .. } => {
            add_binary(&mut cpio, faultbench, "/bin/faultbench").context("adding faultbench")?
        }
    }
    for bin in c.extra_bins {
        let name = bin
            .file_name()
            .with_context(|| format!("{} has no file name", bin.display()))?
            .to_string_lossy();
        add_binary(&mut cpio, bin, &format!("/bin/{name}"))?;
    }

    let mut names = Vec::new();
    for m in c.modules {
        cpio.file(
            &format!("lib/modules/{}/{}.ko", c.release, m.name),
            0o644,
            m.data.clone(),
        );
        names.push(m.name.as_str());
    }

    let init = init_script(c, &names);
    cpio.file("init", 0o755, init.into_bytes());
    let mut steps = String::new();
    if let Scenario::Steps { steps: list, .. } = c.scenario {
        for step in *list {
            steps.push_str(&step.line()?);
        }
    }
    cpio.file("etc/xtask/steps", 0o644, steps.into_bytes());
    // The observer's command line lives in its own script so that it can be
    // exec'd in the foreground with a known pid (see init.sh). Its first
    // argument is the prefix of its output files, the rest more flags.
    let observer_sh = format!(
        "#!/bin/sh\nr=$1\nshift\necho $$ >/tmp/observer.pid\n\
         exec /bin/observer --json --output \"$r.alerts.json\" {} \"$@\" 2>\"$r.observer.log\" </dev/null\n",
        c.observer_args
    );
    cpio.file("etc/xtask/observer.sh", 0o755, observer_sh.into_bytes());

    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::new(file);
    let size = cpio.write(&mut w)?;
    w.flush()?;
    say(format!(
        "initramfs: {} ({} MiB, {} modules)",
        out.display(),
        size >> 20,
        c.modules.len()
    ));
    Ok(())
}

/// /init: init.sh with its placeholders filled in.
fn init_script(c: &Contents, modules: &[&str]) -> String {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    // Step values in bench mode and the reverse are never read.
    let mut vars: Vec<(&str, String)> = vec![
        ("MODULES", modules.join(" ")),
        ("DEVICES", c.devices.to_string()),
        ("TMPFS", flag(c.tmpfs)),
    ];
    match *c.scenario {
        Scenario::Steps { trim, run_exit, .. } => vars.extend([
            ("MODE", "steps".into()),
            ("TRIM", flag(trim)),
            (
                "RUN_EXIT",
                run_exit.map(|n| n.to_string()).unwrap_or_default(),
            ),
            ("BENCH_ROUNDS", "0".into()),
            ("BENCH_PAGES", "0".into()),
            ("BENCH_FAULT_ROUNDS", "0".into()),
            ("BENCH_BUDGET_MS", "0".into()),
        ]),
        Scenario::Bench {
            rounds,
            pages,
            fault_rounds,
            budget_ms,
            ..
        } => vars.extend([
            ("MODE", "bench".into()),
            ("TRIM", "0".into()),
            ("RUN_EXIT", String::new()),
            ("BENCH_ROUNDS", rounds.to_string()),
            ("BENCH_PAGES", pages.to_string()),
            ("BENCH_FAULT_ROUNDS", fault_rounds.to_string()),
            ("BENCH_BUDGET_MS", budget_ms.to_string()),
        ]),
    }
    vars.iter()
        .fold(include_str!("init.sh").to_owned(), |init, (name, value)| {
            init.replace(&format!("@{name}@"), value)
        })
}

/// Copies a host executable and, as ldd lists them, its shared libraries and
/// dynamic loader to the same absolute paths in the guest.
fn add_binary(cpio: &mut Cpio, host: &Path, guest: &str) -> Result<()> {
    let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
    cpio.file(guest.trim_start_matches('/'), 0o755, data);
    for lib in shared_libraries(host)? {
        let data = fs::read(&lib).with_context(|| format!("reading {lib}"))?;
        cpio.file(lib.trim_start_matches('/'), 0o755, data);
    }
    Ok(())
}

fn shared_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = raw_output(Command::new("ldd").arg(bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Static binaries and scripts make ldd fail; they need nothing.
    if !out.status.success() || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {}", bin.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    CharDev { mode: u32, major: u32, minor: u32 },
}

#[derive(Default)]
struct Cpio {
    /// Sorted by path, so every directory precedes its contents as the
    /// kernel's unpacker requires.
    entries: BTreeMap<String, Entry>,
}

impl Cpio {
    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(Entry::Dir);
            end += 1;
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::Dir);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Entry::File { mode, data });
    }

    fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Entry::CharDev { mode, major, minor });
    }

    fn write(&self, w: &mut impl Write) -> Result<u64> {
        let mut offset = 0u64;
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (libc::S_IFDIR | 0o755, &[], (0, 0)),
                Entry::File { mode, data } => (libc::S_IFREG | mode, data, (0, 0)),
                Entry::CharDev { mode, major, minor } => {
                    (libc::S_IFCHR | mode, &[], (*major, *minor))
                }
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            offset += header(w, path, ino, mode, nlink, data.len(), rdev)?;
            w.write_all(data)?;
            offset += data.len() as u64;
            offset += pad(w, offset)?;
        }
        offset += header(w, "TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
        Ok(offset)
    }
}

/// Writes a newc header plus name, padded to 4 bytes; returns bytes written.
fn header(
    w: &mut impl Write,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    (rmajor, rminor): (u32, u32),
) -> Result<u64> {
    let size = u32::try_from(size).context("file too large for newc cpio")?;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rmajor,
        rminor,
        name.len() as u32 + 1,
        0,
    ];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let written = (h.len() + name.len() + 1) as u64;
    Ok(written + pad(w, written)?)
}

fn pad(w: &mut impl Write, offset: u64) -> Result<u64> {
    let n = (4 - offset % 4) % 4;
    w.write_all(&[0; 3][..n as usize])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder filled, and the result parses as a shell script.
    #[test]
    fn init_script_is_complete() {
        let steps = [Step {
            name: "xfs.punch".into(),
            fs: "xfs".into(),
            seconds: 1.5,
            racer_args: "--op punch --readers 2".into(),
        }];
        for scenario in [
            Scenario::Steps {
                racer: None,
                steps: &steps,
                trim: true,
                run_exit: None,
            },
            Scenario::Bench {
                faultbench: Path::new("/bin/true"),
                rounds: 5,
                pages: 4096,
                fault_rounds: 300,
                budget_ms: 3000,
            },
        ] {
            let contents = Contents {
                release: "6.12.0",
                modules: &[],
                observer: Path::new("/bin/true"),
                extra_bins: &[],
                observer_args: "",
                devices: "xfs:/dev/vdb ext4:/dev/vdc",
                tmpfs: true,
                scenario: &scenario,
            };
            let init = init_script(&contents, &["xfs", "virtio_blk"]);
            for (i, _) in init.match_indices('@') {
                let rest = &init.as_bytes()[i + 1..];
                let n = rest
                    .iter()
                    .take_while(|&&b| b.is_ascii_uppercase() || b == b'_')
                    .count();
                assert!(
                    n == 0 || rest.get(n) != Some(&b'@'),
                    "placeholder {} left unfilled",
                    &init[i..i + n + 2]
                );
            }
            let mode = match scenario {
                Scenario::Steps { .. } => "MODE=steps\n",
                Scenario::Bench { .. } => "MODE=bench\n",
            };
            assert!(init.contains(mode));
            assert!(init.contains("DEVICES=\"xfs:/dev/vdb ext4:/dev/vdc\"\n"));
            let Ok(mut child) = Command::new("sh")
                .arg("-n")
                .stdin(std::process::Stdio::piped())
                .spawn()
            else {
                continue; // no sh: the placeholder check above still ran
            };
            child
                .stdin
                .take()
                .unwrap()
                .write_all(init.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "sh -n rejects /init");
        }
    }

    #[test]
    fn step_lines() {
        let mut step = Step {
            name: "ext4.race1".into(),
            fs: "ext4".into(),
            seconds: 6.0,
            racer_args: "--op punch --readers 2".into(),
        };
        assert_eq!(
            step.line().unwrap(),
            "ext4.race1 ext4 6 --op punch --readers 2\n"
        );
        step.racer_args = "a\nb".into();
        assert!(step.line().is_err());
        step.racer_args.clear();
        step.name = "a b".into();
        assert!(step.line().is_err());
    }

    #[test]
    fn cpio_lists_parents_first_and_cpio_reads_it() {
        let mut c = Cpio::default();
        c.file("lib/modules/x/a.ko", 0o644, b"abc".to_vec());
        c.char_dev("dev/console", 0o600, 5, 1);
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        let mut buf = Vec::new();
        let n = c.write(&mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        let names: Vec<&String> = c.entries.keys().collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko"
            ]
        );
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return; // cpio(1) not installed; the layout check above still ran
        };
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 7);
    }
}
