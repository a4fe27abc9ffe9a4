//! Pins the OpAMP field numbers the agent and the fleet server rely on to
//! the specification's, since other implementations decode by them.

use prost::Message;

use super::opamp::*;

/// Field number and wire type of the first key in `bytes`.
fn first_key(bytes: &[u8]) -> (u64, u8) {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    (value >> 3, (value & 7) as u8)
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

#[test]
fn agent_to_server_fields() {
    let cases: Vec<(&str, AgentToServer, u64, u8)> = vec![
        (
            "instance_uid",
            AgentToServer {
                instance_uid: vec![1],
                ..Default::default()
            },
            1,
            LEN,
        ),
        (
            "sequence_num",
            AgentToServer {
                sequence_num: 1,
                ..Default::default()
            },
            2,
            VARINT,
        ),
        (
            "agent_description",
            AgentToServer {
                agent_description: Some(AgentDescription::default()),
                ..Default::default()
            },
            3,
            LEN,
        ),
        (
            "capabilities",
            AgentToServer {
                capabilities: 1,
                ..Default::default()
            },
            4,
            VARINT,
        ),
        (
            "health",
            AgentToServer {
                health: Some(ComponentHealth::default()),
                ..Default::default()
            },
            5,
            LEN,
        ),
        (
            "effective_config",
            AgentToServer {
                effective_config: Some(EffectiveConfig::default()),
                ..Default::default()
            },
            6,
            LEN,
        ),
        (
            "remote_config_status",
            AgentToServer {
                remote_config_status: Some(RemoteConfigStatus::default()),
                ..Default::default()
            },
            7,
            LEN,
        ),
        (
            "agent_disconnect",
            AgentToServer {
                agent_disconnect: Some(AgentDisconnect {}),
                ..Default::default()
            },
            9,
            LEN,
        ),
        (
            "flags",
            AgentToServer {
                flags: 1,
                ..Default::default()
            },
            10,
            VARINT,
        ),
    ];
    for (field, message, number, wire_type) in cases {
        assert_eq!(
            first_key(&message.encode_to_vec()),
            (number, wire_type),
            "{field}"
        );
    }
}

#[test]
fn server_to_agent_fields() {
    let cases: Vec<(&str, ServerToAgent, u64, u8)> = vec![
        (
            "error_response",
            ServerToAgent {
                error_response: Some(ServerErrorResponse::default()),
                ..Default::default()
            },
            2,
            LEN,
        ),
        (
            "remote_config",
            ServerToAgent {
                remote_config: Some(AgentRemoteConfig::default()),
                ..Default::default()
            },
            3,
            LEN,
        ),
        (
            "connection_settings",
            ServerToAgent {
                connection_settings: Some(ConnectionSettingsOffers::default()),
                ..Default::default()
            },
            4,
            LEN,
        ),
        (
            "flags",
            ServerToAgent {
                flags: 1,
                ..Default::default()
            },
            6,
            VARINT,
        ),
        (
            "capabilities",
            ServerToAgent {
                capabilities: 1,
                ..Default::default()
            },
            7,
            VARINT,
        ),
        (
            "agent_identification",
            ServerToAgent {
                agent_identification: Some(AgentIdentification::default()),
                ..Default::default()
            },
            8,
            LEN,
        ),
    ];
    for (field, message, number, wire_type) in cases {
        assert_eq!(
            first_key(&message.encode_to_vec()),
            (number, wire_type),
            "{field}"
        );
    }
}

#[test]
fn nested_fields() {
    let health = ComponentHealth {
        start_time_unix_nano: 1,
        ..Default::default()
    };
    assert_eq!(first_key(&health.encode_to_vec()), (2, FIXED64));
    let retry = ServerErrorResponse {
        details: Some(server_error_response::Details::RetryInfo(RetryInfo {
            retry_after_nanoseconds: 1,
        })),
        ..Default::default()
    };
    assert_eq!(first_key(&retry.encode_to_vec()), (3, LEN));
    let settings = OpAmpConnectionSettings {
        heartbeat_interval_seconds: 1,
        ..Default::default()
    };
    assert_eq!(first_key(&settings.encode_to_vec()), (4, VARINT));
    let status = RemoteConfigStatus {
        status: RemoteConfigStatuses::Failed as i32,
        ..Default::default()
    };
    assert_eq!(status.encode_to_vec(), vec![2 << 3, 3]);
    let remote = AgentRemoteConfig {
        config_hash: vec![1],
        ..Default::default()
    };
    assert_eq!(first_key(&remote.encode_to_vec()), (2, LEN));
}

#[test]
fn capability_bits() {
    assert_eq!(AgentCapabilities::ReportsStatus as i32, 0x1);
    assert_eq!(AgentCapabilities::AcceptsRemoteConfig as i32, 0x2);
    assert_eq!(AgentCapabilities::ReportsEffectiveConfig as i32, 0x4);
    assert_eq!(AgentCapabilities::ReportsHealth as i32, 0x800);
    assert_eq!(AgentCapabilities::ReportsRemoteConfig as i32, 0x1000);
    assert_eq!(AgentCapabilities::ReportsHeartbeat as i32, 0x2000);
    assert_eq!(ServerToAgentFlags::ReportFullState as i32, 0x1);
    assert_eq!(ServerErrorResponseType::Unavailable as i32, 2);
}
