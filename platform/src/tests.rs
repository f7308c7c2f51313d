//! Unit tests against the recording fake.

use std::path::{Path, PathBuf};

use crate::*;

const TUN: &str = "ht0";

fn tun_config() -> TunConfig {
    TunConfig {
        name: TUN.into(),
        mtu: 65535,
        ipv4: Some(("10.77.0.1".parse().unwrap(), 24)),
        ipv6: vec![("fd77::1".parse().unwrap(), 64)],
        offload: TunOffload::None,
        multi_queue: false,
        tx_queue_len: None,
    }
}

fn dns_config(dir: &Path) -> DnsConfig {
    DnsConfig {
        servers: vec!["10.77.0.53".parse().unwrap()],
        tun: TUN.into(),
        method: DnsMethod::Auto,
        resolv_conf: dir.join("resolv.conf"),
    }
}

fn file(text: &str) -> FileState {
    FileState::File {
        contents: text.as_bytes().to_vec(),
        mode: 0o644,
    }
}

/// Bring everything up like `vpn-client up` in router mode.
fn up(host: &mut Host<RecordingSystem>, dir: &Path) -> Result<()> {
    let route_all = RouteAllConfig::new(TUN);
    let mut fw = FirewallConfig::kill_switch(TUN, route_all.fwmark);
    fw.lan_interfaces = vec!["lan0".into()];
    host.firewall(&fw)?;
    host.create_tun(&tun_config())?;
    host.route_all(&route_all)?;
    host.forwarding()?;
    host.dns(&dns_config(dir))
}

fn fake_with_resolv(dir: &Path) -> RecordingSystem {
    let mut sys = RecordingSystem::new();
    sys.files
        .insert(dir.join("resolv.conf"), file("nameserver 192.168.1.1\n"));
    sys
}

/// The call that undoes `call`, for the state the fake started in.
fn inverse(call: &Call, sys: &RecordingSystem) -> Call {
    match call {
        Call::CreateTun(c) => Call::DeleteLink(c.name.clone()),
        Call::AddRule(r) => Call::DeleteRule(r.clone()),
        Call::AddRoute(r) => Call::DeleteRoute(r.clone()),
        Call::LoadNft(_) => Call::DeleteNftTable(DEFAULT_NFT_TABLE.into()),
        Call::WriteSysctl(k, _) => Call::WriteSysctl(k.clone(), "0".into()),
        Call::SetResolved(l, _) => Call::RevertResolved(l.clone()),
        Call::WriteFile(p, _) => Call::WriteFile(p.clone(), sys.files[p].clone()),
        other => panic!("not an apply call: {other:?}"),
    }
}

#[test]
fn restore_undoes_every_change_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let before = fake_with_resolv(dir.path());
    let mut host = Host::begin(fake_with_resolv(dir.path()), dir.path()).unwrap();
    up(&mut host, dir.path()).unwrap();
    let applied = host.system().calls.clone();
    // nft, TUN, route-all sysctls (src_valid_mark, tcp_mtu_probing), routes, rules,
    // forwarding sysctls, resolver.
    assert_eq!(applied.len(), 1 + 1 + 2 + 2 + 2 + 2 + 1, "{applied:#?}");
    assert!(
        matches!(applied[0], Call::LoadNft(_)),
        "kill switch goes first"
    );
    let sys = host.restore().unwrap();
    let undone = &sys.calls[applied.len()..];
    let expected: Vec<Call> = applied.iter().rev().map(|c| inverse(c, &before)).collect();
    assert_eq!(undone, expected);
    assert!(!Journal::path_in(dir.path()).exists(), "journal removed");
    assert_eq!(sys.files, before.files);
}

#[test]
fn crash_then_recover_from_the_journal_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::begin(fake_with_resolv(dir.path()), dir.path()).unwrap();
    up(&mut host, dir.path()).unwrap();
    let applied = host.forget().calls;
    let mut fresh = RecordingSystem::new();
    let recovery = recover(&mut fresh, dir.path()).unwrap();
    assert_eq!(recovery, Recovery::Restored(applied.len()));
    let kinds: Vec<_> = fresh.calls.iter().map(std::mem::discriminant).collect();
    assert_eq!(
        fresh.calls.last(),
        Some(&Call::DeleteNftTable(DEFAULT_NFT_TABLE.into())),
        "kill switch goes last"
    );
    assert_eq!(
        kinds.len(),
        applied.len() - 1,
        "resolver file in the fresh fake is not ours: left alone"
    );
    assert_eq!(recover(&mut fresh, dir.path()).unwrap(), Recovery::Clean);
}

#[test]
fn a_change_is_journaled_before_it_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys = fake_with_resolv(dir.path());
    sys.fail_at = Some(4); // the fifth change: an `ip route add`
    let mut host = Host::begin(sys, dir.path()).unwrap();
    assert!(up(&mut host, dir.path()).is_err());
    let journal = Journal::open(dir.path()).unwrap().unwrap();
    assert_eq!(
        journal.actions().len(),
        5,
        "the failed change is journaled too"
    );
    assert!(matches!(
        journal.actions()[4],
        UndoAction::DeleteRoute { .. }
    ));
    let mut sys = host.forget();
    sys.fail_at = None;
    assert_eq!(
        recover(&mut sys, dir.path()).unwrap(),
        Recovery::Restored(5)
    );
}

#[test]
fn failed_undo_actions_stay_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::begin(fake_with_resolv(dir.path()), dir.path()).unwrap();
    up(&mut host, dir.path()).unwrap();
    let mut sys = host.forget();
    sys.fail_at = Some(sys.calls.len()); // the first undo (the resolver file) fails
    let err = recover(&mut sys, dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::RestoreIncomplete { failed: 1, .. }),
        "{err}"
    );
    let left = Journal::open(dir.path()).unwrap().unwrap();
    assert!(matches!(left.actions(), [UndoAction::RestoreFile { .. }]));
    sys.fail_at = None;
    assert_eq!(
        recover(&mut sys, dir.path()).unwrap(),
        Recovery::Restored(1)
    );
    assert_eq!(
        sys.files[&dir.path().join("resolv.conf")],
        file("nameserver 192.168.1.1\n")
    );
}

#[test]
fn corrupt_journal_changes_nothing_and_blocks_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = Journal::path_in(dir.path());
    std::fs::write(&path, b"{\"version\":1,\"actions\":[{\"undo\":\"delete_ru").unwrap();
    let mut sys = RecordingSystem::new();
    let err = recover(&mut sys, dir.path()).unwrap_err();
    assert!(matches!(err, Error::JournalCorrupt { .. }));
    assert!(
        err.to_string()
            .contains("nft delete table inet half_tunnel"),
        "{err}"
    );
    assert!(
        sys.calls.is_empty(),
        "nothing touched: the kill switch stays closed"
    );
    assert!(path.exists());
    let err = Host::begin(sys, dir.path()).unwrap_err();
    assert!(matches!(err, Error::JournalExists { .. }), "{err}");
}

#[test]
fn unknown_journal_version_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        Journal::path_in(dir.path()),
        b"{\"version\":9,\"actions\":[]}",
    )
    .unwrap();
    assert!(matches!(
        Journal::open(dir.path()),
        Err(Error::JournalCorrupt { .. })
    ));
}

#[test]
fn rewritten_resolver_file_is_reasserted_and_the_newest_upstream_restored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dns_config(dir.path());
    let mut host = Host::begin(fake_with_resolv(dir.path()), dir.path()).unwrap();
    host.dns(&cfg).unwrap();
    assert_eq!(host.check_dns().unwrap(), DnsCheck::Intact);
    let mut sys = host.forget();
    sys.files
        .insert(cfg.resolv_conf.clone(), file("nameserver 10.9.9.9\n"));
    let journal = Journal::open(dir.path()).unwrap().unwrap();
    let mut host = Host { sys, journal };
    assert_eq!(host.check_dns().unwrap(), DnsCheck::Reasserted);
    assert_eq!(
        host.system().files[&cfg.resolv_conf],
        cfg.resolv_conf_contents()
    );
    let sys = host.restore().unwrap();
    assert_eq!(sys.files[&cfg.resolv_conf], file("nameserver 10.9.9.9\n"));
}

#[test]
fn a_rewrite_after_the_last_check_is_kept_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dns_config(dir.path());
    let mut host = Host::begin(fake_with_resolv(dir.path()), dir.path()).unwrap();
    host.dns(&cfg).unwrap();
    let mut sys = host.forget();
    sys.files
        .insert(cfg.resolv_conf.clone(), file("nameserver 10.8.8.8\n"));
    recover(&mut sys, dir.path()).unwrap();
    assert_eq!(sys.files[&cfg.resolv_conf], file("nameserver 10.8.8.8\n"));
}

#[test]
fn resolved_is_used_when_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys = RecordingSystem::new();
    sys.resolved = true;
    let mut host = Host::begin(sys, dir.path()).unwrap();
    host.dns(&dns_config(dir.path())).unwrap();
    assert_eq!(host.check_dns().unwrap(), DnsCheck::Intact);
    let sys = host.restore().unwrap();
    let servers = vec!["10.77.0.53".parse().unwrap()];
    assert_eq!(
        sys.calls,
        [
            Call::SetResolved(TUN.into(), servers),
            Call::RevertResolved(TUN.into())
        ]
    );
}

#[test]
fn sysctls_already_set_are_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys = RecordingSystem::new();
    sys.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let mut host = Host::begin(sys, dir.path()).unwrap();
    host.forwarding().unwrap();
    let sys = host.restore().unwrap();
    let key = "net.ipv6.conf.all.forwarding".to_owned();
    assert_eq!(
        sys.calls,
        [
            Call::WriteSysctl(key.clone(), "1".into()),
            Call::WriteSysctl(key, "0".into())
        ]
    );
}

#[test]
fn route_all_plan_with_include_and_exclude() {
    let mut cfg = RouteAllConfig::new(TUN);
    cfg.exclude = vec!["192.168.1.0/24".parse().unwrap()];
    cfg.include = vec!["203.0.113.0/24".parse().unwrap()];
    cfg.bypass_main_routes = true;
    let rules: Vec<String> = cfg
        .rules()
        .iter()
        .map(|r| format!("{} {}", r.family.flag(), r.args().join(" ")))
        .collect();
    assert_eq!(
        rules,
        [
            "-4 priority 5200 to 192.168.1.0/24 table 254",
            "-4 priority 5201 table 254 suppress_prefixlength 0",
            "-4 priority 5202 not fwmark 0x4854 table 18516",
            "-6 priority 5201 table 254 suppress_prefixlength 0",
            "-6 priority 5202 not fwmark 0x4854 table 18516",
        ]
    );
    let routes: Vec<String> = cfg.routes().iter().map(|r| r.args().join(" ")).collect();
    assert_eq!(
        routes,
        ["203.0.113.0/24 dev ht0 table 18516"],
        "no IPv6 include: nothing captured for v6"
    );
    cfg.include.clear();
    let routes: Vec<String> = cfg.routes().iter().map(|r| r.args().join(" ")).collect();
    assert_eq!(
        routes,
        ["0.0.0.0/0 dev ht0 table 18516", "::/0 dev ht0 table 18516"]
    );
    let throw = Route {
        dest: "10.0.0.0/8".parse().unwrap(),
        kind: RouteKind::Throw,
        table: 7,
    };
    assert_eq!(throw.args().join(" "), "throw 10.0.0.0/8 table 7");
}

#[test]
fn router_mode_redirects_lan_dns_to_the_virtual_resolvers() {
    let fw = FirewallConfig {
        lan_interfaces: vec!["lan0".into()],
        lan_dns: vec![
            "172.19.0.2".parse().unwrap(),
            "fd00:4854::2".parse().unwrap(),
        ],
        ..FirewallConfig::kill_switch(TUN, 0x4854)
    };
    let s = fw.script();
    assert!(
        s.contains("type nat hook prerouting priority dstnat;"),
        "{s}"
    );
    for want in [
        "iifname { \"lan0\" } meta nfproto ipv4 fib daddr type local meta l4proto { tcp, udp } th dport 53 dnat ip to 172.19.0.2:53",
        "iifname { \"lan0\" } meta nfproto ipv6 fib daddr type local meta l4proto { tcp, udp } th dport 53 dnat ip6 to [fd00:4854::2]:53",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    // Without a LAN there is nothing to redirect.
    let no_lan = FirewallConfig {
        lan_interfaces: vec![],
        ..fw
    };
    assert!(!no_lan.script().contains("lan_dns"));
}

#[test]
fn guard_inbound_drops_new_flows_from_outside_but_the_excluded() {
    let fw = FirewallConfig {
        kill_switch: false,
        lan_interfaces: vec!["lan0".into()],
        guard_inbound: true,
        inbound_from: vec![
            "192.168.1.0/24".parse().unwrap(),
            "fd01::/64".parse().unwrap(),
        ],
        ..FirewallConfig::kill_switch(TUN, 0x4854)
    };
    assert!(fw.is_needed());
    let s = fw.script();
    for want in [
        "type filter hook input priority 0; policy accept;",
        "iifname { \"lo\", \"ht0\", \"lan0\" } accept",
        "ct state established,related accept",
        "udp sport 67 udp dport 68 accept",
        "nd-neighbor-solicit",
        "ip saddr 192.168.1.0/24 accept",
        "ip6 saddr fd01::/64 accept",
        "drop comment",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    let off = FirewallConfig {
        guard_inbound: false,
        ..fw
    };
    assert!(!off.script().contains("chain input"));
}

#[test]
fn kill_switch_script_is_one_whole_table() {
    let fw = FirewallConfig::kill_switch(TUN, 0x4854);
    let s = fw.script();
    assert!(
        s.starts_with(
            "table inet half_tunnel\ndelete table inet half_tunnel\ntable inet half_tunnel {\n"
        ),
        "{s}"
    );
    for want in [
        "policy drop;",
        "oifname \"lo\" accept",
        "meta mark 0x4854 accept",
        "oifname \"ht0\" accept",
        "udp dport 67",
        "nd-neighbor-solicit",
        "oifname \"ht0\" meta mark 0x4854 counter reject",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert!(!s.contains("chain forward"));
    let router = FirewallConfig {
        kill_switch: false,
        lan_interfaces: vec!["lan0".into(), "lan1".into()],
        ..fw
    };
    let s = router.script();
    assert!(!s.contains("chain output"));
    assert!(s.contains("chain no_loop"), "{s}");
    assert!(
        s.contains("policy accept;")
            && s.contains("tcp flags syn tcp option maxseg size set rt mtu"),
        "{s}"
    );
    assert!(
        s.contains("iifname { \"lan0\", \"lan1\" } oifname \"ht0\" accept"),
        "{s}"
    );
    let none = FirewallConfig {
        lan_interfaces: vec![],
        ..router
    };
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::begin(RecordingSystem::new(), dir.path()).unwrap();
    host.firewall(&none).unwrap();
    assert!(
        host.restore().unwrap().calls.is_empty(),
        "nothing to load, nothing journaled"
    );
}

#[test]
fn journal_round_trips_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::create(dir.path()).unwrap();
    let action = UndoAction::RestoreFile {
        path: PathBuf::from("/x/resolv.conf"),
        original: FileState::Symlink {
            target: "../run/systemd/resolve/stub-resolv.conf".into(),
        },
        ours: file("nameserver 10.77.0.53\n"),
    };
    journal.record(action.clone()).unwrap();
    journal
        .record(UndoAction::DeleteLink { name: TUN.into() })
        .unwrap();
    let reopened = Journal::open(dir.path()).unwrap().unwrap();
    assert_eq!(
        reopened.actions(),
        [action, UndoAction::DeleteLink { name: TUN.into() }]
    );
    assert!(matches!(
        Journal::create(dir.path()),
        Err(Error::JournalExists { .. })
    ));
    reopened.remove().unwrap();
    assert!(Journal::open(dir.path()).unwrap().is_none());
}

#[test]
fn an_existing_interface_is_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys = RecordingSystem::new();
    sys.links.insert(TUN.into());
    let mut host = Host::begin(sys, dir.path()).unwrap();
    let err = host.create_tun(&tun_config()).unwrap_err();
    assert!(matches!(err, Error::LinkExists { .. }), "{err}");
    let sys = host.restore().unwrap();
    assert!(sys.calls.is_empty(), "nothing journaled, nothing deleted");
}
