//! A recording fake of [`System`] for unit tests of callers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::system::System;
use crate::types::{FileState, Route, Rule, TunConfig};

/// One state-changing call, in the order it was made. Reads are not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Call {
    CreateTun(TunConfig),
    DeleteLink(String),
    AddRule(Rule),
    DeleteRule(Rule),
    AddRoute(Route),
    DeleteRoute(Route),
    LoadNft(String),
    DeleteNftTable(String),
    WriteSysctl(String, String),
    SetResolved(String, Vec<IpAddr>),
    RevertResolved(String),
    WriteFile(PathBuf, FileState),
}

/// Records every change; keeps sysctls and files in memory. Sysctls read as `"0"` until set.
#[derive(Debug, Default)]
pub struct RecordingSystem {
    /// The calls so far.
    pub calls: Vec<Call>,
    /// In-memory files.
    pub files: HashMap<PathBuf, FileState>,
    /// In-memory sysctls.
    pub sysctls: HashMap<String, String>,
    /// Interfaces that exist (the TUN is added by `create_tun`, removed by `delete_link`).
    pub links: HashSet<String>,
    /// What [`System::resolved_running`] answers.
    pub resolved: bool,
    /// Fail (once) the change call with this index (0-based over `calls`), without recording it.
    pub fail_at: Option<usize>,
}

impl RecordingSystem {
    /// A fresh fake.
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&mut self, call: Call) -> Result<()> {
        if self.fail_at == Some(self.calls.len()) {
            self.fail_at = None;
            return Err(Error::Command {
                command: format!("{call:?}"),
                status: "injected".into(),
                stderr: "injected failure".into(),
            });
        }
        self.calls.push(call);
        Ok(())
    }
}

impl System for RecordingSystem {
    type Tun = ();

    fn create_tun(&mut self, config: &TunConfig) -> Result<()> {
        self.record(Call::CreateTun(config.clone()))?;
        self.links.insert(config.name.clone());
        Ok(())
    }
    fn link_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self.links.contains(name))
    }
    fn delete_link(&mut self, name: &str) -> Result<()> {
        self.record(Call::DeleteLink(name.into()))?;
        self.links.remove(name);
        Ok(())
    }
    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        self.record(Call::AddRule(rule.clone()))
    }
    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        self.record(Call::DeleteRule(rule.clone()))
    }
    fn add_route(&mut self, route: &Route) -> Result<()> {
        self.record(Call::AddRoute(route.clone()))
    }
    fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.record(Call::DeleteRoute(route.clone()))
    }
    fn load_nft(&mut self, script: &str) -> Result<()> {
        self.record(Call::LoadNft(script.into()))
    }
    fn delete_nft_table(&mut self, name: &str) -> Result<()> {
        self.record(Call::DeleteNftTable(name.into()))
    }
    fn read_sysctl(&mut self, key: &str) -> Result<String> {
        Ok(self.sysctls.get(key).cloned().unwrap_or_else(|| "0".into()))
    }
    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        self.record(Call::WriteSysctl(key.into(), value.into()))?;
        self.sysctls.insert(key.into(), value.into());
        Ok(())
    }
    fn resolved_running(&mut self) -> bool {
        self.resolved
    }
    fn set_resolved(&mut self, link: &str, servers: &[IpAddr]) -> Result<()> {
        self.record(Call::SetResolved(link.into(), servers.to_vec()))
    }
    fn revert_resolved(&mut self, link: &str) -> Result<()> {
        self.record(Call::RevertResolved(link.into()))
    }
    fn read_file(&mut self, path: &Path) -> Result<FileState> {
        Ok(self.files.get(path).cloned().unwrap_or(FileState::Absent))
    }
    fn write_file(&mut self, path: &Path, state: &FileState) -> Result<()> {
        self.record(Call::WriteFile(path.into(), state.clone()))?;
        self.files.insert(path.into(), state.clone());
        Ok(())
    }
}
