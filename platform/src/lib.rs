//! Half-Tunnel OS integration.
