//! `vpn-client up` and `down`: config → driver settings, the host changes through
//! `platform` (journaled, undone on exit), and the driver in between.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use platform::{
    DnsConfig, DnsMethod, FirewallConfig, Host, LinuxSystem, Recovery, RouteAllConfig, TunConfig,
    TunOffload, recover,
};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::config::{Config, Intercept, LegConfig};
use crate::flows::BridgeConfig;
use crate::keys::{decode_key, read_key_file};
use crate::leg::LegEndpoint;
use crate::leg::resolve::{MarkedDns, Resolve, WithFallback};
use crate::session::{self, DriverConfig};

/// How long connecting a leg (TCP + TLS + upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the resolver file is checked for rewrites by other programs.
const DNS_CHECK: Duration = Duration::from_secs(2);

/// Build the driver's settings from the config file: keys, legs, stack, bridge.
pub fn driver_config(cfg: &Config, fwmark: Option<u32>) -> anyhow::Result<DriverConfig> {
    let private_key = read_key_file(&cfg.private_key_file)?;
    let exit_public_key = decode_key("config key `exit_public_key`", &cfg.exit_public_key)?;
    let psk = cfg.psk_file.as_deref().map(read_key_file).transpose()?;
    let settings = proto::Settings {
        fallback: cfg.session.fallback_to_up_leg,
        ..proto::Settings::default()
    };
    // A message is one record: the largest we accept plus its header and tag.
    let max_message = settings.max_record as usize + 1024;
    let endpoint = |leg: &LegConfig| -> anyhow::Result<(LegEndpoint, String)> {
        Ok((
            LegEndpoint::new(leg, max_message, CONNECT_TIMEOUT)?,
            leg.url.clone(),
        ))
    };
    let (dns, dns_resolvers) = match cfg.dns.intercept {
        Intercept::All => (netstack::DnsInterception::AnyAddress, Vec::new()),
        Intercept::Virtual => (
            netstack::DnsInterception::ResolversOnly,
            vec![
                cfg.dns.virtual_resolver_v4.into(),
                cfg.dns.virtual_resolver_v6.into(),
            ],
        ),
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    Ok(DriverConfig {
        client: proto::ClientConfig {
            private_key,
            exit_public_key,
            psk,
            settings,
        },
        legs: [endpoint(&cfg.up)?, endpoint(&cfg.down)?],
        fwmark,
        reconnect: (cfg.session.reconnect_initial, cfg.session.reconnect_max),
        bridge: BridgeConfig {
            exit_has_ipv6: cfg.session.exit_has_ipv6,
            ..BridgeConfig::default()
        },
        netstack: netstack::Config {
            mtu: cfg.tun.mtu as usize,
            dns,
            dns_resolvers,
            random_seed: seed,
            ..netstack::Config::default()
        },
        stats_interval: cfg.log.stats_interval,
        kill_switch: cfg.kill_switch(),
        stall_timeout: cfg.session.stall_timeout,
    })
}

/// systemd-resolved's list of the uplink's own nameservers.
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// How long one DNS query of a leg host may take.
const LEG_DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// Look each leg's host up once before system DNS points into the tunnel (fail fast on a
/// typo), then give the legs a resolver that asks the nameservers of *now* again on every
/// reconnect, from marked sockets outside the tunnel. Legs with `connect_address` keep it.
fn leg_resolvers(cfg: &mut Config) -> anyhow::Result<[Option<Arc<dyn Resolve>>; 2]> {
    let servers = MarkedDns::system_servers(&cfg.dns.resolv_conf, Path::new(RESOLVED_UPSTREAM));
    if servers.is_empty() {
        tracing::warn!(
            "no nameserver in {}: leg hosts are resolved once, now, and not again on reconnect",
            cfg.dns.resolv_conf.display()
        );
    }
    let dns = MarkedDns::new(servers.clone(), Some(cfg.routing.fwmark), LEG_DNS_TIMEOUT);
    let mut resolvers: [Option<Arc<dyn Resolve>>; 2] = [None, None];
    for (slot, (name, leg)) in resolvers
        .iter_mut()
        .zip([("up", &mut cfg.up), ("down", &mut cfg.down)])
    {
        if leg.connect_address.is_some() {
            continue;
        }
        let uri: Uri = leg.url.parse().with_context(|| format!("{name}.url"))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("wss") {
                443
            } else {
                80
            });
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the {name} leg's host {host}"))?
            .collect();
        anyhow::ensure!(
            !addrs.is_empty(),
            "the {name} leg's host {host} has no address"
        );
        tracing::info!(leg = name, %host, ?addrs, nameservers = ?servers, "leg host resolved; looked up again on every reconnect");
        if servers.is_empty() {
            leg.connect_address = Some(addrs[0]);
            continue;
        }
        *slot = Some(Arc::new(WithFallback::new(dns.clone(), addrs)));
    }
    Ok(resolvers)
}

/// `routing.exclude`, plus in router mode the LAN interface's own prefixes: the replies
/// to LAN hosts leave the TUN towards the LAN, and without this they would be routed
/// straight back into the TUN (router mode silently carried nothing).
fn route_all_exclude(cfg: &Config) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let mut exclude = cfg.routing.exclude.clone();
    let (true, Some(lan)) = (cfg.router.enabled, cfg.router.lan_interface.as_deref()) else {
        return Ok(exclude);
    };
    let prefixes = match interface_prefixes(lan) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                lan,
                "router mode: cannot read the LAN interface's prefixes: {e:#}"
            );
            Vec::new()
        }
    };
    if prefixes.is_empty() && exclude.is_empty() {
        tracing::warn!(
            lan,
            "router mode: the LAN interface has no address; replies will not reach the LAN \
             unless routing.exclude lists its prefixes"
        );
    }
    let added: Vec<ipnet::IpNet> = prefixes
        .into_iter()
        .filter(|net| !exclude.iter().any(|e| e.contains(net)))
        .collect();
    if !added.is_empty() {
        tracing::info!(
            lan,
            ?added,
            "router mode: the LAN's prefixes stay outside the tunnel"
        );
    }
    exclude.extend(added);
    Ok(exclude)
}

/// The networks of `iface`'s global and site addresses (`ip -j addr show dev IFACE`).
fn interface_prefixes(iface: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let out = std::process::Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .output()
        .context("run ip addr show")?;
    anyhow::ensure!(
        out.status.success(),
        "router.lan_interface {iface:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let links: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse ip -j addr show")?;
    let mut nets = Vec::new();
    for info in links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
    {
        if info.get("scope").and_then(|s| s.as_str()) == Some("link") {
            continue;
        }
        let (Some(local), Some(len)) = (
            info.get("local").and_then(|v| v.as_str()),
            info.get("prefixlen").and_then(|v| v.as_u64()),
        ) else {
            continue;
        };
        if let Ok(net) = format!("{local}/{len}").parse::<ipnet::IpNet>() {
            let net = net.trunc();
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// Apply the host changes in the documented order; returns the TUN and whether it has
/// its offloads (checksums and TCP segments, [`TunOffload::TcpSegments`]).
fn apply(
    host: &mut Host<LinuxSystem>,
    cfg: &Config,
) -> anyhow::Result<(platform::tun_rs::SyncDevice, bool)> {
    let tun = &cfg.tun;
    let exclude = route_all_exclude(cfg)?;
    let lan: Vec<String> = cfg.router.lan_interface.iter().cloned().collect();
    let lan = if cfg.router.enabled { lan } else { Vec::new() };
    let firewall = FirewallConfig {
        kill_switch: cfg.kill_switch(),
        lan_interfaces: lan.clone(),
        tun_addresses: vec![tun.address_v4.addr().into(), tun.address_v6.addr().into()],
        // Router mode: LAN hosts ask this host for DNS; their queries go to the virtual
        // resolvers, i.e. through the tunnel.
        lan_dns: vec![
            cfg.dns.virtual_resolver_v4.into(),
            cfg.dns.virtual_resolver_v6.into(),
        ],
        // New flows from outside (not excluded) would be answered into the TUN.
        guard_inbound: cfg.routing.include.is_empty(),
        inbound_from: exclude.clone(),
        ..FirewallConfig::kill_switch(&tun.name, cfg.routing.fwmark)
    };
    host.firewall(&firewall)?;
    let ks = if firewall.kill_switch { "on" } else { "off" };
    tracing::info!(kill_switch = ks, "firewall table loaded");
    let mut tun_config = TunConfig {
        name: tun.name.clone(),
        mtu: u16::try_from(tun.mtu).unwrap_or(u16::MAX),
        ipv4: Some((tun.address_v4.addr(), tun.address_v4.prefix_len())),
        ipv6: vec![(tun.address_v6.addr(), tun.address_v6.prefix_len())],
        offload: if tun.offload {
            TunOffload::TcpSegments
        } else {
            TunOffload::None
        },
        multi_queue: false,
        tx_queue_len: Some(tun.tx_queue_len),
    };
    let device = match host.create_tun(&tun_config) {
        Err(platform::Error::Tun { source, .. }) if tun_config.offload != TunOffload::None => {
            tracing::warn!("TUN offload refused ({source}); using plain packets");
            tun_config.offload = TunOffload::None;
            host.create_tun(&tun_config)?
        }
        r => r?,
    };
    let offload = tun_config.offload == TunOffload::TcpSegments;
    tracing::info!(name = %tun.name, mtu = tun.mtu, tx_queue_len = tun.tx_queue_len, offload, v4 = %tun.address_v4, v6 = %tun.address_v6, "TUN created");
    let route_all = RouteAllConfig {
        fwmark: cfg.routing.fwmark,
        table: cfg.routing.table,
        include: cfg.routing.include.clone(),
        exclude,
        ..RouteAllConfig::new(&tun.name)
    };
    host.route_all(&route_all)?;
    tracing::info!(
        table = route_all.table,
        fwmark = format!("{:#x}", route_all.fwmark),
        "routes applied: everything but marked sockets goes into the TUN"
    );
    if cfg.router.enabled {
        host.forwarding()?;
        tracing::info!(lan = ?lan, "router mode: forwarding on");
    }
    if cfg.dns.manage_system_dns {
        let servers = vec![
            cfg.dns.virtual_resolver_v4.into(),
            cfg.dns.virtual_resolver_v6.into(),
        ];
        host.dns(&DnsConfig {
            servers: servers.clone(),
            tun: tun.name.clone(),
            method: DnsMethod::Auto,
            resolv_conf: cfg.dns.resolv_conf.clone(),
        })?;
        tracing::info!(
            ?servers,
            "DNS applied: system resolver points into the tunnel"
        );
    }
    Ok((device, offload))
}

/// `vpn-client up`: until Ctrl-C / SIGTERM.
pub async fn up(path: &Path) -> anyhow::Result<()> {
    let mut cfg = Config::load(path)?;
    // Keys and legs are checked before anything on the host changes.
    driver_config(&cfg, Some(cfg.routing.fwmark))?;
    let journal = cfg.runtime.journal_dir.clone();
    let mut sys = LinuxSystem::default();
    // Undo a crashed run first: the leg hosts must be looked up with the machine's own
    // resolver config, not with one still pointing into a tunnel that is gone.
    if let Recovery::Restored(n) = recover(&mut sys, &journal)? {
        tracing::warn!("a previous run did not clean up; undid its {n} changes");
    }
    let resolvers = leg_resolvers(&mut cfg)?;
    let mut driver = driver_config(&cfg, Some(cfg.routing.fwmark))?;
    for ((endpoint, _url), resolver) in driver.legs.iter_mut().zip(resolvers) {
        if let Some(resolver) = resolver {
            *endpoint = endpoint.clone().with_resolver(resolver);
        }
    }
    let mut host = Host::begin(sys, &journal)?;
    let device = match apply(&mut host, &cfg) {
        Ok(d) => d,
        Err(e) => {
            if let Err(r) = host.restore() {
                tracing::error!("restoring after the failed setup: {r}");
            }
            return Err(e);
        }
    };
    let host = Arc::new(Mutex::new(Some(host)));
    let result = serve(&cfg, driver, device, host.clone()).await;
    let host = host.lock().ok().and_then(|mut h| h.take());
    if let Some(host) = host {
        host.restore().context("restoring the host")?;
        tracing::info!("routes, DNS and firewall restored");
    }
    result
}

async fn serve(
    cfg: &Config,
    driver: DriverConfig,
    (device, offload): (platform::tun_rs::SyncDevice, bool),
    host: Arc<Mutex<Option<Host<LinuxSystem>>>>,
) -> anyhow::Result<()> {
    let dev = platform::tun_rs::AsyncDevice::new(device).context("TUN to async")?;
    let dev = crate::device::Tun::new(dev, offload);
    let (status_tx, status_rx) = tokio::sync::mpsc::channel(16);
    let socket = &cfg.runtime.control_socket;
    session::status::serve(socket, status_tx)
        .with_context(|| format!("control socket {}", socket.display()))?;
    let dns_check = tokio::spawn(async move {
        loop {
            tokio::time::sleep(DNS_CHECK).await;
            if let Ok(mut guard) = host.lock()
                && let Some(h) = guard.as_mut()
                && let Err(e) = h.check_dns()
            {
                tracing::warn!("checking the resolver file: {e}");
            }
        }
    });
    tracing::info!("tunnel up; Ctrl-C or SIGTERM to stop");
    // The driver runs on a worker thread, not on the thread blocked in `block_on`: the
    // tasks it wakes (the legs' writers) then run on the same worker right after it, and
    // the I/O driver's wake-ups reach it without a hand-off to another thread.
    let driver = tokio::spawn(session::run(driver, dev, status_rx, shutdown_signal()));
    let result = driver
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("session driver: {e}")));
    dns_check.abort();
    let _ = std::fs::remove_file(socket);
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// `vpn-client down`: undo what a crashed or killed instance left behind.
pub fn down(journal_dir: &Path) -> anyhow::Result<Recovery> {
    Ok(recover(&mut LinuxSystem::default(), journal_dir)?)
}
