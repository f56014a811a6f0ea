use std::process::ExitCode;

use clap::Parser as _;
use observer::{agent, cli::Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's message is several lines; the contract is one.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("observer: error: {}", first.trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    match agent::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the reason; a verifier log, if any, follows it.
            eprintln!("observer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
