//! The OpAMP client: one session at a time over WebSocket or HTTP, and
//! between sessions a backoff. What the server sends is verified and
//! applied here; the transports only move messages.

use std::{path::PathBuf, sync::Arc, time::Duration};

use selfops_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AgentRemoteConfig, AgentToServer, ComponentHealth,
    EffectiveConfig, RemoteConfigStatus, RemoteConfigStatuses, ServerToAgent,
};
use tokio::sync::watch;

use super::{
    Live, audit,
    backoff::Backoff,
    config::{OpampConfig, Scheme},
    frame::FrameError,
    http, identity,
    metrics::ControlMetrics,
    policy, signed,
    state::ClientState,
    ws,
};
use crate::{
    config::Config,
    signal::{Resource, Signal},
    supervise::Health,
};

pub type AuditSink = Box<dyn Fn(Signal) + Send + Sync>;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The agent is stopping; agent_disconnect was sent.
    Stopped,
    /// Lost or refused; try again after the backoff (at least `retry_after`).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

pub struct Client {
    pub(super) opamp: OpampConfig,
    pub(super) state: ClientState,
    pub(super) metrics: ControlMetrics,
    data_dir: PathBuf,
    current: Arc<Config>,
    /// The local file's text, under every remote config.
    local: Arc<str>,
    live: Live,
    audit: AuditSink,
    resource: Arc<Resource>,
    health: Arc<Health>,
    started_unix_nano: u64,
    /// The last offer handled, so the same offer repeated is not redone.
    last_offer: Option<Vec<u8>>,
    /// The server answered during the current session.
    answered: bool,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opamp: OpampConfig,
        state: ClientState,
        metrics: ControlMetrics,
        current: Arc<Config>,
        live: Live,
        audit: AuditSink,
        resource: Arc<Resource>,
        health: Arc<Health>,
    ) -> Self {
        let mut client = Self {
            opamp,
            state,
            metrics,
            data_dir: current.data_dir.clone(),
            local: current.source.clone().unwrap_or_else(|| "".into()),
            current,
            live,
            audit,
            resource,
            health,
            started_unix_nano: crate::act::audit::now_unix_nano(),
            last_offer: None,
            answered: false,
        };
        client.report_effective();
        client.refresh_health();
        client
    }

    /// Sessions until `stop`; each failure waits a backoff.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let end = match self.opamp.scheme() {
                Some(Scheme::WebSocket { tls }) => ws::session(&mut self, tls, &mut stop).await,
                Some(Scheme::Http { tls }) => http::session(&mut self, tls, &mut stop).await,
                None => return,
            };
            self.metrics.connected.set(0);
            // A session the server answered starts the backoff over.
            if std::mem::take(&mut self.answered) {
                backoff.reset();
            }
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Retry {
                    reason,
                    retry_after,
                } => {
                    self.state.reconnected();
                    let delay = backoff.next_delay_after(retry_after);
                    tracing::warn!(endpoint = %self.opamp.endpoint, %reason, ?delay, "OpAMP session ended; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// Called by a transport once the server has answered on a new session.
    pub(super) fn connected(&mut self) {
        self.metrics.connection("connected");
        self.metrics.connected.set(1);
        self.answered = true;
    }

    pub(super) fn answered(&self) -> bool {
        self.answered
    }

    /// The next message, with health refreshed first.
    pub(super) fn next_message(&mut self) -> AgentToServer {
        self.refresh_health();
        self.metrics.message("sent");
        self.state.next_message()
    }

    pub(super) fn has_news(&mut self) -> bool {
        self.refresh_health();
        self.state.has_news()
    }

    pub(super) fn heartbeat(&self) -> Duration {
        self.state
            .heartbeat()
            .unwrap_or(self.opamp.heartbeat_interval)
    }

    pub(super) fn frame_error(&self, err: &FrameError) {
        self.metrics.reject(err.label());
        tracing::warn!(%err, "OpAMP server message thrown away");
    }

    /// Takes in a server message. `Err` ends the session with that wait.
    pub(super) fn receive(&mut self, message: ServerToAgent) -> Result<(), SessionEnd> {
        self.metrics.message("received");
        let reply = self.state.receive(message);
        if let Some(uid) = reply.new_uid
            && let Err(err) = identity::store_in(&self.data_dir, uid)
        {
            tracing::warn!(%err, "storing the instance uid the server assigned");
        }
        if let Some(retry_after) = reply.retry_after {
            self.metrics.retry("unavailable");
            return Err(SessionEnd::Retry {
                reason: "server unavailable".into(),
                retry_after: Some(retry_after),
            });
        }
        if let Some(error) = reply.error {
            tracing::warn!(%error, "OpAMP server");
        }
        if let Some(remote) = reply.remote_config {
            self.remote_config(remote);
        }
        Ok(())
    }

    fn remote_config(&mut self, remote: AgentRemoteConfig) {
        let fingerprint = fingerprint(&remote);
        if self.last_offer.as_ref() == Some(&fingerprint) {
            return;
        }
        self.last_offer = Some(fingerprint);
        let outcome = signed::verify(&remote, &self.current.control.trusted_keys)
            .map_err(|e| e.to_string())
            .and_then(|yaml| {
                policy::accept(&yaml, &self.local, &self.current).map_err(|e| e.to_string())
            });
        let status = match outcome {
            Ok((config, keys)) => {
                let config = Arc::new(config);
                self.live.apply(&config, &keys);
                self.current = config;
                tracing::info!(keys = ?keys, "remote config applied");
                self.metrics.apply("applied");
                (self.audit)(Signal::Log(audit::record(
                    &self.resource,
                    &remote.config_hash,
                    Ok(&keys),
                )));
                self.report_effective();
                RemoteConfigStatus {
                    last_remote_config_hash: remote.config_hash,
                    status: RemoteConfigStatuses::Applied as i32,
                    error_message: String::new(),
                }
            }
            Err(reason) => {
                tracing::warn!(%reason, "remote config refused");
                self.metrics.apply("failed");
                (self.audit)(Signal::Log(audit::record(
                    &self.resource,
                    &remote.config_hash,
                    Err(&reason),
                )));
                RemoteConfigStatus {
                    last_remote_config_hash: remote.config_hash,
                    status: RemoteConfigStatuses::Failed as i32,
                    error_message: reason,
                }
            }
        };
        self.state.set_remote_status(status);
    }

    fn report_effective(&mut self) {
        let body = self.current.source.as_deref().unwrap_or_default();
        self.state.set_effective_config(EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(
                    signed::CONFIG_FILE.to_owned(),
                    AgentConfigFile {
                        body: body.as_bytes().to_vec(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        });
    }

    fn refresh_health(&mut self) {
        let (healthy, last_error) = match self.health.ready() {
            Ok(()) => (true, String::new()),
            Err(err) => (false, err),
        };
        self.state.set_health(ComponentHealth {
            healthy,
            start_time_unix_nano: self.started_unix_nano,
            last_error,
            status: if healthy { "running" } else { "not ready" }.into(),
            // Left 0: a changing timestamp would make every message news.
            status_time_unix_nano: 0,
            component_health_map: Default::default(),
        });
    }
}

/// What identifies an offer: its hash and the files that matter, so a
/// repeated offer is not redone while one re-signed is.
fn fingerprint(remote: &AgentRemoteConfig) -> Vec<u8> {
    let mut bytes = remote.config_hash.clone();
    if let Some(files) = &remote.config {
        for name in [signed::CONFIG_FILE, signed::SIGNATURE_FILE] {
            bytes.push(0);
            if let Some(file) = files.config_map.get(name) {
                bytes.extend_from_slice(&signed::sha256(&file.body));
            }
        }
    }
    bytes
}
