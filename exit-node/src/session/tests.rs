//! The whole node on loopback, driven by a `proto` client over real WebSockets (the down
//! leg over TLS with a test CA), with destinations the test starts itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use hickory_proto::op::Message as DnsMessage;
use hickory_proto::rr::RecordType;
use proto::{
    ClientConfig, ClientHandshake, Connection, Destination, Event, Leg, Read, ResetCode, StreamId,
    StreamKind,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Input, lock};
use crate::admin::SessionAdmin;
use crate::config::Config;
use crate::keys::encode_key;
use crate::node::{self, Node};
use crate::testutil::{DnsServer, TestCa, query};
use tokio::sync::mpsc;
use uuid::Uuid;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

struct Setup {
    node: Node,
    dir: PathBuf,
    client_private: [u8; 32],
    exit_public: [u8; 32],
    ca: TestCa,
    _dns: DnsServer,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: AtomicUsize = AtomicUsize::new(0);

/// `[egress]` lines for tests whose destinations are servers on 127.0.0.1: loopback is the
/// exit's own, so it needs both the range and the exact own address.
const LOOPBACK: &str = "allow_cidrs = [\"127.0.0.0/8\"]\nallow_own_addresses = [\"127.0.0.1/32\"]";

/// A node with a plain up listener and a TLS down listener on loopback; `egress` is the
/// `[egress]` table body.
async fn setup(egress: &str) -> Setup {
    setup_with(egress, "").await
}

/// `setup` with extra `[limits]` lines.
async fn setup_with(egress: &str, limits: &str) -> Setup {
    setup_full(egress, limits, "", 1000).await
}

/// `setup_with`, extra `[listen]` lines and a handshake rate per source.
async fn setup_full(egress: &str, limits: &str, listen: &str, handshake_rate: u32) -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "ht-exit-session-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (exit_private, exit_public) = proto::generate_keypair();
    let (client_private, client_public) = proto::generate_keypair();
    std::fs::write(dir.join("exit.key"), encode_key(&exit_private)).unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.join("down.crt"), &ca.leaf_pem).unwrap();
    std::fs::write(dir.join("down.key"), &ca.leaf_key_pem).unwrap();
    let dns = DnsServer::start(vec!["127.0.0.1".parse().unwrap()]).await;
    let text = format!(
        r#"
private_key_file = "exit.key"
[listen]
{listen}
[listen.up]
address = "127.0.0.1:0"
path = "/u"
[listen.down]
address = "127.0.0.2:0"
path = "/d"
[listen.down.tls]
cert = "down.crt"
key = "down.key"
[[clients]]
name = "tester"
public_key = "{}"
[egress]
{egress}
connect_timeout = "2s"
udp_idle_timeout = "2s"
[dns]
upstreams = ["{}"]
[limits]
handshakes_per_second_per_source = {handshake_rate}
{limits}
[log]
stats_interval = "0s"
[runtime]
state_dir = "state"
"#,
        encode_key(&client_public),
        dns.addr
    );
    let path = dir.join("exit-node.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let node = node::start(&config, &dir).await.unwrap();
    Setup {
        node,
        dir,
        client_private,
        exit_public,
        ca,
        _dns: dns,
    }
}

async fn ws_plain(addr: SocketAddr, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let io: Box<dyn Io> = Box::new(tcp);
    tokio_tungstenite::client_async(format!("ws://a.test{path}"), io)
        .await
        .unwrap()
        .0
}

async fn ws_tls(s: &Setup, path: &str) -> Ws {
    let tcp = TcpStream::connect(s.node.listening.down).await.unwrap();
    let tls =
        s.ca.connector()
            .connect("up.example.test".try_into().unwrap(), tcp)
            .await
            .unwrap();
    let io: Box<dyn Io> = Box::new(tls);
    tokio_tungstenite::client_async(format!("wss://up.example.test{path}"), io)
        .await
        .unwrap()
        .0
}

fn timestamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn next_binary(ws: &mut Ws) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// A minimal client driver over two WebSockets.
struct Client {
    conn: Connection,
    up: Ws,
    down: Ws,
    ended: [bool; 2],
    events: Vec<Event>,
}

impl Client {
    async fn connect(s: &Setup) -> Client {
        let cfg = client_config(s);
        let mut up = ws_plain(s.node.listening.up, "/u").await;
        let (hs, init) = ClientHandshake::start(&cfg, timestamp()).unwrap();
        up.send(Message::Binary(init)).await.unwrap();
        let resp = next_binary(&mut up).await.expect("handshake response");
        let mut conn = hs.finish(std::time::Instant::now(), &resp).unwrap();
        let mut down = ws_tls(s, "/d").await;
        down.send(Message::Binary(conn.attach_request(Leg::Down)))
            .await
            .unwrap();
        let ok = next_binary(&mut down).await.expect("attach ok");
        conn.handle_attach_ok(std::time::Instant::now(), Leg::Down, &ok)
            .unwrap();
        Client {
            conn,
            up,
            down,
            ended: [false; 2],
            events: Vec::new(),
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.conn.poll_transmit(std::time::Instant::now()) {
            let ws = match t.leg {
                Leg::Up => &mut self.up,
                Leg::Down => &mut self.down,
            };
            ws.send(Message::Binary(t.payload)).await.unwrap();
        }
    }

    /// Pump until an event matches `want` (returned) or `limit` passes.
    async fn until(&mut self, limit: Duration, want: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.flush().await;
            while let Some(e) = self.conn.poll_event() {
                let hit = want(&e);
                self.events.push(e.clone());
                if hit {
                    return Some(e);
                }
            }
            let timer = self
                .conn
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline);
            let (leg, msg) = tokio::select! {
                m = self.up.next(), if !self.ended[0] => (Leg::Up, m),
                m = self.down.next(), if !self.ended[1] => (Leg::Down, m),
                _ = tokio::time::sleep_until(timer.min(deadline)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    self.conn.handle_timeout(std::time::Instant::now());
                    continue;
                }
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    let r = self.conn.handle_record(
                        std::time::Instant::now(),
                        leg,
                        BytesMut::from(&b[..]),
                    );
                    r.unwrap();
                }
                Some(Ok(_)) => {}
                _ => {
                    // The exit closed this leg (e.g. the session ended): stop reading it.
                    self.ended[leg.index()] = true;
                    self.conn.leg_lost(std::time::Instant::now(), leg);
                }
            }
        }
    }

    /// Read a whole stream until Fin.
    async fn read_all(&mut self, id: StreamId, limit: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            match self
                .conn
                .stream_read(std::time::Instant::now(), id, usize::MAX)
                .unwrap()
            {
                Read::Data(d) => out.extend_from_slice(&d),
                Read::Fin => return out,
                Read::WouldBlock => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    assert!(
                        !left.is_zero(),
                        "stream {id} not finished, {} bytes read",
                        out.len()
                    );
                    self.until(
                        left,
                        |e| matches!(e, Event::StreamReadable { id: x } if *x == id),
                    )
                    .await;
                }
            }
        }
    }
}

/// A TCP echo server on loopback that counts connections.
async fn echo_server() -> (SocketAddr, std::sync::Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, count)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 251) as u8).collect()
}

#[tokio::test]
async fn tcp_streams_echo_through_the_node_by_address_and_by_name() {
    let s = setup(LOOPBACK).await;
    let (echo, _) = echo_server().await;
    let mut c = Client::connect(&s).await;
    for dest in [
        Destination::Addr(echo),
        Destination::domain("echo.example.test", echo.port()).unwrap(),
    ] {
        let id = c.conn.open_stream(StreamKind::Tcp, dest).unwrap();
        c.until(Duration::from_secs(5), |e| {
            *e == Event::StreamAccepted { id }
        })
        .await
        .expect("accepted");
        let data = pattern(3 * 1024 * 1024 + 17);
        let mut sent = 0;
        while sent < data.len() {
            sent += c.conn.stream_write(id, &data[sent..]).unwrap();
            c.until(Duration::from_millis(20), |_| false).await;
        }
        c.conn.stream_finish(id).unwrap();
        let back = c.read_all(id, Duration::from_secs(20)).await;
        assert!(back == data, "echo differs: {} bytes back", back.len());
    }
}

#[tokio::test]
async fn dns_queries_are_answered_through_the_tunnel() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.conn
        .send_dns_query(42, query(0x1234, "www.example.test.", RecordType::A).into())
        .unwrap();
    let Some(Event::DnsResponse { id, msg }) = c
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::DnsResponse { .. })
        })
        .await
    else {
        panic!("no DNS response");
    };
    assert_eq!(id, 42);
    let msg = DnsMessage::from_vec(&msg).unwrap();
    assert_eq!(msg.id(), 0x1234);
    assert_eq!(msg.answers()[0].data().to_string(), "192.0.2.10");
}

#[tokio::test]
async fn udp_datagrams_cross_both_ways() {
    let s = setup(LOOPBACK).await;
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let mut c = Client::connect(&s).await;
    let id = c
        .conn
        .open_stream(StreamKind::Udp, Destination::Addr(addr))
        .unwrap();
    c.conn
        .send_datagram(id, bytes::Bytes::from_static(b"one"))
        .unwrap();
    let got = c
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::Datagram { .. })
        })
        .await;
    assert_eq!(
        got,
        Some(Event::Datagram {
            id,
            data: bytes::Bytes::from_static(b"one")
        })
    );
    // Idle UDP flows are reset after the configured idle timeout (2 s here).
    let reset = c
        .until(Duration::from_secs(6), |e| {
            matches!(e, Event::StreamReset { .. })
        })
        .await;
    assert_eq!(
        reset,
        Some(Event::StreamReset {
            id,
            code: ResetCode::IdleTimeout
        })
    );
}

#[tokio::test]
async fn refused_destinations_are_reset_and_never_dialled() {
    let s = setup("").await;
    let (echo, connections) = echo_server().await;
    let mut c = Client::connect(&s).await;
    let dests = [
        Destination::Addr(echo),
        Destination::domain("loop.example.test", echo.port()).unwrap(),
        Destination::domain("meta.example.test", 80).unwrap(),
        Destination::Addr("[::ffff:127.0.0.1]:80".parse().unwrap()),
    ];
    for dest in dests {
        let id = c.conn.open_stream(StreamKind::Tcp, dest.clone()).unwrap();
        let got = c
            .until(
                Duration::from_secs(5),
                |e| matches!(e, Event::StreamReset { id: x, .. } if *x == id),
            )
            .await;
        assert_eq!(
            got,
            Some(Event::StreamReset {
                id,
                code: ResetCode::PolicyRefused
            }),
            "{dest}"
        );
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        0,
        "a refused destination was dialled"
    );
    let metrics = s.node.hub.metrics.encode();
    assert!(
        metrics.contains("egress_refused_total{reason=\"special_range\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_lost_down_leg_is_reattached_and_the_transfer_completes() {
    let s = setup(LOOPBACK).await;
    let (echo, _) = echo_server().await;
    let mut c = Client::connect(&s).await;
    let id = c
        .conn
        .open_stream(StreamKind::Tcp, Destination::Addr(echo))
        .unwrap();
    c.until(Duration::from_secs(5), |e| {
        *e == Event::StreamAccepted { id }
    })
    .await
    .unwrap();
    let data = pattern(8 * 1024 * 1024);
    let mut sent = 0;
    let mut cut = false;
    while sent < data.len() {
        sent += c.conn.stream_write(id, &data[sent..]).unwrap();
        c.until(Duration::from_millis(20), |_| false).await;
        if !cut && sent > data.len() / 2 {
            // Drop the down transport without a close handshake, then re-attach.
            cut = true;
            c.conn.leg_lost(std::time::Instant::now(), Leg::Down);
            c.down = ws_tls(&s, "/d").await;
            let attach = c.conn.attach_request(Leg::Down);
            c.down.send(Message::Binary(attach)).await.unwrap();
            let ok = next_binary(&mut c.down).await.unwrap();
            c.conn
                .handle_attach_ok(std::time::Instant::now(), Leg::Down, &ok)
                .unwrap();
        }
    }
    c.conn.stream_finish(id).unwrap();
    let back = c.read_all(id, Duration::from_secs(30)).await;
    assert!(
        back == data,
        "echo differs after re-attach: {} bytes",
        back.len()
    );
    assert!(c.conn.stats().legs[1].attaches >= 2);
}

#[tokio::test]
async fn unknown_sessions_and_junk_get_no_protocol_answer() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let attach = c.conn.attach_request(Leg::Down);
    // A different node has never heard of this session: it closes with 4404.
    let other = setup("").await;
    let mut ws = ws_tls(&other, "/d").await;
    ws.send(Message::Binary(attach)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), super::CLOSE_UNKNOWN_SESSION)
        }
        other => panic!("expected a 4404 close, got {other:?}"),
    }
    // Random bytes as a first message: dropped without a single byte back.
    let mut ws = ws_plain(s.node.listening.up, "/u").await;
    ws.send(Message::Binary(vec![1u8; 300].into()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, None);
    // A replayed handshake: no answer either.
    let cfg = client_config(&s);
    let (_, init) = ClientHandshake::start(&cfg, timestamp()).unwrap();
    for expect_answer in [true, false] {
        let mut ws = ws_plain(s.node.listening.up, "/u").await;
        ws.send(Message::Binary(init.clone())).await.unwrap();
        assert_eq!(next_binary(&mut ws).await.is_some(), expect_answer);
    }
    assert!(
        s.node
            .hub
            .metrics
            .encode()
            .contains("handshakes_rejected_total{reason=\"replay\"} 1")
    );
}

#[tokio::test]
async fn a_revoked_key_ends_its_session_and_cannot_reconnect() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.until(Duration::from_millis(50), |_| false).await;
    let mut config = Config::load(&s.dir.join("exit-node.toml")).unwrap();
    config.clients.clear();
    assert_eq!(s.node.reload(&config).unwrap(), 1);
    let closed = c
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::Closed { .. })
        })
        .await;
    assert!(
        matches!(
            closed,
            Some(Event::Closed {
                code: proto::CloseCode::Revoked,
                remote: true,
                ..
            })
        ),
        "{closed:?}"
    );
    let cfg = client_config(&s);
    let (_, init) = ClientHandshake::start(&cfg, timestamp()).unwrap();
    let mut ws = ws_plain(s.node.listening.up, "/u").await;
    ws.send(Message::Binary(init)).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, None);
    // Wait for the driver to leave the store.
    wait_for_sessions(&s, 0).await;
}

#[tokio::test]
async fn a_slow_destination_reader_bounds_exit_memory() {
    // A destination that accepts but never reads: the client's writes must stall at the
    // credit limit instead of piling up at the exit.
    let s = setup(LOOPBACK).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    });
    let mut c = Client::connect(&s).await;
    let id = c
        .conn
        .open_stream(StreamKind::Tcp, Destination::Addr(addr))
        .unwrap();
    c.until(Duration::from_secs(5), |e| {
        *e == Event::StreamAccepted { id }
    })
    .await
    .unwrap();
    let data = vec![7u8; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..300 {
        sent += c.conn.stream_write(id, &data).unwrap();
        c.until(Duration::from_millis(10), |_| false).await;
    }
    // Kernel socket buffers + the stream window + the writer queue, far below 300 MiB.
    assert!(
        sent < 48 << 20,
        "client could push {sent} bytes into a stalled destination"
    );
    assert!(sent > 256 << 10, "nothing flowed: {sent}");
    // The stream shows as paused, with what it holds, in /sessions and the metrics.
    c.until(Duration::from_millis(2500), |_| false).await;
    let list = s.node.hub.list_json();
    assert!(list.contains("\"paused_streams\":1,"), "{list}");
    assert!(!list.contains("\"paused_bytes\":0,"), "{list}");
    s.node.hub.refresh(&s.node.hub.metrics);
    let metrics = s.node.hub.metrics.encode();
    assert!(
        metrics.contains("half_tunnel_exit_paused_streams 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("half_tunnel_exit_paused_stream_bytes 0\n"),
        "{metrics}"
    );
    hold.abort();
}

/// Wait (2 s at most) until the store holds `n` sessions: ended drivers leave it shortly
/// after their session closed.
async fn wait_for_sessions(s: &Setup, n: usize) {
    for _ in 0..100 {
        if s.node.hub.session_count() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.node.hub.session_count(), n);
}

fn client_config(s: &Setup) -> ClientConfig {
    ClientConfig {
        private_key: s.client_private,
        exit_public_key: s.exit_public,
        psk: None,
        settings: proto::Settings::default(),
    }
}

#[tokio::test]
async fn many_streams_at_once_with_an_up_leg_reattach_in_the_middle() {
    let s = setup(LOOPBACK).await;
    let (echo, connections) = echo_server().await;
    let mut c = Client::connect(&s).await;
    let data = pattern(256 * 1024);
    let ids: Vec<StreamId> = (0..40)
        .map(|_| {
            c.conn
                .open_stream(StreamKind::Tcp, Destination::Addr(echo))
                .unwrap()
        })
        .collect();
    let mut sent = vec![0usize; ids.len()];
    let mut rounds = 0;
    while sent.iter().any(|n| *n < data.len()) {
        for (i, id) in ids.iter().enumerate() {
            if c.conn.has_stream(*id) && sent[i] < data.len() {
                sent[i] += c.conn.stream_write(*id, &data[sent[i]..]).unwrap_or(0);
                if sent[i] == data.len() {
                    c.conn.stream_finish(*id).unwrap();
                }
            }
        }
        c.until(Duration::from_millis(20), |_| false).await;
        rounds += 1;
        if rounds == 1 {
            // Replace the up transport: a new connection, attach, resume.
            c.conn.leg_lost(std::time::Instant::now(), Leg::Up);
            c.up = ws_plain(s.node.listening.up, "/u").await;
            let attach = c.conn.attach_request(Leg::Up);
            c.up.send(Message::Binary(attach)).await.unwrap();
            let ok = next_binary(&mut c.up).await.unwrap();
            c.conn
                .handle_attach_ok(std::time::Instant::now(), Leg::Up, &ok)
                .unwrap();
        }
        assert!(rounds < 2000, "writes stalled: {sent:?}");
    }
    for id in ids {
        let back = c.read_all(id, Duration::from_secs(20)).await;
        assert!(back == data, "stream {id}: {} bytes back", back.len());
    }
    assert_eq!(connections.load(Ordering::Relaxed), 40);
    assert!(c.conn.stats().legs[0].attaches >= 2);
}

#[tokio::test]
async fn dns_aaaa_txt_and_nxdomain_pass_through() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let cases = [
        ("www.example.test.", RecordType::AAAA, Some("2001:db8::10")),
        ("www.example.test.", RecordType::TXT, Some("hello")),
        ("nope.example.test.", RecordType::A, None),
    ];
    for (i, (name, rtype, want)) in cases.into_iter().enumerate() {
        let id = 100 + i as u32;
        c.conn
            .send_dns_query(id, query(7, name, rtype).into())
            .unwrap();
        let got = c
            .until(
                Duration::from_secs(5),
                |e| matches!(e, Event::DnsResponse { id: x, .. } if *x == id),
            )
            .await;
        let Some(Event::DnsResponse { msg, .. }) = got else {
            panic!("no answer for {name} {rtype}");
        };
        let msg = DnsMessage::from_vec(&msg).unwrap();
        match want {
            Some(text) => assert!(
                msg.answers()[0].data().to_string().contains(text),
                "{msg:?}"
            ),
            None => assert_eq!(
                msg.response_code(),
                hickory_proto::op::ResponseCode::NXDomain
            ),
        }
    }
}

#[tokio::test]
async fn the_stream_limit_resets_extra_streams_and_the_rest_keep_working() {
    let s = setup_with(LOOPBACK, "max_streams_per_session = 3").await;
    let (echo, _) = echo_server().await;
    let mut c = Client::connect(&s).await;
    let ids: Vec<StreamId> = (0..4)
        .map(|_| {
            c.conn
                .open_stream(StreamKind::Tcp, Destination::Addr(echo))
                .unwrap()
        })
        .collect();
    let reset = c
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::StreamReset { .. })
        })
        .await;
    assert_eq!(
        reset,
        Some(Event::StreamReset {
            id: ids[3],
            code: ResetCode::TooManyStreams
        })
    );
    c.conn.stream_write(ids[0], b"still here").unwrap();
    c.conn.stream_finish(ids[0]).unwrap();
    assert_eq!(
        c.read_all(ids[0], Duration::from_secs(5)).await,
        b"still here"
    );
}

#[tokio::test]
async fn a_socket_that_never_handshakes_is_dropped_while_others_are_served() {
    let s = setup_with("", "handshake_timeout = \"1s\"").await;
    let mut idle = ws_plain(s.node.listening.up, "/u").await;
    let mut c = Client::connect(&s).await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        next_binary(&mut idle).await,
        None,
        "the idle socket is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    c.conn
        .send_dns_query(1, query(1, "www.example.test.", RecordType::A).into())
        .unwrap();
    assert!(
        c.until(Duration::from_secs(5), |e| matches!(
            e,
            Event::DnsResponse { .. }
        ))
        .await
        .is_some()
    );
    assert!(
        s.node
            .hub
            .metrics
            .encode()
            .contains("handshakes_rejected_total{reason=\"timeout\"} 1")
    );
}

#[tokio::test]
async fn an_unknown_client_key_gets_no_answer_and_nothing_is_dialled() {
    let s = setup(LOOPBACK).await;
    let mut cfg = client_config(&s);
    cfg.private_key = proto::generate_keypair().0;
    let (_, init) = ClientHandshake::start(&cfg, timestamp()).unwrap();
    let mut ws = ws_plain(s.node.listening.up, "/u").await;
    ws.send(Message::Binary(init)).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, None);
    assert_eq!(s.node.hub.session_count(), 0);
    assert!(
        s.node
            .hub
            .metrics
            .encode()
            .contains("handshakes_rejected_total{reason=\"unknown_client\"} 1")
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_sessions_with_a_reason() {
    let mut s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.until(Duration::from_millis(50), |_| false).await;
    let started = tokio::time::Instant::now();
    let (closed, ()) = tokio::join!(
        c.until(Duration::from_secs(5), |e| matches!(
            e,
            Event::Closed { .. }
        )),
        s.node.shutdown(Duration::from_secs(5)),
    );
    assert!(
        matches!(
            closed,
            Some(Event::Closed {
                code: proto::CloseCode::Shutdown,
                remote: true,
                ..
            })
        ),
        "{closed:?}"
    );
    assert_eq!(s.node.hub.session_count(), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn destination_sockets_over_the_session_share_are_refused_and_given_back_on_close() {
    let s = setup_with(LOOPBACK, "max_dest_sockets_per_session = 3").await;
    let (echo, dialled) = echo_server().await;
    let refusals = || {
        s.node
            .hub
            .metrics
            .limits_hit
            .get_or_create(&crate::admin::ReasonLabel {
                reason: "descriptors",
            })
            .get()
    };
    let mut c = Client::connect(&s).await;
    let open = |c: &mut Client, kind| {
        c.conn
            .open_stream(kind, Destination::Addr(echo))
            .expect("open stream")
    };
    let held: Vec<StreamId> = (0..3).map(|_| open(&mut c, StreamKind::Tcp)).collect();
    for kind in [StreamKind::Tcp, StreamKind::Udp] {
        let extra = open(&mut c, kind);
        let reset = c
            .until(
                Duration::from_secs(5),
                |e| matches!(e, Event::StreamReset { id, .. } if *id == extra),
            )
            .await;
        assert_eq!(
            reset,
            Some(Event::StreamReset {
                id: extra,
                code: ResetCode::TooManyStreams
            }),
            "{kind:?} stream over the share"
        );
    }
    assert_eq!(refusals(), 2);
    assert_eq!(s.node.hub.dest_sockets(), 3);
    assert_eq!(
        dialled.load(Ordering::Relaxed),
        3,
        "nothing dialled for refusals"
    );

    // A finished stream gives its descriptor back once both its halves are done.
    c.conn.stream_write(held[0], b"done").unwrap();
    c.conn.stream_finish(held[0]).unwrap();
    assert_eq!(c.read_all(held[0], Duration::from_secs(5)).await, b"done");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.node.hub.dest_sockets() > 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "descriptor not returned"
        );
        c.until(Duration::from_millis(50), |_| false).await;
    }
    let again = open(&mut c, StreamKind::Tcp);
    c.conn.stream_write(again, b"again").unwrap();
    c.conn.stream_finish(again).unwrap();
    assert_eq!(c.read_all(again, Duration::from_secs(5)).await, b"again");
    assert_eq!(refusals(), 2);

    // The session's end gives back everything it held (two streams are still open).
    assert_eq!(s.node.hub.dest_sockets(), 2);
    s.node
        .hub
        .close_all(proto::CloseCode::Normal, "test ends the session");
    drop(c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.node.hub.dest_sockets() > 0 || s.node.hub.session_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "descriptors kept after the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handshake on a fresh up leg whose upgrade request says `X-Forwarded-For: forwarded`;
/// whether the exit answered it.
async fn handshake_forwarded_for(s: &Setup, forwarded: &str) -> bool {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let tcp = TcpStream::connect(s.node.listening.up).await.unwrap();
    let io: Box<dyn Io> = Box::new(tcp);
    let mut req = "ws://a.test/u".into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    let mut up = tokio_tungstenite::client_async(req, io).await.unwrap().0;
    let (_hs, init) = ClientHandshake::start(&client_config(s), timestamp()).unwrap();
    up.send(Message::Binary(init)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), next_binary(&mut up))
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test]
async fn the_handshake_limit_counts_each_client_a_trusted_proxy_names() {
    let listen = r#"trusted_proxies = ["127.0.0.0/8"]"#;
    let s = setup_full("", "", listen, 1).await;
    assert!(handshake_forwarded_for(&s, "198.51.100.1").await);
    assert!(
        handshake_forwarded_for(&s, "198.51.100.2").await,
        "another client behind the same proxy has its own budget"
    );
    assert!(
        !handshake_forwarded_for(&s, "198.51.100.1").await,
        "the first client again within the second is over its budget"
    );
}

#[tokio::test]
async fn without_trusted_proxies_the_header_is_ignored() {
    let s = setup_full("", "", "", 1).await;
    assert!(handshake_forwarded_for(&s, "198.51.100.1").await);
    assert!(
        !handshake_forwarded_for(&s, "198.51.100.2").await,
        "the peer address counts, whatever the header says"
    );
}

/// Issue 20 §5: an order to end a session is never lost, even when the session's inbox is
/// full (before, kicks, revocations and shutdown used `try_send` on it and were dropped),
/// and `/sessions` stays valid JSON whatever the client's name holds.
#[tokio::test]
async fn kicks_and_revocations_hold_with_a_full_inbox_and_sessions_is_valid_json() {
    let s = setup("").await;
    // A client name with quotes, a backslash and control characters.
    let mut config = Config::load(&s.dir.join("exit-node.toml")).unwrap();
    let evil = "evil\"\\\u{1}\n\u{7f}name";
    config.clients[0].name = evil.to_owned();
    s.node.reload(&config).unwrap();
    let mut c = Client::connect(&s).await;
    c.until(Duration::from_millis(50), |_| false).await;
    let list: serde_json::Value = serde_json::from_str(&s.node.hub.list_json()).expect("JSON");
    assert_eq!(list[0]["client"], evil, "{list}");
    let id: Uuid = list[0]["id"].as_str().unwrap().parse().unwrap();

    // Keep the inbox full while the key is revoked.
    let inbox = lock(&s.node.hub.sessions)[&id].inbox.clone();
    let flood = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut full = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            match inbox.try_send(Input::DnsAnswer { id: 0, msg: None }) {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full += 1;
                    tokio::task::yield_now().await;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
                Ok(()) => {}
            }
        }
        full
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    config.clients.clear();
    assert_eq!(s.node.reload(&config).unwrap(), 1);
    let closed = c
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::Closed { .. })
        })
        .await;
    assert!(
        matches!(
            closed,
            Some(Event::Closed {
                code: proto::CloseCode::Revoked,
                ..
            })
        ),
        "the revocation was lost: {closed:?}"
    );
    let full = flood.await.unwrap();
    eprintln!("the inbox was found full {full} times during the revocation");
    assert!(full > 0, "the flood never filled the inbox");
}

/// What a prober sees on one connection: what came back, and when (a class, not a time).
async fn probe_answer(
    addr: SocketAddr,
    path: &str,
    send: Option<Message>,
) -> (String, &'static str) {
    let mut ws = ws_plain(addr, path).await;
    let start = std::time::Instant::now();
    if let Some(m) = send {
        ws.send(m).await.unwrap();
    }
    let what = match tokio::time::timeout(Duration::from_secs(6), ws.next()).await {
        Err(_) => "still open".to_owned(),
        Ok(None) => "closed".to_owned(),
        Ok(Some(Ok(Message::Close(Some(f))))) => format!("close {}", u16::from(f.code)),
        Ok(Some(Ok(Message::Close(None)))) => "close without code".to_owned(),
        Ok(Some(Ok(m))) => format!("a {} message", if m.is_text() { "text" } else { "binary" }),
        Ok(Some(Err(e))) => format!("{}", e).split(':').next().unwrap_or("").to_owned(),
    };
    let when = match start.elapsed() {
        t if t < Duration::from_millis(500) => "at once",
        t if t < Duration::from_secs(3) => "after the first-message deadline",
        _ => "later",
    };
    (what, when)
}

/// Issue 20 §6, from a prober's side: on a leg path and on a path that names no leg, a
/// WebSocket upgrade, garbage, text, a well-formed attach to a session nobody has, and
/// silence all get the same answer in the same timing class; a plain GET gets the same 404.
#[tokio::test]
async fn a_prober_cannot_tell_a_leg_path_from_any_other() {
    let s = setup_with("", "handshake_timeout = \"1s\"").await;
    let up = s.node.listening.up;
    let attach = proto::message::Attach {
        version: proto::VERSION,
        session: Uuid::new_v4(),
        leg: proto::Leg::Up,
        seq: 1,
        next: 0,
        mac: [7; 32],
    }
    .encode();
    let probes: Vec<(&str, Option<Message>)> = vec![
        (
            "garbage",
            Some(Message::Binary(
                vec![0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3].into(),
            )),
        ),
        ("text", Some(Message::Text("hello".into()))),
        ("an attach", Some(Message::Binary(attach.to_vec().into()))),
        ("silence", None),
    ];
    for (what, probe) in probes {
        let leg = probe_answer(up, "/u", probe.clone()).await;
        let other = probe_answer(up, "/static/app.js", probe).await;
        eprintln!("{what}: leg path {leg:?}, other path {other:?}");
        assert_eq!(leg, other, "{what} tells the leg path apart");
        assert_ne!(leg.1, "later", "{what}: {leg:?}");
    }
    // The upgrade itself: both paths answer 101 with nothing of ours in the headers.
    for path in ["/u", "/static/app.js"] {
        let mut tcp = TcpStream::connect(up).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut head)
            .await
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    }
}

/// Issue 20 §2 (sessions), from the side of a client key that opens session after
/// session: it never holds more than `max_sessions_per_client`; the oldest is ended with a
/// reason, the newer ones keep working, and the limit is counted.
#[tokio::test]
async fn one_client_key_holds_at_most_its_share_of_sessions() {
    let s = setup_with("", "max_sessions_per_client = 2").await;
    let mut first = Client::connect(&s).await;
    let mut second = Client::connect(&s).await;
    first.until(Duration::from_millis(50), |_| false).await;
    let mut third = Client::connect(&s).await;
    let closed = first
        .until(Duration::from_secs(5), |e| {
            matches!(e, Event::Closed { .. })
        })
        .await;
    match closed {
        Some(Event::Closed {
            code: proto::CloseCode::Normal,
            reason,
            remote: true,
        }) => assert!(reason.contains("newer session"), "{reason}"),
        other => panic!("the oldest session was not ended: {other:?}"),
    }
    for (i, c) in [&mut second, &mut third].into_iter().enumerate() {
        let id = 100 + i as u32;
        c.conn
            .send_dns_query(id, query(7, "www.example.test.", RecordType::A).into())
            .unwrap();
        let answered = c
            .until(
                Duration::from_secs(5),
                |e| matches!(e, Event::DnsResponse { id: got, .. } if *got == id),
            )
            .await;
        assert!(answered.is_some(), "session {} stopped working", i + 2);
    }
    wait_for_sessions(&s, 2).await;
    let metrics = s.node.hub.metrics.encode();
    assert!(
        metrics.contains("limits_hit_total{reason=\"sessions_per_client\"} 1"),
        "{metrics}"
    );
}

/// Issue 20 §4, from a relay's side: it archives a client's handshake init (withholding
/// it), lets a newer one through, and replays the archived one after the exit restarted.
/// The restarted exit read the newest timestamp from its state directory and answers
/// nothing; a genuine new handshake still works.
#[tokio::test]
async fn an_archived_handshake_is_refused_after_a_restart() {
    let s = setup("").await;
    let cfg = client_config(&s);
    let (_, archived) = ClientHandshake::start(&cfg, timestamp()).unwrap();
    let _newer = Client::connect(&s).await;
    // The exit restarts: a new node on the same config and state directory.
    let config = Config::load(&s.dir.join("exit-node.toml")).unwrap();
    let restarted = node::start(&config, &s.dir).await.unwrap();
    let mut ws = ws_plain(restarted.listening.up, "/u").await;
    ws.send(Message::Binary(archived)).await.unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        None,
        "the archived init was answered"
    );
    let metrics = restarted.hub.metrics.encode();
    assert!(
        metrics.contains("handshakes_rejected_total{reason=\"stale_timestamp\"} 1"),
        "{metrics}"
    );
    let (_, fresh) = ClientHandshake::start(&cfg, timestamp()).unwrap();
    let mut ws = ws_plain(restarted.listening.up, "/u").await;
    ws.send(Message::Binary(fresh)).await.unwrap();
    assert!(
        next_binary(&mut ws).await.is_some(),
        "a new handshake is answered"
    );
}

/// Issue 20 §2 (DNS), from a flooding client's side: 500 queries for random names of a
/// domain whose upstream never answers. At most `MAX_QUERIES_PER_SESSION` wait for the
/// upstream; the rest are answered SERVFAIL at once and counted, and another session's
/// DNS and new connections are served at once meanwhile.
#[tokio::test]
async fn a_dns_flood_towards_a_silent_domain_is_capped_per_session() {
    let s = setup(LOOPBACK).await;
    let mut flooder = Client::connect(&s).await;
    let mut honest = Client::connect(&s).await;
    const FLOOD: u32 = 500;
    let cap = crate::dns::MAX_QUERIES_PER_SESSION as u32;
    for i in 0..FLOOD {
        let name = format!("r{i}.silent.example.test.");
        let q = query(i as u16, &name, RecordType::A);
        assert!(flooder.conn.send_dns_query(i, q.into()).unwrap());
    }
    flooder.until(Duration::from_secs(2), |_| false).await;
    let servfails = flooder
        .events
        .iter()
        .filter_map(|e| match e {
            Event::DnsResponse { msg, .. } => DnsMessage::from_vec(msg).ok(),
            _ => None,
        })
        .filter(|m| m.response_code() == hickory_proto::op::ResponseCode::ServFail)
        .count() as u32;
    assert_eq!(
        servfails,
        FLOOD - cap,
        "the queries over the cap are answered at once"
    );
    let metrics = s.node.hub.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "limits_hit_total{{reason=\"dns_session\"}} {}",
            FLOOD - cap
        )),
        "{metrics}"
    );
    // Meanwhile another session: DNS and a new TCP stream, at once.
    let started = std::time::Instant::now();
    honest
        .conn
        .send_dns_query(1, query(1, "www.example.test.", RecordType::A).into())
        .unwrap();
    let answered = honest
        .until(Duration::from_secs(2), |e| {
            matches!(e, Event::DnsResponse { id: 1, .. })
        })
        .await;
    let Some(Event::DnsResponse { msg, .. }) = answered else {
        panic!("the other session's DNS query was not answered");
    };
    let msg = DnsMessage::from_vec(&msg).unwrap();
    assert_eq!(msg.answers()[0].data().to_string(), "192.0.2.10");
    let (echo, _) = echo_server().await;
    let id = honest
        .conn
        .open_stream(StreamKind::Tcp, Destination::Addr(echo))
        .unwrap();
    honest
        .until(Duration::from_secs(2), |e| {
            *e == Event::StreamAccepted { id }
        })
        .await
        .expect("the other session's new stream is accepted");
    eprintln!("the other session was served in {:?}", started.elapsed());
}

/// Issue 20 §4, from an unauthenticated peer's side: a first message longer than any
/// handshake or attach is refused at its header, not read (before, up to
/// `max_message_size`, 1 MiB, was read and buffered first), on a leg path and a decoy.
#[tokio::test]
async fn a_first_message_is_capped_at_the_largest_handshake() {
    let s = setup("").await;
    for path in ["/u", "/static/x.js"] {
        let mut ws = ws_plain(s.node.listening.up, path).await;
        let big = vec![1u8; proto::message::MAX_FIRST_MESSAGE + 1];
        let _ = ws.send(Message::Binary(big.into())).await;
        assert_eq!(next_binary(&mut ws).await, None);
    }
    let metrics = s.node.hub.metrics.encode();
    assert!(
        metrics.contains("handshakes_rejected_total{reason=\"oversized\"} 2"),
        "{metrics}"
    );
    // Records larger than that still pass once a client is in:
    // `tcp_streams_echo_through_the_node_by_address_and_by_name` moves 3 MiB in them.
}
