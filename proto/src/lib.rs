//! Half-Tunnel wire protocol (sans-IO).
//!
//! Must not depend on tokio, sockets, clocks or global state.
