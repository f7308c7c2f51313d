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
//! Mapping, first-touch faults and unmapping (a TLB flush on every core running the
//! process) cost more than everything else a short flow does in the stack, so a
//! reclaimed flow's mapping is kept in [`Spares`] for the next flow when few of its
//! pages are committed: at most [`MAX_SPARES`] × [`MAX_SPARE_PAGES`] pages are held
//! that way. Busier mappings are unmapped as before.
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
    /// A spare mapping of the right size is used before a new one is made.
    pub(crate) fn add_tcp_socket(
        &mut self,
        spares: &mut Spares,
        rx: usize,
        tx: usize,
        configure: impl FnOnce(&mut tcp::Socket<'static>),
    ) -> Option<SocketHandle> {
        let len = rx.checked_add(tx)?;
        let mut buffers = match spares.take(len) {
            Some(b) => b,
            None => FlowBuffers::map(len)?,
        };
        // SAFETY: the socket goes into `self.sockets` and the mapping into
        // `self.buffers` under the same handle; `remove_socket` and `Drop` remove the
        // socket before the mapping is unmapped or handed to `spares`.
        let (rx, tx) = unsafe { buffers.halves(rx) };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        configure(&mut socket);
        let handle = self.sockets.add(socket);
        self.buffers.insert(handle, buffers);
        Some(handle)
    }

    /// Removes a TCP socket, then gives its buffers to `spares` (which unmaps them
    /// unless it keeps them).
    pub(crate) fn remove_socket(&mut self, spares: &mut Spares, handle: SocketHandle) {
        drop(self.sockets.remove(handle));
        if let Some(buffers) = self.buffers.remove(&handle) {
            spares.give(buffers);
        }
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
    /// Maps `len` bytes, or `None` when `len` is 0 or the kernel refuses the mapping
    /// (out of address space or map count).
    fn map(len: usize) -> Option<Self> {
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
        Some(Self { ptr, len })
    }

    /// The mapping as a receive buffer of `rx` bytes and a send buffer of the rest
    /// (`rx` ≤ the mapping's length). A fresh mapping reads as zeros; a spare one
    /// holds what its last flow left, which smoltcp never reads before writing.
    ///
    /// # Safety
    ///
    /// The slices point into the mapping: every user of them must be gone before the
    /// `FlowBuffers` is dropped or `halves` is called again.
    unsafe fn halves(&mut self, rx: usize) -> (&'static mut [u8], &'static mut [u8]) {
        // SAFETY: `len` bytes at `ptr` are mapped readable and writable and, by the
        // caller's promise, no earlier slice of them is in use; the two halves do not
        // overlap. They stay valid until `Drop` unmaps them, which the caller orders
        // after their users.
        unsafe {
            let all = std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            all.split_at_mut(rx.min(self.len))
        }
    }

    /// Pages of the mapping that are committed (resident), or `None` if the kernel
    /// cannot say.
    fn resident_pages(&self) -> Option<usize> {
        let page = page_size();
        let mut vec = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: `ptr` is page-aligned (from mmap) and `len` bytes are mapped; `vec`
        // has one byte per page of that range.
        let r = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        (r == 0).then(|| vec.iter().filter(|b| **b & 1 == 1).count())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// Most mappings kept for reuse.
pub(crate) const MAX_SPARES: usize = 64;
/// A reclaimed mapping with more committed pages than this is unmapped, not kept: it
/// moved enough data to amortise its mapping, and keeping it would hold its memory.
pub(crate) const MAX_SPARE_PAGES: usize = 8;

/// Mappings of reclaimed flows, kept for the next flows.
#[derive(Debug, Default)]
pub(crate) struct Spares(Vec<FlowBuffers>);

impl Spares {
    /// A spare mapping of exactly `len` bytes.
    fn take(&mut self, len: usize) -> Option<FlowBuffers> {
        let i = self.0.iter().rposition(|b| b.len == len)?;
        Some(self.0.swap_remove(i))
    }

    /// Keeps `buffers` if there is room and few of its pages are committed; else
    /// unmaps it. Its slices' users must be gone.
    fn give(&mut self, buffers: FlowBuffers) {
        if self.0.len() < MAX_SPARES
            && buffers
                .resident_pages()
                .is_some_and(|n| n <= MAX_SPARE_PAGES)
        {
            self.0.push(buffers);
        }
    }

    /// Mappings kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
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
        let mut map = FlowBuffers::map(8192 + 4096).unwrap();
        // SAFETY: the slices are not used after the mapping is dropped.
        let (rx, tx) = unsafe { map.halves(8192) };
        assert_eq!((rx.len(), tx.len()), (8192, 4096));
        assert!(rx.iter().chain(tx.iter()).all(|b| *b == 0));
        rx.fill(1);
        tx.fill(2);
        assert!(rx.iter().all(|b| *b == 1) && tx.iter().all(|b| *b == 2));
        drop(map);
    }

    #[test]
    fn empty_or_overflowing_sizes_are_refused() {
        assert!(FlowBuffers::map(0).is_none());
        assert!(FlowBuffers::map(usize::MAX).is_none());
        let mut shard = crate::stack::Shard::new();
        let mut spares = Spares::default();
        assert!(
            shard
                .add_tcp_socket(&mut spares, usize::MAX, 1, |_| {})
                .is_none()
        );
    }

    #[test]
    fn committed_pages_are_counted() {
        let page = page_size();
        let mut map = FlowBuffers::map(64 * page).unwrap();
        assert_eq!(map.resident_pages(), Some(0));
        // SAFETY: the slices are not used after the mapping is dropped.
        let (rx, tx) = unsafe { map.halves(32 * page) };
        rx[0] = 1;
        rx[5 * page] = 1;
        tx[tx.len() - 1] = 1;
        assert_eq!(map.resident_pages(), Some(3));
    }

    #[test]
    fn spares_keep_lightly_used_mappings_of_the_asked_size_only() {
        let page = page_size();
        let mut spares = Spares::default();
        let light = FlowBuffers::map(16 * page).unwrap();
        let light_ptr = light.ptr;
        spares.give(light);
        let mut busy = FlowBuffers::map(16 * page).unwrap();
        // SAFETY: the slices are not used after `busy` is handed over.
        let (rx, _) = unsafe { busy.halves(16 * page) };
        rx.fill(7);
        spares.give(busy);
        assert_eq!(
            spares.len(),
            1,
            "a mapping with 16 committed pages is unmapped"
        );
        assert!(spares.take(8 * page).is_none(), "wrong size");
        let again = spares.take(16 * page).unwrap();
        assert_eq!(again.ptr, light_ptr);
        assert_eq!(spares.len(), 0);
        for _ in 0..MAX_SPARES + 3 {
            spares.give(FlowBuffers::map(page).unwrap());
        }
        assert_eq!(spares.len(), MAX_SPARES);
    }
}
