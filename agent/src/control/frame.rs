//! OpAMP message framing. Over WebSocket each binary message starts with a
//! varint header that is 0 in this version of the protocol; over HTTP the
//! body is the bare protobuf. Decoding is bounded by a size limit first.

use prost::Message;
use selfops_proto::opamp::{AgentToServer, ServerToAgent};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("empty WebSocket message: no header")]
    NoHeader,
    #[error("WebSocket header {0} is not the protocol's 0")]
    WrongHeader(u64),
    #[error("malformed WebSocket header")]
    MalformedHeader,
    #[error("malformed protobuf: {0}")]
    Decode(String),
}

impl FrameError {
    /// `reason` label at /metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooLarge(..) => "too_large",
            FrameError::NoHeader | FrameError::WrongHeader(_) | FrameError::MalformedHeader => {
                "header"
            }
            FrameError::Decode(_) => "decode",
        }
    }
}

/// Strips the WebSocket header, refusing any value but 0.
pub fn strip_header(frame: &[u8]) -> Result<&[u8], FrameError> {
    if frame.is_empty() {
        return Err(FrameError::NoHeader);
    }
    let mut value = 0u64;
    // A u64 varint is at most 10 bytes.
    for (i, byte) in frame.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f)
            .checked_shl(7 * i as u32)
            .unwrap_or(0);
        if byte & 0x80 == 0 {
            return match value {
                0 => Ok(&frame[i + 1..]),
                other => Err(FrameError::WrongHeader(other)),
            };
        }
    }
    Err(FrameError::MalformedHeader)
}

/// A server message from a WebSocket binary frame.
pub fn decode_ws(frame: &[u8], limit: usize) -> Result<ServerToAgent, FrameError> {
    if frame.len() > limit {
        return Err(FrameError::TooLarge(frame.len(), limit));
    }
    decode(strip_header(frame)?, limit)
}

/// A server message from an HTTP body.
pub fn decode(body: &[u8], limit: usize) -> Result<ServerToAgent, FrameError> {
    if body.len() > limit {
        return Err(FrameError::TooLarge(body.len(), limit));
    }
    ServerToAgent::decode(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// An agent message as a WebSocket binary frame: header 0, then protobuf.
pub fn encode_ws(message: &AgentToServer) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + message.encoded_len());
    frame.push(0);
    message.encode(&mut frame).unwrap_or_default();
    frame
}

/// The server side of the same framing (fleet server, tests).
pub fn encode_server_ws(message: &ServerToAgent) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + message.encoded_len());
    frame.push(0);
    message.encode(&mut frame).unwrap_or_default();
    frame
}

pub fn decode_agent_ws(frame: &[u8], limit: usize) -> Result<AgentToServer, FrameError> {
    if frame.len() > limit {
        return Err(FrameError::TooLarge(frame.len(), limit));
    }
    AgentToServer::decode(strip_header(frame)?).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_checked_and_stripped() {
        let message = ServerToAgent {
            instance_uid: vec![7; 16],
            flags: 1,
            ..Default::default()
        };
        let frame = encode_server_ws(&message);
        assert_eq!(frame[0], 0);
        assert_eq!(decode_ws(&frame, 1 << 20).unwrap(), message);
        let mut wrong = frame.clone();
        wrong[0] = 1;
        assert_eq!(decode_ws(&wrong, 1 << 20), Err(FrameError::WrongHeader(1)));
        // A multi-byte varint that is not zero.
        assert_eq!(
            strip_header(&[0x80, 0x01, 5]),
            Err(FrameError::WrongHeader(128))
        );
        // A zero written in two bytes is still zero.
        assert_eq!(strip_header(&[0x80, 0x00, 5]), Ok(&[5][..]));
        assert_eq!(strip_header(&[]), Err(FrameError::NoHeader));
        assert_eq!(strip_header(&[0xff; 11]), Err(FrameError::MalformedHeader));
    }

    #[test]
    fn limit_comes_before_decoding() {
        let frame = vec![0u8; 5000];
        assert_eq!(
            decode_ws(&frame, 4096),
            Err(FrameError::TooLarge(5000, 4096))
        );
        assert_eq!(decode(&frame, 4096), Err(FrameError::TooLarge(5000, 4096)));
    }

    #[test]
    fn malformed_protobuf_is_an_error() {
        // Field 1, length-delimited, length 100 with 1 byte behind it.
        assert!(matches!(
            decode(&[0x0a, 100, 1], 4096),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            decode_ws(&[0, 0x0a, 100, 1], 4096),
            Err(FrameError::Decode(_))
        ));
    }
}
