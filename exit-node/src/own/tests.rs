use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn message(prefix_len: u8, attributes: Vec<AddressAttribute>) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.prefix_len = prefix_len;
    msg.attributes = attributes;
    msg
}

#[test]
fn the_local_address_and_broadcast_are_own_but_not_a_point_to_point_peer() {
    let msg = message(
        24,
        vec![
            AddressAttribute::Address(ip("10.9.0.2")),
            AddressAttribute::Local(ip("10.9.0.1")),
            AddressAttribute::Broadcast(Ipv4Addr::new(10, 9, 0, 255)),
            AddressAttribute::Label("eth0".into()),
        ],
    );
    let mut got = addresses_of(&msg);
    got.sort();
    assert_eq!(got, vec![ip("10.9.0.1"), ip("10.9.0.255")]);
}

#[test]
fn an_ipv6_prefix_adds_its_subnet_router_anycast_address() {
    let msg = message(64, vec![AddressAttribute::Address(ip("2001:db8:1:2::5"))]);
    assert_eq!(
        addresses_of(&msg),
        vec![ip("2001:db8:1:2::5"), ip("2001:db8:1:2::")]
    );
    let host = message(128, vec![AddressAttribute::Address(ip("2001:db8::5"))]);
    assert_eq!(addresses_of(&host), vec![ip("2001:db8::5")]);
    let p2p = message(127, vec![AddressAttribute::Address(ip("2001:db8::5"))]);
    assert_eq!(addresses_of(&p2p), vec![ip("2001:db8::5")]);
    let odd = message(61, vec![AddressAttribute::Address(ip("2001:db8:0:ff::1"))]);
    assert_eq!(addresses_of(&odd)[1], ip("2001:db8:0:f8::"));
}

#[test]
fn a_message_without_an_address_gives_nothing() {
    assert!(addresses_of(&message(24, vec![])).is_empty());
}

#[test]
fn the_kernel_says_loopback_is_local_and_documentation_space_is_not() {
    for local in ["127.0.0.1", "127.0.0.53"] {
        assert!(is_local(ip(local)).unwrap(), "{local}");
    }
    // The route check sees a local route without a preferred source (the 127/8 route has
    // `src 127.0.0.1`, so 127.0.0.53 gets that source: a known limit, see `probe`).
    assert!(probe::route_check(ip("127.0.0.1")).unwrap());
    for remote in ["198.51.100.7", "203.0.113.9"] {
        assert!(!is_local(ip(remote)).unwrap(), "{remote}");
        assert!(
            !probe::route_check(ip(remote)).unwrap(),
            "route to {remote}"
        );
    }
    if std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|t| t.contains(" lo")) {
        assert!(is_local(ip("::1")).unwrap());
        assert!(!is_local(ip("2001:db8::7")).unwrap());
    }
}

/// The IPv6 addresses of every interface as `/proc/net/if_inet6` lists them (a second
/// source, independent of netlink).
fn proc_ipv6_addresses() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    text.lines()
        .filter_map(|l| u128::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .map(|bits| IpAddr::V6(Ipv6Addr::from(bits)))
        .collect()
}

/// The first list holds loopback and every IPv6 address the kernel shows in `/proc`; the
/// per-dial probe agrees that the IPv4 ones are local.
#[tokio::test]
async fn the_watcher_lists_every_interface_address() {
    let own = OwnAddresses::default();
    let _watcher = Watcher::start(own.clone()).await.unwrap();
    let set = own.snapshot();
    assert!(set.contains(&ip("127.0.0.1")), "{set:?}");
    for addr in proc_ipv6_addresses() {
        assert!(set.contains(&addr), "{addr} is not listed: {set:?}");
    }
    for addr in set.iter().filter(|a| a.is_ipv4()) {
        assert!(is_local(*addr).unwrap(), "{addr} listed but not local");
    }
}
