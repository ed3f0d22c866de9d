//! `loadtest`: drives the chat stack's gateway and reports what came back (see `--help`).

use std::process::ExitCode;

use clap::Parser;
use loadtest::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = match Args::parse().into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    config.handle_ctrl_c = true;
    match loadtest::run(config).await {
        Ok(report) => {
            print!("{}", report.table());
            if report.counts.unanswered > 0 {
                eprintln!(
                    "loadtest: {} accepted messages were never answered (lost, or slower than --drain-secs)",
                    report.counts.unanswered
                );
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
