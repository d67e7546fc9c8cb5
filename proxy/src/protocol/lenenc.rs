//! Length-encoded integers and strings, read with bounds checks (input can be anything).

/// A cursor over a packet payload whose reads fail instead of panicking on short input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// Reads a length-encoded integer. `0xFB` (NULL) and `0xFF` are not integers and fail.
    pub fn lenenc_int(&mut self) -> Option<u64> {
        match self.u8()? {
            b @ 0..=0xFA => Some(u64::from(b)),
            0xFC => self
                .take(2)
                .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]]))),
            0xFD => self
                .take(3)
                .map(|b| u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16),
            0xFE => self.take(8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            }),
            _ => None,
        }
    }

    /// Reads a length-encoded string.
    pub fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc_int()?).ok()?;
        self.take(n)
    }

    /// Reads a length-encoded string or a NULL marker (`0xFB`), as in text result rows.
    pub fn lenenc_nullable(&mut self) -> Option<Option<&'a [u8]>> {
        if self.buf.first() == Some(&0xFB) {
            self.buf = &self.buf[1..];
            return Some(None);
        }
        self.lenenc_bytes().map(Some)
    }

    /// Reads bytes up to a NUL and skips the NUL; fails if there is none.
    pub fn null_terminated(&mut self) -> Option<&'a [u8]> {
        let at = self.buf.iter().position(|&b| b == 0)?;
        let s = &self.buf[..at];
        self.buf = &self.buf[at + 1..];
        Some(s)
    }

    /// Reads everything left.
    pub fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Appends a length-encoded integer.
pub fn put_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Appends a length-encoded string.
pub fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_round_trip_at_every_width() {
        for v in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_int(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.lenenc_int(), Some(v));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn short_input_fails_instead_of_panicking() {
        for bad in [
            &[0xFCu8, 1][..],
            &[0xFD, 1, 2],
            &[0xFE, 1, 2, 3],
            &[0xFF],
            &[],
        ] {
            assert_eq!(Reader::new(bad).lenenc_int(), None);
        }
        assert_eq!(Reader::new(&[5, b'a']).lenenc_bytes(), None);
        assert_eq!(Reader::new(b"abc").null_terminated(), None);
        assert_eq!(Reader::new(&[1]).u16(), None);
    }

    #[test]
    fn nullable_strings() {
        let mut r = Reader::new(&[0xFB, 2, b'h', b'i']);
        assert_eq!(r.lenenc_nullable(), Some(None));
        assert_eq!(r.lenenc_nullable(), Some(Some(&b"hi"[..])));
    }
}
