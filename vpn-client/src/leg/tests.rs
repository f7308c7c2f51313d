// tungstenite's handshake callback type returns its (large) ErrorResponse by value.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

use super::*;

/// A throwaway CA and a leaf for `a.example.test`, written to a temp dir.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    leaf_sha256: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("ht-leg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["a.example.test".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.der());
    let leaf_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    Pki {
        dir,
        ca_file,
        leaf_sha256,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
    }
}

/// A WebSocket echo server on loopback, TLS when an acceptor is given; only `/u` upgrades.
async fn echo_server(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    Some(a) => match a.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                             resp| {
                    if req.uri().path() == "/u" {
                        Ok(resp)
                    } else {
                        let mut r =
                            tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                                None,
                            );
                        *r.status_mut() =
                            tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                        Err(r)
                    }
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(io, check).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_binary() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn leg(url: &str, addr: SocketAddr) -> LegConfig {
    LegConfig {
        url: url.into(),
        connect_address: Some(addr),
        sni: None,
        ca_file: None,
        pin_sha256: None,
        insecure: false,
    }
}

fn no_prepare(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

async fn roundtrip(config: &LegConfig) -> Result<Connected, LegError> {
    let endpoint = LegEndpoint::new(config, 1 << 20, Duration::from_secs(5))?;
    let (ws, info) = endpoint.connect(&no_prepare).await?;
    let (read_half, write_half) = tokio::io::split(ws.io);
    let mut reader = ws::WsReader::new(read_half, ws.read, ws.max_message);
    let mut writer = ws::WsWriter::new(write_half);
    writer.push(ws::Outgoing::Binary(vec![7u8; 3000].into()));
    writer.flush().await.unwrap();
    match reader.next().await.unwrap() {
        ws::Incoming::Message(echoed) => assert_eq!(&echoed[..], &[7u8; 3000][..]),
        other => panic!("expected the echo, got {other:?}"),
    }
    Ok(info)
}

#[tokio::test]
async fn plain_ws_leg_connects_and_carries_messages() {
    let addr = echo_server(None).await;
    let info = roundtrip(&leg("ws://a.example.test/u", addr))
        .await
        .unwrap();
    assert_eq!(info.peer, addr);
    assert!(!info.tls);
}

#[tokio::test]
async fn tls_leg_trusts_a_ca_file_and_checks_the_name() {
    let pki = pki("ca");
    let addr = echo_server(Some(pki.acceptor.clone())).await;
    let mut config = leg("wss://a.example.test/u", addr);
    // Without the CA the (private) certificate is rejected.
    assert!(matches!(
        roundtrip(&config).await,
        Err(LegError::Tls { .. })
    ));
    config.ca_file = Some(pki.ca_file.clone());
    assert!(roundtrip(&config).await.unwrap().tls);
    // The name is verified: a different SNI fails.
    config.sni = Some("b.example.test".into());
    assert!(matches!(
        roundtrip(&config).await,
        Err(LegError::Tls { .. })
    ));
}

#[tokio::test]
async fn tls_legs_prefer_aes_128_gcm() {
    let pki = pki("suite");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    });
    let mut config = leg("wss://a.example.test/u", addr);
    config.ca_file = Some(pki.ca_file.clone());
    let connector = tls::connector(&config).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("a.example.test").unwrap();
    let _tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[tokio::test]
async fn pinning_accepts_only_the_pinned_certificate() {
    let pki = pki("pin");
    let addr = echo_server(Some(pki.acceptor.clone())).await;
    let mut config = leg("wss://a.example.test/u", addr);
    config.pin_sha256 = Some(pki.leaf_sha256.clone());
    roundtrip(&config).await.unwrap();
    config.pin_sha256 = Some("00".repeat(32));
    assert!(matches!(
        roundtrip(&config).await,
        Err(LegError::Tls { .. })
    ));
    config.pin_sha256 = Some("xyz".into());
    assert!(matches!(
        LegEndpoint::new(&config, 1024, Duration::from_secs(1)),
        Err(LegError::TlsSetup(_))
    ));
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let pki = pki("insecure");
    let addr = echo_server(Some(pki.acceptor.clone())).await;
    let mut config = leg("wss://a.example.test/u", addr);
    config.insecure = true;
    roundtrip(&config).await.unwrap();
}

#[tokio::test]
async fn wrong_path_and_dead_endpoints_are_distinct_errors() {
    let addr = echo_server(None).await;
    let wrong = roundtrip(&leg("ws://a.example.test/nope", addr)).await;
    assert!(
        matches!(wrong, Err(LegError::UpgradeRefused(404))),
        "{wrong:?}"
    );
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = roundtrip(&leg("ws://a.example.test/u", dead)).await;
    assert!(
        matches!(refused, Err(LegError::Connect { .. })),
        "{refused:?}"
    );
    let bad = LegEndpoint::new(
        &leg("http://a.example.test/u", dead),
        1024,
        Duration::from_secs(1),
    );
    assert!(matches!(bad, Err(LegError::InvalidUrl { .. })));
}

#[tokio::test]
async fn prepare_hook_runs_before_connect() {
    let addr = echo_server(None).await;
    let endpoint = LegEndpoint::new(
        &leg("ws://a.example.test/u", addr),
        1024,
        Duration::from_secs(5),
    )
    .unwrap();
    let failing = |_: &TcpSocket| Err(std::io::Error::other("mark refused"));
    assert!(matches!(
        endpoint.connect(&failing).await,
        Err(LegError::Connect { .. })
    ));
}
