//! The server side of OpAMP: each AgentToServer updates the inventory, and
//! the answer carries the config the fleet wants that agent to run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::registry::Registry;
use selfops_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, ConnectionSettingsOffers,
    OpAmpConnectionSettings, RemoteConfigStatuses, ServerCapabilities, ServerErrorResponse,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags, any_value,
};
use tokio::sync::mpsc;

use super::{
    hex,
    metrics::FleetMetrics,
    store::{AgentRow, SignedConfig, Store, StoreError},
};
use crate::control::signed;

const CAPABILITIES: u64 = ServerCapabilities::AcceptsStatus as u64
    | ServerCapabilities::OffersRemoteConfig as u64
    | ServerCapabilities::AcceptsEffectiveConfig as u64
    | ServerCapabilities::OffersConnectionSettings as u64;

/// Messages waiting for one WebSocket agent; beyond it pushes are dropped
/// (and counted): the agent gets the config at its next message anyway.
pub const PUSH_QUEUE: usize = 4;

pub struct Fleet {
    pub store: Store,
    /// This server among those sharing a store: the `server` column of the
    /// agents it holds, and the sender of its announcements.
    pub id: String,
    heartbeat: Duration,
    pub metrics: FleetMetrics,
    registry: Registry,
    /// Connected WebSocket agents, for pushing new configs at once.
    sessions: Mutex<HashMap<String, mpsc::Sender<ServerToAgent>>>,
    /// Last sequence number per agent, to spot a gap.
    sequences: Mutex<HashMap<String, u64>>,
}

/// Most attributes kept from one description, and their longest key and
/// value: the peer decides how many it sends.
const MAX_ATTRIBUTES: usize = 256;
const MAX_ATTRIBUTE_BYTES: usize = 1024;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn status_name(status: i32) -> &'static str {
    match RemoteConfigStatuses::try_from(status) {
        Ok(RemoteConfigStatuses::Applied) => "APPLIED",
        Ok(RemoteConfigStatuses::Applying) => "APPLYING",
        Ok(RemoteConfigStatuses::Failed) => "FAILED",
        _ => "UNSET",
    }
}

impl Fleet {
    pub fn new(store: Store, heartbeat: Duration) -> Arc<Self> {
        let mut registry = Registry::with_prefix("selfops");
        let metrics = FleetMetrics::register(&mut registry);
        let fleet = Arc::new(Self {
            store,
            id: uuid::Uuid::now_v7().simple().to_string(),
            heartbeat,
            metrics,
            registry,
            sessions: Mutex::new(HashMap::new()),
            sequences: Mutex::new(HashMap::new()),
        });
        if fleet.store.is_shared() {
            tokio::spawn(super::peers::follow(Arc::downgrade(&fleet)));
        }
        fleet
    }

    fn error(uid: Vec<u8>, message: &str) -> ServerToAgent {
        ServerToAgent {
            instance_uid: uid,
            error_response: Some(ServerErrorResponse {
                r#type: ServerErrorResponseType::BadRequest as i32,
                error_message: message.to_owned(),
                details: None,
            }),
            ..Default::default()
        }
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Logs and counts a store failure.
    pub fn store_failed(&self, err: &StoreError) {
        self.metrics.store_errors.inc();
        tracing::error!(%err, "fleet store");
    }

    /// The metrics in Prometheus text, the rollout's read afresh.
    pub async fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        match self.store.rollout().await {
            Ok(rollout) => self.metrics.rollout(&rollout.unwrap_or_default()),
            Err(err) => self.store_failed(&err),
        }
        self.metrics.connected.set(
            i64::try_from(
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len(),
            )
            .unwrap_or(i64::MAX),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Takes in one agent message: the agent's inventory key (none when the
    /// message names no valid agent) and the answer to send back.
    pub async fn handle(
        &self,
        message: AgentToServer,
        connected: bool,
    ) -> (Option<String>, ServerToAgent) {
        self.metrics.message("received");
        let Ok(uid) = uuid::Uuid::from_slice(&message.instance_uid) else {
            self.metrics.reject("instance_uid");
            return (
                None,
                Self::error(message.instance_uid, "instance_uid must be 16 bytes"),
            );
        };
        let key = uid.hyphenated().to_string();
        let answer = match self.update(&key, &message, connected).await {
            Ok((agent, full)) => {
                let mut answer = ServerToAgent {
                    instance_uid: message.instance_uid,
                    capabilities: CAPABILITIES,
                    flags: if full {
                        ServerToAgentFlags::ReportFullState as u64
                    } else {
                        0
                    },
                    connection_settings: Some(ConnectionSettingsOffers {
                        opamp: Some(OpAmpConnectionSettings {
                            heartbeat_interval_seconds: self.heartbeat.as_secs().max(1),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                answer.remote_config = self.offer(&agent).await;
                answer
            }
            Err(err) => {
                self.store_failed(&err);
                ServerToAgent {
                    instance_uid: message.instance_uid,
                    error_response: Some(ServerErrorResponse {
                        r#type: ServerErrorResponseType::Unavailable as i32,
                        error_message: "inventory unavailable".into(),
                        details: None,
                    }),
                    ..Default::default()
                }
            }
        };
        (Some(key), answer)
    }

    /// Updates the row: the row saved, and whether the server needs the
    /// full state.
    async fn update(
        &self,
        key: &str,
        m: &AgentToServer,
        connected: bool,
    ) -> Result<(AgentRow, bool), StoreError> {
        let known = self.store.agent(key).await?;
        let mut full = known.is_none() && m.agent_description.is_none();
        {
            let mut sequences = self.sequences.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = sequences.insert(key.to_owned(), m.sequence_num)
                && last.checked_add(1) != Some(m.sequence_num)
                && m.agent_description.is_none()
            {
                full = true;
            }
        }
        let mut agent = known.unwrap_or_else(|| AgentRow {
            uid: key.to_owned(),
            ..Default::default()
        });
        if let Some(description) = &m.agent_description {
            agent.labels = description
                .identifying_attributes
                .iter()
                .chain(&description.non_identifying_attributes)
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s)
                        if kv.key.len() <= MAX_ATTRIBUTE_BYTES
                            && s.len() <= MAX_ATTRIBUTE_BYTES =>
                    {
                        Some((kv.key.clone(), s.clone()))
                    }
                    _ => None,
                })
                .take(MAX_ATTRIBUTES)
                .collect();
            agent.host_name = agent.labels.get("host.name").cloned().unwrap_or_default();
        }
        if let Some(health) = &m.health {
            agent.healthy = Some(health.healthy);
            agent.health_error = crate::control::state::one_line(&health.last_error);
        }
        if let Some(effective) = &m.effective_config {
            let body = effective
                .config_map
                .as_ref()
                .and_then(|c| c.config_map.get(signed::CONFIG_FILE))
                .map(|f| f.body.as_slice())
                .unwrap_or_default();
            agent.effective_hash = hex::encode(&signed::sha256(body));
        }
        if let Some(status) = &m.remote_config_status {
            let hash = hex::encode(&status.last_remote_config_hash);
            let name = status_name(status.status);
            let error = crate::control::state::one_line(&status.error_message);
            if (hash.as_str(), name) != (agent.remote_hash.as_str(), agent.remote_status.as_str()) {
                self.metrics.report(name);
                if name == "FAILED" && error.starts_with(AGENT_ROLLED_BACK) {
                    self.metrics.rolled_back("agent", 1);
                }
            }
            agent.remote_hash = hash;
            agent.remote_status = name.to_owned();
            agent.remote_error = error;
        }
        agent.last_seen_unix = now_unix();
        agent.connected = connected && m.agent_disconnect.is_none();
        self.store.save_report(&agent, &self.id).await?;
        Ok((agent, full))
    }

    /// The offer for `agent` while it has not reported on its desired
    /// config.
    async fn offer(&self, agent: &AgentRow) -> Option<AgentRemoteConfig> {
        if agent.desired_hash.is_empty()
            || (agent.remote_hash == agent.desired_hash
                && matches!(agent.remote_status.as_str(), "APPLIED" | "FAILED"))
        {
            return None;
        }
        self.config(&agent.desired_hash)
            .await
            .map(|config| remote_config(&config))
    }

    /// A stored config; a failure is counted and logged.
    pub async fn config(&self, hash: &str) -> Option<SignedConfig> {
        self.store.config(hash).await.unwrap_or_else(|err| {
            self.store_failed(&err);
            None
        })
    }

    pub fn register(&self, uid: &str, tx: mpsc::Sender<ServerToAgent>) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), tx);
    }

    /// Forgets `uid`'s session if `tx` is still its sender: a reconnected
    /// agent's newer session stays.
    pub async fn unregister(&self, uid: &str, tx: &mpsc::Sender<ServerToAgent>) {
        let removed = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let current = sessions
                .get(uid)
                .is_some_and(|current| current.same_channel(tx));
            current && sessions.remove(uid).is_some()
        };
        if removed && let Err(err) = self.store.disconnected(uid, &self.id).await {
            self.store_failed(&err);
        }
    }

    /// Agents holding a WebSocket session here.
    pub fn session_uids(&self) -> Vec<String> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Sends `config` now to those of `uids` connected here over WebSocket
    /// (the others get it with their next answer).
    pub fn push(&self, uids: &[String], config: &SignedConfig) {
        self.send(uids, &remote_config(config));
    }

    fn send(&self, uids: &[String], offer: &AgentRemoteConfig) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for uid in uids {
            let Some(tx) = sessions.get(uid) else {
                continue;
            };
            let instance_uid = uuid::Uuid::parse_str(uid)
                .map(|u| u.as_bytes().to_vec())
                .unwrap_or_default();
            let message = ServerToAgent {
                instance_uid,
                capabilities: CAPABILITIES,
                remote_config: Some(offer.clone()),
                ..Default::default()
            };
            if tx.try_send(message).is_err() {
                self.metrics.pushes_dropped.inc();
                tracing::debug!(uid, "push queue full: the offer goes with the next answer");
            }
        }
    }

    /// Pushes whatever each of `uids` is offered now, one by one (after
    /// announcements may have been missed).
    pub async fn push_current(&self, uids: &[String]) {
        for uid in uids {
            let agent = match self.store.agent(uid).await {
                Ok(Some(agent)) => agent,
                Ok(None) => continue,
                Err(err) => {
                    self.store_failed(&err);
                    return;
                }
            };
            if let Some(offer) = self.offer(&agent).await {
                self.send(std::slice::from_ref(uid), &offer);
            }
        }
    }
}

/// How an agent's own rollback reads in its FAILED status.
const AGENT_ROLLED_BACK: &str = "rolled back";

fn remote_config(config: &SignedConfig) -> AgentRemoteConfig {
    let mut files = HashMap::from([(
        signed::CONFIG_FILE.to_owned(),
        AgentConfigFile {
            body: config.yaml.clone(),
            content_type: "text/yaml".into(),
        },
    )]);
    if !config.signature.is_empty() {
        files.insert(
            signed::SIGNATURE_FILE.to_owned(),
            AgentConfigFile {
                body: config.signature.clone().into_bytes(),
                content_type: "text/plain".into(),
            },
        );
    }
    AgentRemoteConfig {
        config: Some(AgentConfigMap { config_map: files }),
        config_hash: hex::decode(&config.hash).unwrap_or_default(),
    }
}
