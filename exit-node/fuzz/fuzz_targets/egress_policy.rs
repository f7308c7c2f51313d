//! The egress-policy canonicaliser and check (TESTPLAN §24): any address and port never
//! panics; an allowed verdict is always the canonical form, is never a special range, and
//! re-checking the dialled address gives the same verdict; with everything allowed, the
//! exit's own address (here the fuzzed one) is still refused in whatever form it comes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use exit_node::policy::{
    Allowances, EgressPolicy, Refusal, Transport, Verdict, canonical_ip, special_range,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 19 {
        return;
    }
    let port = u16::from_be_bytes([data[0], data[1]]);
    let ip = if data[2] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(data[3], data[4], data[5], data[6]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&data[3..19]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let policy = EgressPolicy::default();
    let canonical = canonical_ip(ip);
    assert_eq!(canonical_ip(canonical), canonical, "canonicalisation is idempotent");
    for transport in [Transport::Tcp, Transport::Udp] {
        let verdict = policy.check(&[0; 32], SocketAddr::new(ip, port), transport);
        if let Verdict::Allow(dial) = verdict {
            assert_eq!(dial.ip(), canonical);
            assert!(special_range(dial.ip()).is_none(), "allowed a special range: {ip}");
            assert_eq!(policy.check(&[0; 32], dial, transport), Verdict::Allow(dial));
        }
    }
    let everything = Allowances {
        cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ports: vec![],
    };
    let own = EgressPolicy::default()
        .with_global(everything)
        .with_own_addresses(vec![canonical]);
    let verdict = own.check(&[0; 32], SocketAddr::new(ip, port), Transport::Tcp);
    assert_eq!(verdict, Verdict::Refuse(Refusal::OwnAddress), "{ip}");
});
