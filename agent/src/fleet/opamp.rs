//! The server side of OpAMP: each AgentToServer updates the inventory, and
//! the answer carries the config the fleet wants that agent to run.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use selfops_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, ConnectionSettingsOffers,
    OpAmpConnectionSettings, RemoteConfigStatuses, ServerCapabilities, ServerErrorResponse,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags, any_value,
};
use tokio::sync::Notify;

use super::{
    hex,
    store::{AgentRow, SignedConfig, Store, StoreError},
};
use crate::control::signed;

const CAPABILITIES: u64 = ServerCapabilities::AcceptsStatus as u64
    | ServerCapabilities::OffersRemoteConfig as u64
    | ServerCapabilities::AcceptsEffectiveConfig as u64
    | ServerCapabilities::OffersConnectionSettings as u64;

/// Configs kept in memory by hash (a few are on offer at a time).
const CACHED_CONFIGS: usize = 16;

pub struct Fleet {
    pub store: Store,
    heartbeat: Duration,
    /// Connected WebSocket agents, woken to send their new offer at once:
    /// a session holds no queue of messages, so nothing waits or is lost
    /// however many offers come, and each costs the server a few bytes.
    sessions: Mutex<HashMap<String, Arc<Notify>>>,
    /// Offered configs by hash, read once from the store: every agent of a
    /// rollout is sent the same one.
    configs: Mutex<HashMap<String, Arc<SignedConfig>>>,
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
        Arc::new(Self {
            store,
            heartbeat,
            sessions: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            sequences: Mutex::new(HashMap::new()),
        })
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

    /// Takes in one agent message: the agent's inventory key (none when the
    /// message names no valid agent) and the answer to send back.
    pub fn handle(
        &self,
        message: AgentToServer,
        connected: bool,
    ) -> (Option<String>, ServerToAgent) {
        let Ok(uid) = uuid::Uuid::from_slice(&message.instance_uid) else {
            return (
                None,
                Self::error(message.instance_uid, "instance_uid must be 16 bytes"),
            );
        };
        let key = uid.hyphenated().to_string();
        let answer = match self.update(&key, &message, connected) {
            Ok((full, agent)) => {
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
                answer.remote_config = self.offer_of(&agent).ok().flatten();
                answer
            }
            Err(err) => {
                tracing::error!(%err, "fleet store");
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

    /// Updates the row; whether the server needs the full state, and the
    /// row as stored.
    fn update(
        &self,
        key: &str,
        m: &AgentToServer,
        connected: bool,
    ) -> Result<(bool, AgentRow), StoreError> {
        let known = self.store.agent(key)?;
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
            agent.remote_hash = hex::encode(&status.last_remote_config_hash);
            agent.remote_status = status_name(status.status).to_owned();
            agent.remote_error = crate::control::state::one_line(&status.error_message);
        }
        agent.last_seen_unix = now_unix();
        agent.connected = connected && m.agent_disconnect.is_none();
        self.store.save_report(&agent)?;
        Ok((full, agent))
    }

    /// The offer for `uid` while it has not reported on its desired config.
    pub fn offer_for(&self, uid: &str) -> Result<Option<AgentRemoteConfig>, StoreError> {
        match self.store.agent(uid)? {
            Some(agent) => self.offer_of(&agent),
            None => Ok(None),
        }
    }

    /// Stores an offered config (replacing one of the same hash, which may
    /// carry another signature).
    pub fn put_config(&self, config: SignedConfig) -> Result<(), StoreError> {
        self.store.put_config(&config)?;
        self.cache(Arc::new(config));
        Ok(())
    }

    /// Keeps `config` in memory; past the bound the cache starts over, so
    /// it cannot grow with the number of configs ever offered.
    fn cache(&self, config: Arc<SignedConfig>) {
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if configs.len() >= CACHED_CONFIGS {
            configs.clear();
        }
        configs.insert(config.hash.clone(), config);
    }

    fn config(&self, hash: &str) -> Result<Option<Arc<SignedConfig>>, StoreError> {
        if let Some(config) = self
            .configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(Some(config.clone()));
        }
        let Some(config) = self.store.config(hash)? else {
            return Ok(None);
        };
        let config = Arc::new(config);
        self.cache(config.clone());
        Ok(Some(config))
    }

    /// The offer for `agent` (as stored) while it has not reported on its
    /// desired config.
    fn offer_of(&self, agent: &AgentRow) -> Result<Option<AgentRemoteConfig>, StoreError> {
        if agent.desired_hash.is_empty()
            || (agent.remote_hash == agent.desired_hash
                && matches!(agent.remote_status.as_str(), "APPLIED" | "FAILED"))
        {
            return Ok(None);
        }
        let Some(config) = self.config(&agent.desired_hash)? else {
            return Ok(None);
        };
        let mut files = std::collections::HashMap::from([(
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
        Ok(Some(AgentRemoteConfig {
            config: Some(AgentConfigMap { config_map: files }),
            config_hash: hex::decode(&config.hash).unwrap_or_default(),
        }))
    }

    pub fn register(&self, uid: &str, wake: Arc<Notify>) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), wake);
    }

    /// Forgets `uid`'s session if `wake` is still its own: a reconnected
    /// agent's newer session stays.
    pub fn unregister(&self, uid: &str, wake: &Arc<Notify>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions
            .get(uid)
            .is_some_and(|current| Arc::ptr_eq(current, wake))
        {
            sessions.remove(uid);
            drop(sessions);
            if let Err(err) = self.store.set_connected(uid, false) {
                tracing::warn!(%err, uid, "fleet store");
            }
        }
    }

    /// Wakes `uid`'s WebSocket session, if it has one, to send its offer.
    pub fn push(&self, uid: &str) {
        if let Some(wake) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
        {
            wake.notify_one();
        }
    }

    /// What a woken session sends: `uid`'s offer, if it still has one.
    pub fn pushed(&self, uid: &str) -> Option<ServerToAgent> {
        let offer = match self.offer_for(uid) {
            Ok(offer) => offer?,
            Err(err) => {
                tracing::warn!(%err, uid, "fleet store");
                return None;
            }
        };
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
