//! Developer tasks: `cargo xtask setup | run | test | bench | fuzz`.

mod fuzz;
mod setup;
mod shell;
mod test;
mod vm;
mod vm_tiers;

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
    /// xdp, loop, fleet, ottl) against its baseline in the same run.
    Bench {
        /// The benchmark and its arguments, e.g. `nab --emit out`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Set up if needed, then fmt check, clippy, unit and privileged tests,
    /// fuzzing and the checks in VMs booting the default Debian kernels;
    /// with `--kernel` or `--kernels`, only the VM checks.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
        /// Boot this Debian kernel under qemu and run the agent's checks
        /// in it (`6.1`, `6.12`, `5.10`); repeatable.
        #[arg(long, value_name = "NAME")]
        kernel: Vec<String>,
        /// The same for every kernel of the default list (6.1, 6.12, 5.10).
        #[arg(long = "kernels", conflicts_with = "kernel")]
        all_kernels: bool,
        /// How the VMs run: `tcg` (emulation), `kvm`, or `auto` (KVM if it
        /// reaches /init promptly, else TCG).
        #[arg(long, value_enum, default_value_t = vm::Accel::Tcg)]
        accel: vm::Accel,
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
        Command::Test {
            filter,
            kernel,
            all_kernels,
            accel,
        } => {
            setup::run()?;
            if all_kernels {
                let names: Vec<String> =
                    vm::DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect();
                vm::run(&names, accel)
            } else if !kernel.is_empty() {
                vm::run(&kernel, accel)
            } else {
                test::run(filter.as_deref())?;
                // The whole suite also boots the default kernels: the agent
                // must hold on the kernels users run, not only this one.
                if filter.is_none() {
                    let names: Vec<String> =
                        vm::DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect();
                    vm::run(&names, accel)?;
                }
                Ok(())
            }
        }
        Command::Fuzz { seconds, target } => {
            setup::run()?;
            fuzz::run(seconds, target.as_deref())
        }
    }
}
