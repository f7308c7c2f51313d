use std::time::Duration;

use super::*;
use crate::testutil::{DnsServer, query};

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
