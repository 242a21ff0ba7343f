//! The protobuf wire format and multiformats varints: the one reader and writer the
//! workspace's codecs share.
//!
//! dag-pb and UnixFS ([`crate::pb`]), CAR framing ([`crate::car`]), the shard exchange and
//! Bitswap messages in the transport crate all read varints and protobuf fields from
//! untrusted bytes. They do it here, so bounds checks, overflow rules and error offsets are
//! written (and fuzzed) once.
//!
//! Two kinds of varint are read:
//!
//! - **protobuf varints** ([`Reader::varint`]): at most ten bytes, the tenth holding at most
//!   one bit, as protobuf defines them;
//! - **multiformats unsigned varints** ([`uvarint`]): at most nine bytes and minimally
//!   encoded, as the [unsigned-varint spec] requires for lengths, CIDs and multicodecs.
//!
//! Errors name the byte offset where decoding failed, counted from the start of the
//! outermost buffer (see [`Reader::with_base`]).
//!
//! ```
//! use streamspace_shard::wire::{self, Reader, WireType};
//!
//! // message M { uint64 a = 1; bytes b = 2; }
//! let mut buf = Vec::new();
//! wire::put_varint_field(&mut buf, 1, 300);
//! wire::put_bytes_field(&mut buf, 2, b"hi");
//!
//! let mut r = Reader::new(&buf);
//! let k = r.key()?;
//! assert_eq!((k.field, k.wire_type), (1, WireType::Varint));
//! assert_eq!(r.varint()?, 300);
//! let k = r.key()?;
//! assert_eq!((k.field, k.wire_type), (2, WireType::Len));
//! assert_eq!(r.len_delimited()?, b"hi");
//! assert!(r.is_empty());
//! # Ok::<(), wire::WireError>(())
//! ```
//!
//! [unsigned-varint spec]: https://github.com/multiformats/unsigned-varint

use bytes::BufMut;
use std::ops::Range;

/// An error reading the protobuf wire format or a varint.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended in the middle of a field or varint.
    #[error("truncated input at byte {offset}")]
    Truncated {
        /// Byte offset of the incomplete field or varint.
        offset: usize,
    },
    /// A varint too long for its kind or overflowing 64 bits.
    #[error("invalid varint at byte {offset}")]
    BadVarint {
        /// Byte offset of the varint.
        offset: usize,
    },
    /// A multiformats varint that is not minimally encoded.
    #[error("varint at byte {offset} is not minimally encoded")]
    NotMinimal {
        /// Byte offset of the varint.
        offset: usize,
    },
    /// A field key whose field number is 0, which protobuf reserves.
    #[error("field number 0 at byte {offset}")]
    FieldZero {
        /// Byte offset of the field key.
        offset: usize,
    },
    /// A field key with a wire type protobuf does not define (3, 4 are the deprecated groups;
    /// 6 and 7 are unassigned).
    #[error("field {field} has unsupported wire type {wire_type} at byte {offset}")]
    BadWireType {
        /// Field number.
        field: u64,
        /// The wire type found.
        wire_type: u8,
        /// Byte offset of the field key.
        offset: usize,
    },
}

/// The wire types this reader accepts (groups are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireType {
    /// Wire type 0: a varint.
    Varint,
    /// Wire type 1: eight little-endian bytes.
    I64,
    /// Wire type 2: a varint length, then that many bytes.
    Len,
    /// Wire type 5: four little-endian bytes.
    I32,
}

impl WireType {
    /// The wire type's number on the wire.
    pub const fn number(self) -> u8 {
        match self {
            Self::Varint => 0,
            Self::I64 => 1,
            Self::Len => 2,
            Self::I32 => 5,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::Varint),
            1 => Some(Self::I64),
            2 => Some(Self::Len),
            5 => Some(Self::I32),
            _ => None,
        }
    }
}

/// A field key: its field number, wire type and where it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The field number (never 0).
    pub field: u64,
    /// The wire type.
    pub wire_type: WireType,
    /// Byte offset of the key.
    pub offset: usize,
}

/// A cursor over protobuf bytes, tracking its absolute offset for error reports.
///
/// Payloads are borrowed from the input; nothing is copied.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, reporting offsets from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_base(buf, 0)
    }

    /// A reader over `buf` (a nested message), reporting offsets as `base + position`.
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// The absolute offset of the next byte.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// The position of the next byte inside this reader's buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// Reads a protobuf varint (at most ten bytes, no overflow).
    pub fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.offset();
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(WireError::Truncated { offset: start });
            };
            self.pos += 1;
            let low = u64::from(byte & 0x7f);
            if i == 9 && low > 1 {
                return Err(WireError::BadVarint { offset: start });
            }
            value |= low << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::BadVarint { offset: start })
    }

    /// Reads a field key.
    pub fn key(&mut self) -> Result<Key, WireError> {
        let offset = self.offset();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(WireError::FieldZero { offset });
        }
        let n = (key & 7) as u8;
        let wire_type = WireType::from_number(n).ok_or(WireError::BadWireType {
            field,
            wire_type: n,
            offset,
        })?;
        Ok(Key {
            field,
            wire_type,
            offset,
        })
    }

    /// Reads a length-delimited payload, returning its range in this reader's buffer.
    pub fn len_range(&mut self) -> Result<Range<usize>, WireError> {
        let at = self.offset();
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::Truncated { offset: at })?;
        self.pos = end;
        Ok(start..end)
    }

    /// Reads a length-delimited payload.
    pub fn len_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let range = self.len_range()?;
        Ok(&self.buf[range])
    }

    /// Reads `n` raw bytes.
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let at = self.offset();
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated { offset: at })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads a little-endian fixed32.
    pub fn fixed32(&mut self) -> Result<u32, WireError> {
        let b = self.fixed(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian fixed64.
    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let b = self.fixed(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Skips the value of the field whose key was just read.
    pub fn skip(&mut self, key: &Key) -> Result<(), WireError> {
        match key.wire_type {
            WireType::Varint => self.varint().map(drop),
            WireType::I64 => self.fixed(8).map(drop),
            WireType::Len => self.len_range().map(drop),
            WireType::I32 => self.fixed(4).map(drop),
        }
    }
}

/// Decodes a multiformats unsigned varint from the front of `buf`, whose first byte is at
/// absolute offset `offset`.
///
/// Returns the value and the number of bytes it took, or `Ok(None)` when `buf` ends before
/// the varint does (more bytes may come). Refuses what is not the one encoding of its value:
/// non-minimal varints, and a tenth byte carrying bits beyond the 64th.
///
/// ```
/// use streamspace_shard::wire::{uvarint, WireError};
/// assert_eq!(uvarint(&[0xac, 0x02, 0xff], 0), Ok(Some((300, 2))));
/// assert_eq!(uvarint(&[0xac], 0), Ok(None));
/// assert_eq!(uvarint(&[0x81, 0x00], 7), Err(WireError::NotMinimal { offset: 7 }));
/// let too_wide = [0xf6, 0xbb, 0xc7, 0xff, 0xff, 0xff, 0xff, 0xff, 0x83, 0x2f];
/// assert_eq!(uvarint(&too_wide, 2), Err(WireError::BadVarint { offset: 2 }));
/// ```
pub fn uvarint(buf: &[u8], offset: usize) -> Result<Option<(u64, usize)>, WireError> {
    match unsigned_varint::decode::u64(buf) {
        Ok((v, rest)) => {
            let used = buf.len() - rest.len();
            // Canonical: a tenth byte may not carry bits beyond the 64th (the decoder drops
            // them), so re-encoding gives back the bytes read.
            let mut b = unsigned_varint::encode::u64_buffer();
            if unsigned_varint::encode::u64(v, &mut b) != &buf[..used] {
                return Err(WireError::BadVarint { offset });
            }
            Ok(Some((v, used)))
        }
        Err(unsigned_varint::decode::Error::Insufficient) => Ok(None),
        Err(unsigned_varint::decode::Error::NotMinimal) => Err(WireError::NotMinimal { offset }),
        Err(_) => Err(WireError::BadVarint { offset }),
    }
}

/// Appends a varint (protobuf and multiformats encode non-negative values alike).
pub fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// The number of bytes [`put_varint`] writes for `v`.
pub const fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends a field key.
pub fn put_key(buf: &mut impl BufMut, field: u64, wire_type: WireType) {
    put_varint(buf, (field << 3) | u64::from(wire_type.number()));
}

/// Appends a length-delimited field.
pub fn put_bytes_field(buf: &mut impl BufMut, field: u64, data: &[u8]) {
    put_key(buf, field, WireType::Len);
    put_varint(buf, data.len() as u64);
    buf.put_slice(data);
}

/// Appends a varint field.
pub fn put_varint_field(buf: &mut impl BufMut, field: u64, v: u64) {
    put_key(buf, field, WireType::Varint);
    put_varint(buf, v);
}

/// The encoded length of a length-delimited field of `len` bytes.
pub const fn bytes_field_len(field: u64, len: usize) -> usize {
    varint_len(field << 3) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), n);
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_refused() {
        let eleven = [0x80u8; 10];
        assert_eq!(
            Reader::new(&eleven).varint(),
            Err(WireError::BadVarint { offset: 0 })
        );
        let mut overflow = vec![0xffu8; 9];
        overflow.push(0x02);
        assert_eq!(
            Reader::new(&overflow).varint(),
            Err(WireError::BadVarint { offset: 0 })
        );
        assert_eq!(
            uvarint(&[0xff; 10], 3),
            Err(WireError::BadVarint { offset: 3 })
        );
    }

    #[test]
    fn keys_refuse_groups_and_field_zero() {
        assert_eq!(
            Reader::new(&[0x0b]).key(),
            Err(WireError::BadWireType {
                field: 1,
                wire_type: 3,
                offset: 0
            })
        );
        assert_eq!(
            Reader::new(&[0x02]).key(),
            Err(WireError::FieldZero { offset: 0 })
        );
    }

    #[test]
    fn truncation_reports_absolute_offset() {
        let mut r = Reader::with_base(&[0x0a, 0x05, 1, 2], 100);
        r.key().unwrap();
        assert_eq!(r.len_delimited(), Err(WireError::Truncated { offset: 101 }));
    }

    proptest! {
        #[test]
        fn varint_roundtrip(v in any::<u64>()) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            prop_assert_eq!(b.len(), varint_len(v));
            prop_assert_eq!(Reader::new(&b).varint(), Ok(v));
            prop_assert_eq!(uvarint(&b, 0), Ok(Some((v, b.len()))));
        }

        #[test]
        fn fields_roundtrip(fields in proptest::collection::vec(
            (1u64..(1 << 29), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..8)) {
            let mut b = Vec::new();
            for (f, v, d) in &fields {
                put_varint_field(&mut b, *f, *v);
                put_bytes_field(&mut b, *f, d);
            }
            let mut r = Reader::new(&b);
            for (f, v, d) in &fields {
                let k = r.key().unwrap();
                prop_assert_eq!((k.field, k.wire_type), (*f, WireType::Varint));
                prop_assert_eq!(r.varint().unwrap(), *v);
                let k = r.key().unwrap();
                prop_assert_eq!((k.field, k.wire_type), (*f, WireType::Len));
                prop_assert_eq!(r.len_delimited().unwrap(), &d[..]);
            }
            prop_assert!(r.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&b);
            while !r.is_empty() {
                let Ok(k) = r.key() else { break };
                if r.skip(&k).is_err() { break }
            }
            // What is accepted is the one encoding of its value.
            if let Ok(Some((v, n))) = uvarint(&b, 0) {
                let mut again = Vec::new();
                put_varint(&mut again, v);
                prop_assert_eq!(&again[..], &b[..n]);
            }
        }
    }
}
