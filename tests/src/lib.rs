//! End-to-end tests of Half-Tunnel in network namespaces, and the tools they share.
//!
//! Everything here talks only to namespaces the test itself created (see [`netns`]) or to
//! loopback; nothing is sent to any other address. Depends on the binaries, never on the
//! internet.

pub mod bench;
pub mod extra;
pub mod impair;
pub mod multi;
pub mod netns;
pub mod payload;
pub mod peers;
pub mod topology;
