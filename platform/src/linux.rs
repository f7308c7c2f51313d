//! The real [`System`] for Linux.
//!
//! Routes, rules and links are changed by running iproute2's `ip`, the firewall by `nft`,
//! systemd-resolved by `resolvectl`. Why commands instead of netlink crates: the changes are
//! a handful of calls at `up`/`down`, never on a hot path; `ip`/`nft` are the reference
//! implementations of those netlink dialects (nftables in particular has no mature Rust
//! binding), every operator can reproduce and inspect each step from the log, and a
//! failing command's stderr names the problem precisely. The TUN device is created with
//! tun-rs (ioctls), and SO_MARK is a plain `setsockopt` via socket2.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::system::System;
use crate::types::{FileState, Route, Rule, TunConfig, TunOffload};

/// stderr fragments meaning "that is already gone", for idempotent deletes.
const ALREADY_GONE: &[&str] = &[
    "No such file or directory",
    "No such process",
    "Cannot find device",
    "No such device",
    "does not exist",
];

/// Does it for real, in the network namespace of the calling thread.
#[derive(Debug, Clone)]
pub struct LinuxSystem {
    /// Where sysctls live (default `/proc/sys`).
    pub proc_sys: PathBuf,
    /// systemd-resolved's varlink socket; its existence means resolved runs.
    pub resolved_socket: PathBuf,
}

impl Default for LinuxSystem {
    fn default() -> Self {
        LinuxSystem {
            proc_sys: "/proc/sys".into(),
            resolved_socket: "/run/systemd/resolve/io.systemd.Resolve".into(),
        }
    }
}

/// Run `program args`, feeding `stdin`; return stdout, or the failure with stderr.
pub(crate) fn run<I, S>(program: &str, args: I, stdin: Option<&str>) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let spawn_err = |source| Error::Spawn {
        program: program.into(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let line: Vec<String> = std::iter::once(program.to_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    Err(Error::Command {
        command: line.join(" "),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// `Ok` if the command failed only because its object is already gone.
fn tolerate_gone(result: Result<String>) -> Result<()> {
    match result {
        Err(Error::Command { stderr, .. }) if ALREADY_GONE.iter().any(|s| stderr.contains(s)) => {
            tracing::debug!(%stderr, "already gone");
            Ok(())
        }
        other => other.map(drop),
    }
}

fn ip(family: &str, object: &str, verb: &str, args: Vec<String>) -> Result<String> {
    let all = [family, object, verb]
        .into_iter()
        .map(String::from)
        .chain(args);
    run("ip", all, None)
}

impl LinuxSystem {
    fn sysctl_path(&self, key: &str) -> Result<PathBuf> {
        let valid = !key.is_empty()
            && key.split('.').all(|p| !p.is_empty() && p != "..")
            && !key.contains('/');
        if !valid {
            return Err(Error::InvalidSysctlKey(key.into()));
        }
        Ok(self.proc_sys.join(key.replace('.', "/")))
    }
}

impl System for LinuxSystem {
    type Tun = tun_rs::SyncDevice;

    fn create_tun(&mut self, c: &TunConfig) -> Result<tun_rs::SyncDevice> {
        let mut b = tun_rs::DeviceBuilder::new().name(&c.name).mtu(c.mtu);
        if let Some((addr, prefix)) = c.ipv4 {
            b = b.ipv4(addr, prefix, None);
        }
        for &(addr, prefix) in &c.ipv6 {
            b = b.ipv6(addr, prefix);
        }
        if let Some(len) = c.tx_queue_len {
            b = b.tx_queue_len(len);
        }
        let (offload, multi_queue) = (c.offload != TunOffload::None, c.multi_queue);
        let b = b.with(|o| {
            o.offload(offload).multi_queue(multi_queue);
        });
        let tun_error = |source| Error::Tun {
            name: c.name.clone(),
            source,
        };
        let dev = b.enable(true).build_sync().map_err(tun_error)?;
        // tun-rs asks for TSO and USO with IFF_VNET_HDR; keep what was asked for.
        let flags = match c.offload {
            TunOffload::Checksum => Some(libc::TUN_F_CSUM),
            TunOffload::TcpSegments => Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
            TunOffload::None | TunOffload::Segmentation => None,
        };
        if let Some(flags) = flags {
            set_offload(&dev, flags).map_err(tun_error)?;
        }
        Ok(dev)
    }

    fn link_exists(&mut self, name: &str) -> Result<bool> {
        match run("ip", ["link", "show", "dev", name], None) {
            Ok(_) => Ok(true),
            Err(Error::Command { stderr, .. })
                if ALREADY_GONE.iter().any(|s| stderr.contains(s)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn delete_link(&mut self, name: &str) -> Result<()> {
        tolerate_gone(run("ip", ["link", "del", "dev", name], None))
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        ip(rule.family.flag(), "rule", "add", rule.args()).map(drop)
    }

    fn delete_rule(&mut self, rule: &Rule) -> Result<()> {
        tolerate_gone(ip(rule.family.flag(), "rule", "del", rule.args()))
    }

    fn add_route(&mut self, route: &Route) -> Result<()> {
        ip(route.family().flag(), "route", "add", route.args()).map(drop)
    }

    fn delete_route(&mut self, route: &Route) -> Result<()> {
        tolerate_gone(ip(route.family().flag(), "route", "del", route.args()))
    }

    fn load_nft(&mut self, script: &str) -> Result<()> {
        run("nft", ["-f", "-"], Some(script)).map(drop)
    }

    fn delete_nft_table(&mut self, name: &str) -> Result<()> {
        tolerate_gone(run("nft", ["delete", "table", "inet", name], None))
    }

    fn read_sysctl(&mut self, key: &str) -> Result<String> {
        let path = self.sysctl_path(key)?;
        let text = fs::read_to_string(&path).map_err(Error::file("reading", &path))?;
        Ok(text.trim().to_owned())
    }

    fn write_sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let path = self.sysctl_path(key)?;
        fs::write(&path, value).map_err(Error::file("writing", &path))
    }

    fn resolved_running(&mut self) -> bool {
        self.resolved_socket.exists()
    }

    fn set_resolved(&mut self, link: &str, servers: &[IpAddr]) -> Result<()> {
        let servers = servers.iter().map(ToString::to_string);
        run(
            "resolvectl",
            ["dns".into(), link.into()].into_iter().chain(servers),
            None,
        )?;
        run("resolvectl", ["domain", link, "~."], None)?;
        run("resolvectl", ["default-route", link, "yes"], None).map(drop)
    }

    fn revert_resolved(&mut self, link: &str) -> Result<()> {
        tolerate_gone(run("resolvectl", ["revert", link], None))
    }

    fn read_file(&mut self, path: &Path) -> Result<FileState> {
        read_file_state(path)
    }

    fn write_file(&mut self, path: &Path, state: &FileState) -> Result<()> {
        write_file_state(path, state)
    }
}

/// What is at `path` (not following a final symlink).
pub(crate) fn read_file_state(path: &Path) -> Result<FileState> {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileState::Absent),
        other => other.map_err(Error::file("inspecting", path))?,
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(Error::file("reading link", path))?;
        return Ok(FileState::Symlink { target });
    }
    let contents = fs::read(path).map_err(Error::file("reading", path))?;
    Ok(FileState::File {
        contents,
        mode: meta.permissions().mode() & 0o7777,
    })
}

/// Replace whatever is at `path` by `state`, atomically (sibling temp + fsync + rename).
pub(crate) fn write_file_state(path: &Path, state: &FileState) -> Result<()> {
    let tmp = sibling(path, ".half-tunnel.tmp");
    let _ = fs::remove_file(&tmp);
    match state {
        FileState::Absent => {
            return match fs::remove_file(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other.map_err(Error::file("removing", path)),
            };
        }
        FileState::File { contents, mode } => write_synced(&tmp, contents, *mode)?,
        FileState::Symlink { target } => {
            symlink(target, &tmp).map_err(Error::file("creating symlink", &tmp))?
        }
    }
    fs::rename(&tmp, path).map_err(Error::file("renaming into place", path))?;
    sync_parent(path)
}

pub(crate) fn write_synced(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::File::create(path).map_err(Error::file("creating", path))?;
    f.write_all(contents)
        .map_err(Error::file("writing", path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::file("chmod", path))?;
    f.sync_all().map_err(Error::file("fsync", path))
}

pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let f = fs::File::open(dir).map_err(Error::file("opening directory", dir))?;
    f.sync_all().map_err(Error::file("fsync", dir))
}

pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// `TUNSETOFFLOAD` with exactly `flags` (`TUN_F_*`).
#[allow(unsafe_code)]
fn set_offload(dev: &tun_rs::SyncDevice, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `dev` owns an open TUN descriptor for the whole call; TUNSETOFFLOAD takes
    // its argument by value and touches no memory of ours.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
