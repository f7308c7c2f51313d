//! Servers that tests start on loopback.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// An authoritative test zone `example.test` served over UDP on 127.0.0.1.
///
/// Names: `www` (A 192.0.2.10, AAAA 2001:db8::10, TXT "hello"), `private` (A 10.0.0.5),
/// `loop` (A 127.0.0.1), `meta` (A 169.254.169.254), `echo` (A/AAAA given at start).
/// Names under `silent.example.test` get no answer at all (an upstream that times out).
/// Anything else is NXDOMAIN with the zone's SOA.
#[derive(Debug)]
pub struct DnsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    /// Start the server; `echo` names resolve to `echo_addrs`.
    pub async fn start(echo_addrs: Vec<IpAddr>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind test DNS server");
        let addr = socket.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let silent = n_of(&query).is_some_and(|q| q.ends_with("silent.example.test."));
                if silent {
                    continue;
                }
                if let Ok(bytes) = answer(&query, &echo_addrs).to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        DnsServer { addr, task }
    }
}

/// The question's name, lowercased.
fn n_of(query: &Message) -> Option<String> {
    query
        .queries()
        .first()
        .map(|q| q.name().to_ascii().to_ascii_lowercase())
}

fn answer(query: &Message, echo: &[IpAddr]) -> Message {
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .add_queries(query.queries().iter().cloned());
    let Some(q) = query.queries().first() else {
        return resp;
    };
    let name = q.name().to_lowercase().to_ascii();
    let records = zone(&name, echo);
    let Some(records) = records else {
        resp.set_response_code(ResponseCode::NXDomain);
        let soa = SOA::new(
            n("ns.example.test."),
            n("admin.example.test."),
            1,
            60,
            60,
            60,
            30,
        );
        resp.add_name_server(Record::from_rdata(n("example.test."), 30, RData::SOA(soa)));
        return resp;
    };
    let wanted = records
        .into_iter()
        .filter(|r| r.record_type() == q.query_type());
    resp.add_answers(wanted.map(|rdata| Record::from_rdata(q.name().clone(), 60, rdata)));
    resp
}

fn zone(name: &str, echo: &[IpAddr]) -> Option<Vec<RData>> {
    let ip = |s: &str| IpAddr::from_str(s).expect("zone literal");
    let rdata = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Some(match name {
        "www.example.test." => vec![
            rdata(ip("192.0.2.10")),
            rdata(ip("2001:db8::10")),
            RData::TXT(TXT::new(vec!["hello".into()])),
        ],
        "private.example.test." => vec![rdata(ip("10.0.0.5"))],
        "loop.example.test." => vec![rdata(ip("127.0.0.1"))],
        "meta.example.test." => vec![rdata(ip("169.254.169.254"))],
        "echo.example.test." => echo.iter().copied().map(rdata).collect(),
        "empty.example.test." => vec![],
        _ => return None,
    })
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).expect("zone literal")
}

/// Build a raw DNS query for tests.
pub fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_id(id).set_recursion_desired(true);
    msg.add_query(hickory_proto::op::Query::query(n(name), rtype));
    msg.to_vec().expect("encode test query")
}

/// A throwaway CA with one leaf for `up.example.test`.
#[allow(missing_debug_implementations)]
pub struct TestCa {
    /// The CA certificate.
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    /// The leaf certificate (PEM).
    pub leaf_pem: String,
    /// The leaf key (PEM).
    pub leaf_key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec!["up.example.test".into()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        TestCa {
            ca_der: ca.der().clone(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}

/// A real dnsmasq on 127.0.0.1 (issue 20 §7: "test with a real dnsmasq upstream"), with
/// `conf` added to a configuration that reads neither `/etc/resolv.conf` nor `/etc/hosts`.
/// Killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    child: std::process::Child,
    conf: std::path::PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.conf);
    }
}

impl Dnsmasq {
    /// Start it; `None` (with a message) when dnsmasq is not installed, except under CI,
    /// where that is a failure (`.ci/run` installs `dnsmasq-base`).
    pub fn start(conf: &str) -> Option<Dnsmasq> {
        let Some(bin) = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "dnsmasq is missing (apt-get install dnsmasq-base)"
            );
            eprintln!("SKIPPED: dnsmasq is not installed (apt-get install dnsmasq-base)");
            return None;
        };
        // A free port for both transports: bound once, released, handed to dnsmasq.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let file =
            std::env::temp_dir().join(format!("ht-dnsmasq-{}-{port}.conf", std::process::id()));
        let base = format!(
            "no-resolv\nno-hosts\nport={port}\nlisten-address=127.0.0.1\nbind-interfaces\n\
             user=root\n{conf}\n"
        );
        std::fs::write(&file, base).expect("write dnsmasq.conf");
        let child = std::process::Command::new(bin)
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", file.display()))
            .arg("--pid-file=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready once it accepts TCP on its port.
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "dnsmasq did not start on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(Dnsmasq {
            addr,
            child,
            conf: file,
        })
    }
}
