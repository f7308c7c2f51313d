//! The fault-injecting relay on loopback: it forwards faithfully, and each hook does what
//! it says.

// tungstenite's handshake callback returns its large ErrorResponse by value.
#![allow(clippy::result_large_err)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

struct Relay {
    child: Child,
    listen: SocketAddr,
    control: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(upstream: SocketAddr) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ht-relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--upstream",
            &upstream.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ht-relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!((words[0], words[2]), ("listening", "control"), "{line}");
    Relay {
        child,
        listen: words[1].parse().unwrap(),
        control: words[3].parse().unwrap(),
    }
}

async fn control(relay: &Relay, cmd: &str) -> String {
    let mut tcp = TcpStream::connect(relay.control).await.unwrap();
    tcp.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(tcp)
        .read_line(&mut line)
        .await
        .unwrap();
    line.trim().to_owned()
}

/// An upstream that echoes binary messages on path `/u` with Host `a.test`, prefixing `E`.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = (String::new(), String::new());
                let check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                             resp| {
                    let host = req.headers()["host"].to_str().unwrap().to_owned();
                    seen = (host, req.uri().path().to_owned());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
                    return;
                };
                assert_eq!(
                    seen,
                    ("a.test".to_owned(), "/u".to_owned()),
                    "path and Host are kept"
                );
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_binary() {
                        let mut reply = b"E".to_vec();
                        reply.extend_from_slice(&msg.into_data());
                        if ws.send(Message::binary(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn client(relay: &Relay) -> Ws {
    let tcp = TcpStream::connect(relay.listen).await.unwrap();
    tokio_tungstenite::client_async("ws://a.test/u", tcp)
        .await
        .unwrap()
        .0
}

async fn next(ws: &mut Ws) -> Option<Vec<u8>> {
    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
        Ok(Some(Ok(m))) if m.is_binary() => Some(m.into_data().to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn forwards_and_injects_faults() {
    let relay = start_relay(upstream().await);
    let mut ws = client(&relay).await;

    ws.send(Message::binary(b"hello".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"Ehello");

    assert_eq!(control(&relay, "flip c2s 1").await, "ok");
    ws.send(Message::binary(b"abcde".to_vec())).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap(),
        b"Eabbde",
        "middle byte flipped once"
    );

    assert_eq!(control(&relay, "dup s2c 1").await, "ok");
    ws.send(Message::binary(b"x".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"Ex");
    assert_eq!(next(&mut ws).await.unwrap(), b"Ex", "duplicated");

    assert_eq!(control(&relay, "drop c2s 1").await, "ok");
    ws.send(Message::binary(b"lost".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await, None, "dropped");
    ws.send(Message::binary(b"kept".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"Ekept");

    let stats = control(&relay, "stats").await;
    assert!(
        stats.starts_with("connections=1 c2s_messages=4 "),
        "{stats}"
    );

    let replay = control(&relay, "replay").await;
    assert_eq!(
        replay, "replayed answers=1",
        "the first message (hello) was replayed upstream"
    );

    assert_eq!(control(&relay, "kill").await, "ok");
    assert_eq!(next(&mut ws).await, None);
    assert!(
        ws.send(Message::binary(b"after".to_vec())).await.is_err() || next(&mut ws).await.is_none()
    );
    assert!(control(&relay, "bogus").await.starts_with("error"));
}

#[tokio::test]
async fn stall_holds_messages_until_released() {
    let relay = start_relay(upstream().await);
    let mut ws = client(&relay).await;
    assert_eq!(control(&relay, "stall on").await, "ok");
    ws.send(Message::binary(b"held".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await, None, "nothing moves while stalled");
    assert_eq!(control(&relay, "stall off").await, "ok");
    assert_eq!(next(&mut ws).await.unwrap(), b"Eheld");
}

#[tokio::test]
async fn answer4404_closes_the_first_message_with_unknown_session() {
    let relay = start_relay(upstream().await);
    assert_eq!(control(&relay, "answer4404 2").await, "ok");
    for _ in 0..2 {
        let mut ws = client(&relay).await;
        ws.send(Message::binary(b"attach".to_vec())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
        match got {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 4404);
                assert_eq!(frame.reason.as_str(), "unknown session");
            }
            other => panic!("expected a close 4404, got {other:?}"),
        }
    }
    // The third connection is relayed again.
    let mut ws = client(&relay).await;
    ws.send(Message::binary(b"x".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"Ex");
    let stats = control(&relay, "stats").await;
    assert!(stats.starts_with("connections=1 "), "{stats}");
    assert!(stats.contains(" answered_4404=2 "), "{stats}");
}

#[tokio::test]
async fn withhold_holds_the_first_message_until_release() {
    let relay = start_relay(upstream().await);
    assert_eq!(control(&relay, "withhold 1").await, "ok");
    let mut ws = client(&relay).await;
    ws.send(Message::binary(b"first".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await, None, "the first message is held back");
    // Later messages of the same connection pass (the client sends none while attaching).
    ws.send(Message::binary(b"second".to_vec())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), b"Esecond");
    let stats = control(&relay, "stats").await;
    assert!(stats.ends_with(" withheld=1"), "{stats}");
    assert_eq!(control(&relay, "release").await, "ok");
    assert_eq!(next(&mut ws).await.unwrap(), b"Efirst", "released late");
    // Only one connection was armed.
    let mut other = client(&relay).await;
    other.send(Message::binary(b"y".to_vec())).await.unwrap();
    assert_eq!(next(&mut other).await.unwrap(), b"Ey");
}
