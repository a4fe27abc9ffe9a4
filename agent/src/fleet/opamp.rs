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
use tokio::sync::Notify;

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

/// Sessions running store calls at once (see `Fleet::turn`).
const TURNS: usize = 64;

/// Configs kept in memory by hash (a few are on offer at a time).
const CACHED_CONFIGS: usize = 16;

/// The configs kept in memory, and how many times one was stored or
/// dropped: a config read from the store is kept only if none was
/// meanwhile (what was read may carry the signature just replaced).
#[derive(Default)]
struct Configs {
    by_hash: HashMap<String, Arc<SignedConfig>>,
    changes: u64,
}

impl Configs {
    /// Keeps `config`; past the bound the cache starts over, so it cannot
    /// grow with the number of configs ever offered.
    fn keep(&mut self, config: Arc<SignedConfig>) {
        if self.by_hash.len() >= CACHED_CONFIGS {
            self.by_hash.clear();
        }
        self.by_hash.insert(config.hash.clone(), config);
    }
}

pub struct Fleet {
    pub store: Store,
    /// This server among those sharing a store: the `server` column of the
    /// agents it holds, and the sender of its announcements.
    pub id: String,
    heartbeat: Duration,
    pub metrics: FleetMetrics,
    registry: Registry,
    /// Connected WebSocket agents, woken to send their new offer at once:
    /// a session holds no queue of messages, so nothing waits or is lost
    /// however many offers come, and each costs the server a few bytes.
    sessions: Mutex<HashMap<String, Arc<Notify>>>,
    /// Offered configs by hash, read once from the store: every agent of a
    /// rollout is sent the same one. A config's YAML is fixed by its hash,
    /// its signature is not: an entry is replaced when this server stores
    /// the config and dropped when another server on the database announces
    /// it (it may have signed it anew).
    configs: Mutex<Configs>,
    /// Last sequence number per agent, to spot a gap.
    sequences: Mutex<HashMap<String, u64>>,
    /// The task following other servers' announcements, ended with the
    /// fleet (it holds only a weak reference, but may be waiting on the
    /// database).
    peers: Mutex<Option<tokio::task::AbortHandle>>,
    /// Turns at the store for WebSocket sessions.
    turns: tokio::sync::Semaphore,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let peers = self.peers.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(peers) = peers.take() {
            peers.abort();
        }
    }
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
            configs: Mutex::default(),
            sequences: Mutex::new(HashMap::new()),
            peers: Mutex::new(None),
            turns: tokio::sync::Semaphore::new(TURNS),
        });
        if fleet.store.is_shared() {
            let task = tokio::spawn(super::peers::follow(Arc::downgrade(&fleet)));
            *fleet.peers.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
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

    /// Waits for a session's turn at the store. A rollout wakes every
    /// session at once; the store serves a few at a time anyway (one
    /// SQLite connection, a small PostgreSQL pool), and each waiting here
    /// holds a few bytes instead of a call in progress.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // Never closed: `None` cannot happen, but is no reason to stop.
        self.turns.acquire().await.ok()
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
        let connected = self.sessions().len();
        self.metrics
            .connected
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
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
                if name == "FAILED" && error.starts_with(crate::control::ROLLED_BACK) {
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

    /// The offer for `agent` (as stored) while it has not reported on its
    /// desired config.
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

    /// Stores an offered config (replacing the signature of one with the
    /// same hash) and keeps it in memory.
    pub async fn put_config(&self, config: SignedConfig) -> Result<Arc<SignedConfig>, StoreError> {
        self.store.put_config(&config).await?;
        let config = Arc::new(config);
        let mut configs = self.configs();
        configs.changes = configs.changes.wrapping_add(1);
        configs.keep(config.clone());
        Ok(config)
    }

    fn configs(&self) -> std::sync::MutexGuard<'_, Configs> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the cached `hash` (another server stored it, perhaps signed
    /// anew), or every config (announcements may have been missed).
    pub fn forget_config(&self, hash: Option<&str>) {
        let mut configs = self.configs();
        configs.changes = configs.changes.wrapping_add(1);
        match hash {
            Some(hash) => {
                configs.by_hash.remove(hash);
            }
            None => configs.by_hash.clear(),
        }
    }

    /// An offered config, from memory or the store; a failure is counted
    /// and logged.
    pub async fn config(&self, hash: &str) -> Option<Arc<SignedConfig>> {
        let changes = {
            let configs = self.configs();
            if let Some(config) = configs.by_hash.get(hash) {
                self.metrics.config_cache("hit");
                return Some(config.clone());
            }
            configs.changes
        };
        self.metrics.config_cache("miss");
        let config = Arc::new(self.store.config(hash).await.unwrap_or_else(|err| {
            self.store_failed(&err);
            None
        })?);
        let mut configs = self.configs();
        if configs.changes == changes {
            configs.keep(config.clone());
        }
        Some(config)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, uid: &str, wake: Arc<Notify>) {
        self.sessions().insert(uid.to_owned(), wake);
    }

    /// Forgets `uid`'s session if `wake` is still its own: a reconnected
    /// agent's newer session stays.
    pub async fn unregister(&self, uid: &str, wake: &Arc<Notify>) {
        let removed = {
            let mut sessions = self.sessions();
            let current = sessions
                .get(uid)
                .is_some_and(|current| Arc::ptr_eq(current, wake));
            current && sessions.remove(uid).is_some()
        };
        if removed && let Err(err) = self.store.disconnected(uid, &self.id).await {
            self.store_failed(&err);
        }
    }

    /// Agents holding a WebSocket session here.
    pub fn session_uids(&self) -> Vec<String> {
        self.sessions().keys().cloned().collect()
    }

    /// Wakes the sessions of those of `uids` connected here over WebSocket
    /// to send their offer now (the others get it with their next answer).
    pub fn push(&self, uids: &[String]) {
        let sessions = self.sessions();
        for uid in uids {
            if let Some(wake) = sessions.get(uid) {
                wake.notify_one();
            }
        }
    }

    /// What a woken session sends: `uid`'s offer, if it still has one.
    pub async fn pushed(&self, uid: &str) -> Option<ServerToAgent> {
        let agent = match self.store.agent(uid).await {
            Ok(agent) => agent?,
            Err(err) => {
                self.store_failed(&err);
                return None;
            }
        };
        let Some(offer) = self.offer(&agent).await else {
            self.metrics.push("none");
            return None;
        };
        self.metrics.push("sent");
        let instance_uid = uuid::Uuid::parse_str(uid)
            .map(|u| u.as_bytes().to_vec())
            .unwrap_or_default();
        Some(ServerToAgent {
            instance_uid,
            capabilities: CAPABILITIES,
            remote_config: Some(offer),
            ..Default::default()
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(signature: &str) -> SignedConfig {
        SignedConfig {
            hash: "c1".into(),
            yaml: b"a: 1".to_vec(),
            signature: signature.into(),
        }
    }

    /// Another server on the database signs the config anew: once it
    /// announces it, this server offers the new signature.
    #[tokio::test]
    async fn a_config_signed_anew_elsewhere_is_read_again_once_announced() {
        let fleet = Fleet::new(Store::open_in_memory().unwrap(), Duration::from_secs(1));
        fleet.put_config(signed("sig1")).await.unwrap();
        // As another server would store it.
        fleet.store.put_config(&signed("sig2")).await.unwrap();
        assert_eq!(fleet.config("c1").await.unwrap().signature, "sig1");
        fleet.forget_config(Some("c1"));
        assert_eq!(fleet.config("c1").await.unwrap().signature, "sig2");
        fleet.store.put_config(&signed("sig3")).await.unwrap();
        fleet.forget_config(None);
        assert_eq!(fleet.config("c1").await.unwrap().signature, "sig3");
        assert!(fleet.config("c9").await.is_none());
        let cache = |outcome| {
            fleet
                .metrics
                .config_cache
                .get_or_create(&[("outcome", outcome)])
                .get()
        };
        assert_eq!((cache("hit"), cache("miss")), (1, 3));
    }
}
