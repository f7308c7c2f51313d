//! Assembling the node from its config: bind the leg listeners (one socket per distinct
//! address, shared by both legs when they share it), the admin listener, and hand every
//! upgraded leg to the session layer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::config::{FileConfig, LegListener};
use crate::listener::proxies::TrustedProxies;
use crate::listener::{self, Leg, LegSocket, ListenerLimits, Routes, tls};
use crate::session::SessionThreads;

/// The node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Bound listeners, running.
#[derive(Debug)]
pub struct Listening {
    /// The bound leg addresses (useful when the config said port 0), in config order: up, down.
    pub up: SocketAddr,
    /// See `up`.
    pub down: SocketAddr,
    /// The bound admin address, if enabled.
    pub admin: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Listening {
    /// Stop accepting new connections (established legs are unaffected).
    pub fn stop_accepting(&mut self) {
        self.tasks.abort_all();
    }
}

/// Bind every listener in `file` and start accepting; legs go to `sink`.
pub async fn listen(
    file: &FileConfig,
    config_dir: &Path,
    admin: Option<Admin>,
    sink: mpsc::Sender<LegSocket>,
    threads: Option<Arc<SessionThreads>>,
) -> Result<Listening, StartError> {
    let limits = ListenerLimits {
        upgrade_timeout: file.limits.upgrade_timeout,
        max_message_size: file.limits.max_message_size,
    };
    // Without an admin listener the counts go nowhere.
    let limits_hit = admin
        .as_ref()
        .map(|a| a.metrics.limits_hit.clone())
        .unwrap_or_default();
    let mut by_addr: BTreeMap<SocketAddr, SharedSocket<'_>> = BTreeMap::new();
    for (leg, cfg) in [(Leg::Up, &file.listen.up), (Leg::Down, &file.listen.down)] {
        let entry = by_addr.entry(cfg.address).or_insert_with(|| SharedSocket {
            paths: Vec::new(),
            cfg,
        });
        entry.paths.push((cfg.path.clone(), leg));
    }
    let proxies = Arc::new(TrustedProxies::new(
        file.listen.trusted_proxies.clone(),
        file.listen.client_address_header.0.clone(),
    ));
    let mut tasks = JoinSet::new();
    let (mut up, mut down) = (None, None);
    for (addr, SharedSocket { paths, cfg }) in by_addr {
        let acceptor = match &cfg.tls {
            Some(t) => Some(tls::acceptor(
                &config_dir.join(&t.cert),
                &config_dir.join(&t.key),
            )?),
            None => None,
        };
        let socket = bind(addr).await?;
        let local = socket
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        for (_, leg) in &paths {
            *match leg {
                Leg::Up => &mut up,
                Leg::Down => &mut down,
            } = Some(local);
        }
        tracing::info!(address = %local, tls = acceptor.is_some(), legs = ?paths, "listening");
        let routes = Arc::new(Routes { paths });
        tasks.spawn(listener::serve(
            socket,
            acceptor,
            routes,
            proxies.clone(),
            limits,
            sink.clone(),
            limits_hit.clone(),
            threads.clone(),
        ));
    }
    let admin_addr = match (admin, &file.admin) {
        (Some(admin), Some(cfg)) => {
            let socket = bind(cfg.address).await?;
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                addr: cfg.address,
                source,
            })?;
            admin.ready.store(true, Ordering::Relaxed);
            tracing::info!(address = %local, "admin listening");
            tasks.spawn(crate::admin::serve(socket, admin));
            Some(local)
        }
        _ => None,
    };
    // Both legs were inserted into `by_addr` above, so both were bound.
    let (up, down) = (up.expect("up leg bound"), down.expect("down leg bound"));
    Ok(Listening {
        up,
        down,
        admin: admin_addr,
        tasks,
    })
}

/// The legs served on one listening address (config validation guarantees they agree on TLS).
struct SharedSocket<'a> {
    paths: Vec<(String, Leg)>,
    cfg: &'a LegListener,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::admin::{Metrics, SessionAdmin};

    struct NoSessions;
    impl SessionAdmin for NoSessions {
        fn list_json(&self) -> String {
            "[]".into()
        }
        fn kick(&self, _: &str) -> bool {
            false
        }
    }

    fn file(shared: bool) -> FileConfig {
        let down = if shared { "127.0.0.1:0" } else { "127.0.0.2:0" };
        let text = format!(
            "private_key_file = \"k\"\n[listen.up]\naddress = \"127.0.0.1:0\"\npath = \"/u\"\n\
             [listen.down]\naddress = \"{down}\"\npath = \"/d\"\n[admin]\naddress = \"127.0.0.1:0\"\n"
        );
        toml::from_str(&text).unwrap()
    }

    async fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_string(&mut out),
        )
        .await;
        out
    }

    #[tokio::test]
    async fn binds_legs_and_admin_and_becomes_ready() {
        for shared in [true, false] {
            let (tx, _rx) = mpsc::channel(4);
            let ready = Arc::new(AtomicBool::new(false));
            let admin = Admin {
                metrics: Metrics::default(),
                ready: ready.clone(),
                sessions: Arc::new(NoSessions),
                token: None,
            };
            let mut listening = listen(&file(shared), Path::new("."), Some(admin), tx, None)
                .await
                .unwrap();
            assert_eq!(listening.up == listening.down, shared);
            assert!(ready.load(Ordering::Relaxed));
            let admin = listening.admin.unwrap();
            assert!(http_get(admin, "/readyz").await.starts_with("HTTP/1.1 200"));
            assert!(
                http_get(listening.down, "/")
                    .await
                    .starts_with("HTTP/1.1 404")
            );
            listening.stop_accepting();
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut f = file(true);
        f.listen.up.address = taken.local_addr().unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let err = listen(&f, Path::new("."), None, tx, None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {}", f.listen.up.address)),
            "{err}"
        );
    }
}
