//! What the agent tells the server, and what it makes of the answers:
//! sequence numbers, capabilities on every message, each part of the
//! status sent only when it changed (or all of it when the server asks
//! with ReportFullState), heartbeats, retry hints and new instance uids.

use std::time::Duration;

use selfops_proto::opamp::{
    AgentCapabilities, AgentDescription, AgentDisconnect, AgentRemoteConfig, AgentToServer,
    AnyValue, ComponentHealth, EffectiveConfig, KeyValue, RemoteConfigStatus, ServerErrorResponse,
    ServerErrorResponseType, ServerToAgent, ServerToAgentFlags, any_value,
    server_error_response::Details,
};
use uuid::Uuid;

use super::backoff;

/// Always sent: what this agent does.
pub const CAPABILITIES: u64 = AgentCapabilities::ReportsStatus as u64
    | AgentCapabilities::AcceptsRemoteConfig as u64
    | AgentCapabilities::ReportsEffectiveConfig as u64
    | AgentCapabilities::ReportsHealth as u64
    | AgentCapabilities::ReportsRemoteConfig as u64
    | AgentCapabilities::ReportsHeartbeat as u64;

/// Longest heartbeat a server can set (a remote value).
const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);

/// A part of the status and whether the server has seen its latest value.
#[derive(Debug, Clone, Default)]
struct Part<T> {
    value: Option<T>,
    sent: bool,
}

impl<T: Clone + PartialEq> Part<T> {
    fn set(&mut self, value: T) {
        if self.value.as_ref() != Some(&value) {
            self.value = Some(value);
            self.sent = false;
        }
    }

    /// The value if unsent (or `full`), marking it sent.
    fn take(&mut self, full: bool) -> Option<T> {
        let out = (full || !self.sent).then(|| self.value.clone()).flatten();
        self.sent = true;
        out
    }

    fn pending(&self) -> bool {
        !self.sent && self.value.is_some()
    }
}

/// What one server message asks of the client.
#[derive(Debug, Default, PartialEq)]
pub struct Reply {
    /// A remote config offer to verify and apply.
    pub remote_config: Option<AgentRemoteConfig>,
    /// Server error: wait at least this long before trying again.
    pub retry_after: Option<Duration>,
    /// Server error that says not to retry the message.
    pub error: Option<String>,
    /// The server assigned a new instance uid (to be persisted).
    pub new_uid: Option<Uuid>,
}

#[derive(Debug)]
pub struct ClientState {
    uid: Uuid,
    sequence_num: u64,
    description: Part<AgentDescription>,
    health: Part<ComponentHealth>,
    effective: Part<EffectiveConfig>,
    remote_status: Part<RemoteConfigStatus>,
    /// The server's ReportFullState not yet answered.
    full_requested: bool,
    heartbeat: Option<Duration>,
}

impl ClientState {
    pub fn new(uid: Uuid, description: AgentDescription) -> Self {
        let mut state = Self {
            uid,
            sequence_num: 0,
            description: Part::default(),
            health: Part::default(),
            effective: Part::default(),
            remote_status: Part::default(),
            full_requested: true,
            heartbeat: None,
        };
        state.description.set(description);
        state
    }

    pub fn uid(&self) -> Uuid {
        self.uid
    }

    pub fn set_health(&mut self, health: ComponentHealth) {
        self.health.set(health);
    }

    pub fn set_effective_config(&mut self, config: EffectiveConfig) {
        self.effective.set(config);
    }

    pub fn set_remote_status(&mut self, status: RemoteConfigStatus) {
        self.remote_status.set(status);
    }

    pub fn remote_status(&self) -> Option<&RemoteConfigStatus> {
        self.remote_status.value.as_ref()
    }

    /// Something the server has not seen yet.
    pub fn has_news(&self) -> bool {
        self.full_requested
            || self.description.pending()
            || self.health.pending()
            || self.effective.pending()
            || self.remote_status.pending()
    }

    /// A new connection: the server may have lost everything.
    pub fn reconnected(&mut self) {
        self.full_requested = true;
    }

    /// The heartbeat the server set, if any.
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// The next message: changed parts only, unless a full report is due.
    pub fn next_message(&mut self) -> AgentToServer {
        let full = std::mem::take(&mut self.full_requested);
        self.sequence_num = self.sequence_num.wrapping_add(1);
        AgentToServer {
            instance_uid: self.uid.as_bytes().to_vec(),
            sequence_num: self.sequence_num,
            agent_description: self.description.take(full),
            capabilities: CAPABILITIES,
            health: self.health.take(full),
            effective_config: self.effective.take(full),
            remote_config_status: self.remote_status.take(full),
            ..Default::default()
        }
    }

    /// The last message before closing.
    pub fn disconnect_message(&mut self) -> AgentToServer {
        self.sequence_num = self.sequence_num.wrapping_add(1);
        AgentToServer {
            instance_uid: self.uid.as_bytes().to_vec(),
            sequence_num: self.sequence_num,
            capabilities: CAPABILITIES,
            agent_disconnect: Some(AgentDisconnect {}),
            ..Default::default()
        }
    }

    /// Takes in one server message.
    pub fn receive(&mut self, message: ServerToAgent) -> Reply {
        let mut reply = Reply::default();
        if !message.instance_uid.is_empty() && message.instance_uid != self.uid.as_bytes() {
            // Not for this agent (a multiplexing server's mistake): ignore.
            reply.error = Some("message for another instance_uid ignored".into());
            return reply;
        }
        if let Some(error) = message.error_response {
            self.server_error(error, &mut reply);
            // Nothing else is valid beside an error.
            return reply;
        }
        if message.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            self.full_requested = true;
        }
        if let Some(identification) = message.agent_identification
            && let Ok(uid) = Uuid::from_slice(&identification.new_instance_uid)
            && !uid.is_nil()
        {
            self.uid = uid;
            reply.new_uid = Some(uid);
        }
        if let Some(seconds) = message
            .connection_settings
            .and_then(|offers| offers.opamp)
            .map(|opamp| opamp.heartbeat_interval_seconds)
        {
            self.heartbeat = (seconds > 0)
                .then(|| Duration::from_secs(seconds).min(MAX_HEARTBEAT))
                .or(self.heartbeat);
        }
        reply.remote_config = message.remote_config;
        reply
    }

    fn server_error(&mut self, error: ServerErrorResponse, reply: &mut Reply) {
        let unavailable = error.r#type == ServerErrorResponseType::Unavailable as i32;
        if unavailable {
            let asked = match error.details {
                Some(Details::RetryInfo(info)) => backoff::from_nanos(info.retry_after_nanoseconds),
                None => Duration::ZERO,
            };
            reply.retry_after = Some(asked);
        } else {
            reply.error = Some(format!("server error: {}", one_line(&error.error_message)));
        }
        // What was sent may not have been taken in: send it all again.
        self.full_requested = true;
    }
}

/// `key: value` string attributes.
pub fn attributes(pairs: &[(&str, String)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| KeyValue {
            key: (*key).to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.clone())),
            }),
        })
        .collect()
}

/// A remote string, shortened and on one line, fit for a log.
pub fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use selfops_proto::opamp::{
        AgentIdentification, ConnectionSettingsOffers, OpAmpConnectionSettings, RetryInfo,
    };

    use super::*;

    fn state() -> ClientState {
        ClientState::new(
            Uuid::now_v7(),
            AgentDescription {
                identifying_attributes: attributes(&[("service.name", "selfops".into())]),
                non_identifying_attributes: vec![],
            },
        )
    }

    #[test]
    fn first_message_is_full_then_only_changes() {
        let mut s = state();
        let first = s.next_message();
        assert_eq!(first.sequence_num, 1);
        assert_eq!(first.capabilities, CAPABILITIES);
        assert_eq!(first.instance_uid.len(), 16);
        assert!(first.agent_description.is_some());
        assert!(!s.has_news());
        let second = s.next_message();
        assert_eq!(second.sequence_num, 2);
        assert_eq!(second.capabilities, CAPABILITIES);
        assert!(second.agent_description.is_none() && second.health.is_none());

        let healthy = ComponentHealth {
            healthy: true,
            ..Default::default()
        };
        s.set_health(healthy.clone());
        assert!(s.has_news());
        assert_eq!(s.next_message().health, Some(healthy.clone()));
        // The same value again is no news.
        s.set_health(healthy);
        assert!(!s.has_news());
    }

    #[test]
    fn report_full_state_resends_everything() {
        let mut s = state();
        s.set_health(ComponentHealth::default());
        let _ = s.next_message();
        let reply = s.receive(ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..Default::default()
        });
        assert_eq!(reply, Reply::default());
        assert!(s.has_news());
        let full = s.next_message();
        assert!(full.agent_description.is_some() && full.health.is_some());
    }

    #[test]
    fn server_errors() {
        let mut s = state();
        let _ = s.next_message();
        let reply = s.receive(ServerToAgent {
            error_response: Some(ServerErrorResponse {
                r#type: ServerErrorResponseType::Unavailable as i32,
                error_message: String::new(),
                details: Some(Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: u64::MAX,
                })),
            }),
            ..Default::default()
        });
        assert_eq!(reply.retry_after, Some(backoff::MAX_RETRY_AFTER));
        assert!(s.has_news());
        let reply = s.receive(ServerToAgent {
            error_response: Some(ServerErrorResponse {
                r#type: ServerErrorResponseType::BadRequest as i32,
                error_message: "no\nthanks".into(),
                details: None,
            }),
            ..Default::default()
        });
        assert_eq!(reply.error.as_deref(), Some("server error: no thanks"));
    }

    #[test]
    fn heartbeat_and_new_uid_from_the_server() {
        let mut s = state();
        let new = Uuid::now_v7();
        let reply = s.receive(ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: new.as_bytes().to_vec(),
            }),
            connection_settings: Some(ConnectionSettingsOffers {
                opamp: Some(OpAmpConnectionSettings {
                    heartbeat_interval_seconds: u64::MAX,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(reply.new_uid, Some(new));
        assert_eq!(s.uid(), new);
        assert_eq!(s.heartbeat(), Some(MAX_HEARTBEAT));
        assert_eq!(s.next_message().instance_uid, new.as_bytes().to_vec());
        // A uid of the wrong length is ignored.
        let reply = s.receive(ServerToAgent {
            agent_identification: Some(AgentIdentification {
                new_instance_uid: vec![1, 2, 3],
            }),
            ..Default::default()
        });
        assert_eq!(reply.new_uid, None);
    }

    #[test]
    fn disconnect_is_marked() {
        let mut s = state();
        let last = s.disconnect_message();
        assert!(last.agent_disconnect.is_some());
        assert_eq!(last.capabilities, CAPABILITIES);
    }
}
