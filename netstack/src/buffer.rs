//! Flow buffers that cost memory only where data has been.
//!
//! smoltcp wants each TCP socket's receive and send buffers as slices of their full
//! size up front: the receive buffer's size is the advertised window, and the window
//! scale is fixed at the handshake. A `Vec` of that size costs its full size in RSS
//! as soon as the allocator hands out recycled (already touched) heap, and freed
//! flows leave their buffers in the heap. So each flow's two buffers are one private
//! anonymous mapping instead: the kernel commits a page only when data is first
//! written to it (an idle flow that moved a request and a reply costs two pages),
//! and `munmap` gives everything back when the flow is reclaimed.
//!
//! This module holds the crate's only `unsafe`: `mmap`/`munmap` and the `'static`
//! slices the sockets hold. It also holds the only code that adds or removes TCP
//! sockets of a [`Shard`], which keeps the invariant that makes the slices sound: a
//! socket is removed from (or dropped with) its socket set before the mapping its
//! buffers point into is unmapped.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::stack::Shard;

impl Shard {
    /// Creates a TCP socket with `rx`/`tx` bytes of lazily committed buffers, lets
    /// `configure` set it up and adds it; `None` if the buffers cannot be mapped.
    pub(crate) fn add_tcp_socket(
        &mut self,
        rx: usize,
        tx: usize,
        configure: impl FnOnce(&mut tcp::Socket<'static>),
    ) -> Option<SocketHandle> {
        // SAFETY: the socket goes into `self.sockets` and the mapping into
        // `self.buffers` under the same handle; `remove_socket` and `Drop` remove the
        // socket before the mapping.
        let (buffers, rx, tx) = unsafe { FlowBuffers::map(rx, tx) }?;
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        configure(&mut socket);
        let handle = self.sockets.add(socket);
        self.buffers.insert(handle, buffers);
        Some(handle)
    }

    /// Removes a TCP socket, then unmaps its buffers.
    pub(crate) fn remove_socket(&mut self, handle: SocketHandle) {
        drop(self.sockets.remove(handle));
        self.buffers.remove(&handle);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // The sockets hold slices of `buffers`: drop them while the mappings exist.
        self.sockets = SocketSet::new(Vec::new());
        self.buffers.clear();
    }
}

/// One flow's receive and send buffers, in one lazily committed mapping.
pub(crate) struct FlowBuffers {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone; moving it to
// another thread moves that ownership.
unsafe impl Send for FlowBuffers {}

impl std::fmt::Debug for FlowBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowBuffers")
            .field("len", &self.len)
            .finish()
    }
}

impl FlowBuffers {
    /// Maps `rx + tx` bytes and returns the mapping with its two halves, or `None`
    /// when the kernel refuses the mapping (out of address space or map count).
    ///
    /// # Safety
    ///
    /// The returned slices point into the mapping: every user of them must be gone
    /// before the `FlowBuffers` is dropped.
    unsafe fn map(rx: usize, tx: usize) -> Option<(Self, &'static mut [u8], &'static mut [u8])> {
        let len = rx.checked_add(tx)?;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return None;
        }
        let ptr = NonNull::new(addr.cast::<u8>())?;
        // SAFETY: `len` bytes at `ptr` are mapped readable and writable (zero-filled)
        // and nothing else refers to them; the two slices do not overlap. They stay
        // valid until `Drop` unmaps them, which the caller orders after their users.
        let (rx_buf, tx_buf) = unsafe {
            let all = std::slice::from_raw_parts_mut(ptr.as_ptr(), len);
            all.split_at_mut(rx)
        };
        Some((Self { ptr, len }, rx_buf, tx_buf))
    }
}

impl Drop for FlowBuffers {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`; its slices' users are
        // gone (the invariant of `map`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_are_zeroed_disjoint_and_writable() {
        // SAFETY: the slices are dropped before the mapping (end of scope order).
        let (map, rx, tx) = unsafe { FlowBuffers::map(8192, 4096) }.unwrap();
        assert_eq!((rx.len(), tx.len()), (8192, 4096));
        assert!(rx.iter().chain(tx.iter()).all(|b| *b == 0));
        rx.fill(1);
        tx.fill(2);
        assert!(rx.iter().all(|b| *b == 1) && tx.iter().all(|b| *b == 2));
        drop(map);
    }

    #[test]
    fn empty_or_overflowing_sizes_are_refused() {
        // SAFETY: nothing is mapped.
        assert!(unsafe { FlowBuffers::map(0, 0) }.is_none());
        assert!(unsafe { FlowBuffers::map(usize::MAX, 1) }.is_none());
    }
}
