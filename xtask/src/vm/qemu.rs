//! Disk images and the qemu run itself.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use observer_tests::FsType;

use crate::util::{display, output, say};

const MIB: u64 = 1 << 20;

pub struct Disks {
    /// /dev/vda: the guest writes its results here as a bare tar.
    pub results: PathBuf,
    /// `(filesystem, image)`, attached as /dev/vdb, /dev/vdc, ... in order.
    pub filesystems: Vec<(String, PathBuf)>,
}

impl Disks {
    /// `fs:/dev/vdX[:OPTIONS]` words for init.sh, in attachment order.
    pub fn guest_devices(&self) -> String {
        self.filesystems
            .iter()
            .zip(b'b'..)
            .map(|((fs, _), letter)| {
                let options = FsType::named(fs)
                    .and_then(|t| t.backing().mount_options())
                    .map(|o| format!(":{o}"))
                    .unwrap_or_default();
                format!("{fs}:/dev/vd{}{options}", letter as char)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Fresh sparse images every run: a filesystem dirtied by a previous run
/// (or a crashed guest) must not influence the next one. One image per
/// filesystem in `filesystems` that lives on a disk (fuse's holds its
/// backing ext4; tmpfs is in the guest's memory), in that order.
pub fn make_disks(dir: &Path, filesystems: &[String]) -> Result<Disks> {
    let results = dir.join("results.img");
    // Sparse: only what the guest writes takes space.
    sparse(&results, 512 * MIB)?;
    let mut disks = Disks {
        results,
        filesystems: Vec::new(),
    };
    let mut shown = vec![format!("{} (results)", disks.results.display())];
    for fs in filesystems {
        let Some((mkfs, args)) = FsType::named(fs).and_then(|t| t.backing().mkfs()) else {
            continue;
        };
        if disks.filesystems.iter().any(|(f, _)| f == fs) {
            continue;
        }
        let image = dir.join(format!("{fs}.img"));
        // 512 MiB: mkfs.xfs wants 300 MB, and mke2fs picks its "small"
        // profile (1 KiB blocks) below 512 MB; real ext4 has 4 KiB blocks.
        sparse(&image, 512 * MIB)?;
        // Debian 12's mkfs.xfs enables reflink (FICLONERANGE, dedupe).
        output(Command::new(mkfs).args(args).arg(&image))
            .with_context(|| format!("{mkfs} (cargo xtask setup installs it)"))?;
        shown.push(format!("{} ({fs})", image.display()));
        disks.filesystems.push((fs.clone(), image));
    }
    say(format!("disks: {}", shown.join(", ")));
    Ok(disks)
}

fn sparse(path: &Path, size: u64) -> Result<()> {
    let _ = fs::remove_file(path);
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(())
}

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub disks: &'a Disks,
    pub console_log: &'a Path,
    pub timeout: Duration,
    /// Kill qemu when the guest prints no progress line (`xtask-vm: ...`)
    /// for this long: a hung guest kernel must not hold up the whole run.
    pub stall: Option<Duration>,
    /// Called with each progress line of the guest (without `xtask-vm: `).
    pub watch: Option<&'a dyn Fn(&str)>,
}

pub enum Outcome {
    Exited,
    TimedOut,
    /// No progress line for `Boot::stall`; the last one is given.
    Stalled(String),
}

/// The qemu that boots the guests: `$XTASK_QEMU` (to compare another build,
/// e.g. bookworm's 7.2 unpacked beside the installed 10.0), else
/// qemu-system-x86_64 from PATH.
pub fn binary() -> PathBuf {
    std::env::var_os("XTASK_QEMU")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from)
}

/// The first line of `qemu --version`, e.g. `QEMU emulator version 10.0.2
/// (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`: which TCG ran the guests.
pub fn version() -> Result<String> {
    let out = output(Command::new(binary()).arg("--version"))
        .with_context(|| format!("running {} --version", binary().display()))?;
    Ok(out.lines().next().unwrap_or_default().trim().to_string())
}

/// Boots the guest and waits for it to power off, copying the serial
/// console to `console_log` and echoing the guest's progress lines.
pub fn boot(b: &Boot) -> Result<Outcome> {
    let mut cmd = Command::new(binary());
    // KVM is not usable on these hosts; TCG is slow but boots in seconds.
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-net", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initramfs)
        // panic=-1 turns a guest panic into a reboot, which -no-reboot turns
        // into a qemu exit instead of a hang until the timeout.
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"]);
    // vda is the results disk, then the filesystems in order: init.sh gets
    // the same order from Disks::guest_devices.
    let disks = std::iter::once(&b.disks.results).chain(b.disks.filesystems.iter().map(|(_, p)| p));
    for disk in disks {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    say(format!("$ {}", display(&cmd)));
    say(format!(
        "booting (timeout {}s); console in {}",
        b.timeout.as_secs(),
        b.console_log.display()
    ));

    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (cargo xtask setup installs qemu-system-x86)",
            binary().display()
        )
    })?;
    let mut log = fs::File::create(b.console_log)
        .with_context(|| format!("creating {}", b.console_log.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let errors = thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // -cpu max under TCG warns about every feature it cannot emulate.
            if !line.contains("TCG doesn't support requested feature") {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    // The guest's progress lines, for the loop below: when it last said
    // something, and what.
    let (said, heard) = mpsc::channel::<String>();
    let console = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = log.write_all(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(i) = text.find("xtask-vm: ") {
                let msg = text[i + 10..].trim_end().to_string();
                say(format!("guest: {msg}"));
                let _ = said.send(msg);
            }
            line.clear();
        }
        let _ = log.flush();
    });
    let mut last = (Instant::now(), String::from("(nothing yet)"));

    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            say(format!(
                "qemu exited ({status}) after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            break Outcome::Exited;
        }
        if started.elapsed() > b.timeout {
            say(format!(
                "qemu still running after {}s; killing it",
                b.timeout.as_secs()
            ));
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        for msg in heard.try_iter() {
            if let Some(watch) = b.watch {
                watch(&msg);
            }
            last = (Instant::now(), msg);
        }
        if let Some(stall) = b.stall
            && last.0.elapsed() > stall
        {
            say(format!(
                "the guest printed nothing for {}s (last: {}); killing qemu",
                stall.as_secs(),
                last.1
            ));
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Stalled(last.1);
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = console.join();
    let stderr = errors.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        say(format!("qemu stderr:\n{}", stderr.trim_end()));
    }
    Ok(outcome)
}
