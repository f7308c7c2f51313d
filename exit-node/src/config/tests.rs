use super::*;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A temp dir with a valid exit key and a client psk, for configs that name them.
fn keydir(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("ht-exit-config-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("exit.key"), keys::encode_key(&[1; 32])).unwrap();
    std::fs::write(dir.join("c.psk"), keys::encode_key(&[2; 32])).unwrap();
    Dir(dir)
}

const MINIMAL: &str = r#"
private_key_file = "exit.key"
[listen.up]
address = "127.0.0.1:8443"
path = "/u"
[listen.down]
address = "127.0.0.1:8443"
path = "/d"
[[clients]]
name = "a"
public_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
psk_file = "c.psk"
allow_ports = [25]
"#;

fn parse(dir: &Dir, text: &str) -> Result<Config, ConfigError> {
    Config::parse(&dir.0.join("exit-node.toml"), text)
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let dir = keydir("minimal");
    let config = parse(&dir, MINIMAL).unwrap();
    assert_eq!(config.private_key, [1; 32]);
    assert_eq!(config.clients[0].public_key, [3; 32]);
    assert_eq!(config.clients[0].psk, Some([2; 32]));
    assert_eq!(config.file.session.idle_ttl, Duration::from_secs(300));
    assert_eq!(config.file.egress.blocked_ports, vec![25]);
    assert_eq!(config.file.limits.max_message_size, 1 << 20);
    assert!(config.file.admin.is_none());
}

#[test]
fn sample_parses_and_matches_the_defaults() {
    let file: FileConfig = toml::from_str(SAMPLE).expect("the shipped sample must parse");
    let d = LimitsConfig::default();
    assert_eq!(file.limits.max_sessions, d.max_sessions);
    assert_eq!(
        file.limits.max_streams_per_session,
        d.max_streams_per_session
    );
    assert_eq!(
        file.limits.max_buffered_bytes_per_session,
        d.max_buffered_bytes_per_session
    );
    assert_eq!(
        file.limits.handshakes_per_second_per_source,
        d.handshakes_per_second_per_source
    );
    assert_eq!(file.limits.upgrade_timeout, d.upgrade_timeout);
    assert_eq!(file.limits.handshake_timeout, d.handshake_timeout);
    assert_eq!(file.limits.max_message_size, d.max_message_size);
    assert_eq!(file.limits.bandwidth_per_client, d.bandwidth_per_client);
    assert_eq!(
        file.limits.max_dest_sockets_per_session,
        d.max_dest_sockets_per_session
    );
    assert_eq!(
        file.egress.blocked_ports,
        EgressConfig::default().blocked_ports
    );
    assert_eq!(
        file.egress.connect_timeout,
        EgressConfig::default().connect_timeout
    );
    assert_eq!(
        file.egress.udp_idle_timeout,
        EgressConfig::default().udp_idle_timeout
    );
    assert_eq!(file.dns.cache_size, DnsConfig::default().cache_size);
    assert_eq!(file.dns.timeout, DnsConfig::default().timeout);
    assert_eq!(file.session.idle_ttl, SessionConfig::default().idle_ttl);
    assert_eq!(
        file.session.fallback_to_up_leg,
        SessionConfig::default().fallback_to_up_leg
    );
    assert_eq!(file.log.stats_interval, LogConfig::default().stats_interval);
    assert_eq!(file.runtime.worker_threads, None, "one per CPU unless set");
    assert_eq!(file.runtime.session_threads, None, "one per CPU unless set");
}

#[test]
fn runtime_threads_are_optional_and_never_zero() {
    let dir = keydir("threads");
    let set = MINIMAL.to_owned() + "[runtime]\nworker_threads = 1\nsession_threads = 3\n";
    let runtime = parse(&dir, &set).unwrap().file.runtime;
    assert_eq!(runtime.worker_threads.map(|n| n.get()), Some(1));
    assert_eq!(runtime.session_threads.map(|n| n.get()), Some(3));
    for key in ["worker_threads", "session_threads"] {
        let zero = MINIMAL.to_owned() + &format!("[runtime]\n{key} = 0\n");
        let err = parse(&dir, &zero).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn unknown_keys_are_errors_that_name_the_key_and_file() {
    let dir = keydir("unknown");
    let text = MINIMAL.replace("[[clients]]", "[limits]\nmax_sesions = 3\n[[clients]]");
    let err = parse(&dir, &text).unwrap_err().to_string();
    assert!(err.contains("exit-node.toml"), "{err}");
    assert!(err.contains("max_sesions"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    let dir = keydir("bad");
    let cases = [
        (
            MINIMAL.replace("path = \"/d\"", "path = \"/u\""),
            "listen.down.path",
        ),
        (
            MINIMAL.replace("path = \"/u\"", "path = \"u\""),
            "listen.up.path",
        ),
        (MINIMAL.replace("AwMD", "!!!!"), "clients[0].public_key"),
        (
            MINIMAL.replace("c.psk", "missing.psk"),
            "clients[0].psk_file",
        ),
        (MINIMAL.replace("exit.key", "nope.key"), "private_key_file"),
        (
            MINIMAL.to_owned()
                + "[[clients]]\npublic_key = \"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\"\n",
            "clients[1].public_key",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&dir, &text).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{key}`")),
            "expected the error to name {key}: {err}"
        );
    }
    let err = parse(
        &dir,
        &(MINIMAL.to_owned() + "[session]\nidle_ttl = \"soon\"\n"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("idle_ttl"), "{err}");
    let err = parse(
        &dir,
        &MINIMAL.replace(
            "[listen.up]",
            "[listen]\ntrusted_proxies = [\"10.0.0.1\"]\n[listen.up]",
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("trusted_proxies"), "{err}");
    let err = parse(
        &dir,
        &MINIMAL.replace(
            "[listen.up]",
            "[listen]\nclient_address_header = \"X Forwarded\"\n[listen.up]",
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("client_address_header") && err.contains("expected an HTTP header name"),
        "{err}"
    );
}

#[test]
fn trusted_proxies_are_cidrs_and_the_header_defaults_to_x_forwarded_for() {
    let dir = keydir("proxies");
    let config = parse(&dir, MINIMAL).unwrap();
    assert!(config.file.listen.trusted_proxies.is_empty());
    assert_eq!(
        config.file.listen.client_address_header.0,
        "x-forwarded-for"
    );
    let text = MINIMAL.replace(
        "[listen.up]",
        "[listen]\ntrusted_proxies = [\"173.245.48.0/20\", \"2400:cb00::/32\"]\n\
         client_address_header = \"CF-Connecting-IP\"\n[listen.up]",
    );
    let config = parse(&dir, &text).unwrap();
    assert_eq!(config.file.listen.trusted_proxies.len(), 2);
    assert_eq!(
        config.file.listen.client_address_header.0,
        "cf-connecting-ip"
    );
}

/// Issue 20 §5: the admin listener off loopback needs a bearer token; check-config and the
/// start refuse it otherwise, naming the key.
#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let dir = keydir("admin");
    let on = |addr: &str, extra: &str| {
        MINIMAL.to_owned() + &format!("[admin]\naddress = \"{addr}\"\n{extra}")
    };
    let local = parse(&dir, &on("127.0.0.1:9090", "")).unwrap();
    assert!(local.admin_token.is_none());
    parse(&dir, &on("[::1]:9090", "")).unwrap();
    for open in ["0.0.0.0:9090", "[::]:9090", "10.40.0.3:9090"] {
        let err = parse(&dir, &on(open, "")).unwrap_err().to_string();
        assert!(
            err.contains("`admin.token_file`") && err.contains("not loopback"),
            "{open}: {err}"
        );
    }
    std::fs::write(dir.0.join("short.token"), "abc\n").unwrap();
    let err = parse(&dir, &on("0.0.0.0:9090", "token_file = \"short.token\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 16"), "{err}");
    let err = parse(&dir, &on("0.0.0.0:9090", "token_file = \"none.token\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
    std::fs::write(dir.0.join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let config = parse(&dir, &on("0.0.0.0:9090", "token_file = \"admin.token\"\n")).unwrap();
    assert!(config.admin_token.is_some());
    assert!(
        !format!("{config:?}").contains("0123456789abcdef"),
        "the token leaks into Debug"
    );
}

/// Issue 20 §1: own addresses are opened one exact address at a time, and every opening is
/// a warning naming the file and the key.
#[test]
fn own_addresses_are_opened_only_exactly_and_with_a_warning() {
    let dir = keydir("own");
    let path = dir.0.join("exit-node.toml");
    let config = parse(&dir, MINIMAL).unwrap();
    assert!(config.file.egress.allow_own_addresses.is_empty());
    assert!(config.warnings(&path).is_empty());
    let egress = "[egress]\nallow_cidrs = [\"10.40.0.0/24\"]\nallow_own_addresses = [\"10.40.0.1/32\", \"2001:db8::1/128\"]\n";
    let config = parse(
        &dir,
        &(MINIMAL.replace("[[clients]]", &format!("{egress}[[clients]]"))),
    )
    .unwrap();
    assert!(
        config
            .policy
            .own_address_allowed("10.40.0.1".parse().unwrap())
    );
    assert!(
        config
            .policy
            .own_address_allowed("2001:db8::1".parse().unwrap())
    );
    assert!(
        !config
            .policy
            .own_address_allowed("10.40.0.2".parse().unwrap())
    );
    let warnings = config.warnings(&path);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("exit-node.toml")
            && warnings[0].contains("`egress.allow_own_addresses[0]`")
            && warnings[0].contains("10.40.0.1")
            && warnings[0].contains("admin"),
        "{}",
        warnings[0]
    );
    for (list, index) in [
        ("[\"10.40.0.0/24\"]", 0),
        ("[\"10.40.0.1/32\", \"::/0\"]", 1),
    ] {
        let egress = format!("[egress]\nallow_own_addresses = {list}\n");
        let text = MINIMAL.replace("[[clients]]", &format!("{egress}[[clients]]"));
        let err = parse(&dir, &text).unwrap_err().to_string();
        assert!(
            err.contains(&format!("`egress.allow_own_addresses[{index}]`"))
                && err.contains("exit-node.toml")
                && err.contains("exact address"),
            "{err}"
        );
    }
    // A bare address is not a CIDR: the schema error names the key.
    let text = MINIMAL.replace(
        "[[clients]]",
        "[egress]\nallow_own_addresses = [\"10.40.0.1\"]\n[[clients]]",
    );
    let err = parse(&dir, &text).unwrap_err().to_string();
    assert!(err.contains("allow_own_addresses"), "{err}");
}
