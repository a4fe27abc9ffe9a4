//! The server side of WebSocket framing (RFC 6455) for agent sessions,
//! after hyper's upgrade. Written here rather than taken from tungstenite,
//! which the agent's client uses: tungstenite keeps a read buffer the size
//! of the largest message and a write buffer for every connection, for as
//! long as it lives, and a fleet server holds ten thousand connections
//! that rest between heartbeats. Here a resting session holds no buffer:
//! a message is read into a vector of its own size, handed over and freed.
//!
//! What an agent may send: binary messages (in one frame or fragments),
//! ping, pong and close. Text and reserved opcodes, extensions (RSV bits),
//! unmasked frames and messages over the limit end the session.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASK: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// Longest payload of a control frame.
const MAX_CONTROL: u64 = 125;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("reading the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes or more is over the limit of {1}")]
    TooLarge(u64, usize),
    #[error("a text frame (OpAMP is binary)")]
    Text,
    #[error("WebSocket protocol: {0}")]
    Protocol(&'static str),
}

impl WsError {
    /// The fleet's `messages_rejected_total{reason}` for this error, if
    /// it counts as a rejected message rather than a lost connection.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            WsError::Io(_) => None,
            WsError::TooLarge(..) => Some("too_large"),
            WsError::Text => Some("text"),
            WsError::Protocol(_) => Some("websocket"),
        }
    }
}

/// What a session gets from its agent.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A whole binary message.
    Binary(Vec<u8>),
    /// A ping to answer with a pong carrying `0`.
    Ping(Vec<u8>),
    /// The agent closes (its payload, to echo), or the connection ended
    /// between frames (`None`).
    Close(Option<Vec<u8>>),
}

/// Reads agent messages from `io`: each call returns the next one. Not to
/// be cancelled mid-read (the session keeps its read running across its
/// other work); at rest it holds nothing but the stream.
pub struct Reader<R> {
    io: R,
    max_message_bytes: usize,
    /// A fragmented binary message being assembled.
    partial: Option<Vec<u8>>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_message_bytes: usize) -> Self {
        Self {
            io,
            max_message_bytes,
            partial: None,
        }
    }

    /// Owns the reader while reading, so that a session can keep one read
    /// going across other awaits and have the reader back with its result.
    pub async fn next_owned(mut self) -> (Self, Result<Incoming, WsError>) {
        let next = self.next().await;
        (self, next)
    }

    pub async fn next(&mut self) -> Result<Incoming, WsError> {
        loop {
            let mut head = [0u8; 2];
            match self.io.read(&mut head[..1]).await? {
                0 if self.partial.is_none() => return Ok(Incoming::Close(None)),
                0 => return Err(WsError::Protocol("connection ended inside a message")),
                _ => {}
            }
            self.io.read_exact(&mut head[1..]).await?;
            let (fin, opcode) = (head[0] & FIN != 0, head[0] & 0x0F);
            if head[0] & RSV != 0 {
                return Err(WsError::Protocol("reserved bits set (no extension agreed)"));
            }
            if head[1] & MASK == 0 {
                return Err(WsError::Protocol("an unmasked frame from a client"));
            }
            let len = match head[1] & 0x7F {
                126 => u64::from(self.io.read_u16().await?),
                127 => self.io.read_u64().await?,
                short => u64::from(short),
            };
            let mut mask = [0u8; 4];
            self.io.read_exact(&mut mask).await?;
            match opcode {
                CLOSE | PING | PONG => {
                    if !fin || len > MAX_CONTROL {
                        return Err(WsError::Protocol("a fragmented or long control frame"));
                    }
                    let mut payload = Vec::new();
                    self.payload(&mut payload, len, mask).await?;
                    match opcode {
                        CLOSE => return Ok(Incoming::Close(Some(payload))),
                        PING => return Ok(Incoming::Ping(payload)),
                        _ => continue,
                    }
                }
                TEXT => return Err(WsError::Text),
                BINARY | CONTINUATION => {
                    let mut message = match (opcode, self.partial.take()) {
                        (BINARY, None) => Vec::new(),
                        (CONTINUATION, Some(partial)) => partial,
                        (BINARY, Some(_)) => {
                            return Err(WsError::Protocol("a new message inside another"));
                        }
                        _ => return Err(WsError::Protocol("a continuation of no message")),
                    };
                    let total = u64::try_from(message.len())
                        .unwrap_or(u64::MAX)
                        .saturating_add(len);
                    if total > u64::try_from(self.max_message_bytes).unwrap_or(u64::MAX) {
                        return Err(WsError::TooLarge(total, self.max_message_bytes));
                    }
                    self.payload(&mut message, len, mask).await?;
                    if fin {
                        return Ok(Incoming::Binary(message));
                    }
                    self.partial = Some(message);
                }
                _ => return Err(WsError::Protocol("a reserved opcode")),
            }
        }
    }

    /// Appends `len` unmasked payload bytes (already checked against the
    /// limit) to `into`.
    async fn payload(
        &mut self,
        into: &mut Vec<u8>,
        len: u64,
        mask: [u8; 4],
    ) -> Result<(), WsError> {
        let len =
            usize::try_from(len).map_err(|_| WsError::TooLarge(len, self.max_message_bytes))?;
        let start = into.len();
        into.resize(start.saturating_add(len), 0);
        self.io.read_exact(&mut into[start..]).await?;
        for (i, byte) in into[start..].iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        Ok(())
    }
}

/// One unmasked frame from the server: FIN set, `opcode`, `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len().saturating_add(10));
    frame.push(FIN | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

pub async fn send_binary<W: AsyncWrite + Unpin>(io: &mut W, payload: &[u8]) -> std::io::Result<()> {
    send(io, BINARY, payload).await
}

pub async fn send_pong<W: AsyncWrite + Unpin>(io: &mut W, payload: &[u8]) -> std::io::Result<()> {
    send(io, PONG, payload).await
}

/// A close frame: the agent's own close payload echoed, or none (a close
/// without a status code).
pub async fn send_close<W: AsyncWrite + Unpin>(io: &mut W, payload: &[u8]) -> std::io::Result<()> {
    send(io, CLOSE, payload.get(..2).unwrap_or_default()).await?;
    io.shutdown().await
}

async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    io.write_all(&frame(opcode, payload)).await?;
    io.flush().await
}

#[cfg(test)]
mod tests;
