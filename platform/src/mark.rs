//! Marking the client's own sockets so that they bypass the TUN.

use std::os::fd::AsFd;

use crate::error::{Error, Result};

/// Set `SO_MARK` on a socket (needs CAP_NET_ADMIN). Call before `connect` so the route
/// lookup already sees the mark.
pub fn set_mark<S: AsFd>(socket: &S, mark: u32) -> Result<()> {
    socket2::SockRef::from(socket)
        .set_mark(mark)
        .map_err(|source| Error::Mark { mark, source })
}

/// Read a socket's `SO_MARK`.
pub fn mark<S: AsFd>(socket: &S) -> Result<u32> {
    socket2::SockRef::from(socket)
        .mark()
        .map_err(|source| Error::Mark { mark: 0, source })
}
