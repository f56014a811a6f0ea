use std::process::ExitCode;

use clap::Parser as _;
use observer::{
    agent,
    cli::{Cli, Command},
    run,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's message is several lines; the contract is one.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("observer: error: {}", first.trim_start_matches("error: "));
            // `observer run`'s own failures are 125, as timeout(1)'s are.
            let running = std::env::args().skip(1).any(|a| a == "run");
            return ExitCode::from(if running { run::EXIT_OBSERVER } else { 1 });
        }
    };
    let running = matches!(cli.command, Some(Command::Run(_)));
    match agent::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line for the reason; a verifier log, if any, follows it.
            eprintln!("observer: error: {e:#}");
            ExitCode::from(if running { run::EXIT_OBSERVER } else { 1 })
        }
    }
}
