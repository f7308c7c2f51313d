//! The client's configuration file: parsed once, validated into [`Config`], passed in.
//!
//! `configs/client.toml` documents every key and is what `vpn-client config generate`
//! prints; a test keeps it parseable and in step with the defaults here.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// The commented sample configuration.
pub const SAMPLE: &str = include_str!("../../../configs/client.toml");

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
    /// Not TOML, or not the schema (the message names the key and line).
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A well-formed value that cannot be used.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This client's private key file.
    pub private_key_file: PathBuf,
    /// The exit's pinned public key (base64).
    pub exit_public_key: String,
    /// Optional pre-shared key file.
    pub psk_file: Option<PathBuf>,
    /// The up leg.
    pub up: LegConfig,
    /// The down leg.
    pub down: LegConfig,
    /// The TUN device.
    #[serde(default)]
    pub tun: TunConfig,
    /// DNS.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Routing.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Kill switch.
    #[serde(default)]
    pub kill_switch: KillSwitchConfig,
    /// Router mode.
    #[serde(default)]
    pub router: RouterConfig,
    /// Session behaviour.
    #[serde(default)]
    pub session: SessionConfig,
    /// Control socket and journal.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// One leg's endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegConfig {
    /// `wss://host[:port]/path` or `ws://…`.
    pub url: String,
    /// Dial this address instead of resolving the URL's host.
    pub connect_address: Option<SocketAddr>,
    /// TLS server name; defaults to the URL's host.
    pub sni: Option<String>,
    /// Extra trusted CAs (PEM).
    pub ca_file: Option<PathBuf>,
    /// SHA-256 pin of the end-entity certificate (hex).
    pub pin_sha256: Option<String>,
    /// Accept any certificate (testing only).
    #[serde(default)]
    pub insecure: bool,
}

/// TUN settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// MTU, 1280..=65535 (largest is fastest for local traffic, see docs/BENCHMARKS.md).
    pub mtu: u32,
    /// Packets the kernel may queue on the TUN for the client to read (its `txqueuelen`),
    /// 64..=1000000. The kernel drops what exceeds it; closing thousands of connections at
    /// once (a browser or a crawler exiting) sends a burst of FINs and ACKs that the
    /// kernel's default of 500 drops, and the apps' retransmissions, all on the same timer,
    /// overflow it again (see docs/BENCHMARKS.md).
    pub tx_queue_len: u32,
    /// Offloads on the TUN (`IFF_VNET_HDR` with `TUN_F_CSUM|TSO4|TSO6`). Checksums: the
    /// packets of this host's apps cross no wire before the client, so the kernel no
    /// longer sums every segment for the client to verify, nor the client the segments it
    /// writes for the kernel to verify (forwarded ones are completed by the kernel). TCP
    /// segments: traffic forwarded from a LAN (router mode) reaches the client in the
    /// kernel's GRO/TSO batches of up to 64 KiB instead of one read per 1,500 bytes, and the
    /// client writes a flow's consecutive segments as one GSO packet for the kernel to cut.
    /// Falls back to plain packets, with a warning, where the kernel refuses it.
    pub offload: bool,
    /// IPv4 address of the tunnel.
    pub address_v4: Ipv4Net,
    /// IPv6 address of the tunnel.
    pub address_v6: Ipv6Net,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            name: "ht0".into(),
            mtu: 65535,
            tx_queue_len: 4096,
            offload: true,
            address_v4: "172.19.0.1/30".parse().expect("literal"),
            address_v6: "fd00:4854::1/126".parse().expect("literal"),
        }
    }
}

/// Which port-53 packets are answered through the exit's resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intercept {
    /// Every packet to port 53.
    All,
    /// Only packets to the virtual resolver addresses.
    Virtual,
}

/// DNS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Virtual resolver (IPv4).
    pub virtual_resolver_v4: Ipv4Addr,
    /// Virtual resolver (IPv6).
    pub virtual_resolver_v6: Ipv6Addr,
    /// Interception scope.
    pub intercept: Intercept,
    /// Point the system resolver at the virtual one.
    pub manage_system_dns: bool,
    /// The resolver file used without systemd-resolved.
    pub resolv_conf: PathBuf,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            virtual_resolver_v4: Ipv4Addr::new(172, 19, 0, 2),
            virtual_resolver_v6: "fd00:4854::2".parse().expect("literal"),
            intercept: Intercept::All,
            manage_system_dns: true,
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }
}

/// Routing settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Mark of the client's own sockets.
    pub fwmark: u32,
    /// Routing table of the TUN default route.
    pub table: u32,
    /// Only these networks are tunnelled (empty = everything).
    pub include: Vec<IpNet>,
    /// These networks stay outside.
    pub exclude: Vec<IpNet>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            fwmark: 0x4854,
            table: 0x4854,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

/// Kill switch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KillSwitchConfig {
    /// Unset: on in router mode only.
    pub enabled: Option<bool>,
}

/// Router mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Forward a LAN into the tunnel.
    pub enabled: bool,
    /// The LAN interface.
    pub lan_interface: Option<String>,
}

/// Session settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Down direction on the up leg while the down leg is missing.
    pub fallback_to_up_leg: bool,
    /// First reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Whether the exit can reach IPv6 destinations. If false, IPv6 connections are
    /// refused inside the tunnel (ICMPv6 unreachable) and never leave the machine.
    pub exit_has_ipv6: bool,
    /// Reconnect a leg when no data has moved for this long while flows wait (our records
    /// unacknowledged, or streams open). Must exceed the 5 s keepalive (the exit's pings are
    /// the least the down leg carries) and stay below the 15 s leg timeout; zero disables.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            fallback_to_up_leg: true,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            exit_has_ipv6: true,
            stall_timeout: Duration::from_secs(6),
        }
    }
}

/// Runtime paths and threads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Control socket.
    pub control_socket: PathBuf,
    /// Undo journal directory.
    pub journal_dir: PathBuf,
    /// Worker threads of the async runtime. One session's work is one driver and its
    /// legs, so one thread (the default) avoids handing packets between threads: on 2
    /// vCPUs it measured 9–23 % less CPU per byte, faster downloads and connects, uploads
    /// within the noise (docs/BENCHMARKS.md). More threads overlap the upload chain where
    /// cores are free.
    pub worker_threads: NonZeroUsize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            control_socket: "/run/half-tunnel/control.sock".into(),
            journal_dir: "/run/half-tunnel".into(),
            worker_threads: NonZeroUsize::MIN,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Periodic stats interval; zero disables.
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

impl Config {
    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate `text`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                key: key.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// Whether the kill switch is on (explicit setting, else on in router mode).
    pub fn kill_switch(&self) -> bool {
        self.kill_switch.enabled.unwrap_or(self.router.enabled)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, leg) in [("up.url", &self.up), ("down.url", &self.down)] {
            if !(leg.url.starts_with("wss://") || leg.url.starts_with("ws://")) {
                return Err((
                    key,
                    format!("expected a ws:// or wss:// URL, got {:?}", leg.url),
                ));
            }
        }
        if !(1280..=65535).contains(&self.tun.mtu) {
            return Err((
                "tun.mtu",
                format!("expected 1280..=65535, got {}", self.tun.mtu),
            ));
        }
        if !(64..=1_000_000).contains(&self.tun.tx_queue_len) {
            return Err((
                "tun.tx_queue_len",
                format!("expected 64..=1000000, got {}", self.tun.tx_queue_len),
            ));
        }
        if self.tun.name.is_empty() || self.tun.name.len() > 15 {
            return Err((
                "tun.name",
                "expected an interface name of 1 to 15 characters".into(),
            ));
        }
        if self.routing.fwmark == 0 {
            return Err(("routing.fwmark", "expected a non-zero mark".into()));
        }
        if self.router.enabled && self.router.lan_interface.is_none() {
            return Err((
                "router.lan_interface",
                "router mode needs the LAN interface name".into(),
            ));
        }
        let stall = self.session.stall_timeout;
        let proto = proto::Settings::default();
        let in_window = stall > proto.keepalive && stall < proto.leg_timeout;
        if !(stall.is_zero() || in_window) {
            return Err((
                "session.stall_timeout",
                format!(
                    "expected more than the {:?} keepalive and less than the {:?} leg timeout \
                     (or \"0s\" to turn the stall monitor off), got {stall:?}",
                    proto.keepalive, proto.leg_timeout
                ),
            ));
        }
        if self.session.reconnect_initial > self.session.reconnect_max {
            return Err((
                "session.reconnect_initial",
                "must not exceed session.reconnect_max".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
