//! The exit node's configuration file: parsed once, validated into [`Config`], passed in.
//!
//! The file format is documented by `configs/exit-node.toml`, which is also what
//! `exit-node config generate` prints; a test keeps the two in step.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::header::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use crate::admin::AdminToken;
use crate::keys::{self, KeyError};
use crate::policy::{Allowances, DEFAULT_BLOCKED_PORTS, EgressPolicy};

/// The commented sample configuration (`exit-node config generate`).
pub const SAMPLE: &str = include_str!("../../../configs/exit-node.toml");

/// What can be wrong with a configuration. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (the message names the key).
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A value is well-formed but not acceptable.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A key file named by the config is unusable.
    #[error("config file {path}: key `{key}`: {source}")]
    Key {
        path: PathBuf,
        key: String,
        source: KeyError,
    },
}

/// The file as written. Field docs are the user documentation (see the sample).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Path of the exit's static private key (base64).
    pub private_key_file: PathBuf,
    /// The two leg listeners.
    pub listen: ListenConfig,
    /// Clients allowed to connect.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Egress policy.
    #[serde(default)]
    pub egress: EgressConfig,
    /// DNS for clients.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Session behaviour.
    #[serde(default)]
    pub session: SessionConfig,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The admin listener; absent means disabled.
    pub admin: Option<AdminConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The async runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// The async runtime and the state kept across restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where the node keeps state across restarts (the newest handshake timestamp per
    /// client key, so archived handshakes cannot be replayed after a restart); created
    /// private (0700) if missing; relative to the config file.
    pub state_dir: PathBuf,
    /// Worker threads of the main runtime (the listeners' accept loops, admin); absent:
    /// one per CPU.
    pub worker_threads: Option<NonZeroUsize>,
    /// Threads that run sessions: each accepted connection is set up on the least loaded
    /// one, and a session runs with all its tasks on its up leg's thread; absent: one per
    /// CPU.
    pub session_threads: Option<NonZeroUsize>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            state_dir: PathBuf::from("/var/lib/half-tunnel"),
            worker_threads: None,
            session_threads: None,
        }
    }
}

/// The up and down leg listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Client → exit.
    pub up: LegListener,
    /// Exit → client.
    pub down: LegListener,
    /// Addresses (CIDRs) of the CDN or reverse proxy in front of the listeners. A leg from
    /// one of them is attributed to the client address it passes in
    /// `client_address_header` (for the per-source handshake limit and the logs); the
    /// header is ignored from anyone else. Empty: every leg is its TCP peer.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The request header a trusted proxy passes the client's address in: a
    /// comma-separated list whose rightmost entry not itself a trusted proxy is used
    /// (`X-Forwarded-For`; a single address such as `CF-Connecting-IP` works too).
    #[serde(default = "default_client_address_header")]
    pub client_address_header: HeaderField,
}

fn default_client_address_header() -> HeaderField {
    HeaderField(HeaderName::from_static(
        crate::listener::proxies::DEFAULT_HEADER,
    ))
}

/// An HTTP header name, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderField(pub HeaderName);

impl TryFrom<String> for HeaderField {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        HeaderName::from_bytes(name.as_bytes())
            .map(HeaderField)
            .map_err(|_| {
                format!("expected an HTTP header name like \"X-Forwarded-For\", got {name:?}")
            })
    }
}

/// One WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegListener {
    /// Address to bind.
    pub address: SocketAddr,
    /// HTTP path of the upgrade.
    pub path: String,
    /// TLS files; absent means plain HTTP behind a TLS-terminating proxy.
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// One allowed client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name for logs.
    #[serde(default)]
    pub name: String,
    /// Static public key, base64.
    pub public_key: String,
    /// Optional pre-shared key file.
    pub psk_file: Option<PathBuf>,
    /// Extra networks this client may reach.
    #[serde(default)]
    pub allow_cidrs: Vec<IpNet>,
    /// Extra ports this client may reach.
    #[serde(default)]
    pub allow_ports: Vec<u16>,
}

/// Egress policy settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Networks every client may reach although denied by default. Never opens the exit's
    /// own addresses, even when it covers them (see `allow_own_addresses`).
    pub allow_cidrs: Vec<IpNet>,
    /// Ports every client may reach although blocked.
    pub allow_ports: Vec<u16>,
    /// The exit's own addresses that every client may reach anyway, each exact (`/32` or
    /// `/128`), e.g. `["10.40.0.1/32"]`: a client then reaches every service of the exit
    /// bound to that address or to `0.0.0.0`/`::` (the admin listener too). Lifts only the
    /// own-address rule: a private address still needs `allow_cidrs`. `check-config` warns
    /// about every entry.
    pub allow_own_addresses: Vec<IpNet>,
    /// Networks refused even though public.
    pub deny_cidrs: Vec<IpNet>,
    /// Ports refused unless allowed.
    pub blocked_ports: Vec<u16>,
    /// TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// UDP flow idle timeout.
    #[serde(with = "humantime_serde")]
    pub udp_idle_timeout: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow_cidrs: Vec::new(),
            allow_ports: Vec::new(),
            allow_own_addresses: Vec::new(),
            deny_cidrs: Vec::new(),
            blocked_ports: DEFAULT_BLOCKED_PORTS.to_vec(),
            connect_timeout: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Upstream resolvers; empty means the system's.
    pub upstreams: Vec<SocketAddr>,
    /// Cached answers.
    pub cache_size: usize,
    /// Upstream timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            upstreams: Vec::new(),
            cache_size: 4096,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Expiry of a session with no legs.
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
    /// Down direction may use the up leg while the down leg is missing.
    pub fallback_to_up_leg: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_ttl: Duration::from_secs(300),
            fallback_to_up_leg: true,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sessions across all clients.
    pub max_sessions: usize,
    /// Sessions of one client key at once (≥ 1); a newer session ends the key's oldest.
    pub max_sessions_per_client: NonZeroUsize,
    /// Streams in one session.
    pub max_streams_per_session: usize,
    /// Buffered bytes per session: half is the window for what the exit holds for the
    /// client, half the pool for upload stream windows above their initial one (uploads
    /// held by destinations that stopped reading: at most that half plus the initial window
    /// per open stream; PROTOCOL.md §6.2).
    pub max_buffered_bytes_per_session: usize,
    /// Handshakes per second from one source address.
    pub handshakes_per_second_per_source: u32,
    /// HTTP upgrade deadline.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// First protocol message deadline after the upgrade.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest WebSocket message.
    pub max_message_size: usize,
    /// Per-client bytes per second each way; 0 = unlimited. Not enforced yet: other values
    /// are refused when the node starts.
    pub bandwidth_per_client: u64,
    /// Destination sockets (TCP, UDP, ping) one session may hold; 0 = only the fair share
    /// of the node's descriptor budget (see `crate::descriptors`), which always applies.
    pub max_dest_sockets_per_session: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions: 1024,
            max_sessions_per_client: NonZeroUsize::new(4).expect("4 is not zero"),
            max_streams_per_session: 16384,
            max_buffered_bytes_per_session: 64 << 20,
            handshakes_per_second_per_source: 20,
            upgrade_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            bandwidth_per_client: 0,
            max_dest_sockets_per_session: 0,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind. Anything but loopback needs `token_file`: clients' traffic leaves
    /// from this host.
    pub address: SocketAddr,
    /// A file holding the bearer token (at least 16 printable characters) that every path
    /// but `/healthz` and `/readyz` requires (`Authorization: Bearer <token>`); relative to
    /// the config file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Interval of the periodic stats line; zero disables it.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            stats_interval: Duration::from_secs(30),
        }
    }
}

/// A client after validation.
#[derive(Debug, Clone)]
pub struct Client {
    /// Name for logs.
    pub name: String,
    /// Static public key.
    pub public_key: [u8; 32],
    /// Pre-shared key, if configured.
    pub psk: Option<[u8; 32]>,
}

/// The validated configuration the node runs with.
#[derive(Debug)]
pub struct Config {
    /// The exit's static private key.
    pub private_key: [u8; 32],
    /// Allowed clients.
    pub clients: Vec<Client>,
    /// The egress policy (without the exit's own addresses, which are found at start-up
    /// and followed by `crate::own`).
    pub policy: EgressPolicy,
    /// The admin listener's bearer token (`[admin] token_file`).
    pub admin_token: Option<AdminToken>,
    /// Everything else, as written.
    pub file: FileConfig,
}

impl Config {
    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate `text`; `path` names the file in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        validate_listeners(&file.listen).map_err(|(key, msg)| invalid(key, msg))?;
        let key_err = |key: String| {
            move |source| ConfigError::Key {
                path: path.to_owned(),
                key,
                source,
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let admin_token = match &file.admin {
            Some(admin) => {
                admin_token(admin, base).map_err(|msg| invalid("admin.token_file", msg))?
            }
            None => None,
        };
        let private_key = keys::read_key_file(&base.join(&file.private_key_file))
            .map_err(key_err("private_key_file".into()))?;
        let mut clients = Vec::with_capacity(file.clients.len());
        let mut seen = HashSet::new();
        let own_allowed = exact_addresses(&file.egress.allow_own_addresses)
            .map_err(|(i, msg)| invalid(&format!("egress.allow_own_addresses[{i}]"), msg))?;
        let mut policy = EgressPolicy::default()
            .with_global(Allowances {
                cidrs: file.egress.allow_cidrs.clone(),
                ports: file.egress.allow_ports.clone(),
            })
            .with_own_allowed(own_allowed)
            .with_denied(file.egress.deny_cidrs.clone())
            .with_blocked_ports(file.egress.blocked_ports.clone());
        for (i, c) in file.clients.iter().enumerate() {
            let public_key = keys::decode_key(&c.public_key)
                .map_err(key_err(format!("clients[{i}].public_key")))?;
            if !seen.insert(public_key) {
                return Err(invalid(
                    &format!("clients[{i}].public_key"),
                    "duplicate client key".into(),
                ));
            }
            let psk = match &c.psk_file {
                Some(p) => Some(
                    keys::read_key_file(&base.join(p))
                        .map_err(key_err(format!("clients[{i}].psk_file")))?,
                ),
                None => None,
            };
            let allow = Allowances {
                cidrs: c.allow_cidrs.clone(),
                ports: c.allow_ports.clone(),
            };
            policy = policy.with_client(public_key, allow);
            clients.push(Client {
                name: c.name.clone(),
                public_key,
                psk,
            });
        }
        Ok(Config {
            private_key,
            clients,
            policy,
            admin_token,
            file,
        })
    }

    /// What an operator should know about this config although it is valid (printed by
    /// `exit-node check-config`, logged at start); each names the file and the key.
    pub fn warnings(&self, path: &Path) -> Vec<String> {
        self.file
            .egress
            .allow_own_addresses
            .iter()
            .enumerate()
            .map(|(i, net)| {
                format!(
                    "config file {}: key `egress.allow_own_addresses[{i}]`: clients may reach \
                     the exit's own address {}, and every service of the exit bound to it or \
                     to 0.0.0.0/:: (the admin listener too)",
                    path.display(),
                    net.addr()
                )
            })
            .collect()
    }
}

/// The addresses of `nets`, each of which must be a single address (`/32`, `/128`); else
/// the index of the first that is not and why.
fn exact_addresses(nets: &[IpNet]) -> Result<Vec<std::net::IpAddr>, (usize, String)> {
    nets.iter()
        .enumerate()
        .map(|(i, net)| {
            if net.prefix_len() == net.max_prefix_len() {
                Ok(net.addr())
            } else {
                Err((
                    i,
                    format!(
                        "expected one exact address such as \"10.40.0.1/32\" or \
                         \"2001:db8::1/128\", got the network {net}: own addresses are \
                         opened one by one"
                    ),
                ))
            }
        })
        .collect()
}

/// The admin token from `admin.token_file`; an admin listener on anything but loopback
/// without one is refused.
fn admin_token(admin: &AdminConfig, base: &Path) -> Result<Option<AdminToken>, String> {
    let Some(file) = &admin.token_file else {
        if admin.address.ip().is_loopback() {
            return Ok(None);
        }
        return Err(format!(
            "the admin listener binds {}, which is not loopback, so it needs a bearer token: \
             set admin.token_file (a file holding at least {} printable characters, e.g. from \
             `openssl rand -hex 32`) or bind 127.0.0.1 / [::1]",
            admin.address,
            crate::admin::MIN_TOKEN_LEN
        ));
    };
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    AdminToken::parse(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn validate_listeners(listen: &ListenConfig) -> Result<(), (&'static str, String)> {
    for (key, leg) in [
        ("listen.up.path", &listen.up),
        ("listen.down.path", &listen.down),
    ] {
        if !leg.path.starts_with('/') {
            return Err((
                key,
                format!(
                    "expected an absolute HTTP path like \"/u\", got {:?}",
                    leg.path
                ),
            ));
        }
    }
    if listen.up.address == listen.down.address {
        if listen.up.path == listen.down.path {
            return Err((
                "listen.down.path",
                "the up and down legs share an address, so their paths must differ".into(),
            ));
        }
        if listen.up.tls != listen.down.tls {
            return Err((
                "listen.down.tls",
                "the up and down legs share an address, so they must use the same TLS files".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
