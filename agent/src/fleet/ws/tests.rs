//! The framing against tungstenite's client (what agents run) and against
//! hand-made frames for what that client never sends.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use super::*;

const LIMIT: usize = 1 << 20;

/// A client frame: masked with `key`, as a client must send it.
fn masked(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(MASK | len as u8),
        len @ 126..=0xFFFF => {
            out.push(MASK | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(MASK | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// What a reader makes of `bytes`, the stream ending after them.
async fn read_all(bytes: &[u8], limit: usize) -> Vec<Result<Incoming, String>> {
    let mut reader = Reader::new(bytes, limit);
    let mut out = Vec::new();
    loop {
        let next = reader.next().await.map_err(|e| e.to_string());
        let end = matches!(next, Ok(Incoming::Close(_)) | Err(_));
        out.push(next);
        if end {
            return out;
        }
    }
}

#[tokio::test]
async fn messages_from_a_tungstenite_client_of_every_length_form() {
    // Larger than any message: each side writes whole before the other reads.
    let (client, server) = tokio::io::duplex(1 << 20);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let (read, mut write) = tokio::io::split(server);
    let mut reader = Reader::new(read, LIMIT);
    let bodies: Vec<Vec<u8>> = [0, 5, 125, 126, 300, 65_535, 65_536, 200_000]
        .iter()
        .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect();
    let sent = bodies.clone();
    let sending = tokio::spawn(async move {
        for body in sent {
            client.send(Message::Binary(body.into())).await.unwrap();
        }
        client
            .send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        client
    });
    for body in &bodies {
        assert_eq!(reader.next().await.unwrap(), Incoming::Binary(body.clone()));
    }
    assert_eq!(
        reader.next().await.unwrap(),
        Incoming::Ping(b"are you there".to_vec())
    );
    let mut client = sending.await.unwrap();

    // The server's frames, as the client reads them.
    for body in &bodies {
        send_binary(&mut write, body).await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(got) => assert_eq!(got.as_ref(), body.as_slice()),
            other => panic!("{other:?}"),
        }
    }
    send_pong(&mut write, b"pong").await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Pong(b"pong".to_vec().into())
    );

    // The client closes: its close frame comes through, and the echo
    // completes the client's close handshake.
    client
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    let Incoming::Close(Some(payload)) = reader.next().await.unwrap() else {
        panic!("no close");
    };
    assert_eq!(payload[..2], 1001u16.to_be_bytes());
    send_close(&mut write, &payload).await.unwrap();
    match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("the close not echoed: {other:?}"),
    }
}

#[tokio::test]
async fn fragments_are_joined_around_control_frames() {
    let key = [1, 2, 3, 4];
    let mut bytes = masked(BINARY, b"frag", key);
    bytes.extend(masked(FIN | PING, b"p", key));
    bytes.extend(masked(CONTINUATION, b"men", key));
    bytes.extend(masked(FIN | PONG, b"", key));
    bytes.extend(masked(FIN | CONTINUATION, b"ted", key));
    bytes.extend(masked(FIN | BINARY, b"whole", key));
    assert_eq!(
        read_all(&bytes, LIMIT).await,
        vec![
            Ok(Incoming::Ping(b"p".to_vec())),
            Ok(Incoming::Binary(b"fragmented".to_vec())),
            Ok(Incoming::Binary(b"whole".to_vec())),
            Ok(Incoming::Close(None)),
        ]
    );
}

#[tokio::test]
async fn what_an_agent_may_not_send_ends_the_session() {
    let key = [9, 8, 7, 6];
    let unmasked = {
        let mut frame = masked(FIN | BINARY, b"abc", key);
        frame[1] &= !MASK;
        frame.drain(2..6);
        frame
    };
    let long_ping = masked(FIN | PING, &[0; 126], key);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", masked(FIN | TEXT, b"{}", key), "text frame"),
        ("unmasked", unmasked, "unmasked"),
        (
            "rsv",
            masked(FIN | 0x40 | BINARY, b"x", key),
            "reserved bits",
        ),
        ("opcode", masked(FIN | 0x3, b"x", key), "reserved opcode"),
        (
            "lone continuation",
            masked(FIN | CONTINUATION, b"x", key),
            "continuation of no message",
        ),
        ("long control", long_ping, "control frame"),
        (
            "fragmented control",
            masked(PING, b"x", key),
            "control frame",
        ),
        (
            "message in a message",
            [masked(BINARY, b"a", key), masked(FIN | BINARY, b"b", key)].concat(),
            "inside another",
        ),
        (
            "ended inside a message",
            masked(BINARY, b"a", key),
            "ended inside a message",
        ),
        (
            "ended inside a frame",
            masked(FIN | BINARY, b"abcdef", key)[..8].to_vec(),
            "reading",
        ),
    ];
    for (name, bytes, expected) in cases {
        let out = read_all(&bytes, LIMIT).await;
        let Some(Err(err)) = out.last() else {
            panic!("{name}: accepted: {out:?}");
        };
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// A frame claiming more than the limit is refused from its header: the
/// payload is never waited for nor allocated.
#[tokio::test]
async fn an_oversized_message_is_refused_before_its_payload() {
    let (mut peer, server) = tokio::io::duplex(64);
    let mut header = vec![FIN | BINARY, MASK | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    peer.write_all(&header).await.unwrap();
    let mut reader = Reader::new(server, LIMIT);
    let err = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .expect("waited for a payload it should have refused")
        .unwrap_err();
    assert!(
        matches!(err, WsError::TooLarge(n, LIMIT) if n == 1 << 40),
        "{err}"
    );
    assert_eq!(err.label(), Some("too_large"));

    // Fragments count together.
    let key = [0; 4];
    let bytes = [
        masked(BINARY, &[1; 600], key),
        masked(FIN | CONTINUATION, &[2; 600], key),
    ]
    .concat();
    let out = read_all(&bytes, 1000).await;
    assert!(
        matches!(out.last(), Some(Err(e)) if e.contains("1200 bytes")),
        "{out:?}"
    );
}
