use super::*;

const MINIMAL: &str = r#"
private_key_file = "client.key"
exit_public_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
[up]
url = "wss://a.example.test/u"
[down]
url = "wss://b.example.test/d"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/half-tunnel/client.toml"), text)
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.tun.mtu, 65535);
    assert_eq!(c.tun.tx_queue_len, 4096);
    assert_eq!(c.dns.intercept, Intercept::All);
    assert_eq!(c.routing.fwmark, 0x4854);
    assert!(!c.kill_switch());
    assert_eq!(c.session.reconnect_max, Duration::from_secs(60));
    assert_eq!(c.session.stall_timeout, Duration::from_secs(6));
}

#[test]
fn stall_timeout_accepts_the_window_between_keepalive_and_leg_timeout_or_off() {
    let ms = Duration::from_millis;
    for (value, want) in [("14s", ms(14_000)), ("5500ms", ms(5500)), ("0s", ms(0))] {
        let text = MINIMAL.to_owned() + &format!("[session]\nstall_timeout = \"{value}\"\n");
        assert_eq!(parse(&text).unwrap().session.stall_timeout, want, "{value}");
    }
}

#[test]
fn sample_parses_and_matches_the_defaults() {
    let c = parse(SAMPLE).expect("the shipped sample must parse");
    let d = parse(MINIMAL).unwrap();
    assert_eq!(c.tun.mtu, d.tun.mtu);
    assert_eq!(c.tun.address_v4, d.tun.address_v4);
    assert_eq!(c.tun.address_v6, d.tun.address_v6);
    assert_eq!(c.dns.virtual_resolver_v4, d.dns.virtual_resolver_v4);
    assert_eq!(c.dns.virtual_resolver_v6, d.dns.virtual_resolver_v6);
    assert_eq!(c.dns.intercept, d.dns.intercept);
    assert_eq!(c.routing.fwmark, d.routing.fwmark);
    assert_eq!(c.routing.table, d.routing.table);
    assert_eq!(c.kill_switch.enabled, d.kill_switch.enabled);
    assert_eq!(c.session.reconnect_initial, d.session.reconnect_initial);
    assert_eq!(c.session.exit_has_ipv6, d.session.exit_has_ipv6);
    assert_eq!(c.session.stall_timeout, d.session.stall_timeout);
    assert_eq!(c.runtime.journal_dir, d.runtime.journal_dir);
    assert_eq!(c.runtime.worker_threads, d.runtime.worker_threads);
    assert_eq!(c.log.stats_interval, d.log.stats_interval);
}

#[test]
fn worker_threads_default_to_one_and_zero_is_refused() {
    assert_eq!(parse(MINIMAL).unwrap().runtime.worker_threads.get(), 1);
    let four = MINIMAL.to_owned() + "[runtime]\nworker_threads = 4\n";
    assert_eq!(parse(&four).unwrap().runtime.worker_threads.get(), 4);
    let zero = MINIMAL.to_owned() + "[runtime]\nworker_threads = 0\n";
    let err = parse(&zero).unwrap_err().to_string();
    assert!(err.contains("worker_threads"), "{err}");
}

#[test]
fn kill_switch_defaults_on_in_router_mode() {
    let router = MINIMAL.to_owned() + "[router]\nenabled = true\nlan_interface = \"eth1\"\n";
    assert!(parse(&router).unwrap().kill_switch());
    let off = router + "[kill_switch]\nenabled = false\n";
    assert!(!parse(&off).unwrap().kill_switch());
}

#[test]
fn errors_name_file_and_key() {
    let cases = [
        (MINIMAL.replace("wss://a", "https://a"), "up.url"),
        (MINIMAL.to_owned() + "[tun]\nmtu = 576\n", "tun.mtu"),
        (
            MINIMAL.to_owned() + "[tun]\ntx_queue_len = 10\n",
            "tun.tx_queue_len",
        ),
        (
            MINIMAL.to_owned() + "[router]\nenabled = true\n",
            "router.lan_interface",
        ),
        (
            MINIMAL.to_owned() + "[routing]\nfwmark = 0\n",
            "routing.fwmark",
        ),
        (MINIMAL.to_owned() + "[tun]\nmtuu = 1500\n", "mtuu"),
        (
            MINIMAL.to_owned() + "[dns]\nintercept = \"some\"\n",
            "intercept",
        ),
        (
            MINIMAL.to_owned() + "[tun]\naddress_v4 = \"1.2.3\"\n",
            "address_v4",
        ),
        (
            MINIMAL.to_owned() + "[session]\nstall_timeout = \"20s\"\n",
            "session.stall_timeout",
        ),
        (
            MINIMAL.to_owned() + "[session]\nstall_timeout = \"5s\"\n",
            "session.stall_timeout",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("/etc/half-tunnel/client.toml"), "{err}");
        assert!(err.contains(key), "expected {key} in: {err}");
    }
}
