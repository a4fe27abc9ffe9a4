//! Developer tasks: `cargo xtask setup | run | test | bench | fuzz`.

mod fuzz;
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
    /// Set up if needed, build, and run a benchmark (trace, profile, nab,
    /// xdp, loop, fleet) against its baseline in the same run.
    Bench {
        /// The benchmark and its arguments, e.g. `nab --emit out`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Set up if needed, then fmt check, clippy, unit and privileged tests.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Set up if needed, then run every fuzz target for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (`http1`, `unwind_table`, `onnx_model`).
        target: Option<String>,
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
        Command::Bench { args } => {
            setup::run()?;
            shell::cargo(&["build", "--release", "--package", "selfops-agent"])?;
            let mut cargo: Vec<&str> = vec![
                "run",
                "--release",
                "--quiet",
                "--package",
                "selfops-bench",
                "--",
            ];
            cargo.extend(args.iter().map(String::as_str));
            shell::cargo(&cargo)
        }
        Command::Test { filter } => {
            setup::run()?;
            test::run(filter.as_deref())
        }
        Command::Fuzz { seconds, target } => {
            setup::run()?;
            fuzz::run(seconds, target.as_deref())
        }
    }
}
