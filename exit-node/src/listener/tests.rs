use super::proxies::TrustedProxies;
use super::*;
use std::time::Instant;

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const LIMITS: ListenerLimits = ListenerLimits {
    upgrade_timeout: Duration::from_millis(300),
    max_message_size: 64 * 1024,
};

struct Server {
    addr: SocketAddr,
    legs: mpsc::Receiver<LegSocket>,
    limits_hit: LimitsHit,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(tls: Option<TlsAcceptor>) -> Server {
    start_with(tls, TrustedProxies::default()).await
}

async fn start_with(tls: Option<TlsAcceptor>, proxies: TrustedProxies) -> Server {
    start_placed(tls, proxies, None).await
}

async fn start_placed(
    tls: Option<TlsAcceptor>,
    proxies: TrustedProxies,
    threads: Option<Arc<SessionThreads>>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(Routes {
        paths: vec![("/u".into(), Leg::Up), ("/d".into(), Leg::Down)],
    });
    let (tx, legs) = mpsc::channel(8);
    let limits_hit = LimitsHit::default();
    let proxies = Arc::new(proxies);
    let task = tokio::spawn(serve(
        listener,
        tls,
        routes,
        proxies,
        LIMITS,
        tx,
        limits_hit.clone(),
        threads,
    ));
    Server {
        addr,
        legs,
        limits_hit,
        task,
    }
}

/// Send raw bytes, read until the server closes, return what it said.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    read.expect("server must close").expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_get_gets_an_ordinary_404() {
    let mut server = start(None).await;
    for path in ["/", "/u", "/d?x=1", "/index.html"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
        let resp = raw_exchange(server.addr, req.as_bytes()).await;
        assert!(
            resp.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {resp}"
        );
        assert!(resp.contains("<h1>404 Not Found</h1>"), "{resp}");
    }
    assert!(server.legs.try_recv().is_err(), "no leg may be produced");
    // An upgrade to a path that is not a leg is accepted like a leg's (issue 20 §6) and
    // handed on as a decoy, which the session layer never lets become a leg.
    let upgrade = "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = tcp.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let sock = tokio::time::timeout(Duration::from_secs(5), server.legs.recv())
        .await
        .expect("the decoy is handed on")
        .expect("a socket");
    assert!(sock.decoy, "a path that names no leg must be a decoy");
}

#[tokio::test]
async fn garbage_bytes_get_no_protocol_answer() {
    let server = start(None).await;
    let resp = raw_exchange(
        server.addr,
        &[0x16, 0x03, 0x01, 0xff, 0x00, 0x42, 0x13, 0x37],
    )
    .await;
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
}

/// Upgrade to `/u` with `X-Forwarded-For: 198.51.100.7`; the client address the leg got.
async fn forwarded_client(server: &mut Server) -> std::net::IpAddr {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("ws://{}/u", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let (_client, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let accepted = server.legs.recv().await.unwrap();
    assert!(!accepted.decoy, "a leg path is not a decoy");
    assert_eq!(accepted.peer.ip(), server.addr.ip());
    accepted.client
}

#[tokio::test]
async fn a_trusted_proxy_passes_the_client_address_and_others_cannot() {
    let mut untrusting = start(None).await;
    assert_eq!(
        forwarded_client(&mut untrusting).await,
        untrusting.addr.ip()
    );
    let header = hyper::header::HeaderName::from_static("x-forwarded-for");
    let mut trusting = start_with(
        None,
        TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()], header),
    )
    .await;
    let client = forwarded_client(&mut trusting).await;
    assert_eq!(client, "198.51.100.7".parse::<std::net::IpAddr>().unwrap());
}

#[tokio::test]
async fn websocket_upgrade_routes_to_the_leg() {
    let mut server = start(None).await;
    for (path, leg) in [("/u", Leg::Up), ("/d", Leg::Down)] {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let url = format!("ws://{}{path}", server.addr);
        let (mut client, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        let mut accepted = server.legs.recv().await.unwrap();
        assert_eq!(accepted.leg, leg);
        assert!(!accepted.tls);
        client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        match accepted.ws.reader.next().await.unwrap() {
            ws::Incoming::Message(got) => assert_eq!(&got[..], &[1, 2, 3]),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connections_are_set_up_and_served_on_the_session_thread_they_are_placed_on() {
    let threads = Arc::new(SessionThreads::start(2).unwrap());
    let mut server = start_placed(None, TrustedProxies::default(), Some(threads.clone())).await;
    // A connection still being set up counts: the next one goes to the other thread.
    let first = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = TcpStream::connect(server.addr).await.unwrap();
    let mut homes = Vec::new();
    for (i, tcp) in [second, first].into_iter().enumerate() {
        let url = format!("ws://{}/u", server.addr);
        let (mut client, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        let mut accepted = server.legs.recv().await.unwrap();
        let home = accepted.home.expect("placed on a session thread");
        homes.push(home);
        client.send(Message::binary(vec![i as u8])).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        threads.spawn_on(Some(home), async move {
            let got = accepted.ws.reader.next().await;
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send((name, got));
        });
        let (name, got) = rx.await.unwrap();
        assert_eq!(name.as_deref(), Some(format!("ht-session-{home}").as_str()));
        match got {
            Ok(ws::Incoming::Message(m)) => assert_eq!(&m[..], &[i as u8]),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    homes.sort();
    assert_eq!(
        homes,
        [0, 1],
        "the two connections went to different threads"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_upgrade_timeout() {
    let server = start(None).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes before close");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    server.counted("upgrade_timeout", 1).await;
}

impl Server {
    /// Wait (1 s at most) until `limits_hit{reason}` is `n`.
    async fn counted(&self, reason: &'static str, n: u64) {
        let label = ReasonLabel { reason };
        for _ in 0..100 {
            if self.limits_hit.get_or_create(&label).get() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "limits_hit{{reason={reason:?}}} is {}, not {n}",
            self.limits_hit.get_or_create(&label).get()
        );
    }
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_and_counted() {
    let server = start(None).await;
    let mut request = b"GET /u HTTP/1.1\r\nHost: a\r\n".to_vec();
    while request.len() < 1 << 20 {
        request.extend_from_slice(format!("X-Big: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The server may hang up before it has read everything: a write error is fine.
    let _ = tcp.write_all(&request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("101"), "never upgraded: {out}");
    server.counted("upgrade_too_large", 1).await;
    server.counted("upgrade_timeout", 0).await;
}

#[tokio::test]
async fn a_slow_partial_request_is_closed_after_the_upgrade_timeout() {
    let server = start(None).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /u HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the server must hang up on a request that never completes"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains("101"),
        "never upgraded"
    );
    server.counted("upgrade_timeout", 1).await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let mut server = start(None).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{}/u", server.addr), tcp)
        .await
        .unwrap();
    let mut accepted = server.legs.recv().await.unwrap();
    let _ = client
        .send(Message::binary(vec![0u8; LIMITS.max_message_size + 1]))
        .await;
    let got = tokio::time::timeout(Duration::from_secs(5), accepted.ws.reader.next())
        .await
        .unwrap();
    assert!(got.is_err(), "oversized message must not surface: {got:?}");
}

#[tokio::test]
async fn tls_legs_work_with_a_test_ca() {
    let ca = TestCa::new();
    let dir = std::env::temp_dir().join(format!("ht-exit-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("leaf.crt"), dir.join("leaf.key"));
    std::fs::write(&cert, &ca.leaf_pem).unwrap();
    std::fs::write(&key, &ca.leaf_key_pem).unwrap();
    let acceptor = tls::acceptor(&cert, &key).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = start(Some(acceptor)).await;

    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = ca
        .connector()
        .connect("up.example.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://up.example.test:{}/u", server.addr.port());
    let (mut client, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut accepted = server.legs.recv().await.unwrap();
    assert!(accepted.tls);
    assert_eq!(accepted.leg, Leg::Up);
    client.send(Message::binary(vec![9; 1000])).await.unwrap();
    match accepted.ws.reader.next().await.unwrap() {
        ws::Incoming::Message(got) => assert_eq!(got.len(), 1000),
        other => panic!("expected the message, got {other:?}"),
    }
}

#[test]
fn tls_errors_name_the_file() {
    let Err(err) = tls::acceptor(
        Path::new("/nonexistent/cert.pem"),
        Path::new("/nonexistent/key.pem"),
    ) else {
        panic!("a missing certificate must be an error");
    };
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

use std::path::Path;

use crate::testutil::TestCa;
