//! The `vpn-client` command line as a user meets it before `up`. (Being an integration
//! test, this also makes `cargo test --workspace` build the binary the end-to-end tests
//! run.)

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn vpn_client(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vpn-client"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vpn-client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("vpn-client output")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn genkey_and_pubkey_round_trip() {
    let private = text(&vpn_client(&["genkey"], ""));
    assert_eq!(private.len(), 44, "{private}");
    let public = text(&vpn_client(&["pubkey"], &private));
    assert_eq!(public.len(), 44);
    assert_ne!(public, private);
}

#[test]
fn the_generated_sample_config_names_every_section() {
    let sample = text(&vpn_client(&["config", "generate"], ""));
    for section in [
        "[up]",
        "[down]",
        "[tun]",
        "[dns]",
        "[routing]",
        "[kill_switch]",
    ] {
        assert!(sample.contains(section), "missing {section}");
    }
}

#[test]
fn check_config_names_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("ht-client-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client.toml");
    std::fs::write(&path, "[tun]\nmtu = \"big\"\n").unwrap();
    let out = vpn_client(&["check-config", "--config", path.to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.toml") && err.contains("mtu"), "{err}");
}

#[test]
fn status_without_a_running_instance_says_so() {
    let dir = std::env::temp_dir().join(format!("ht-client-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sample = text(&vpn_client(&["config", "generate"], ""));
    let sock = dir.join("control.sock");
    let config = sample.replace("/run/half-tunnel/control.sock", sock.to_str().unwrap());
    let path = dir.join("client.toml");
    std::fs::write(&path, config).unwrap();
    let out = vpn_client(&["status", "--config", path.to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.is_empty(), "a failed status must say why");
}
