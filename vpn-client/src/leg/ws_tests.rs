use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// What a raw server answers, given the correct accept key.
type Reply = fn(&str) -> Vec<u8>;

/// A server that reads one upgrade request and writes `reply(accept_key)` raw; the
/// request it read.
async fn raw_server(reply: Reply) -> (TcpStream, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            req.push(byte[0]);
        }
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or_default();
        let reply = reply(&derive_accept_key(key.as_bytes()));
        tcp.write_all(&reply).await.unwrap();
        if reply.is_empty() {
            // Nothing to say: close our side.
            tcp.shutdown().await.unwrap();
        }
        // Keep the connection open until the client is done.
        let _ = tcp.read(&mut [0u8; 1]).await;
        req
    });
    (TcpStream::connect(addr).await.unwrap(), server)
}

fn switching(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    )
}

fn uri() -> Uri {
    "wss://b.example.test:8443/d?x=1".parse().unwrap()
}

#[tokio::test]
async fn upgrade_sends_the_request_and_keeps_frames_read_past_the_response() {
    let (mut tcp, server) = raw_server(|accept| {
        let mut out = format!("{}\r\n", switching(accept)).into_bytes();
        // The first frame arrives in the same segment as the response.
        out.extend_from_slice(ws::header(OpCode::Binary, 5, None).as_bytes());
        out.extend_from_slice(b"hello");
        out
    })
    .await;
    let read = upgrade(&mut tcp, &uri()).await.unwrap();
    let mut reader = WsReader::new(&mut tcp, read, 1024);
    match reader.next().await.unwrap() {
        Incoming::Message(m) => assert_eq!(&m[..], b"hello"),
        other => panic!("expected the early frame, got {other:?}"),
    }
    drop(reader);
    drop(tcp);
    let req = server.await.unwrap();
    assert!(req.starts_with("GET /d?x=1 HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nHost: b.example.test:8443\r\n"), "{req}");
    assert!(req.contains("\r\nUpgrade: websocket\r\n"), "{req}");
    assert!(req.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{req}");
}

#[tokio::test]
async fn upgrade_refusals_and_bad_answers_are_errors() {
    let cases: [(Reply, &str); 6] = [
        (
            |_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "status 404",
        ),
        (
            |_| format!("{}\r\n", switching("bm90IHRoZSBrZXk=")).into_bytes(),
            "wrong Sec-WebSocket-Accept",
        ),
        (
            |a| format!("{}Sec-WebSocket-Extensions: x\r\n\r\n", switching(a)).into_bytes(),
            "extension",
        ),
        (
            |a| {
                format!("HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {a}\r\n\r\n")
                    .into_bytes()
            },
            "Upgrade: websocket",
        ),
        (|_| b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), "malformed"),
        (|_| Vec::new(), "closed before the response"),
    ];
    for (reply, want) in cases {
        let (mut tcp, _server) = raw_server(reply).await;
        let err = upgrade(&mut tcp, &uri()).await.unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

#[tokio::test]
async fn an_endless_response_is_cut_off() {
    let (mut tcp, _server) =
        raw_server(|_| format!("HTTP/1.1 101 OK\r\nX: {}\r\n", "a".repeat(20_000)).into_bytes())
            .await;
    let err = upgrade(&mut tcp, &uri()).await.unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
}

#[tokio::test]
async fn pings_closes_and_messages_with_a_tungstenite_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(Ok(msg)) = ws.next().await {
            seen.push(msg.clone());
            if msg.is_binary() && msg.len() == 100_000 {
                ws.send(Message::Close(None)).await.unwrap();
            }
        }
        seen
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let read = upgrade(&mut tcp, &"ws://x.test/u".parse().unwrap())
        .await
        .unwrap();
    let (r, w) = tokio::io::split(tcp);
    let mut reader = WsReader::new(r, read, 1 << 20);
    let mut writer = WsWriter::new(w);
    let Incoming::Ping(p) = reader.next().await.unwrap() else {
        panic!("expected the ping");
    };
    writer.push(Outgoing::Pong(p));
    writer.push(Outgoing::Binary(vec![1u8; 10].into()));
    writer.push(Outgoing::Binary(vec![2u8; 100_000].into()));
    writer.flush().await.unwrap();
    let Incoming::Close(close) = reader.next().await.unwrap() else {
        panic!("expected the close");
    };
    assert_eq!(close.code, ws::CLOSE_NO_STATUS);
    writer.push(Outgoing::Close(1000));
    writer.push(Outgoing::Binary(vec![3u8; 10].into())); // after a close: dropped
    assert!(writer.closed());
    writer.flush().await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], Message::Pong(b"are you there".to_vec().into()));
    assert_eq!(seen[1], Message::binary(vec![1u8; 10]));
    assert_eq!(seen[2], Message::binary(vec![2u8; 100_000]));
    assert!(matches!(seen[3], Message::Close(_)), "{:?}", seen[3]);
}
