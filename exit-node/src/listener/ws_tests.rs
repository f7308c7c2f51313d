use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// Our server end and a tungstenite client end over an in-memory pipe of `capacity` bytes
/// (small capacities force partial writes).
async fn pair(
    capacity: usize,
) -> (
    WsStream<tokio::io::DuplexStream>,
    WebSocketStream<tokio::io::DuplexStream>,
) {
    let (ours, theirs) = tokio::io::duplex(capacity);
    let client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
    (WsStream::new(ours, 1 << 20), client)
}

#[tokio::test]
async fn messages_and_pings_from_a_tungstenite_client() {
    let (mut ours, mut client) = pair(64 * 1024).await;
    let sizes = [0, 1, 125, 126, 65_535, 65_536, 300_000];
    let sender = tokio::spawn(async move {
        for (i, n) in sizes.into_iter().enumerate() {
            client
                .send(Message::binary(payload(n, i as u8)))
                .await
                .unwrap();
        }
        client
            .send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
        client
    });
    for (i, n) in sizes.into_iter().enumerate() {
        match ours.reader.next().await.unwrap() {
            Incoming::Message(m) => assert_eq!(m.to_vec(), payload(n, i as u8), "message {i}"),
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    let Incoming::Ping(p) = ours.reader.next().await.unwrap() else {
        panic!("expected the ping");
    };
    assert_eq!(&p[..], b"hi");
    let mut client = sender.await.unwrap();
    client.close(None).await.unwrap();
    let Incoming::Close(close) = ours.reader.next().await.unwrap() else {
        panic!("expected the close");
    };
    assert_eq!(close.code, ws::CLOSE_NO_STATUS);
}

#[tokio::test]
async fn batches_survive_partial_writes_in_order() {
    // 200 frames in batches of at most 64, through a pipe that takes 1,000 bytes at a time.
    let (mut ours, mut client) = pair(1000).await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(Ok(msg)) = client.next().await {
            match msg {
                Message::Binary(b) => got.push(b.to_vec()),
                Message::Pong(p) => got.push(p.to_vec()),
                Message::Close(frame) => {
                    let frame = frame.expect("a close status");
                    got.push(
                        format!("close {} {}", u16::from(frame.code), frame.reason).into_bytes(),
                    );
                }
                _ => {}
            }
        }
        got
    });
    let mut want = Vec::new();
    for i in 0..200usize {
        let p = payload(i * 37, i as u8);
        want.push(p.clone());
        ours.writer.push(Outgoing::Binary(p.into()));
        if ours.writer.full() {
            ours.writer.flush().await.unwrap();
        }
    }
    ours.writer.push(Outgoing::Pong(b"pong".to_vec().into()));
    want.push(b"pong".to_vec());
    ours.writer.push(Outgoing::Close(4404, "unknown session"));
    ours.writer
        .push(Outgoing::Binary(b"after the close".to_vec().into()));
    want.push(b"close 4404 unknown session".to_vec());
    assert!(ours.writer.closed());
    ours.writer.flush().await.unwrap();
    drop(ours);
    assert_eq!(reader.await.unwrap(), want);
}

#[tokio::test]
async fn unmasked_or_oversized_input_is_refused() {
    let (ours, mut theirs) = tokio::io::duplex(4096);
    let mut ws = WsStream::new(ours, 1000);
    // A server-style (unmasked) frame from the client.
    let mut frame = ws::header(OpCode::Binary, 3, None).as_bytes().to_vec();
    frame.extend_from_slice(b"abc");
    tokio::io::AsyncWriteExt::write_all(&mut theirs, &frame)
        .await
        .unwrap();
    let err = ws.reader.next().await.unwrap_err();
    assert!(
        matches!(err, ReadError::Frame(ws::WsError::Unmasked)),
        "{err}"
    );

    let (ours, mut theirs) = tokio::io::duplex(4096);
    let mut ws = WsStream::new(ours, 1000);
    let frame = ws::header(OpCode::Binary, 1001, Some([1, 2, 3, 4]));
    tokio::io::AsyncWriteExt::write_all(&mut theirs, frame.as_bytes())
        .await
        .unwrap();
    let err = ws.reader.next().await.unwrap_err();
    assert!(
        matches!(err, ReadError::Frame(ws::WsError::TooLong { .. })),
        "{err}"
    );

    drop(theirs);
    let (ours, theirs) = tokio::io::duplex(4096);
    drop(theirs);
    let mut ws = WsStream::new(ours, 1000);
    assert!(matches!(ws.reader.next().await, Err(ReadError::Eof)));
}
