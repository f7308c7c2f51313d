//! The namespace harness itself: names are unique, links carry traffic both families,
//! and everything is gone afterwards.

use e2e::netns::{Netns, link, namespaces_available};

const PROBE: &str = env!("CARGO_BIN_EXE_ht-probe");

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_namespaces_talk_over_a_veth_and_are_cleaned_up() {
    if !namespaces_available("two_namespaces_talk_over_a_veth_and_are_cleaned_up") {
        return;
    }
    let names;
    {
        let a = Netns::new("harness-a");
        let b = Netns::new("harness-b");
        names = (a.name().to_owned(), b.name().to_owned());
        link(
            &a,
            "eth0",
            &["10.99.0.1/24", "fd99::1/64"],
            &b,
            "eth0",
            &["10.99.0.2/24", "fd99::2/64"],
        );
        b.spawn(PROBE, &["udp-echo", "[::]:7000"]);
        b.spawn(PROBE, &["tcp-echo", "[::]:7001"]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        for (proto, addr) in [
            ("udp", "10.99.0.2:7000"),
            ("udp", "[fd99::2]:7000"),
            ("tcp", "10.99.0.2:7001"),
            ("tcp", "[fd99::2]:7001"),
        ] {
            let out = a.try_exec(PROBE, &[proto, addr, "hello"]);
            assert!(
                out.status.success(),
                "{proto} {addr}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
        }
        assert!(netns_list().contains(&names.0));
    }
    let list = netns_list();
    assert!(
        !list.contains(&names.0) && !list.contains(&names.1),
        "namespaces left behind: {list}"
    );
}
