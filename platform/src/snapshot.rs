//! A textual picture of everything this crate may change, so tests can assert that a
//! restore is byte-identical. Taken in the calling thread's network namespace.

use std::fmt;
use std::path::Path;

use crate::error::Result;
use crate::linux::{read_file_state, run};

/// Commands whose output is captured, in order.
const COMMANDS: &[(&str, &[&str])] = &[
    ("ip", &["-4", "rule", "show"]),
    ("ip", &["-6", "rule", "show"]),
    ("ip", &["-4", "route", "show", "table", "all"]),
    ("ip", &["-6", "route", "show", "table", "all"]),
    ("ip", &["-o", "-4", "address", "show"]),
    ("nft", &["list", "ruleset"]),
];

/// Sysctls this crate may change.
const SYSCTLS: &[&str] = &[
    "net.ipv4.conf.all.src_valid_mark",
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
];

/// Named sections of text; compare with `==`, print with `{}` for a readable diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `(what, output)` pairs.
    pub sections: Vec<(String, String)>,
}

impl Snapshot {
    /// Capture rules, routes, addresses, link names, the nft ruleset, the sysctls and the
    /// resolver file at `resolv_conf`.
    pub fn capture(resolv_conf: &Path) -> Result<Snapshot> {
        let mut sections = Vec::new();
        for (program, args) in COMMANDS {
            let out = run(program, *args, None)?;
            sections.push((format!("{program} {}", args.join(" ")), out));
        }
        sections.push(("links".into(), link_names()?));
        for key in SYSCTLS {
            let out = run("sysctl", ["-n", key], None)?;
            sections.push((format!("sysctl {key}"), out));
        }
        let file = read_file_state(resolv_conf)?;
        sections.push((resolv_conf.display().to_string(), format!("{file:?}")));
        Ok(Snapshot { sections })
    }
}

/// Link names only: flags and carrier state may legitimately change.
fn link_names() -> Result<String> {
    let out = run("ip", ["-o", "link", "show"], None)?;
    let names = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| format!("{n}\n"));
    Ok(names.collect())
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (what, out) in &self.sections {
            writeln!(f, "== {what}\n{out}")?;
        }
        Ok(())
    }
}
