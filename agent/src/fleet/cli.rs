//! `selfops fleet …`: the command-line edge, where errors get their context.

use std::time::Duration;

use anyhow::Context as _;

use super::{
    opamp::Fleet,
    rollout,
    server::{self, App, Limits},
    status,
    store::{Database, Store},
};
use crate::{cli::FleetCommand, control::signed::SecretKey};

/// Heartbeat offered to agents.
const HEARTBEAT: Duration = Duration::from_secs(30);

pub fn run(command: FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Keygen { out } => {
            let (secret, public) = super::keygen::write(&out)
                .with_context(|| format!("writing the key pair {}", out.display()))?;
            println!("secret key: {}", secret.display());
            println!("public key: {}", public.display());
            Ok(())
        }
        FleetCommand::Serve { listen, database } => runtime()?.block_on(serve(listen, &database)),
        FleetCommand::Rollout {
            server,
            config,
            key,
            select,
            steps,
            health_window,
            max_failures,
            step_timeout,
        } => {
            let yaml = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let key = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))
                .and_then(|text| {
                    SecretKey::parse(&text)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("secret key {}", key.display()))
                })?;
            let plan = rollout::Plan {
                steps: rollout::parse_steps(&steps)?,
                health_window,
                max_failures_percent: rollout::parse_percent(&max_failures)?,
                step_timeout,
                poll: Duration::from_secs(1),
            };
            let select = select.into_iter().collect();
            let outcome = runtime()?.block_on(rollout::run(&server, &yaml, &key, &select, &plan));
            if let Err(rollout::RolloutError::Stopped { returned, .. }) = &outcome {
                let empty = super::api::empty_hash();
                for agent in returned {
                    let to = if agent.hash == empty {
                        "its local config".to_owned()
                    } else {
                        format!("config {}", status::short(&agent.hash))
                    };
                    println!("returned {} to {to}", agent.uid);
                }
            }
            println!("rolled out {}", outcome.context("rollout")?);
            Ok(())
        }
        FleetCommand::Status { server, json } => runtime()?.block_on(async {
            let agents = status::agents(&server)
                .await
                .with_context(|| format!("inventory from {server}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                print!("{}", status::table(&agents, now));
            }
            Ok(())
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

async fn serve(listen: std::net::SocketAddr, url: &str) -> anyhow::Result<()> {
    let database = Database::parse(url)?;
    // Agents silent past a few heartbeats are held by nobody.
    let stale_before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(HEARTBEAT.as_secs().saturating_mul(3));
    let store = Store::open(&database, i64::try_from(stale_before).unwrap_or(0))
        .await
        .with_context(|| format!("opening the database {}", redacted(url)))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, database = %redacted(url), "fleet server serving");
    let app = App {
        fleet: Fleet::new(store, HEARTBEAT),
        limits: Limits::default(),
    };
    server::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serving")
}

/// A database URL without its password.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// `k=v` for `--select`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?}: k=v expected"))
}
