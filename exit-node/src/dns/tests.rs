use std::time::Duration;

use super::*;
use crate::testutil::{DnsServer, Dnsmasq, query};

async fn dns_for(server: &DnsServer) -> Dns {
    let config = DnsConfig {
        upstreams: vec![server.addr],
        cache_size: 64,
        timeout: Duration::from_secs(2),
    };
    Dns::new(&config).expect("resolver")
}

async fn ask(dns: &Dns, id: u16, name: &str, rtype: RecordType) -> Message {
    let bytes = dns
        .answer(&query(id, name, rtype))
        .await
        .expect("a response");
    Message::from_vec(&bytes).expect("a valid response")
}

#[tokio::test]
async fn a_aaaa_txt_and_nxdomain_through_the_configured_upstream() {
    let server = DnsServer::start(vec![]).await;
    let dns = dns_for(&server).await;

    let a = ask(&dns, 0x1234, "www.example.test.", RecordType::A).await;
    assert_eq!(a.id(), 0x1234);
    assert_eq!(a.message_type(), MessageType::Response);
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert_eq!(a.queries().len(), 1);
    let ips: Vec<_> = a
        .answers()
        .iter()
        .filter_map(|r| r.data().ip_addr())
        .collect();
    assert_eq!(ips, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);

    let aaaa = ask(&dns, 7, "www.example.test.", RecordType::AAAA).await;
    let ips: Vec<_> = aaaa
        .answers()
        .iter()
        .filter_map(|r| r.data().ip_addr())
        .collect();
    assert_eq!(ips, vec!["2001:db8::10".parse::<IpAddr>().unwrap()]);

    let txt = ask(&dns, 8, "www.example.test.", RecordType::TXT).await;
    assert_eq!(txt.answers().len(), 1);
    assert!(txt.answers()[0].data().to_string().contains("hello"));

    let nx = ask(&dns, 9, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.id(), 9);
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    assert!(nx.answers().is_empty());

    let nodata = ask(&dns, 10, "empty.example.test.", RecordType::A).await;
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_is_servfail_not_silence() {
    // A bound but silent socket: queries go nowhere and time out.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = DnsConfig {
        upstreams: vec![silent.local_addr().unwrap()],
        cache_size: 8,
        timeout: Duration::from_millis(200),
    };
    let dns = Dns::new(&config).unwrap();
    let resp = ask(&dns, 77, "www.example.test.", RecordType::A).await;
    assert_eq!(resp.id(), 77);
    assert_eq!(resp.response_code(), ResponseCode::ServFail);
}

#[tokio::test]
async fn malformed_queries_are_not_answered_or_formerr() {
    let server = DnsServer::start(vec![]).await;
    let dns = dns_for(&server).await;
    assert!(dns.answer(b"").await.is_none());
    assert!(dns.answer(&[0xff; 7]).await.is_none());
    // A well-formed header with no question: FORMERR with the same id.
    let mut empty = Message::new();
    empty.set_id(42);
    let resp = Message::from_vec(&dns.answer(&empty.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(
        (resp.id(), resp.response_code()),
        (42, ResponseCode::FormErr)
    );
}

#[tokio::test]
async fn lookup_ip_resolves_both_families() {
    let server = DnsServer::start(vec![]).await;
    let dns = dns_for(&server).await;
    let mut ips = dns.lookup_ip("www.example.test.").await.unwrap();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "2001:db8::10".parse().unwrap()
        ]
    );
    assert!(matches!(
        dns.lookup_ip("nope.example.test.").await,
        Err(DnsError::Lookup { .. })
    ));
}

fn dns_at(upstream: SocketAddr, timeout: Duration) -> Dns {
    let config = DnsConfig {
        upstreams: vec![upstream],
        cache_size: 64,
        timeout,
    };
    Dns::new(&config).expect("resolver")
}

/// Issue 20 §7, against a real dnsmasq: the client learns what the upstream said. An
/// answer, NODATA and NXDOMAIN pass as they are; REFUSED and a timeout become SERVFAIL
/// (before the fix REFUSED reached the app as an empty NOERROR: a failure shown as "this
/// name has no address"); and the exit's /etc/hosts is not an answer for clients.
#[tokio::test]
async fn the_upstreams_outcome_reaches_the_client_as_it_is() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let conf = format!(
        "local=/ht.test/\nhost-record=www.ht.test,192.0.2.44\n\
         server=/silent.test/127.0.0.1#{silent_port}"
    );
    let Some(dnsmasq) = Dnsmasq::start(&conf) else {
        return;
    };
    let dns = dns_at(dnsmasq.addr, Duration::from_millis(400));
    let code = |m: &Message| (m.response_code(), m.answers().len());

    let a = ask(&dns, 1, "www.ht.test.", RecordType::A).await;
    assert_eq!(code(&a), (ResponseCode::NoError, 1));
    assert_eq!(
        a.answers()[0].data().ip_addr(),
        Some("192.0.2.44".parse().unwrap())
    );
    let nodata = ask(&dns, 2, "www.ht.test.", RecordType::AAAA).await;
    assert_eq!(code(&nodata), (ResponseCode::NoError, 0), "NODATA");
    let nx = ask(&dns, 3, "nope.ht.test.", RecordType::A).await;
    assert_eq!(code(&nx), (ResponseCode::NXDomain, 0));
    // dnsmasq has no upstream for other names: it answers REFUSED.
    let refused = ask(&dns, 4, "www.example.com.", RecordType::A).await;
    assert_eq!(
        code(&refused),
        (ResponseCode::ServFail, 0),
        "REFUSED upstream"
    );
    let timeout = ask(&dns, 5, "www.silent.test.", RecordType::A).await;
    assert_eq!(
        code(&timeout),
        (ResponseCode::ServFail, 0),
        "a silent upstream"
    );
    assert_eq!(timeout.id(), 5);
    // A name of the exit's own /etc/hosts (not "localhost", which resolvers answer by
    // themselves, RFC 6761): the upstream refuses it, and so must we.
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let own = hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace().skip(1))
        .find(|n| !n.contains("localhost") && !n.starts_with("ip6-") && n.len() > 1);
    match own {
        Some(name) => {
            let fqdn = format!("{name}.");
            let leaked = ask(&dns, 6, &fqdn, RecordType::A).await;
            assert_eq!(
                code(&leaked),
                (ResponseCode::ServFail, 0),
                "/etc/hosts: {name}"
            );
            assert!(
                dns.lookup_ip(name).await.is_err(),
                "lookup_ip used /etc/hosts: {name}"
            );
        }
        None => eprintln!("/etc/hosts names nothing but localhost: that part is not checked"),
    }
    drop(silent);
}

/// An upstream that answers SERVFAIL: a stand-in of our own, because dnsmasq answers
/// SERVFAIL only when DNSSEC validation fails, which cannot be staged offline.
#[tokio::test]
async fn an_upstream_servfail_is_servfail() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = response_to(&q);
            r.set_response_code(ResponseCode::ServFail);
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    let dns = dns_at(addr, Duration::from_millis(400));
    let resp = ask(&dns, 9, "www.example.test.", RecordType::A).await;
    assert_eq!(
        (resp.id(), resp.response_code(), resp.answers().len()),
        (9, ResponseCode::ServFail, 0)
    );
    task.abort();
}
