//! Checked big-endian reading over untrusted bytes (STYLE.md §5): every read checks the
//! remaining length first, so parsing never panics; "too short" is a `DecodeError`.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;

/// A cursor over a `Bytes` buffer whose slices share the buffer (no copies).
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        match n.checked_sub(self.buf.len()) {
            Some(needed) if needed > 0 => Err(DecodeError::Truncated { needed }),
            _ => Ok(()),
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.buf.copy_to_slice(&mut out);
        Ok(out)
    }

    /// Skip a run of zero bytes (padding) and return how many were skipped.
    pub(crate) fn skip_zeros(&mut self) -> usize {
        let n = self.buf.iter().take_while(|b| **b == 0).count();
        self.buf.advance(n);
        n
    }

    /// Fail if anything is left.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}
