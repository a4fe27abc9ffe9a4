//! The JSON API: the inventory, and configs offered to a selection.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use super::{
    hex,
    server::App,
    store::{AgentRow, ConfigCounts, SignedConfig},
};
use crate::control::signed;

type Failure = (StatusCode, String);

fn unavailable(err: impl std::fmt::Display) -> Failure {
    tracing::error!(%err, "fleet store");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "inventory unavailable".into(),
    )
}

pub async fn agents(State(app): State<App>) -> Result<Json<Vec<AgentRow>>, Failure> {
    app.fleet.store.agents().map(Json).map_err(unavailable)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferRequest {
    pub yaml: String,
    /// Base64 Ed25519 signature over the YAML's SHA-256, as `selfops.yaml.sig`
    /// carries it; none offers the config unsigned (agents refuse it).
    #[serde(default)]
    pub signature: Option<String>,
    /// Labels an agent must all carry; none selects every agent.
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    /// When set, only these agents among the selected (a rollout's step).
    #[serde(default)]
    pub uids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferResponse {
    /// Hex SHA-256 of the YAML, as agents report it.
    pub hash: String,
    pub agents: Vec<String>,
}

pub fn selected(agent: &AgentRow, select: &BTreeMap<String, String>) -> bool {
    select.iter().all(|(k, v)| agent.labels.get(k) == Some(v))
}

/// Stores the config and points the selected agents at it; connected
/// ones get it at once, the others when they next report.
pub async fn offer(
    State(app): State<App>,
    Json(request): Json<OfferRequest>,
) -> Result<Json<OfferResponse>, Failure> {
    let signature = request.signature.unwrap_or_default();
    // Only the shape is checked here: whether it verifies is the agents' call.
    if !signature.is_empty()
        && STANDARD
            .decode(signature.trim())
            .map_or(true, |raw| raw.len() != 64)
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "signature: base64 of a 64-byte Ed25519 signature expected".into(),
        ));
    }
    let hash = hex::encode(&signed::sha256(request.yaml.as_bytes()));
    let fleet = &app.fleet;
    fleet
        .put_config(SignedConfig {
            hash: hash.clone(),
            yaml: request.yaml.into_bytes(),
            signature: signature.trim().to_owned(),
        })
        .map_err(unavailable)?;
    let mut chosen = Vec::new();
    for agent in fleet.store.agents().map_err(unavailable)? {
        let listed = request.uids.is_empty() || request.uids.contains(&agent.uid);
        if listed && selected(&agent, &request.select) {
            fleet.store.assign(&agent.uid, &hash).map_err(unavailable)?;
            fleet.push(&agent.uid);
            chosen.push(agent.uid);
        }
    }
    tracing::info!(%hash, agents = chosen.len(), "config offered");
    Ok(Json(OfferResponse {
        hash,
        agents: chosen,
    }))
}

/// How many agents report each config, in a few bytes where the inventory
/// of a large fleet runs to megabytes: what a rollout or a dashboard polls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub agents: usize,
    pub connected: usize,
    /// Agents by remote config hash and status, largest first.
    pub configs: Vec<ConfigCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigCount {
    pub hash: String,
    pub status: String,
    pub agents: usize,
}

pub fn summarise(counts: Vec<ConfigCounts>) -> Summary {
    let mut summary = Summary::default();
    for count in counts {
        summary.agents = summary.agents.saturating_add(count.agents);
        summary.connected = summary.connected.saturating_add(count.connected);
        summary.configs.push(ConfigCount {
            hash: count.hash,
            status: count.status,
            agents: count.agents,
        });
    }
    summary.configs.sort_by_key(|c| std::cmp::Reverse(c.agents));
    summary
}

pub async fn summary(State(app): State<App>) -> Result<Json<Summary>, Failure> {
    let counts = app.fleet.store.counts().map_err(unavailable)?;
    Ok(Json(summarise(counts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_adds_up_the_counts_largest_first() {
        let count = |hash: &str, status: &str, agents, connected| ConfigCounts {
            hash: hash.into(),
            status: status.into(),
            agents,
            connected,
        };
        let summary = summarise(vec![
            count("b", "FAILED", 1, 0),
            count("a", "APPLIED", 2, 2),
            count("", "", 1, 1),
        ]);
        assert_eq!(summary.agents, 4);
        assert_eq!(summary.connected, 3);
        assert_eq!(
            summary.configs[0],
            ConfigCount {
                hash: "a".into(),
                status: "APPLIED".into(),
                agents: 2
            }
        );
        assert_eq!(summary.configs.len(), 3);
        assert_eq!(summarise(vec![]), Summary::default());
    }
}
