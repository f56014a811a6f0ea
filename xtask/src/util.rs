use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// Where the workspace lives and where cargo puts its artefacts.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Self> {
        // Fixed at compile time so that xtask works from any cwd, including
        // when an integration test runs `$XTASK_BIN vm ...` from its crate dir.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask manifest dir has no parent")?
            .to_path_buf();
        // Child cargo invocations inherit CARGO_TARGET_DIR, so the binaries
        // land wherever it points; follow it rather than assume ./target.
        let target = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    env::current_dir()?.join(dir)
                }
            }
            _ => root.join("target"),
        };
        Ok(Self { root, target })
    }

    pub fn cargo(&self) -> Command {
        // `cargo run` exports CARGO, the cargo that built us; using it keeps
        // the same toolchain for the nested builds.
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root);
        cmd
    }
}

/// A message on stderr (above the status line of a [`crate::progress::Progress`]).
pub fn say(msg: impl AsRef<str>) {
    crate::progress::print(&format!("[xtask] {}", msg.as_ref()));
}

/// A path from its flag, else from the environment variable `var` (when
/// set and not empty), else `default`.
pub fn pick(flag: Option<&Path>, var: &str, default: PathBuf) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or(default)
}

/// Empties the output directory `out` if an earlier `cargo xtask COMMAND`
/// made it (it holds `marker`) or it is empty, and marks it as made by this
/// one; refuses to touch anything else.
pub fn prepare_out(out: &Path, marker: &str, command: &str) -> Result<()> {
    if out.exists() {
        let ours = out.join(marker).exists();
        let empty = fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !ours && !empty {
            bail!(
                "--out {} is not empty and was not made by `cargo xtask {command}`; pick another directory",
                out.display()
            );
        }
        fs::remove_dir_all(out).with_context(|| format!("emptying {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fs::write(out.join(marker), format!("{}\n", std::process::id()))?;
    Ok(())
}

pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs a command with inherited stdio, echoing it first.
pub fn run(cmd: &mut Command) -> Result<()> {
    say(format!("$ {}", display(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", program(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; on failure the error
/// carries the command's stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = raw_output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

pub fn raw_output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", program(cmd)))
}

/// A fresh directory `PREFIX-PID-N` under the system's temporary directory.
#[cfg(test)]
pub fn temp_dir(prefix: &str) -> Result<PathBuf> {
    let base = env::temp_dir();
    for n in 0.. {
        let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!("ran out of temporary directory names")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure tools installed by cargo (bpf-linker) and the sbin tools
/// (mkfs.*, dpkg-deb helpers) are found by every child process, whatever
/// PATH the caller had.
pub fn fix_path() {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"));
    if let Some(bin) = cargo_bin
        && !dirs.contains(&bin)
    {
        dirs.insert(0, bin);
    }
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    if let Ok(joined) = env::join_paths(dirs) {
        if joined == current {
            return;
        }
        // SAFETY: called first thing in main, before any thread exists.
        unsafe { env::set_var("PATH", joined) };
    }
}

/// PATH with `dir` in front, for a single child.
pub fn path_with(dir: &str) -> OsString {
    let mut dirs = vec![PathBuf::from(dir)];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(dirs).unwrap_or_default()
}
