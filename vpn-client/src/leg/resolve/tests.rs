use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UdpSocket};

use super::*;
use crate::config::LegConfig;
use crate::leg::LegEndpoint;

// ---- the DNS codec ----------------------------------------------------------------------

/// A response to `query` with `answers` (type, rdata), the names compressed to the question.
fn response(query: &[u8], answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = query.to_vec();
    m[2] |= 0x80; // QR
    m[6..8].copy_from_slice(&u16::try_from(answers.len()).unwrap().to_be_bytes());
    for (kind, data) in answers {
        m.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]); // IN, TTL 60
        m.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        m.extend_from_slice(data);
    }
    m
}

#[test]
fn queries_are_rfc1035_and_answers_yield_a_and_aaaa_skipping_cnames() {
    let q = dns::query(0x1234, "b.example.test.", dns::A).unwrap();
    let mut want = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    want.extend_from_slice(b"\x01b\x07example\x04test\x00\x00\x01\x00\x01");
    assert_eq!(q, want);
    assert_eq!(dns::query(1, "a..b", dns::A), None);
    assert_eq!(dns::query(1, &"x".repeat(64), dns::A), None);

    let cname = b"\x03cdn\x07example\x04test\x00".to_vec();
    let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7);
    let r = response(
        &q,
        &[
            (5, cname),
            (dns::A, vec![10, 0, 0, 9]),
            (dns::AAAA, v6.octets().to_vec()),
        ],
    );
    let ips = dns::parse_answer(&r, 0x1234).unwrap();
    assert_eq!(ips, vec![IpAddr::from([10, 0, 0, 9]), IpAddr::V6(v6)]);
    assert_eq!(dns::parse_answer(&r, 0x1235), None, "another query's id");
    assert_eq!(dns::parse_answer(&q, 0x1234), None, "a query is no answer");
    // Every truncation is refused or read partially, never a panic.
    for n in 0..r.len() {
        let _ = dns::parse_answer(&r[..n], 0x1234);
    }
}

#[test]
fn nameservers_come_from_resolv_conf_or_behind_the_resolved_stub() {
    let dir = std::env::temp_dir().join(format!("ht-resolve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, stub, upstream) = (dir.join("a"), dir.join("b"), dir.join("c"));
    std::fs::write(
        &plain,
        "# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch lan\n",
    )
    .unwrap();
    std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
    std::fs::write(&upstream, "nameserver 198.51.100.1\n").unwrap();
    let got = MarkedDns::system_servers(&plain, &upstream);
    let fe80: IpAddr = "fe80::1".parse().unwrap();
    assert_eq!(
        got,
        vec![
            SocketAddr::from(([192, 0, 2, 53], 53)),
            SocketAddr::new(fe80, 53)
        ]
    );
    let got = MarkedDns::system_servers(&stub, &upstream);
    assert_eq!(got, vec![SocketAddr::from(([198, 51, 100, 1], 53))]);
    let got = MarkedDns::system_servers(&stub, &dir.join("missing"));
    assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 53], 53))]);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- re-resolution on every connect -----------------------------------------------------

/// WebSocket servers that accept upgrades and hold them, on `ip:port`.
async fn ws_server(ip: Ipv4Addr, port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((ip, port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    Ok(addr)
}

/// Two servers on the same port: 127.0.0.1 and 127.0.0.2 (as a CDN name might move).
async fn two_servers() -> (SocketAddr, SocketAddr) {
    for _ in 0..20 {
        let first = ws_server(Ipv4Addr::LOCALHOST, 0).await.unwrap();
        if let Ok(second) = ws_server(Ipv4Addr::new(127, 0, 0, 2), first.port()).await {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

fn endpoint(port: u16, resolver: Arc<dyn Resolve>) -> LegEndpoint {
    let cfg = LegConfig {
        url: format!("ws://legs.example.test:{port}/u"),
        connect_address: None,
        sni: None,
        ca_file: None,
        pin_sha256: None,
        insecure: false,
    };
    LegEndpoint::new(&cfg, 64 * 1024, Duration::from_secs(5))
        .unwrap()
        .with_resolver(resolver)
}

/// A resolver whose answer the test changes; it records every lookup.
#[derive(Debug, Default)]
struct Recording {
    answer: Mutex<Vec<SocketAddr>>,
    asked: Mutex<Vec<(String, u16)>>,
}

impl Resolve for Recording {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        self.asked.lock().unwrap().push((host.to_owned(), port));
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { Ok(answer) })
    }
}

fn no_mark(_: &tokio::net::TcpSocket) -> std::io::Result<()> {
    Ok(())
}

#[tokio::test]
async fn every_connect_resolves_again_and_tries_every_address() {
    let (one, two) = two_servers().await;
    let fake = Arc::new(Recording::default());
    let ep = endpoint(one.port(), fake.clone());
    *fake.answer.lock().unwrap() = vec![one];
    let (_ws, info) = ep.connect(&no_mark).await.unwrap();
    assert_eq!(info.peer, one);
    // The name moves; the next attempt (a reconnect) must follow it.
    *fake.answer.lock().unwrap() = vec![two];
    let (_ws, info) = ep.connect(&no_mark).await.unwrap();
    assert_eq!(info.peer, two);
    // A dead first address is skipped for the next one.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    *fake.answer.lock().unwrap() = vec![dead_addr, one];
    let (_ws, info) = ep.connect(&no_mark).await.unwrap();
    assert_eq!(info.peer, one);
    let asked = fake.asked.lock().unwrap().clone();
    let host = ("legs.example.test".to_owned(), one.port());
    assert_eq!(asked, vec![host.clone(), host.clone(), host]);
    // Nothing answers at all: a connect error naming the last address tried.
    *fake.answer.lock().unwrap() = vec![dead_addr];
    let Err(err) = ep.connect(&no_mark).await else {
        panic!("connected to a dead address");
    };
    assert!(matches!(err, crate::leg::LegError::Connect { addr, .. } if addr == dead_addr));
}

/// A DNS server on loopback answering A queries with `answer` (AAAA: nothing).
async fn dns_server(answer: Arc<AtomicU8>, queries: Arc<AtomicUsize>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            queries.fetch_add(1, Ordering::Relaxed);
            let q = &buf[..n];
            let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
            let answers = if qtype == dns::A {
                vec![(dns::A, vec![127, 0, 0, answer.load(Ordering::Relaxed)])]
            } else {
                Vec::new()
            };
            let _ = sock.send_to(&response(q, &answers), from).await;
        }
    });
    addr
}

#[tokio::test]
async fn the_marked_dns_client_follows_a_changed_record_on_reconnect() {
    let (one, two) = two_servers().await;
    let (answer, queries) = (Arc::new(AtomicU8::new(1)), Arc::new(AtomicUsize::new(0)));
    let server = dns_server(answer.clone(), queries.clone()).await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The first nameserver never answers: the next one is asked.
    let servers = vec![silent.local_addr().unwrap(), server];
    let resolver = MarkedDns::new(servers, None, Duration::from_millis(300));
    let ep = endpoint(one.port(), Arc::new(resolver));
    let (_ws, info) = ep.connect(&no_mark).await.unwrap();
    assert_eq!(info.peer, one);
    answer.store(2, Ordering::Relaxed);
    let (_ws, info) = ep.connect(&no_mark).await.unwrap();
    assert_eq!(info.peer, two);
    assert_eq!(queries.load(Ordering::Relaxed), 4, "A and AAAA per connect");
}
