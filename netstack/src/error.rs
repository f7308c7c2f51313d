//! The one error type of the crate.

/// Errors returned by [`Stack`](crate::Stack) methods. "Nothing to do" is never an
/// error: it is `None` or `Ok(0)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is out of range.
    #[error("invalid config field `{field}`: expected {expected}")]
    InvalidConfig {
        /// The field name in [`Config`](crate::Config).
        field: &'static str,
        /// What the field must be.
        expected: &'static str,
    },
    /// The flow or query id is unknown (never existed, closed, or expired).
    #[error("unknown flow or query id")]
    UnknownId,
    /// The operation does not apply in the flow's current state (e.g. `tcp_accept`
    /// on an accepted flow, `tcp_send` after `tcp_shutdown_write`).
    #[error("operation not valid in the flow's current state")]
    InvalidState,
    /// The reply does not fit in one packet of the configured MTU, or a DNS
    /// message is longer than 65535 bytes.
    #[error("payload of {len} bytes is too large (limit {limit})")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Largest allowed.
        limit: usize,
    },
    /// A packet given to a helper is not a well-formed IPv4/IPv6 TCP packet.
    #[error("not a well-formed IP/TCP packet")]
    Malformed,
    /// The accept could not be completed because the flow-memory budget is spent.
    #[error("flow buffer memory budget exhausted")]
    MemoryExhausted,
}
