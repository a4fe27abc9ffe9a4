//! The OpAMP client: one session at a time over WebSocket or HTTP, and
//! between sessions a backoff. What the server sends is verified and
//! applied here; the transports only move messages.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::time::Instant;

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
    gate::{Baseline, Watch},
    http, identity, last_good,
    metrics::ControlMetrics,
    policy, signed,
    state::ClientState,
    ws,
};
use crate::{
    config::Config,
    signal::{Resource, Signal},
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
    /// The last-known-good config: `current` unless a config is on trial.
    good: Arc<Config>,
    /// The remote config within its health window.
    trial: Option<Trial>,
    /// The trial an earlier run of the agent did not live through.
    interrupted: Option<last_good::TrialMark>,
    window: Duration,
    /// The local file's text, under every remote config.
    local: Arc<str>,
    live: Live,
    audit: AuditSink,
    resource: Arc<Resource>,
    watch: Watch,
    started_unix_nano: u64,
    /// The last offer handled (its fingerprint, hex), so the same offer
    /// repeated is not redone.
    last_offer: Option<String>,
    /// The server answered during the current session.
    answered: bool,
    /// Asks the agent to stop and re-execute itself.
    restart: Arc<dyn Fn() + Send + Sync>,
    /// A restart was asked for: nothing more is taken in.
    restarting: bool,
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
        watch: Watch,
    ) -> Self {
        let mut client = Self {
            opamp,
            state,
            metrics,
            data_dir: current.data_dir.clone(),
            local: current.source.clone().unwrap_or_else(|| "".into()),
            good: current.clone(),
            trial: None,
            interrupted: None,
            window: current.control.health_window,
            current,
            live,
            audit,
            resource,
            watch,
            started_unix_nano: crate::act::audit::now_unix_nano(),
            last_offer: None,
            answered: false,
            restart: Arc::new(super::restart::request),
            restarting: false,
        };
        let startup = client.current.control.startup.clone();
        if let Some(startup) = &startup {
            client.local = startup.local.clone();
        }
        if let Some(remote) = startup.and_then(|s| s.trial.clone()) {
            client.resume_trial(remote);
        } else {
            client.resume_last_good();
            client.interrupted = last_good::count_interrupted_trial(&client.data_dir);
        }
        client.report_rolled_back();
        if let Some(mark) = client.interrupted.as_ref().filter(|m| m.interrupted > 0) {
            tracing::warn!(
                offer = %mark.offer,
                runs = mark.interrupted,
                "the agent ended within a remote config's health window; running the last-known-good config"
            );
        }
        client.report_effective();
        client.refresh_health();
        client
    }

    /// Asks for restarts through `restart` instead of stopping the agent.
    #[cfg(test)]
    pub(super) fn on_restart(&mut self, restart: Arc<dyn Fn() + Send + Sync>) {
        self.restart = restart;
    }

    /// Sessions until `stop`; each failure waits a backoff. Stopping in
    /// order within a health window is not a crash: the trial is forgotten
    /// and will be tried afresh (unless the stop is the restart it needs).
    pub async fn run(mut self, stop: watch::Receiver<bool>) {
        self.sessions(stop).await;
        if self.trial.is_some() {
            last_good::clear_trial(&self.data_dir);
        }
    }

    async fn sessions(&mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return;
            }
            let began = Instant::now();
            let end = match self.opamp.scheme() {
                Some(Scheme::WebSocket { tls }) => ws::session(self, tls, &mut stop).await,
                Some(Scheme::Http { tls }) => http::session(self, tls, &mut stop).await,
                None => return,
            };
            self.metrics.connected.set(0);
            // A session the server answered and kept starts the backoff
            // over; one that ends soon after each answer is backed off.
            if std::mem::take(&mut self.answered) && began.elapsed() >= STABLE_SESSION {
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
                    // The health window runs on while disconnected.
                    let until = Instant::now() + delay;
                    let mut gate = tokio::time::interval(GATE_EVERY);
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = gate.tick() => self.poll_gate(),
                            _ = stop.changed() => return,
                        }
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
        self.poll_gate();
        self.refresh_health();
        self.metrics.message("sent");
        self.state.next_message()
    }

    pub(super) fn has_news(&mut self) -> bool {
        self.poll_gate();
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
        let offer = audit::hex(&fingerprint(&remote));
        if self.restarting || self.last_offer.as_ref() == Some(&offer) {
            return;
        }
        self.last_offer = Some(offer.clone());
        let interrupted = self
            .interrupted
            .as_ref()
            .filter(|mark| mark.offer == offer)
            .map_or(0, |mark| mark.interrupted);
        let outcome = if interrupted >= last_good::MAX_INTERRUPTED {
            Err(format!(
                "the agent ended {interrupted} times within this config's health window"
            ))
        } else {
            self.admit(&remote, &self.good)
        };
        match outcome {
            Ok((_, keys, Some(key))) => self.restart_into(remote, &keys, key, offer, interrupted),
            Ok((config, _, None)) => {
                if let Some(superseded) = self.trial.take() {
                    tracing::info!(
                        hash = %audit::hex(&superseded.remote.config_hash),
                        "remote config on trial superseded by a new offer"
                    );
                }
                let config = Arc::new(config);
                // Published relative to what runs now (a superseded trial
                // included); rolled back relative to the last-known-good.
                let keys = policy::changed_keys(&self.current, &config);
                self.live.apply(&config, &keys);
                self.current = config;
                let keys = policy::changed_keys(&self.good, &self.current);
                tracing::info!(keys = ?keys, window = ?self.window, "remote config accepted; on trial");
                self.decided(&remote.config_hash, audit::Outcome::Accepted(&keys));
                self.report_effective();
                self.begin_trial(remote);
                let mark = last_good::TrialMark {
                    offer,
                    interrupted,
                    restart: false,
                };
                if let Err(err) = last_good::mark_trial(&self.data_dir, &mark) {
                    tracing::warn!(%err, "marking the config on trial");
                }
                // A window of 0 ends at once, if the agent is healthy.
                self.poll_gate();
            }
            Err(reason) => self.refuse(remote, reason),
        }
    }

    fn refuse(&mut self, remote: AgentRemoteConfig, reason: String) {
        tracing::warn!(%reason, "remote config refused");
        self.decided(&remote.config_hash, audit::Outcome::Refused(&reason));
        self.report_status(remote.config_hash, RemoteConfigStatuses::Failed, reason);
    }

    /// An accepted config that changes `keys` from the last-known-good
    /// one, `key` among them only applied by a restart: kept on trial in the
    /// data directory for the next run, which the agent re-executes itself
    /// into.
    fn restart_into(
        &mut self,
        remote: AgentRemoteConfig,
        keys: &[&str],
        key: String,
        offer: String,
        interrupted: u32,
    ) {
        let mark = last_good::TrialMark {
            offer,
            interrupted,
            restart: true,
        };
        let kept = last_good::store_trial_offer(&self.data_dir, &remote)
            .and_then(|()| last_good::mark_trial(&self.data_dir, &mark));
        if let Err(err) = kept {
            last_good::clear_trial(&self.data_dir);
            return self.refuse(remote, format!("{key}: needs a restart, but {err}"));
        }
        self.trial = None;
        tracing::info!(keys = ?keys, "remote config accepted; it needs a restart, on trial after it");
        self.decided(&remote.config_hash, audit::Outcome::Accepted(keys));
        self.applying(remote.config_hash);
        self.restarting = true;
        (self.restart)();
    }

    /// Decides the config on trial, if any: rolled back as soon as the
    /// agent is unhealthy, APPLIED once the window has passed healthy.
    pub(super) fn poll_gate(&mut self) {
        let Some(trial) = self.trial.as_ref() else {
            return;
        };
        let budget = self.current.control.budget;
        match self.watch.check(&trial.since, &budget, self.window) {
            Err(unhealthy) => {
                self.metrics.gate_failure(unhealthy.check);
                self.roll_back(&unhealthy.reason);
            }
            Ok(()) if Instant::now() >= trial.until => self.confirm(),
            Ok(()) => {}
        }
    }

    /// A remote config verified against the trusted keys, laid over the
    /// local file in place of `base`, and runnable here: the config to run,
    /// the keys it changes and the first that needs a restart (allowed by
    /// `control.allow_restart`), or the one-line reason it is refused.
    fn admit(
        &self,
        remote: &AgentRemoteConfig,
        base: &Config,
    ) -> Result<(Config, Vec<&'static str>, Option<String>), String> {
        let yaml = signed::verify(remote, &self.current.control.trusted_keys)
            .map_err(|e| e.to_string())?;
        let (config, keys) =
            policy::lay_over(&yaml, &self.local, base).map_err(|e| e.to_string())?;
        match self.live.restart_key(&config, &keys) {
            Some(key) if !self.current.control.allow_restart => {
                Err(policy::Refused::NeedsRestart(key.to_owned()).to_string())
            }
            restart => Ok((config, keys, restart.map(str::to_owned))),
        }
    }

    fn confirm(&mut self) {
        let Some(trial) = self.trial.take() else {
            return;
        };
        last_good::clear_trial(&self.data_dir);
        let keys = policy::changed_keys(&self.good, &self.current);
        self.good = self.current.clone();
        self.metrics.on_trial.set(0);
        if let Err(err) = last_good::store(&self.data_dir, &trial.remote) {
            // Applied all the same; a restart would start on the previous one.
            tracing::warn!(%err, "keeping the last-known-good config");
        }
        tracing::info!(keys = ?keys, "remote config healthy through its window: applied");
        self.decided(&trial.remote.config_hash, audit::Outcome::Applied(&keys));
        self.report_status(
            trial.remote.config_hash,
            RemoteConfigStatuses::Applied,
            String::new(),
        );
    }

    fn roll_back(&mut self, why: &str) {
        let Some(trial) = self.trial.take() else {
            return;
        };
        last_good::clear_trial(&self.data_dir);
        let keys = policy::changed_keys(&self.current, &self.good);
        self.metrics.on_trial.set(0);
        let reason = super::state::one_line(&format!("{}: {why}", super::ROLLED_BACK));
        tracing::warn!(%reason, keys = ?keys, "remote config unhealthy within its window");
        self.decided(
            &trial.remote.config_hash,
            audit::Outcome::RolledBack(&reason),
        );
        if self.live.restart_key(&self.good, &keys).is_some() {
            // Back to the last-known-good config by a restart too; the next
            // run reports the rollback.
            let note = last_good::RolledBack {
                offer: audit::hex(&fingerprint(&trial.remote)),
                config_hash: trial.remote.config_hash.clone(),
                reason: reason.clone(),
            };
            if let Err(err) = last_good::store_rolled_back(&self.data_dir, &note) {
                tracing::warn!(%err, "keeping the rollback to report after the restart");
            }
            self.restarting = true;
            (self.restart)();
        } else {
            self.live.apply(&self.good, &keys);
            self.current = self.good.clone();
        }
        self.report_effective();
        self.report_status(
            trial.remote.config_hash,
            RemoteConfigStatuses::Failed,
            reason,
        );
    }

    /// At start-up: the last-known-good remote config, verified and checked
    /// again as if it were a new offer, becomes the running config.
    fn resume_last_good(&mut self) {
        let remote = match last_good::load(&self.data_dir) {
            Ok(Some(remote)) => remote,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%err, "last-known-good remote config not used");
                return;
            }
        };
        let outcome = self.admit(&remote, &self.current);
        match outcome {
            Ok((_, _, Some(key))) => {
                tracing::warn!(%key, "last-known-good remote config not used: it needs a restart");
            }
            Ok((config, keys, None)) => {
                let config = Arc::new(config);
                self.live.apply(&config, &keys);
                self.current = config.clone();
                self.good = config;
                tracing::info!(keys = ?keys, hash = %audit::hex(&remote.config_hash), "running the last-known-good remote config");
                self.last_offer = Some(audit::hex(&fingerprint(&remote)));
                self.report_status(
                    remote.config_hash,
                    RemoteConfigStatuses::Applied,
                    String::new(),
                );
            }
            Err(reason) => {
                tracing::warn!(%reason, "last-known-good remote config not used");
            }
        }
    }

    /// At start-up after a restart for `remote`: the agent runs it (main
    /// started it so), on trial from now; the last-known-good config is
    /// what a rollback returns to.
    fn resume_trial(&mut self, remote: AgentRemoteConfig) {
        let local = Config::parse(&self.local, std::path::Path::new("local config"));
        let good = match (last_good::load(&self.data_dir), local) {
            (Ok(Some(good)), Ok(local)) => super::restart::lay_over(&good, &local, &self.local),
            (Ok(None), Ok(local)) => Ok(local),
            (Err(err), _) => Err(err.to_string()),
            (_, Err(err)) => Err(err.to_string()),
        };
        match good {
            Ok(config) => self.good = Arc::new(config),
            // current stays the rollback target: a restart would find the
            // same trouble and start on the local file.
            Err(reason) => tracing::warn!(%reason, "last-known-good config unreadable"),
        }
        self.interrupted = last_good::read_trial(&self.data_dir);
        self.last_offer = Some(audit::hex(&fingerprint(&remote)));
        tracing::info!(hash = %audit::hex(&remote.config_hash), window = ?self.window, "running the remote config the agent restarted for; on trial");
        self.begin_trial(remote);
    }

    /// A decision on a config: counted by outcome and audited.
    fn decided(&self, config_hash: &[u8], outcome: audit::Outcome<'_>) {
        self.metrics.apply(outcome.name());
        (self.audit)(Signal::Log(audit::record(
            &self.resource,
            config_hash,
            outcome,
        )));
    }

    /// The remote config status the server is told next.
    fn report_status(&mut self, config_hash: Vec<u8>, status: RemoteConfigStatuses, error: String) {
        self.state.set_remote_status(RemoteConfigStatus {
            last_remote_config_hash: config_hash,
            status: status as i32,
            error_message: error,
        });
    }

    /// A config accepted and not yet judged: on trial, reported APPLYING.
    fn applying(&mut self, config_hash: Vec<u8>) {
        self.metrics.on_trial.set(1);
        self.report_status(config_hash, RemoteConfigStatuses::Applying, String::new());
    }

    /// `remote`, now running, is on trial from here for the health window
    /// and reported APPLYING meanwhile.
    fn begin_trial(&mut self, remote: AgentRemoteConfig) {
        self.applying(remote.config_hash.clone());
        self.trial = Some(Trial {
            since: self.watch.baseline(),
            until: Instant::now() + self.window,
            remote,
        });
    }

    /// A rollback the previous run restarted for: reported now, and its
    /// offer not taken again.
    fn report_rolled_back(&mut self) {
        let Some(note) = last_good::take_rolled_back(&self.data_dir) else {
            return;
        };
        tracing::warn!(reason = %note.reason, "restarted on the last-known-good config");
        self.last_offer = Some(note.offer);
        self.report_status(note.config_hash, RemoteConfigStatuses::Failed, note.reason);
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
        let (healthy, last_error) = match self.watch.health().ready() {
            Ok(()) => (true, String::new()),
            Err(err) => (false, err),
        };
        let stopping = self.watch.health().is_stopping();
        let component_health_map = self
            .watch
            .health()
            .components()
            .into_iter()
            .map(|component| {
                let status = match (&component.failure, stopping) {
                    (Some(_), _) => "failed",
                    (None, true) => "stopping",
                    (None, false) => "running",
                };
                let health = ComponentHealth {
                    healthy: component.healthy(),
                    start_time_unix_nano: component.started_unix_nano,
                    last_error: component.failure.unwrap_or_default(),
                    status: status.into(),
                    status_time_unix_nano: 0,
                    component_health_map: Default::default(),
                };
                (component.name.to_owned(), health)
            })
            .collect();
        self.state.set_health(ComponentHealth {
            healthy,
            start_time_unix_nano: self.started_unix_nano,
            last_error,
            status: if healthy { "running" } else { "not ready" }.into(),
            // Left 0: a changing timestamp would make every message news.
            status_time_unix_nano: 0,
            component_health_map,
        });
    }
}

/// A remote config within its health window.
struct Trial {
    /// The offer as received: kept as last-known-good once confirmed.
    remote: AgentRemoteConfig,
    since: Baseline,
    until: Instant,
}

/// How long a session must last for the next one to start from the
/// initial backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// How often the health window is looked at between sessions (within a
/// session the transports do it at each status check, every second).
const GATE_EVERY: Duration = Duration::from_secs(1);

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
