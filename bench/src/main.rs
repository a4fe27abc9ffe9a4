//! The benchmarks behind `cargo xtask bench …`: measurements side by side
//! with a baseline in the same run, reported as ratios. xtask installs what
//! they need and builds the agent first.

mod fleet;
mod r#loop;
mod nab;
mod ottl;
mod profile;
mod receiver;
mod trace;
mod xdp;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "selfops-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// wrk against nginx at saturation, with and without the agent.
    Trace,
    /// CPU profiler at 19 Hz against `perf record -F 19 -g` on the same workload.
    Profile,
    /// The detectors on the Numenta Anomaly Benchmark, scored by its rules.
    Nab(nab::Args),
    /// Per-packet cost of the XDP limiter against no program on one veth pair.
    Xdp,
    /// Time from a signal crossing its threshold to the limit live in the kernel.
    Loop,
    /// A fleet server and 10,000 simulated agents: time to APPLIED on all,
    /// server CPU and memory per 1,000 agents.
    Fleet(fleet::Args),
    /// OTLP spans per second per core through the receiver, a transform and
    /// a filter to the file exporter, and memory beside the agent without a
    /// receiver.
    Receiver(receiver::Args),
    /// OTTL transform statements against a pass-through, per span on one core.
    Ottl,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Trace => trace::run(),
        Bench::Profile => profile::run(),
        Bench::Nab(args) => nab::run(args),
        Bench::Xdp => xdp::run(),
        Bench::Loop => r#loop::run(),
        Bench::Fleet(args) => fleet::run(args),
        Bench::Receiver(args) => receiver::run(args),
        Bench::Ottl => ottl::run().map_err(|e| anyhow::anyhow!("{e}")),
    }
}
