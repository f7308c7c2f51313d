use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::DnsConfig;
use crate::policy::{Allowances, SpecialRange};
use crate::testutil::DnsServer;

const CLIENT: [u8; 32] = [1; 32];

/// A dialer allowing `allow`, and the loopback addresses the tests' servers listen on
/// (which are the exit's own: see [`strict_dialer`]).
fn dialer(dns: &DnsServer, allow: &[&str]) -> Dialer {
    let mut d = strict_dialer(dns, allow);
    let loopback = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    d.policy = Arc::new((*d.policy).clone().with_own_allowed(loopback.to_vec()));
    d
}

/// A dialer allowing `allow`, which opens no own address.
fn strict_dialer(dns: &DnsServer, allow: &[&str]) -> Dialer {
    let allow = Allowances {
        cidrs: allow.iter().map(|c| c.parse().unwrap()).collect(),
        ports: vec![],
    };
    let config = DnsConfig {
        upstreams: vec![dns.addr],
        cache_size: 16,
        timeout: Duration::from_secs(2),
    };
    Dialer {
        policy: Arc::new(EgressPolicy::default().with_global(allow)),
        dns: Dns::new(&config).unwrap(),
        connect_timeout: Duration::from_secs(3),
    }
}

fn name(host: &str, port: u16) -> Target {
    Target::Name(host.into(), port)
}

/// TESTPLAN §18: a hostname that resolves to a private, loopback or metadata address is
/// refused after resolution, over TCP and UDP.
#[tokio::test]
async fn names_resolving_to_special_addresses_are_refused() {
    let dns = DnsServer::start(vec![]).await;
    let d = dialer(&dns, &[]);
    for host in [
        "private.example.test.",
        "loop.example.test.",
        "meta.example.test.",
    ] {
        let tcp = d.connect_tcp(&CLIENT, &name(host, 80)).await;
        assert!(
            matches!(
                tcp,
                Err(DialError::Refused(Refusal::SpecialRange(
                    SpecialRange { .. }
                )))
            ),
            "{host}: {tcp:?}"
        );
        let udp = d.connect_udp(&CLIENT, &name(host, 53)).await;
        assert!(matches!(udp, Err(DialError::Refused(_))), "{host}: {udp:?}");
    }
    let lit = d
        .connect_tcp(
            &CLIENT,
            &Target::Addr("[::ffff:127.0.0.1]:80".parse().unwrap()),
        )
        .await;
    assert!(matches!(lit, Err(DialError::Refused(_))), "{lit:?}");
}

#[tokio::test]
async fn allowed_names_connect_to_the_checked_address_with_happy_eyeballs() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    // ::1 is tried first (IPv6 first) and refused by the kernel (nothing listens on it for
    // this port); the IPv4 attempt then wins.
    let dns = DnsServer::start(vec!["::1".parse().unwrap(), "127.0.0.1".parse().unwrap()]).await;
    let d = dialer(&dns, &["127.0.0.0/8", "::1/128"]);
    let accept = tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        s.write_all(b"hi").await.unwrap();
    });
    let mut stream = d
        .connect_tcp(&CLIENT, &name("echo.example.test.", port))
        .await
        .unwrap();
    assert_eq!(
        stream.peer_addr().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], port))
    );
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    accept.await.unwrap();
}

#[tokio::test]
async fn mapped_literals_dial_the_canonical_address() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let dns = DnsServer::start(vec![]).await;
    let d = dialer(&dns, &["127.0.0.0/8"]);
    let target = Target::Addr(format!("[::ffff:127.0.0.1]:{port}").parse().unwrap());
    let stream = d.connect_tcp(&CLIENT, &target).await.unwrap();
    assert_eq!(
        stream.peer_addr().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], port))
    );
}

#[tokio::test]
async fn connect_failures_and_unknown_names_are_reported() {
    let dns = DnsServer::start(vec![]).await;
    let d = dialer(&dns, &["127.0.0.0/8"]);
    // Bind then drop to get a port that refuses connections.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = d
        .connect_tcp(
            &CLIENT,
            &Target::Addr(SocketAddr::from(([127, 0, 0, 1], port))),
        )
        .await;
    assert!(
        matches!(refused, Err(DialError::Connect { .. })),
        "{refused:?}"
    );
    let unknown = d
        .connect_tcp(&CLIENT, &name("nope.example.test.", 80))
        .await;
    assert!(matches!(unknown, Err(DialError::Resolve(_))), "{unknown:?}");
}

#[tokio::test]
async fn udp_flows_reach_allowed_destinations() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let (n, from) = echo.recv_from(&mut buf).await.unwrap();
        echo.send_to(&buf[..n], from).await.unwrap();
    });
    let dns = DnsServer::start(vec![]).await;
    let d = dialer(&dns, &["127.0.0.0/8"]);
    let sock = d
        .connect_udp(&CLIENT, &Target::Addr(echo_addr))
        .await
        .unwrap();
    sock.send(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping");
}

/// Issue 20 §1: the exit's own addresses are refused inside an allowed CIDR, by address
/// and by name, over TCP and UDP, and nothing is dialled.
#[tokio::test]
async fn the_exit_itself_is_refused_by_address_and_by_name() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let dns = DnsServer::start(vec!["127.0.0.1".parse().unwrap()]).await;
    let d = strict_dialer(&dns, &["127.0.0.0/8", "::1/128", "0.0.0.0/0"]);
    let targets = [
        Target::Addr(SocketAddr::from(([127, 0, 0, 1], port))),
        Target::Addr(format!("[::ffff:127.0.0.1]:{port}").parse().unwrap()),
        Target::Addr(SocketAddr::from(([0, 0, 0, 0], port))),
        name("echo.example.test.", port),
        name("loop.example.test.", port),
    ];
    for target in &targets {
        let tcp = d.connect_tcp(&CLIENT, target).await;
        assert!(
            matches!(tcp, Err(DialError::Refused(Refusal::OwnAddress))),
            "{target:?}: {tcp:?}"
        );
        let udp = d.connect_udp(&CLIENT, target).await;
        assert!(
            matches!(udp, Err(DialError::Refused(Refusal::OwnAddress))),
            "{target:?}: {udp:?}"
        );
    }
    let accepted = tokio::time::timeout(Duration::from_millis(200), server.accept()).await;
    assert!(accepted.is_err(), "the exit dialled itself");
}

/// The kernel check on the dial path refuses a local address the policy's set does not
/// list (one added between two lists, or a range routed `local`): here every address of
/// this host's interfaces, with the set left empty and everything allowed.
#[tokio::test]
async fn local_addresses_missing_from_the_set_are_refused_by_the_kernel_check() {
    let listed = crate::own::OwnAddresses::default();
    let _watcher = crate::own::Watcher::start(listed.clone()).await.unwrap();
    // (An address of an interface that is down has no local route: not this test's case.)
    let host: Vec<IpAddr> = listed
        .snapshot()
        .iter()
        .copied()
        .filter(|ip| !crate::policy::is_always_own(*ip))
        .filter(|ip| crate::own::is_local(*ip).unwrap_or(false))
        .collect();
    let dns = DnsServer::start(vec![]).await;
    let d = strict_dialer(&dns, &["0.0.0.0/0", "::/0"]);
    assert!(
        !d.policy
            .is_own(host.first().copied().unwrap_or([192, 0, 2, 1].into()))
    );
    for ip in &host {
        let target = Target::Addr(SocketAddr::new(*ip, 9));
        let got = d.allowed_addrs(&CLIENT, &target, Transport::Udp).await;
        assert!(
            matches!(got, Err(DialError::Refused(Refusal::OwnAddress))),
            "{ip}: {got:?}"
        );
        let mut opened = strict_dialer(&dns, &["0.0.0.0/0", "::/0"]);
        opened.policy = Arc::new((*opened.policy).clone().with_own_allowed(vec![*ip]));
        let got = opened.allowed_addrs(&CLIENT, &target, Transport::Udp).await;
        assert_eq!(got.unwrap(), vec![SocketAddr::new(*ip, 9)]);
    }
    if host.is_empty() {
        eprintln!("this host has no address but loopback: kernel check not exercised");
    }
    // A remote address passes.
    let remote = Target::Addr("198.51.100.7:9".parse().unwrap());
    assert!(
        d.allowed_addrs(&CLIENT, &remote, Transport::Udp)
            .await
            .is_ok()
    );
}

#[test]
fn interleave_alternates_families_ipv6_first() {
    let ips: Vec<IpAddr> = ["1.1.1.1", "1.0.0.1", "2606::1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let got: Vec<String> = interleave(ips).iter().map(|ip| ip.to_string()).collect();
    assert_eq!(got, ["2606::1", "1.1.1.1", "1.0.0.1"]);
}

/// A listener whose accept queue is full: further connects get no answer (the kernel
/// drops their SYNs), like a black-holed address. Keep the returned values alive.
fn unanswering() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    // Fill the queue (a backlog of 0 still queues one or two connections).
    let fill = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (listener, fill, addr)
}

/// Happy-eyeballs attempts after the first each need a guard (a descriptor permit):
/// without one, no second socket is opened while the first attempt hangs.
#[tokio::test]
async fn later_attempts_wait_for_a_guard() {
    let (_hold, _fill, hanging) = unanswering();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = server.local_addr().unwrap();
    let limit = Duration::from_millis(1500);
    let denied = tokio::time::timeout(limit, race(vec![hanging, good], || None::<()>)).await;
    assert!(
        denied.is_err(),
        "a second attempt ran without a guard: {denied:?}"
    );
    let guards = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g = guards.clone();
    let more = move || {
        g.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(())
    };
    let won = tokio::time::timeout(limit, race(vec![hanging, good], more)).await;
    let stream = won.expect("the guarded second attempt connects").unwrap();
    assert_eq!(stream.peer_addr().unwrap(), good);
    assert_eq!(guards.load(std::sync::atomic::Ordering::Relaxed), 1);
}
