//! The JSON API: the inventory, and configs offered to a selection.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use super::{
    hex,
    server::App,
    store::{AgentRow, SignedConfig},
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
        .store
        .put_config(&SignedConfig {
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
