//! The exit's own addresses, as the kernel knows them (issue 20 §1, TESTPLAN §18 and §27):
//! no client may use the exit to reach the exit itself (its admin listener, or any service
//! bound to `0.0.0.0` or `::`).
//!
//! Two mechanisms, both feeding `Refusal::OwnAddress`:
//!
//! * [`Watcher`] keeps a [`OwnAddresses`] set current. At start it lists every address of
//!   every interface with an rtnetlink `RTM_GETADDR` dump (IPv4 and IPv6; primary,
//!   secondary, temporary, tentative and deprecated addresses alike, on interfaces up or
//!   down), then subscribes to the address notification groups (`RTNLGRP_IPV4_IFADDR`,
//!   `RTNLGRP_IPV6_IFADDR`) and lists again on every notification (a whole new list rather
//!   than applying deltas: nothing to get out of step, and a lost notification — the socket
//!   buffer overrun netlink reports — is repaired by the next list). A list every
//!   [`REFRESH_EVERY`] covers anything else. An address added while the node runs is in the
//!   set within milliseconds of the kernel's notification.
//! * [`is_local`] asks the kernel once more on the dial path, for the very address about
//!   to be dialled (after DNS and the policy): it also catches what no interface lists
//!   (an AnyIP range routed `local` to `lo`) and an address added between a notification
//!   and the list that follows it.
//!
//! Loopback and the unspecified addresses are own addresses whatever the interfaces say
//! (`crate::policy::is_always_own`).

mod probe;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{Handle, MulticastGroup};
use tokio::task::JoinHandle;

pub use crate::policy::OwnAddresses;
pub use probe::is_local;

/// How often the address list is taken again without a notification.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Why the exit's own addresses could not be listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnError {
    /// The rtnetlink socket could not be opened or subscribed.
    #[error("opening a netlink socket to follow the exit's own addresses: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel did not answer the address dump.
    #[error("listing the exit's own addresses (RTM_GETADDR): {0}")]
    Dump(#[source] rtnetlink::Error),
}

/// Keeps an [`OwnAddresses`] set current until dropped.
#[derive(Debug)]
pub struct Watcher {
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Fill `own` with the addresses the interfaces have now and follow their changes.
    /// Fails if the first list cannot be had: a node that does not know its own addresses
    /// does not start.
    pub async fn start(own: OwnAddresses) -> Result<Watcher, OwnError> {
        let link = Netlink::open()?;
        let (added, _) = own.replace(list(&link.handle).await?);
        tracing::info!(
            count = added.len(),
            addresses = %join(&added),
            "the exit's own addresses are refused as destinations"
        );
        Ok(Watcher {
            task: tokio::spawn(follow(link, own)),
        })
    }
}

/// An rtnetlink connection subscribed to address changes.
struct Netlink {
    handle: Handle,
    /// One item per notification (or overrun) the kernel sent.
    events: BoxStream<'static, ()>,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    fn open() -> Result<Netlink, OwnError> {
        let (connection, handle, events) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(OwnError::Socket)?;
        Ok(Netlink {
            handle,
            events: events.map(|_| ()).boxed(),
            connection: tokio::spawn(connection),
        })
    }
}

/// Every own address of every interface, now.
async fn list(handle: &Handle) -> Result<Vec<IpAddr>, OwnError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(OwnError::Dump)?;
    Ok(messages.iter().flat_map(addresses_of).collect())
}

/// The watcher's loop: wait for a notification or the refresh timer, list again, swap.
async fn follow(mut link: Netlink, own: OwnAddresses) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            event = link.events.next() => match event {
                // One list covers a burst: drop what else is queued.
                Some(()) => while let Some(Some(())) = link.events.next().now_or_never() {},
                None => link = reopen().await,
            },
            _ = tick.tick() => {}
        }
        refresh(&link.handle, &own).await;
    }
}

/// A new connection after the old one ended (retried every second; the set stays as it
/// was meanwhile, and [`is_local`] still guards every dial).
async fn reopen() -> Netlink {
    tracing::warn!("netlink address notifications ended; reopening");
    loop {
        match Netlink::open() {
            Ok(link) => return link,
            Err(error) => tracing::warn!(%error, "reopening the netlink socket failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn refresh(handle: &Handle, own: &OwnAddresses) {
    match list(handle).await {
        Ok(addrs) => {
            let (added, removed) = own.replace(addrs);
            if !added.is_empty() || !removed.is_empty() {
                tracing::info!(
                    added = %join(&added),
                    removed = %join(&removed),
                    "the exit's own addresses changed"
                );
            }
        }
        // Keeping the last set fails closed for removed addresses; added ones are caught
        // by `is_local` on the dial path.
        Err(error) => tracing::warn!(%error, "listing own addresses failed; keeping the last list"),
    }
}

/// The addresses one `RTM_NEWADDR` message gives the host: the interface address
/// (`IFA_LOCAL`, else `IFA_ADDRESS`: on a point-to-point link `IFA_ADDRESS` is the peer),
/// its IPv4 broadcast address, IPv6 anycast addresses, and for an IPv6 prefix the
/// subnet-router anycast address (RFC 4291 §2.6.1), which a forwarding host answers.
pub fn addresses_of(msg: &AddressMessage) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let (mut local, mut address) = (None, None);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Broadcast(b) => out.push(IpAddr::V4(*b)),
            AddressAttribute::Anycast(a) => out.push(IpAddr::V6(*a)),
            _ => {}
        }
    }
    if let Some(ip) = local.or(address) {
        out.push(ip);
        if let IpAddr::V6(v6) = ip
            && let Some(anycast) = subnet_router_anycast(v6, msg.header.prefix_len)
        {
            out.push(IpAddr::V6(anycast));
        }
    }
    out
}

/// The all-zero interface identifier of `ip`'s prefix; none for /127 (RFC 6164) and /128.
fn subnet_router_anycast(ip: Ipv6Addr, prefix_len: u8) -> Option<Ipv6Addr> {
    if prefix_len == 0 || prefix_len >= 127 {
        return None;
    }
    let mask = u128::MAX << (128 - u32::from(prefix_len));
    Some(Ipv6Addr::from(u128::from(ip) & mask))
}

fn join(addrs: &[IpAddr]) -> String {
    let words: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    words.join(",")
}
