//! The `exit-node` command line as an operator uses it. (Being an integration test, this
//! also makes `cargo test --workspace` build the binary the end-to-end tests run.)

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn exit_node(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exit-node"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start exit-node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("exit-node output")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn genkey_and_pubkey_make_distinct_base64_keys() {
    let private = text(&exit_node(&["genkey"], ""));
    assert_eq!(private.len(), 44, "{private}");
    let public = exit_node(&["pubkey"], &private);
    assert!(public.status.success());
    let public = text(&public);
    assert_eq!(public.len(), 44);
    assert_ne!(public, private);
    assert_eq!(
        text(&exit_node(&["pubkey"], &private)),
        public,
        "deterministic"
    );
    assert_ne!(text(&exit_node(&["genkey"], "")), private, "random");
}

#[test]
fn pubkey_rejects_garbage_with_a_clear_error() {
    let out = exit_node(&["pubkey"], "not a key");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("base64"), "{err}");
}

#[test]
fn the_generated_sample_config_names_every_section() {
    let sample = text(&exit_node(&["config", "generate"], ""));
    for section in [
        "[listen.up]",
        "[listen.down]",
        "[egress]",
        "[limits]",
        "[session]",
    ] {
        assert!(sample.contains(section), "missing {section}");
    }
}

#[test]
fn check_config_names_the_file_and_the_problem() {
    let dir = std::env::temp_dir().join(format!("ht-exit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exit-node.toml");
    std::fs::write(&path, "private_key_file = \"exit.key\"\nbogus = 1\n").unwrap();
    let out = exit_node(&["check-config", "--config", path.to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit-node.toml") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn check_config_refuses_a_bandwidth_limit_it_cannot_enforce() {
    let dir = std::env::temp_dir().join(format!("ht-exit-cli-bw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = text(&exit_node(&["genkey"], ""));
    std::fs::write(dir.join("exit.key"), key).unwrap();
    let path = dir.join("exit-node.toml");
    let config = "private_key_file = \"exit.key\"\n[listen.up]\naddress = \"127.0.0.1:0\"\npath = \"/u\"\n\
                  [listen.down]\naddress = \"127.0.0.1:0\"\npath = \"/d\"\n[limits]\nbandwidth_per_client = 1000000\n";
    std::fs::write(&path, config).unwrap();
    let out = exit_node(&["check-config", "--config", path.to_str().unwrap()], "");
    std::fs::write(&path, config.replace("1000000", "0")).unwrap();
    let ok = exit_node(&["check-config", "--config", path.to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bandwidth_per_client"),
        "{err}"
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
