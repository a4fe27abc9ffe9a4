//! The JSON API: the inventory, configs offered to a selection, a stopped
//! rollout's step returned to what it ran before, the rollout's progress,
//! and the server's metrics.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse as _, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};

use super::{
    hex,
    server::App,
    store::{AgentRow, Returned, RolloutRow, SignedConfig, StoreError},
};
use crate::control::signed;

type Failure = (StatusCode, String);

fn unavailable(app: &App) -> impl Fn(StoreError) -> Failure + '_ {
    |err| {
        app.fleet.store_failed(&err);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "inventory unavailable".into(),
        )
    }
}

fn bad_request(why: &str) -> Failure {
    (StatusCode::BAD_REQUEST, why.to_owned())
}

pub async fn agents(State(app): State<App>) -> Result<Json<Vec<AgentRow>>, Failure> {
    app.fleet
        .store
        .agents()
        .await
        .map(Json)
        .map_err(unavailable(&app))
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
    /// The rollout step this offer is, in percent (for its progress).
    #[serde(default)]
    pub step: Option<u8>,
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

/// A signature's shape (whether it verifies is the agents' call).
fn signature_shape(signature: &str) -> Result<String, Failure> {
    let signature = signature.trim();
    if !signature.is_empty()
        && STANDARD
            .decode(signature)
            .map_or(true, |raw| raw.len() != 64)
    {
        return Err(bad_request(
            "signature: base64 of a 64-byte Ed25519 signature expected",
        ));
    }
    Ok(signature.to_owned())
}

/// Stores the config and points the selected agents at it; connected
/// ones get it at once (through whichever server holds them), the others
/// when they next report.
pub async fn offer(
    State(app): State<App>,
    Json(request): Json<OfferRequest>,
) -> Result<Json<OfferResponse>, Failure> {
    let signature = signature_shape(&request.signature.unwrap_or_default())?;
    let config = SignedConfig {
        hash: hex::encode(&signed::sha256(request.yaml.as_bytes())),
        yaml: request.yaml.into_bytes(),
        signature,
    };
    let fleet = &app.fleet;
    let failed = unavailable(&app);
    fleet.store.put_config(&config).await.map_err(&failed)?;
    let listed: HashSet<&str> = request.uids.iter().map(String::as_str).collect();
    let chosen: Vec<String> = fleet
        .store
        .agents()
        .await
        .map_err(&failed)?
        .into_iter()
        .filter(|a| listed.is_empty() || listed.contains(a.uid.as_str()))
        .filter(|a| selected(a, &request.select))
        .map(|a| a.uid)
        .collect();
    fleet
        .store
        .assign(&chosen, &config.hash)
        .await
        .map_err(&failed)?;
    if let Some(step) = request.step {
        let offered = u64::try_from(chosen.len()).unwrap_or(u64::MAX);
        fleet
            .store
            .rollout_step(&config.hash, step, offered)
            .await
            .map_err(&failed)?;
    }
    fleet.push(&chosen, &config);
    fleet
        .store
        .announce(&fleet.id, std::slice::from_ref(&config.hash))
        .await
        .map_err(&failed)?;
    tracing::info!(hash = %config.hash, agents = chosen.len(), "config offered");
    Ok(Json(OfferResponse {
        hash: config.hash,
        agents: chosen,
    }))
}

/// The config that is an agent's local file alone: laid over it, the empty
/// YAML changes nothing.
pub const EMPTY_YAML: &str = "";

pub fn empty_hash() -> String {
    hex::encode(&signed::sha256(EMPTY_YAML.as_bytes()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The config the rollout stopped on: only agents still pointed at it
    /// are returned.
    pub hash: String,
    pub uids: Vec<String>,
    /// The signature of the empty config, offered to agents that ran no
    /// remote config before (agents believe nothing unsigned).
    pub empty_signature: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackResponse {
    /// Each agent returned and the config it is offered now.
    pub returned: Vec<Returned>,
}

/// Points a stopped rollout's agents back at their previous config.
pub async fn rollback(
    State(app): State<App>,
    Json(request): Json<RollbackRequest>,
) -> Result<Json<RollbackResponse>, Failure> {
    if hex::decode(&request.hash).is_none_or(|h| h.len() != 32) {
        return Err(bad_request("hash: a hex SHA-256 expected"));
    }
    let signature = signature_shape(&request.empty_signature)?;
    if signature.is_empty() {
        return Err(bad_request("empty_signature: required"));
    }
    let fleet = &app.fleet;
    let failed = unavailable(&app);
    let empty = SignedConfig {
        hash: empty_hash(),
        yaml: EMPTY_YAML.as_bytes().to_vec(),
        signature,
    };
    fleet.store.put_config(&empty).await.map_err(&failed)?;
    let returned = fleet
        .store
        .roll_back(&request.uids, &request.hash, &empty.hash)
        .await
        .map_err(&failed)?;
    let count = u64::try_from(returned.len()).unwrap_or(u64::MAX);
    fleet.metrics.rolled_back("rollout", count);
    fleet
        .store
        .rollout_stopped(&request.hash, count)
        .await
        .map_err(&failed)?;
    let hashes: BTreeSet<&str> = returned.iter().map(|r| r.hash.as_str()).collect();
    for hash in &hashes {
        if let Some(config) = fleet.config(hash).await {
            let uids: Vec<String> = returned
                .iter()
                .filter(|r| r.hash == *hash)
                .map(|r| r.uid.clone())
                .collect();
            fleet.push(&uids, &config);
        }
    }
    let hashes: Vec<String> = hashes.into_iter().map(str::to_owned).collect();
    fleet
        .store
        .announce(&fleet.id, &hashes)
        .await
        .map_err(&failed)?;
    tracing::warn!(hash = %request.hash, agents = returned.len(), "rollout stopped: agents returned to their previous config");
    Ok(Json(RollbackResponse { returned }))
}

/// The current (or last) rollout; `null` before the first.
pub async fn rollout(State(app): State<App>) -> Result<Json<Option<RolloutRow>>, Failure> {
    app.fleet
        .store
        .rollout()
        .await
        .map(Json)
        .map_err(unavailable(&app))
}

pub async fn metrics(State(app): State<App>) -> Response {
    match app.fleet.encode_metrics().await {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
