//! `google.rpc.Status` with a `google.rpc.RetryInfo`: the detail a gRPC
//! client reads from `grpc-status-details-bin` to know how long to wait,
//! and the body of an OTLP/HTTP error response. The messages are the ones
//! the exporters decode (`export::retry`).

use std::time::Duration;

pub use crate::export::retry::{ProtoAny, ProtoDuration, RetryInfo, RpcStatus};

pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// A status of `code` carrying a `RetryInfo` that asks for `delay`.
pub fn with_retry_info(code: i32, message: &str, delay: Duration) -> RpcStatus {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    RpcStatus {
        code,
        message: message.to_owned(),
        details: vec![ProtoAny {
            type_url: RETRY_INFO_TYPE_URL.to_owned(),
            value: prost::Message::encode_to_vec(&info),
        }],
    }
}
