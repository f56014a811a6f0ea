//! `observer-docs DIR`: the man pages and shell completions of `observer`,
//! generated from its clap definitions (so they cannot drift from
//! `--help`), for `cargo xtask package`.
//!
//! Writes DIR/man/observer.1 (and observer-run.1, …) and
//! DIR/completions/{observer.bash,_observer,observer.fish}.

use std::{path::PathBuf, process::ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;
use observer::cli::Cli;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: observer-docs DIR");
        return ExitCode::from(2);
    };
    match write(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer-docs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &std::path::Path) -> std::io::Result<()> {
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "observer", &completions)?;
    }
    Ok(())
}
