//! selfops: an eBPF node agent that makes a host observe and operate itself.

use std::process::ExitCode;

use clap::Parser;
use selfops_agent::{
    agent, cli, config, control, fleet, kernel, limits, memory, supervise::signals,
};

// mimalloc, not glibc malloc: spans are made on the tracer's thread and
// freed on the exporter's, which glibc pays for in arena locking and
// consolidation. In alternating `bench trace` runs allocation fell from 30 %
// to 18 % of the agent's CPU samples and the agent's CPU per request by
// about 14 %; RSS at saturation stayed bounded (140–173 MiB against
// 94–150 MiB), so the trade is taken.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a refused configuration (nothing was attached).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before the heap grows: huge pages would make it resident 2 MiB at a
    // time.
    let small_pages = memory::without_huge_pages();
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Run { .. }) {
        // Before anything else: a SIGTERM now waits for the handlers.
        signals::defer();
    }
    cli::init_logging();
    if let Err(err) = small_pages {
        tracing::warn!(%err, "transparent huge pages stay on for this process");
    }
    match cli.command {
        cli::Command::Version => {
            println!("selfops {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Probe { json } => {
            let features = kernel::features::Features::probe();
            if json {
                match serde_json::to_string_pretty(&features) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("selfops: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", features.to_table());
            }
            ExitCode::SUCCESS
        }
        cli::Command::Limits { command } => match limits::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("selfops: {e:#}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Fleet { command } => match fleet::cli::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("selfops: {e:#}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Run { config } => {
            let config = match config {
                Some(path) => match config::Config::load(&path) {
                    Ok(config) => config,
                    Err(e) => {
                        eprintln!("selfops: config error: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => config::Config::default(),
            };
            // A remote config the last run re-executed for, or one that
            // changes what only a restart changes, starts here.
            let config = control::restart::startup(config);
            match agent::run(config) {
                Ok(()) if control::restart::requested() => {
                    let err = control::restart::exec_self();
                    eprintln!("selfops: re-executing for the new config: {err}");
                    ExitCode::FAILURE
                }
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("selfops: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
