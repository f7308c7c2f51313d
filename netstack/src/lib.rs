//! Half-Tunnel userspace TCP/IP termination (sans-IO).
//!
//! The client's TUN device hands over raw IPv4/IPv6 packets from every app (or,
//! in router mode, a whole LAN). [`Stack`] terminates them: TCP to *any*
//! destination is answered by one smoltcp `Interface` with AnyIP and surfaces as
//! flows; UDP becomes a 5-tuple flow table; port-53 traffic becomes DNS queries;
//! ICMP echo becomes events. Replies go back as packets for the TUN.
//!
//! This crate never depends on tokio, the TUN device or the clock: packets and
//! `now` go in, packets and [`Event`]s come out. A driver looks like this:
//!
//! ```
//! use std::time::Instant;
//! use netstack::{Config, Event, Refusal, Stack};
//!
//! let mut stack = Stack::new(Config::default(), Instant::now())?;
//! # let tun_packets: Vec<Vec<u8>> = Vec::new();
//! for pkt in tun_packets {
//!     let now = Instant::now();
//!     stack.handle_packet(now, &pkt); // 1. input (and handle_timeout(now) on the timer)
//!     while let Some(ev) = stack.poll_event() { // 2. events → flow methods
//!         match ev {
//!             Event::TcpIncoming { id, dst, .. } if dst.port() == 25 => {
//!                 stack.tcp_refuse(id, Refusal::Reset)?
//!             }
//!             Event::TcpIncoming { id, .. } => stack.tcp_accept(id)?,
//!             _ => { /* forward into the tunnel */ }
//!         }
//!     }
//!     while let Some(out) = stack.poll_transmit(now) { // 3. packets to the TUN
//!         # let _ = out;
//!     }
//!     let _next_wakeup = stack.poll_timeout(); // 4. re-arm one timer
//! }
//! # Ok::<(), netstack::Error>(())
//! ```
//!
//! Rules the caller can rely on (details in `docs/NETSTACK.md`):
//! * **Fragments** (IPv4 MF/offset, IPv6 Fragment header) are dropped and counted
//!   in [`Stats::dropped_fragment`]; they are never reassembled. TCP segments are
//!   sized from the MTU and carry DF, so only oversized UDP is affected.
//! * **Malformed, truncated, oversized, wrong-checksum or unsupported packets** are
//!   dropped and counted by reason in [`Stats`]; none can panic the stack or touch
//!   another flow.
//! * **MSS** advertised to apps is MTU − 40 (IPv4) / MTU − 60 (IPv6);
//!   [`clamp_mss`] rewrites forwarded SYNs for router mode.
//! * **TCP timestamps** are offered back to an app whose SYN offers them (its kernel
//!   then may reuse ports in `TIME_WAIT`); segments still fit the app's MSS and the MTU.
//! * **Back-pressure**: the app's TCP window is the room left in the flow's receive
//!   buffer (the caller not calling `tcp_recv` closes it); `tcp_send` takes only
//!   what fits and [`Event::TcpWritable`] says when to try again.

mod buffer;
mod build;
mod checksum;
mod config;
mod device;
mod dns;
mod error;
mod event;
mod mss;
mod packet;
mod stack;
mod stats;
mod tcp;
mod timestamps;
mod udp;

pub use checksum::{internet_checksum, partial_l4_checksum};
pub use config::{Config, DnsInterception, MAX_MTU, MIN_MTU};
pub use error::Error;
pub use event::{
    CloseReason, DnsQueryId, DnsTransport, EchoRequest, Event, Refusal, TcpFlowId, UdpFlowId,
};
pub use mss::{clamp_mss, mss_for_mtu};
pub use stack::Stack;
pub use stats::Stats;
