//! `selfops fleet …`: the command-line edge, where errors get their context.

use anyhow::Context as _;

use crate::cli::FleetCommand;

pub fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Keygen { out } => {
            let (secret, public) = super::keygen::write(&out)
                .with_context(|| format!("writing the key pair {}", out.display()))?;
            println!("secret key: {}", secret.display());
            println!("public key: {}", public.display());
            Ok(())
        }
    }
}
