//! `observer run -- CMD`: the command under watch and the observer's exit
//! code, which follows timeout(1)'s convention so that a CI job can gate on
//! it: CMD's own status passes through, except that a verdict reaching
//! `--fail-on` wins, because a test suite often fails for other reasons and
//! a critical race must not hide behind that.

use std::{
    ffi::{OsStr, OsString},
    os::{
        fd::RawFd,
        unix::{ffi::OsStrExt, fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::ExitStatus,
};

use crate::{correlator::Severity, scope::CommandCgroup};

/// An alert reached `--fail-on`.
pub const EXIT_FAIL_ON: u8 = 112;
/// The observer itself failed (it could not load, attach or read).
pub const EXIT_OBSERVER: u8 = 125;
/// CMD was found but could not be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// CMD was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// Why CMD cannot start, with the exit code that says so.
#[derive(Debug, PartialEq, Eq)]
pub struct CannotRun {
    pub code: u8,
    pub reason: String,
}

/// Finds CMD as execvp(3) would, before anything is loaded, so that a typo
/// costs no attach.
pub fn resolve(program: &OsStr) -> Result<PathBuf, CannotRun> {
    let name = Path::new(program);
    let candidates: Vec<PathBuf> = if program.as_bytes().contains(&b'/') {
        vec![name.to_path_buf()]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&path).map(|d| d.join(name)).collect()
    };
    let mut found_unexecutable = None;
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(c),
            Ok(_) => {
                found_unexecutable.get_or_insert(c);
            }
            Err(_) => {}
        }
    }
    Err(match found_unexecutable {
        Some(c) => CannotRun {
            code: EXIT_NOT_EXECUTABLE,
            reason: format!("{}: not an executable file", c.display()),
        },
        None => CannotRun {
            code: EXIT_NOT_FOUND,
            reason: format!("{}: command not found", name.display()),
        },
    })
}

/// The exit code for a spawn error that resolve() did not foresee.
pub fn spawn_error(e: &std::io::Error) -> CannotRun {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    };
    CannotRun {
        code,
        reason: e.to_string(),
    }
}

/// CMD's status as a shell reports it: its exit code, or 128 + the signal
/// that killed it.
pub fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => EXIT_OBSERVER,
    }
}

/// The observer's exit code once CMD ended with `cmd_code`.
pub fn exit_code(cmd_code: u8, worst: Option<Severity>, fail_on: Option<Severity>) -> u8 {
    match (worst, fail_on) {
        (Some(w), Some(f)) if w >= f => EXIT_FAIL_ON,
        _ => cmd_code,
    }
}

/// What the child does between fork and exec: into its cgroup or its scope
/// map, and the default signal mask.
pub struct Launch<'a> {
    pub argv: &'a [OsString],
    pub program: PathBuf,
    pub cgroup: Option<&'a CommandCgroup>,
    /// The SCOPE_TASKS map, for `--scope cmd` without cgroup2.
    pub scope_map: Option<RawFd>,
}

impl Launch<'_> {
    pub fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.arg0(&self.argv[0]).args(&self.argv[1..]);
        let cgroup = self.cgroup.map(CommandCgroup::procs_fd);
        let scope_map = self.scope_map;
        // SAFETY: the closure only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = cgroup {
                    crate::scope::enter(procs)?;
                }
                if let Some(map) = scope_map {
                    add_self_to_scope(map)?;
                }
                crate::signals::unblock_in_child()
            });
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
    }
}

/// bpf(BPF_MAP_UPDATE_ELEM) of this process's pid into the scope map, with
/// the map fd the child inherited: the tree is complete before CMD can
/// fork.
fn add_self_to_scope(map: RawFd) -> std::io::Result<()> {
    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    // SAFETY: getpid and bpf take plain values and pointers to locals.
    unsafe {
        let pid: u32 = libc::getpid() as u32;
        let one: u8 = 1;
        let attr = UpdateAttr {
            map_fd: map as u32,
            _pad: 0,
            key: (&raw const pid) as u64,
            value: (&raw const one) as u64,
            flags: 0,
        };
        let rc = libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &raw const attr,
            size_of::<UpdateAttr>(),
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        assert!(resolve(OsStr::new("sh")).is_ok());
        assert_eq!(
            resolve(OsStr::new("surely-no-such-command-here"))
                .unwrap_err()
                .code,
            EXIT_NOT_FOUND
        );
        let plain = std::env::temp_dir().join(format!("run-test-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let got = resolve(plain.as_os_str()).unwrap_err().code;
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(got, EXIT_NOT_EXECUTABLE);
        assert_eq!(
            resolve(OsStr::new("./no/such/file")).unwrap_err().code,
            EXIT_NOT_FOUND
        );
    }

    #[test]
    fn a_verdict_beats_the_commands_status() {
        let (c, w) = (Some(Severity::Critical), Some(Severity::Warning));
        assert_eq!(exit_code(1, Some(Severity::Critical), c), EXIT_FAIL_ON);
        assert_eq!(exit_code(0, Some(Severity::Critical), w), EXIT_FAIL_ON);
        assert_eq!(exit_code(3, Some(Severity::Warning), c), 3);
        assert_eq!(exit_code(3, Some(Severity::Info), w), 3);
        assert_eq!(exit_code(0, None, c), 0);
        // --fail-on never
        assert_eq!(exit_code(7, Some(Severity::Critical), None), 7);
    }
}
