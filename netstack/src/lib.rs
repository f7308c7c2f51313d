//! Half-Tunnel userspace TCP/IP termination (sans-IO).
//!
//! Must not depend on tokio, the TUN device or the clock.
