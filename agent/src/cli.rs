//! Command line: `selfops run`, `selfops probe`, `selfops version`.

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
    /// Print the version.
    Version,
}
