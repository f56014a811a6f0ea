//! Disk images and the qemu run itself.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::util::{display, output, say};

const MIB: u64 = 1 << 20;

pub struct Disks {
    pub xfs: PathBuf,
    pub ext4: PathBuf,
    pub results: PathBuf,
}

/// Fresh sparse images every run: a filesystem dirtied by a previous run
/// (or a crashed guest) must not influence the next one.
pub fn make_disks(dir: &Path) -> Result<Disks> {
    let disks = Disks {
        xfs: dir.join("xfs.img"),
        ext4: dir.join("ext4.img"),
        results: dir.join("results.img"),
    };
    sparse(&disks.xfs, 512 * MIB)?;
    output(Command::new("mkfs.xfs").args(["-f", "-q"]).arg(&disks.xfs))
        .context("mkfs.xfs (apt-get install xfsprogs)")?;
    sparse(&disks.ext4, 256 * MIB)?;
    output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disks.ext4),
    )
    .context("mkfs.ext4 (apt-get install e2fsprogs)")?;
    sparse(&disks.results, 64 * MIB)?;
    say(format!(
        "disks: {} (512 MiB xfs), {} (256 MiB ext4), {} (64 MiB results)",
        disks.xfs.display(),
        disks.ext4.display(),
        disks.results.display()
    ));
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
}

pub enum Outcome {
    Exited,
    TimedOut,
}

/// Boots the guest and waits for it to power off, copying the serial
/// console to `console_log` and echoing the guest's progress lines.
pub fn boot(b: &Boot) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
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
    // vda, vdb, vdc in this order: init.sh relies on it.
    for disk in [&b.disks.xfs, &b.disks.ext4, &b.disks.results] {
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
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
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
    let console = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = log.write_all(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(i) = text.find("xtask-vm: ") {
                say(format!("guest: {}", text[i + 10..].trim_end()));
            }
            line.clear();
        }
        let _ = log.flush();
    });

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
        thread::sleep(Duration::from_millis(100));
    };
    let _ = console.join();
    let stderr = errors.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        say(format!("qemu stderr:\n{}", stderr.trim_end()));
    }
    Ok(outcome)
}
