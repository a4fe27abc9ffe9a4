//! Developer tasks: `cargo xtask setup | run | test | bench`.

mod bench;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what a fresh machine lacks (idempotent).
    Setup,
    /// Set up if needed, build, and run the agent with the default config.
    Run {
        /// Arguments after `selfops run`, e.g. `-- --config deploy/selfops.yaml`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks against a baseline in the same run.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
    /// Set up if needed, then fmt check, clippy, unit and privileged tests.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Run { args } => {
            setup::run()?;
            shell::cargo(&["build", "--release", "--package", "selfops-agent"])?;
            let binary = shell::workspace_root().join("target/release/selfops");
            let mut command = std::process::Command::new(binary);
            command.arg("run").args(args);
            shell::exec(command)
        }
        Command::Bench { what } => {
            setup::run()?;
            bench::run(what)
        }
        Command::Test { filter } => {
            setup::run()?;
            test::run(filter.as_deref())
        }
    }
}
