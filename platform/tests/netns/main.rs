//! Tests against the real OS. Everything that touches networking runs inside namespaces
//! created here (see `harness`); resolver files live in temp directories.

mod harness;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{Netns, available, pair};
use platform::*;

const TUN: &str = "httun0";
const MARK: u32 = DEFAULT_FWMARK;
const UPSTREAM: &str = "nameserver 192.0.2.53\n";

struct Temp {
    _dir: tempfile::TempDir,
    journal: PathBuf,
    resolv: PathBuf,
}

fn temp() -> Temp {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, UPSTREAM).unwrap();
    Temp {
        journal: dir.path().join("journal"),
        resolv,
        _dir: dir,
    }
}

fn dns(resolv: &Path) -> DnsConfig {
    DnsConfig {
        servers: vec!["10.77.0.53".parse().unwrap()],
        tun: TUN.into(),
        method: DnsMethod::ResolvConf,
        resolv_conf: resolv.into(),
    }
}

/// What `vpn-client up` does in router mode with the kill switch, LAN = veth-a.
fn up(host: &mut Host<LinuxSystem>, t: &Temp) -> tun_rs::SyncDevice {
    let mut fw = FirewallConfig::kill_switch(TUN, MARK);
    fw.lan_interfaces = vec!["veth-a".into()];
    fw.tun_addresses = vec!["10.77.0.1".parse().unwrap(), "fd77::1".parse().unwrap()];
    host.firewall(&fw).unwrap();
    let tun = host
        .create_tun(&TunConfig {
            name: TUN.into(),
            mtu: 65535,
            ipv4: Some(("10.77.0.1".parse().unwrap(), 24)),
            ipv6: vec![("fd77::1".parse().unwrap(), 64)],
            offload: TunOffload::None,
            multi_queue: false,
            tx_queue_len: None,
        })
        .unwrap();
    host.route_all(&RouteAllConfig::new(TUN)).unwrap();
    host.forwarding().unwrap();
    host.dns(&dns(&t.resolv)).unwrap();
    tun
}

/// Run a command in the calling thread's namespace; stdout.
fn cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn route_get(args: &[&str]) -> String {
    let mut all = vec!["route", "get"];
    all.extend(args);
    cmd("ip", &all)
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

/// The routing decisions and state while up.
fn assert_up(t: &Temp) {
    let tun_dev = format!("dev {TUN}");
    assert_contains(&route_get(&["1.1.1.1"]), &tun_dev);
    assert_contains(&route_get(&["10.201.0.2"]), &tun_dev); // the LAN is captured too
    assert_contains(&route_get(&["2001:db8::1"]), &tun_dev);
    // A marked socket's lookup uses the main table (a routing query only, nothing is sent).
    assert_contains(
        &route_get(&["1.1.1.1", "mark", &MARK.to_string()]),
        "dev veth-a",
    );
    assert_contains(&cmd("ip", &["link", "show", TUN]), "mtu 65535");
    let nft = cmd("nft", &["list", "table", "inet", DEFAULT_NFT_TABLE]);
    let marked = format!("meta mark {MARK:#010x} accept");
    for want in [
        "policy drop",
        "oifname \"lo\" accept",
        &marked,
        "oifname \"httun0\" accept",
        "maxseg size set rt mtu",
        "iifname != \"httun0\" ip daddr 10.77.0.1 fib saddr type != local drop",
    ] {
        assert_contains(&nft, want);
    }
    assert_eq!(cmd("sysctl", &["-n", "net.ipv4.ip_forward"]), "1\n");
    assert_eq!(
        cmd("sysctl", &["-n", "net.ipv4.conf.all.src_valid_mark"]),
        "1\n"
    );
    let resolv = std::fs::read_to_string(&t.resolv).unwrap();
    assert_contains(&resolv, "nameserver 10.77.0.53\n");
    assert!(Journal::path_in(&t.journal).exists());
}

/// A snapshot, taken twice to be sure the namespace has settled.
fn settled(resolv: &Path) -> Snapshot {
    let mut last = Snapshot::capture(resolv).unwrap();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = Snapshot::capture(resolv).unwrap();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("namespace never settled:\n{last}");
}

fn assert_same(before: &Snapshot, after: &Snapshot) {
    assert!(
        before == after,
        "not restored byte-identically\n--- before\n{before}\n--- after\n{after}"
    );
}

/// The sysctls we change, as the calling thread's namespace sees them.
fn sysctls() -> String {
    let keys = [
        "net.ipv4.conf.all.src_valid_mark",
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
    ];
    keys.iter()
        .map(|k| std::fs::read_to_string(format!("/proc/sys/{}", k.replace('.', "/"))).unwrap())
        .collect()
}

/// The host itself must not see any of it (called while the namespace is still "up").
fn assert_host_untouched(host_sysctls: &str) {
    assert_eq!(sysctls(), host_sysctls, "host sysctls changed");
    let rules = cmd("ip", &["rule", "show"]) + &cmd("ip", &["-6", "rule", "show"]);
    assert!(
        !rules.contains("0x4854") && !rules.contains("18516"),
        "host rules changed:\n{rules}"
    );
    let nft = Command::new("nft")
        .args(["list", "table", "inet", DEFAULT_NFT_TABLE])
        .output()
        .unwrap();
    assert!(!nft.status.success(), "host has our nft table");
}

#[test]
fn up_then_restore_is_byte_identical() {
    if !available("up_then_restore_is_byte_identical") {
        return;
    }
    let (a, _b) = pair("up");
    let t = temp();
    a.run(|| {
        let before = settled(&t.resolv);
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let tun = up(&mut host, &t);
        assert_up(&t);
        assert_ne!(Snapshot::capture(&t.resolv).unwrap(), before);
        drop(tun);
        host.restore().unwrap();
        assert_same(&before, &settled(&t.resolv));
        assert!(!Journal::path_in(&t.journal).exists(), "journal removed");
    });
}

#[test]
fn crash_then_recover_from_the_journal_is_byte_identical() {
    if !available("crash_then_recover_from_the_journal_is_byte_identical") {
        return;
    }
    let (a, _b) = pair("crash");
    let t = temp();
    let host_sysctls = sysctls();
    let before = a.run(|| {
        let before = settled(&t.resolv);
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let tun = up(&mut host, &t);
        assert_up(&t);
        // The process dies: the in-memory state is gone, the TUN fd is closed.
        assert_ne!(sysctls(), host_sysctls, "the namespace's sysctls changed");
        host.forget();
        drop(tun);
        before
    });
    assert_host_untouched(&host_sysctls);
    a.run(|| {
        let nft = cmd("nft", &["list", "tables"]);
        assert_contains(&nft, DEFAULT_NFT_TABLE); // the kill switch survived the crash
        let recovery = recover(&mut LinuxSystem::default(), &t.journal).unwrap();
        assert!(
            matches!(recovery, Recovery::Restored(n) if n > 5),
            "{recovery:?}"
        );
        assert_same(&before, &settled(&t.resolv));
        assert_eq!(
            recover(&mut LinuxSystem::default(), &t.journal).unwrap(),
            Recovery::Clean
        );
    });
}

#[test]
fn corrupt_journal_keeps_the_kill_switch_closed() {
    if !available("corrupt_journal_keeps_the_kill_switch_closed") {
        return;
    }
    let (a, b) = pair("corrupt");
    let t = temp();
    let rx = b.run(receiver);
    a.run(|| {
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let tun = up(&mut host, &t);
        host.forget();
        drop(tun);
        let path = Journal::path_in(&t.journal);
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let err = recover(&mut LinuxSystem::default(), &t.journal).unwrap_err();
        assert!(matches!(err, Error::JournalCorrupt { .. }), "{err}");
        assert!(path.exists(), "the journal is kept for the operator");
        assert_contains(&cmd("nft", &["list", "tables"]), DEFAULT_NFT_TABLE);
        // Host still closed: an unmarked packet to the peer goes nowhere, a marked one passes.
        let _ = send(false, b"unmarked");
        send(true, b"marked").unwrap();
    });
    assert_eq!(recv(&rx), b"marked");
}

#[test]
fn kill_switch_drops_unmarked_and_passes_marked_packets() {
    if !available("kill_switch_drops_unmarked_and_passes_marked_packets") {
        return;
    }
    let (a, b) = pair("ks");
    let t = temp();
    let rx = b.run(receiver);
    a.run(|| {
        send(false, b"control").unwrap();
        assert_eq!(
            recv(&rx),
            b"control",
            "the path works without the kill switch"
        );
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        host.firewall(&FirewallConfig::kill_switch(TUN, MARK))
            .unwrap();
        let err = send(false, b"unmarked").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        send(true, b"marked").unwrap();
        assert_eq!(recv(&rx), b"marked", "unmarked was dropped, marked passed");
        let lo = UdpSocket::bind("127.0.0.1:0").unwrap();
        lo.send_to(b"lo", lo.local_addr().unwrap()).unwrap();
        assert_eq!(recv(&lo), b"lo", "loopback stays open");
        host.restore().unwrap();
        send(false, b"after").unwrap();
        assert_eq!(recv(&rx), b"after");
    });
}

/// A UDP receiver on the peer's address (created inside the peer namespace).
fn receiver() -> UdpSocket {
    let s = UdpSocket::bind("10.201.0.2:40123").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).expect("datagram expected");
    buf[..n].to_vec()
}

fn assert_nothing_more(s: &UdpSocket) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec());
    assert!(got.is_err(), "unexpected datagram {got:?}");
}

/// Send one datagram from the client namespace to the peer, with or without the mark.
fn send(marked: bool, payload: &[u8]) -> std::io::Result<usize> {
    let s = UdpSocket::bind("10.201.0.1:0").unwrap();
    if marked {
        set_mark(&s, MARK).unwrap();
        assert_eq!(mark(&s).unwrap(), MARK);
    }
    s.send_to(payload, "10.201.0.2:40123")
}

#[test]
fn resolver_file_rewrite_is_reasserted_and_newest_upstream_restored() {
    // Files in a temp directory only: no namespace needed.
    let t = temp();
    let stub = t.resolv.with_file_name("stub-resolv.conf");
    std::fs::write(&stub, UPSTREAM).unwrap();
    std::fs::remove_file(&t.resolv).unwrap();
    std::os::unix::fs::symlink("stub-resolv.conf", &t.resolv).unwrap();
    let cfg = dns(&t.resolv);
    let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
    host.dns(&cfg).unwrap();
    assert!(!std::fs::symlink_metadata(&t.resolv).unwrap().is_symlink());
    assert_eq!(host.check_dns().unwrap(), DnsCheck::Intact);
    host.restore().unwrap();
    assert_eq!(
        std::fs::read_link(&t.resolv).unwrap(),
        Path::new("stub-resolv.conf"),
        "symlink restored"
    );

    let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
    host.dns(&cfg).unwrap();
    std::fs::write(&t.resolv, "nameserver 192.0.2.99\n").unwrap(); // e.g. a DHCP client
    assert_eq!(host.check_dns().unwrap(), DnsCheck::Reasserted);
    assert_contains(&std::fs::read_to_string(&t.resolv).unwrap(), "10.77.0.53");
    host.restore().unwrap();
    assert_eq!(
        std::fs::read_to_string(&t.resolv).unwrap(),
        "nameserver 192.0.2.99\n"
    );
}

#[test]
fn namespace_guard_deletes_on_panic() {
    if !available("namespace_guard_deletes_on_panic") {
        return;
    }
    let name = std::panic::catch_unwind(|| {
        let ns = Netns::new("guard");
        let name = ns.name.clone();
        ns.run(|| panic!("{name}"));
    })
    .unwrap_err();
    let name = name.downcast_ref::<String>().unwrap().clone();
    assert!(!harness::sh("ip", &["netns", "list"]).contains(&name));
}

#[test]
fn lan_packets_to_the_tunnel_address_are_dropped() {
    if !available("lan_packets_to_the_tunnel_address_are_dropped") {
        return;
    }
    let (a, b) = pair("cve");
    b.ip(&["route", "add", "10.77.0.0/24", "via", "10.201.0.1"]);
    let t = temp();
    a.run(|| {
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let tun = host.create_tun(&tun_only()).unwrap();
        let rx = UdpSocket::bind("10.77.0.1:40124").unwrap();
        let probe = |payload: &'static [u8]| {
            b.run(|| {
                let s = UdpSocket::bind("10.201.0.2:0").unwrap();
                s.send_to(payload, "10.77.0.1:40124").unwrap();
            })
        };
        probe(b"control");
        assert_eq!(
            recv(&rx),
            b"control",
            "reachable from the LAN without the guard"
        );
        let mut fw = FirewallConfig::kill_switch(TUN, MARK);
        fw.kill_switch = false;
        fw.tun_addresses = vec!["10.77.0.1".parse().unwrap()];
        host.firewall(&fw).unwrap();
        probe(b"probe");
        let local = UdpSocket::bind("127.0.0.1:0").unwrap();
        local.send_to(b"local", "10.77.0.1:40124").unwrap();
        assert_eq!(
            recv(&rx),
            b"local",
            "the LAN probe was dropped, local traffic was not"
        );
        assert_nothing_more(&rx);
        let again = host.create_tun(&tun_only());
        assert!(
            matches!(again, Err(Error::LinkExists { .. })),
            "the name is taken"
        );
        drop(tun);
        host.restore().unwrap();
    });
}

fn tun_only() -> TunConfig {
    TunConfig {
        name: TUN.into(),
        mtu: 1500,
        ipv4: Some(("10.77.0.1".parse().unwrap(), 24)),
        ipv6: Vec::new(),
        offload: TunOffload::None,
        multi_queue: false,
        tx_queue_len: None,
    }
}

#[test]
fn tun_with_offload_and_multi_queue_works_async() {
    if !available("tun_with_offload_and_multi_queue_works_async") {
        return;
    }
    let ns = Netns::new("tun");
    let t = temp();
    ns.run(|| {
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let config = TunConfig {
            mtu: 65535,
            offload: TunOffload::Segmentation,
            multi_queue: true,
            tx_queue_len: Some(4096),
            ..tun_only()
        };
        let tun = host.create_tun(&config).unwrap();
        assert!(tun.tcp_gso(), "IFF_VNET_HDR with TSO accepted");
        let queue2 = tun.try_clone().expect("a second queue");
        assert_contains(&cmd("ip", &["link", "show", TUN]), "mtu 65535");
        assert_contains(&cmd("ip", &["link", "show", TUN]), "qlen 4096");
        // The client's driver turns the handle into a tokio device.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async {
            let dev = tun_rs::AsyncDevice::new(queue2).unwrap();
            assert_eq!(dev.name().unwrap(), TUN);
        });
        drop(tun);
        host.restore().unwrap();
        assert!(!cmd("ip", &["-o", "link"]).contains(TUN));
    });
}

/// One's-complement sum of `data` folded to 16 bits (not complemented).
fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for w in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A virtio-net header (host byte order) and an IPv4/UDP packet 10.77.0.2:7777 →
/// 10.77.0.1:`port` whose UDP checksum field holds only the pseudo-header sum, as a
/// device with checksum offload expects it.
fn vnet_udp(flags: u8, port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 77, 0, 2, 10, 77, 0, 1,
    ];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    let ip_check = !ones_sum(&ip, 0);
    ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
    let mut udp = Vec::new();
    udp.extend_from_slice(&7777u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&ones_sum(&pseudo, 0).to_be_bytes());
    let mut hdr = vec![flags, 0];
    for field in [28u16, 0, 20, 6] {
        // hdr_len, gso_size, csum_start, csum_offset
        hdr.extend_from_slice(&field.to_ne_bytes());
    }
    [hdr, ip, udp].concat()
}

#[test]
fn tun_with_checksum_offload_hands_over_partial_checksums_both_ways() {
    if !available("tun_with_checksum_offload_hands_over_partial_checksums_both_ways") {
        return;
    }
    for offload in [TunOffload::Checksum, TunOffload::TcpSegments] {
        checksum_offload_both_ways(offload);
    }
}

fn checksum_offload_both_ways(offload: TunOffload) {
    let ns = Netns::new("csum");
    let t = temp();
    ns.run(|| {
        let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
        let config = TunConfig {
            offload,
            ..tun_only()
        };
        let tun = host.create_tun(&config).unwrap();
        tun.set_nonblocking(true).unwrap();
        // Out: a local datagram reaches us with its checksum left partial.
        let app = UdpSocket::bind("10.77.0.1:40125").unwrap();
        app.send_to(b"outbound", "10.77.0.2:9").unwrap();
        let mut buf = vec![0u8; 65_600];
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let read = loop {
            match tun.recv(&mut buf) {
                // header (10) + IPv4 (20) + UDP to port 9
                Ok(n) if n >= 38 && buf[10 + 9] == 17 && buf[32..34] == [0, 9] => {
                    break buf[..n].to_vec();
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no datagram on the TUN"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("TUN read: {e}"),
            }
        };
        let field = |i: usize| u16::from_ne_bytes([read[i], read[i + 1]]);
        assert_eq!(read[0] & 1, 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM");
        assert_eq!(read[1], 0, "no UDP GSO: USO is never asked for");
        assert_eq!((field(6), field(8)), (20, 6), "csum_start, csum_offset");
        assert_eq!(&read[38..], b"outbound");
        // In: the kernel trusts a partial checksum only when the header says so.
        let rx = UdpSocket::bind("10.77.0.1:40126").unwrap();
        tun.send(&vnet_udp(0, 40126, b"no header flag")).unwrap();
        tun.send(&vnet_udp(1, 40126, b"needs csum")).unwrap();
        assert_eq!(recv(&rx), b"needs csum");
        assert_nothing_more(&rx);
        drop(tun);
        host.restore().unwrap();
    });
}

const HELPER_ENV: &str = "HT_PLATFORM_CRASH_HELPER";

/// Not a test on its own: with `HT_PLATFORM_CRASH_HELPER=<temp dir>` it brings everything
/// up (in the namespace it was started in), says so, and waits to be killed.
#[test]
fn crash_helper() {
    let Some(dir) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let t = Temp {
        _dir: tempfile::tempdir().unwrap(),
        journal: dir.join("journal"),
        resolv: dir.join("resolv.conf"),
    };
    let mut host = Host::begin(LinuxSystem::default(), &t.journal).unwrap();
    let _tun = up(&mut host, &t);
    println!("HT-READY");
    std::thread::sleep(Duration::from_secs(30));
    panic!("crash_helper was not killed");
}

#[test]
fn kill_9_then_recover_is_byte_identical() {
    use std::io::{BufRead, BufReader};
    if !available("kill_9_then_recover_is_byte_identical") {
        return;
    }
    let (a, _b) = pair("kill");
    let t = temp();
    let dir = t.resolv.parent().unwrap().to_owned();
    a.run(|| {
        let before = settled(&t.resolv);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_helper", "--nocapture", "--test-threads=1"])
            .env(HELPER_ENV, &dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let ready = stdout
            .lines()
            .map_while(|l| l.ok())
            .any(|l| l.contains("HT-READY"));
        child.kill().unwrap(); // SIGKILL, by pid: the child is ours
        child.wait().unwrap();
        assert!(ready, "the helper never came up");
        assert_contains(&cmd("nft", &["list", "tables"]), DEFAULT_NFT_TABLE);
        assert!(
            !cmd("ip", &["-o", "link"]).contains(TUN),
            "the TUN died with the process"
        );
        let err = send(false, b"x").unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied,
            "host stays closed"
        );
        assert!(matches!(
            recover(&mut LinuxSystem::default(), &t.journal),
            Ok(Recovery::Restored(_))
        ));
        assert_same(&before, &settled(&t.resolv));
    });
}
