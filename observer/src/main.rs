use std::process::ExitCode;

use clap::Parser;
use observer::{agent, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match agent::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the reason; a verifier log, if any, follows it.
            eprintln!("observer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
