//! Command line: `selfops run`, `selfops probe`, `selfops limits`,
//! `selfops fleet`, `selfops version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "selfops",
    version,
    about = "eBPF node agent: the host observes and operates itself"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (works with no config at all).
    Run {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show what this kernel offers, each feature tried for real.
    Probe {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show or remove the kernel limiter's keys, with or without a running
    /// agent.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
    /// The fleet server: serve agents over OpAMP, list them, make keys.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Serve agents over OpAMP (ws://ADDR/v1/opamp, or HTTP POST there)
    /// with the inventory and config API on the same listener.
    Serve {
        #[arg(long, default_value = "127.0.0.1:4320")]
        listen: std::net::SocketAddr,
        /// The inventory and the offered configs: `sqlite://PATH` (or a bare
        /// PATH), or `postgres://USER@HOST:PORT/DB` shared by several servers.
        #[arg(long, default_value = "sqlite://fleet.db")]
        database: String,
    },
    /// Sign a config and offer it through a running server step by step,
    /// each step once the previous one's agents report it APPLIED.
    Rollout {
        #[arg(long, default_value = "http://127.0.0.1:4320")]
        server: String,
        /// The YAML to offer.
        #[arg(long)]
        config: PathBuf,
        /// Secret key file (from `selfops fleet keygen`).
        #[arg(long)]
        key: PathBuf,
        /// `k=v`: only agents with this label (repeatable, all must match).
        #[arg(long, value_parser = crate::fleet::cli::parse_label)]
        select: Vec<(String, String)>,
        /// Shares of the selected agents, ascending, ending at 100%.
        #[arg(long, default_value = "1%,10%,50%,100%")]
        steps: String,
        /// How long a step's agents must stay healthy on it before the next.
        #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
        health_window: std::time::Duration,
        /// Failed agents tolerated per step, as a share of the step.
        #[arg(long, default_value = "0%")]
        max_failures: String,
        /// How long a step's agents have to report.
        #[arg(long, default_value = "10m", value_parser = humantime_serde::re::humantime::parse_duration)]
        step_timeout: std::time::Duration,
    },
    /// Print the inventory of a running server.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:4320")]
        server: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write an Ed25519 key pair: PREFIX.key (secret, for signing configs)
    /// and PREFIX.pub (an entry for the agents' `control.trusted_keys`).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Every key in force in the kernel, with its rate, counters and the
    /// time it has left.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove keys: `--all` (every key, the pinned state, stale clsact
    /// filters) or `--target` (one key; repeatable).
    Clear {
        /// Remove every key and everything pinned.
        #[arg(long, conflicts_with = "target", required_unless_present = "target")]
        all: bool,
        /// `port=N`, `source=ADDR` or `source=ADDR,port=N`.
        #[arg(long, value_parser = crate::limits::parse_target)]
        target: Vec<crate::act::limiter::Key>,
    },
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
