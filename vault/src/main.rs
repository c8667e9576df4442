//! The `mnvault` binary: see `mnvault --help`.

use std::process::ExitCode;

use clap::Parser;
use mnvault::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    mnvault::telemetry::init();
    let cli = Cli::parse();
    let mut out = std::io::stdout();
    match cli::run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line a person can act on; causes joined with ": ".
            eprintln!("mnvault: {error:#}");
            ExitCode::FAILURE
        }
    }
}
