use super::*;
use proptest::prelude::*;

const CLIENT: [u8; 32] = [7; 32];
const OTHER: [u8; 32] = [9; 32];

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn check(policy: &EgressPolicy, dest: &str) -> Verdict {
    policy.check(&CLIENT, sa(dest), Transport::Tcp)
}

fn assert_refused(policy: &EgressPolicy, dest: &str) {
    for transport in [Transport::Tcp, Transport::Udp] {
        let verdict = policy.check(&CLIENT, sa(dest), transport);
        assert!(
            matches!(verdict, Verdict::Refuse(_)),
            "{dest} over {transport:?} was {verdict:?}"
        );
    }
}

/// TESTPLAN §18: every address of the SSRF matrix is refused under the default policy.
#[test]
fn ssrf_matrix_is_refused_by_default() {
    let policy = EgressPolicy::default().with_own_addresses(vec!["198.51.0.10".parse().unwrap()]);
    let matrix = [
        "127.0.0.1:80",
        "127.255.255.254:80",
        "[::1]:80",
        "0.0.0.0:80",
        "[::]:80",
        "10.0.0.1:80",
        "10.255.255.255:443",
        "172.16.0.1:80",
        "172.31.255.255:80",
        "192.168.1.1:80",
        "100.64.0.1:80",
        "100.127.255.255:80",
        "169.254.169.254:80",
        "[fe80::1]:80",
        "[fc00::1]:80",
        "[fd12:3456::1]:80",
        "[::ffff:127.0.0.1]:80",
        "[::ffff:10.0.0.1]:80",
        "[::ffff:169.254.169.254]:80",
        "[::ffff:0:7f00:1]:80",
        "[::127.0.0.1]:80",
        "[64:ff9b::7f00:1]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b::192.168.0.1]:80",
        "[64:ff9b:1::a00:1]:80",
        "[2002:7f00:1::]:80",
        "[2002:c0a8:101::1]:80",
        "[2002:a9fe:a9fe::]:80",
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80",
        "224.0.0.1:80",
        "239.255.255.250:1900",
        "[ff02::1]:80",
        "[ff05::1:3]:547",
        "255.255.255.255:80",
        "240.0.0.1:80",
        "198.18.0.1:80",
        "192.0.2.1:80",
        "198.51.100.7:80",
        "203.0.113.7:443",
        "[2001:db8::7]:443",
        "198.51.0.10:80",
        "[fec0::1]:80",
        "[100::1]:80",
        "[4000::1]:80",
    ];
    for dest in matrix {
        assert_refused(&policy, dest);
    }
}

#[test]
fn public_addresses_are_allowed_and_canonicalised() {
    let policy = EgressPolicy::default();
    assert_eq!(
        check(&policy, "93.184.215.14:443"),
        Verdict::Allow(sa("93.184.215.14:443"))
    );
    assert_eq!(
        check(&policy, "[2606:4700::1111]:443"),
        Verdict::Allow(sa("[2606:4700::1111]:443"))
    );
    assert_eq!(
        check(&policy, "[::ffff:1.1.1.1]:53"),
        Verdict::Allow(sa("1.1.1.1:53"))
    );
    assert_eq!(
        check(&policy, "[64:ff9b::101:101]:53"),
        Verdict::Allow(sa("1.1.1.1:53"))
    );
    assert_eq!(
        check(&policy, "[2002:101:101::1]:53"),
        Verdict::Allow(sa("1.1.1.1:53"))
    );
}

#[test]
fn smtp_is_blocked_unless_allowed() {
    let policy = EgressPolicy::default();
    assert_eq!(
        check(&policy, "1.1.1.1:25"),
        Verdict::Refuse(Refusal::BlockedPort(25))
    );
    let allowed = policy.with_global(Allowances {
        cidrs: vec![],
        ports: vec![25],
    });
    assert_eq!(
        check(&allowed, "1.1.1.1:25"),
        Verdict::Allow(sa("1.1.1.1:25"))
    );
    // Allowing a port does not open private space.
    assert!(matches!(
        check(&allowed, "10.0.0.1:25"),
        Verdict::Refuse(Refusal::SpecialRange(_))
    ));
}

#[test]
fn allowances_are_global_or_per_client() {
    let lab: IpNet = "10.1.0.0/16".parse().unwrap();
    let policy = EgressPolicy::default().with_client(
        CLIENT,
        Allowances {
            cidrs: vec![lab],
            ports: vec![],
        },
    );
    assert_eq!(
        check(&policy, "10.1.2.3:80"),
        Verdict::Allow(sa("10.1.2.3:80"))
    );
    assert!(matches!(check(&policy, "10.2.0.1:80"), Verdict::Refuse(_)));
    let other = policy.check(&OTHER, sa("10.1.2.3:80"), Transport::Udp);
    assert!(
        matches!(other, Verdict::Refuse(Refusal::SpecialRange(_))),
        "{other:?}"
    );
    // An allowance matches the canonical form too.
    assert_eq!(
        check(&policy, "[::ffff:10.1.2.3]:80"),
        Verdict::Allow(sa("10.1.2.3:80"))
    );
}

/// Issue 20 §1: an allowance that covers the exit's own address does not open it; only an
/// exact `allow_own_addresses` entry does, for that address alone.
#[test]
fn own_addresses_are_refused_whatever_allow_cidrs_says() {
    let own: IpAddr = "1.2.3.4".parse().unwrap();
    let everything = Allowances {
        cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ports: vec![],
    };
    let policy = EgressPolicy::default()
        .with_own_addresses(vec![own])
        .with_global(everything.clone())
        .with_client(CLIENT, everything);
    for dest in [
        "1.2.3.4:80",
        "[::ffff:1.2.3.4]:9090",
        "[64:ff9b::102:304]:7",
    ] {
        for transport in [Transport::Tcp, Transport::Udp] {
            assert_eq!(
                policy.check(&CLIENT, sa(dest), transport),
                Verdict::Refuse(Refusal::OwnAddress),
                "{dest} {transport:?}"
            );
        }
    }
    // Not own: the allowance applies.
    assert_eq!(
        check(&policy, "1.2.3.5:80"),
        Verdict::Allow(sa("1.2.3.5:80"))
    );
    let opened = policy.with_own_allowed(vec![own]);
    assert_eq!(
        check(&opened, "1.2.3.4:80"),
        Verdict::Allow(sa("1.2.3.4:80"))
    );
}

#[test]
fn loopback_and_unspecified_are_own_even_when_allowed() {
    let policy = EgressPolicy::default().with_global(Allowances {
        cidrs: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ports: vec![],
    });
    for dest in [
        "127.0.0.1:9090",
        "127.1.2.3:7",
        "0.0.0.0:9090",
        "[::1]:9090",
        "[::]:9090",
        "[::ffff:127.0.0.1]:9090",
        "[::ffff:0.0.0.0]:9090",
    ] {
        assert_eq!(
            check(&policy, dest),
            Verdict::Refuse(Refusal::OwnAddress),
            "{dest}"
        );
    }
}

#[test]
fn an_own_address_opened_exactly_still_needs_its_range_allowed() {
    let own: IpAddr = "10.40.0.1".parse().unwrap();
    let policy = EgressPolicy::default()
        .with_own_addresses(vec![own])
        .with_own_allowed(vec!["::ffff:10.40.0.1".parse().unwrap()]);
    assert!(matches!(
        check(&policy, "10.40.0.1:80"),
        Verdict::Refuse(Refusal::SpecialRange(_))
    ));
    let policy = policy.with_global(Allowances {
        cidrs: vec!["10.40.0.0/24".parse().unwrap()],
        ports: vec![],
    });
    assert_eq!(
        check(&policy, "10.40.0.1:80"),
        Verdict::Allow(sa("10.40.0.1:80"))
    );
    // The opening is for that address alone.
    let policy = policy.with_own_addresses(vec![own, "10.40.0.9".parse().unwrap()]);
    assert_eq!(
        check(&policy, "10.40.0.9:80"),
        Verdict::Refuse(Refusal::OwnAddress)
    );
    assert!(!policy.own_address_allowed("10.40.0.9".parse().unwrap()));
}

/// The set is shared: an address the watcher adds after the policy was built is refused
/// at once, one it removes is dialled again.
#[test]
fn own_addresses_follow_the_shared_set() {
    let own = OwnAddresses::default();
    let policy = EgressPolicy::default()
        .with_own_set(own.clone())
        .with_global(Allowances {
            cidrs: vec!["10.40.0.0/24".parse().unwrap()],
            ports: vec![],
        });
    assert_eq!(
        check(&policy, "10.40.0.77:7"),
        Verdict::Allow(sa("10.40.0.77:7"))
    );
    let (added, removed) = own.replace(vec!["::ffff:10.40.0.77".parse().unwrap()]);
    assert_eq!(added, vec!["10.40.0.77".parse::<IpAddr>().unwrap()]);
    assert!(removed.is_empty());
    assert_eq!(
        check(&policy, "10.40.0.77:7"),
        Verdict::Refuse(Refusal::OwnAddress)
    );
    let (_, removed) = own.replace(vec![]);
    assert_eq!(removed.len(), 1);
    assert_eq!(
        check(&policy, "10.40.0.77:7"),
        Verdict::Allow(sa("10.40.0.77:7"))
    );
}

#[test]
fn explicit_denies_override_allowances() {
    let net: IpNet = "8.8.8.0/24".parse().unwrap();
    let policy = EgressPolicy::default()
        .with_denied(vec![net])
        .with_global(Allowances {
            cidrs: vec![net],
            ports: vec![],
        });
    assert_eq!(
        check(&policy, "8.8.8.8:53"),
        Verdict::Refuse(Refusal::DeniedNetwork(net))
    );
}

#[test]
fn refusals_name_the_range() {
    let Verdict::Refuse(refusal) = check(&EgressPolicy::default(), "169.254.169.254:80") else {
        panic!("metadata address must be refused");
    };
    assert_eq!(
        refusal.to_string(),
        "link-local (incl. cloud metadata) range 169.254.0.0/16 is not allowed"
    );
}

#[test]
fn special_range_table_parses() {
    assert!(special_range("10.0.0.1".parse().unwrap()).is_some());
    assert!(special_range("2a00:1450::1".parse().unwrap()).is_none());
}

proptest! {
    /// Canonicalisation is idempotent, and any IPv4 address wrapped in a mapped, NAT64 or
    /// 6to4 form gets exactly the verdict of the bare IPv4 address.
    #[test]
    fn embedded_forms_get_the_ipv4_verdict(octets in any::<[u8; 4]>(), port in 1u16..) {
        let v4 = std::net::Ipv4Addr::from(octets);
        let policy = EgressPolicy::default();
        let bare = policy.check(&CLIENT, SocketAddr::new(v4.into(), port), Transport::Udp);
        let [a, b, c, d] = octets;
        let hi = u16::from_be_bytes([a, b]);
        let lo = u16::from_be_bytes([c, d]);
        for wrapped in [
            v4.to_ipv6_mapped(),
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
            Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
        ] {
            let ip = IpAddr::V6(wrapped);
            prop_assert_eq!(canonical_ip(canonical_ip(ip)), canonical_ip(ip));
            let verdict = policy.check(&CLIENT, SocketAddr::new(ip, port), Transport::Tcp);
            prop_assert_eq!(&verdict, &bare);
        }
    }
}
