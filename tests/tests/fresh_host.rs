//! A fresh host mounts neither tracefs nor debugfs. The observer must start
//! there anyway, by mounting tracefs in a mount namespace of its own, and
//! leave the host's mount table exactly as it was, even when killed.
//!
//! The test makes such a host out of this one: the observer runs in a private
//! mount namespace (`unshare -m`) where tracefs and debugfs are unmounted,
//! and the mount table this test sees stands for the host's. Needs root;
//! `cargo xtask test` runs it.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use observer_tests::core_functions;
use observer_tests::serial;
use observer_tests::{
    FsType, LoopMount, ObserverProcess, RacerReport, Stream, is_root, observer_bin, racer_bin,
};

const TIMEOUT: Duration = Duration::from_secs(120);

// The tests compare mount tables: one at a time (`serial`), or the
// other's loop mount shows as a change.

/// (mount point, filesystem type) of every mount this process sees.
fn mount_table() -> BTreeSet<(String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            Some((point.to_owned(), fstype.to_owned()))
        })
        .collect()
}

/// The observer with `args`, in a namespace of its own without tracefs or
/// debugfs: `unshare` execs a shell that unmounts them and execs the
/// observer, so the pid is the observer's.
fn observer_without_tracefs(args: &[&str]) -> ObserverProcess {
    let script = "for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do \
                  umount -l \"$m\" 2>/dev/null; done; \
                  if grep -qE ' - (tracefs|debugfs) ' /proc/self/mountinfo; then echo still mounted >&2; exit 9; fi; \
                  exec \"$@\"";
    let observer = observer_bin();
    let mut argv = vec!["-m", "--propagation", "private", "sh", "-c", script, "sh"];
    argv.push(observer.to_str().unwrap());
    argv.extend_from_slice(args);
    let mut p =
        ObserverProcess::spawn(std::path::Path::new("unshare"), argv).expect("start unshare");
    p.wait_ready(TIMEOUT).expect("the observer is ready");
    p
}

#[test]
#[ignore = "needs root: mount namespaces, loop mounts and BPF; run by cargo xtask test"]
fn starts_without_tracefs_and_leaves_the_hosts_mounts_alone() {
    let _serial = serial();
    assert!(is_root(), "needs root");
    let m = LoopMount::new(FsType::Xfs, 512).expect("xfs loop mount");
    let file = m.path().join("racer.dat");
    let out = m.image().with_file_name("out.jsonl");
    let before = mount_table();

    let p = observer_without_tracefs(&["--json", "-o", out.to_str().unwrap()]);
    let stderr = p.stderr_so_far();
    assert!(
        stderr.contains(
            "observer: tracefs was not mounted: mounted it at /sys/kernel/tracing in a mount namespace of the observer's own"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("does not exist on this kernel"),
        "{stderr}"
    );
    assert_eq!(
        mount_table(),
        before,
        "the host's mounts changed while the observer ran"
    );

    let racer = Command::new(racer_bin())
        .arg("--file")
        .arg(&file)
        .args(["--duration", "2"])
        .output()
        .expect("run racer");
    assert!(racer.status.success(), "racer failed");
    let r = RacerReport::parse(&String::from_utf8_lossy(&racer.stdout)).expect("racer report");
    p.signal(libc::SIGINT).expect("stop the observer");
    let exit = p.wait(TIMEOUT).expect("the observer ends");
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert_eq!(mount_table(), before, "the host's mounts changed");

    let s = Stream::read(&out).expect("observer output");
    for f in core_functions() {
        assert_eq!(s.method_of(f), Some("tracepoint"), "{f}: {:?}", s.startup);
    }
    let dev = format!("{}:{}", r.dev_major, r.dev_minor);
    let ours = s.alerts_on(&dev, r.ino);
    assert!(
        !ours.is_empty(),
        "no alert on the racer's file: {:?}",
        s.summary
    );
    assert!(ours.iter().all(|a| a["window"]["op"] == "punch_hole"));

    // Killed without a chance to clean up: its namespace dies with it.
    let p = observer_without_tracefs(&[]);
    p.signal(libc::SIGKILL).expect("kill -9");
    let exit = p.wait(TIMEOUT).expect("the observer dies");
    assert_eq!(exit.code(), None);
    assert_eq!(
        mount_table(),
        before,
        "the host's mounts changed after SIGKILL"
    );
}

/// A CI root or a container: the observer runs chrooted into a directory
/// that is no mount point (so `/` cannot be made a slave mount as a whole),
/// without tracefs. It must attach, and once back from its own namespace
/// still see the chroot's files: its output lands inside the root, not in
/// the host's directory of the same name.
#[test]
#[ignore = "needs root: mount namespaces, chroot, loop mounts and BPF; run by cargo xtask test"]
fn starts_in_a_chroot_without_tracefs_and_writes_inside_it() {
    let _serial = serial();
    assert!(is_root(), "needs root");
    let m = LoopMount::new(FsType::Xfs, 512).expect("xfs loop mount");
    let root = m.image().with_file_name("root");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy(observer_bin(), root.join("observer")).expect("copy the observer");
    let name = format!("pcro-chroot-{}.jsonl", std::process::id());
    let inside = root.join("tmp").join(&name);
    let outside = std::path::Path::new("/tmp").join(&name);
    let _ = std::fs::remove_file(&outside);
    let before = mount_table();
    // Everything mounted here lives in unshare's private namespace.
    let script = "R=$1; shift; \
                  mkdir -p $R/proc $R/sys $R/dev $R/usr; \
                  mount -t proc proc $R/proc && mount --rbind /sys $R/sys && mount --make-rslave $R/sys && \
                  mount --rbind /dev $R/dev && mount --make-rslave $R/dev && mount --bind /usr $R/usr || exit 9; \
                  for d in lib lib64 bin sbin; do [ -e $R/$d ] || ln -s usr/$d $R/$d; done; \
                  for t in $R/sys/kernel/debug/tracing $R/sys/kernel/tracing $R/sys/kernel/debug; do umount -l $t 2>/dev/null; done; \
                  if grep -qE ' - (tracefs|debugfs) ' /proc/self/mountinfo; then echo still mounted >&2; exit 9; fi; \
                  exec chroot $R /observer \"$@\"";
    let out = format!("/tmp/{name}");
    let argv = [
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        root.to_str().unwrap(),
        "--json",
        "-o",
        &out,
    ];
    let mut p =
        ObserverProcess::spawn(std::path::Path::new("unshare"), argv).expect("start unshare");
    p.wait_ready(TIMEOUT)
        .expect("the observer is ready in the chroot");
    let racer = Command::new(racer_bin())
        .arg("--file")
        .arg(m.path().join("racer.dat"))
        .args(["--duration", "2"])
        .output()
        .expect("run racer");
    assert!(racer.status.success(), "racer failed");
    let r = RacerReport::parse(&String::from_utf8_lossy(&racer.stdout)).expect("racer report");
    p.signal(libc::SIGINT).expect("stop the observer");
    let exit = p.wait(TIMEOUT).expect("the observer ends");
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert!(
        !outside.exists(),
        "the output went to the host's /tmp, outside the chroot"
    );
    let s = Stream::read(&inside).expect("the output inside the chroot");
    let dev = format!("{}:{}", r.dev_major, r.dev_minor);
    assert!(
        !s.alerts_on(&dev, r.ino).is_empty(),
        "no alert on the racer's file: {:?}",
        s.summary
    );
    assert_eq!(mount_table(), before, "the host's mounts changed");
}
