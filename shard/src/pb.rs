//! dag-pb and UnixFS protobuf codecs.
//!
//! Both formats are small, fixed protobuf schemas. They are encoded and decoded here by hand
//! rather than through a generated protobuf library for three reasons: dag-pb requires a strict,
//! canonical field order that generic decoders do not check, every error must name the byte
//! offset where it happened, and the decoder must borrow payloads from the input [`Bytes`]
//! without copying (leaves are up to 1 MiB and are read on every export).
//!
//! The schemas, from the [dag-pb spec] and the [UnixFS spec]:
//!
//! ```text
//! message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
//! message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }   // Links encoded first
//! message Data {
//!   enum DataType { Raw = 0; Directory = 1; File = 2; Metadata = 3; Symlink = 4; HAMTShard = 5; }
//!   required DataType Type = 1; optional bytes Data = 2; optional uint64 filesize = 3;
//!   repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
//!   optional uint32 mode = 7; optional UnixTime mtime = 8;
//! }
//! message UnixTime { required int64 Seconds = 1; optional fixed32 FractionalNanoseconds = 2; }
//! ```
//!
//! [dag-pb spec]: https://ipld.io/specs/codecs/dag-pb/spec/
//! [UnixFS spec]: https://specs.ipfs.tech/unixfs/

use crate::wire::{self, WireError, WireType, put_varint, varint_len};
use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;

/// An error decoding a dag-pb node or its UnixFS payload.
///
/// `offset` is the byte offset inside the block where decoding failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PbError {
    /// The input ended in the middle of a field.
    #[error("truncated protobuf at byte {offset}")]
    Truncated {
        /// Byte offset of the incomplete field.
        offset: usize,
    },
    /// A varint was longer than ten bytes or overflowed 64 bits.
    #[error("invalid varint at byte {offset}")]
    BadVarint {
        /// Byte offset of the varint.
        offset: usize,
    },
    /// A field had a wire type its schema does not allow.
    #[error("field {field} has wire type {wire_type}, expected {expected}, at byte {offset}")]
    WrongWireType {
        /// Field number.
        field: u64,
        /// Wire type found.
        wire_type: u8,
        /// Wire type the schema requires.
        expected: u8,
        /// Byte offset of the field key.
        offset: usize,
    },
    /// A field number the schema does not define.
    #[error("unexpected field {field} in {message} at byte {offset}")]
    UnknownField {
        /// Field number.
        field: u64,
        /// Message being decoded.
        message: &'static str,
        /// Byte offset of the field key.
        offset: usize,
    },
    /// Fields appear out of the canonical dag-pb order, or a singular field repeats.
    #[error("field {field} of {message} out of order or repeated at byte {offset}")]
    NonCanonical {
        /// Field number.
        field: u64,
        /// Message being decoded.
        message: &'static str,
        /// Byte offset of the field key.
        offset: usize,
    },
    /// A PBLink without its required Hash field.
    #[error("link {index} has no Hash")]
    MissingHash {
        /// Index of the link in the node.
        index: usize,
    },
    /// A link hash that is not a valid CID.
    #[error("link {index} has an invalid CID")]
    BadCid {
        /// Index of the link in the node.
        index: usize,
    },
    /// A link name that is not UTF-8.
    #[error("link {index} has a name that is not UTF-8")]
    BadName {
        /// Index of the link in the node.
        index: usize,
    },
    /// UnixFS Data without its required Type field.
    #[error("UnixFS data has no Type")]
    MissingType,
    /// UnixFS Type outside the defined enum.
    #[error("unknown UnixFS type {0}")]
    UnknownType(u64),
    /// A dag-pb node with no Data where UnixFS requires it.
    #[error("dag-pb node carries no UnixFS data")]
    NoData,
}

const WT_VARINT: u8 = WireType::Varint.number();
const WT_LEN: u8 = WireType::Len.number();
const WT_I32: u8 = WireType::I32.number();

impl From<WireError> for PbError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated { offset } => PbError::Truncated { offset },
            WireError::FieldZero { offset } => PbError::UnknownField {
                field: 0,
                message: "protobuf",
                offset,
            },
            WireError::BadWireType {
                field,
                wire_type,
                offset,
            } => PbError::WrongWireType {
                field,
                wire_type,
                expected: WT_LEN,
                offset,
            },
            WireError::BadVarint { offset } | WireError::NotMinimal { offset } => {
                PbError::BadVarint { offset }
            }
        }
    }
}

/// The workspace's protobuf reader ([`crate::wire::Reader`]) with this module's error type.
struct Reader<'a>(wire::Reader<'a>);

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self(wire::Reader::with_base(buf, base))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn varint(&mut self) -> Result<u64, PbError> {
        Ok(self.0.varint()?)
    }

    /// Reads a field key, returning (field number, wire type, offset of the key).
    fn key(&mut self) -> Result<(u64, u8, usize), PbError> {
        let k = self.0.key()?;
        Ok((k.field, k.wire_type.number(), k.offset))
    }

    /// Reads a length-delimited payload, returning its range in the buffer.
    fn len_delimited(&mut self) -> Result<std::ops::Range<usize>, PbError> {
        Ok(self.0.len_range()?)
    }

    fn skip(&mut self, wire_type: u8, field: u64, at: usize) -> Result<(), PbError> {
        let wire_type = match wire_type {
            0 => WireType::Varint,
            1 => WireType::I64,
            2 => WireType::Len,
            5 => WireType::I32,
            other => {
                return Err(PbError::WrongWireType {
                    field,
                    wire_type: other,
                    expected: WT_LEN,
                    offset: at,
                });
            }
        };
        let key = wire::Key {
            field,
            wire_type,
            offset: at,
        };
        Ok(self.0.skip(&key)?)
    }

    fn fixed(&mut self, n: usize) -> Result<&'a [u8], PbError> {
        Ok(self.0.fixed(n)?)
    }
}

fn expect_wt(field: u64, got: u8, expected: u8, offset: usize) -> Result<(), PbError> {
    if got == expected {
        Ok(())
    } else {
        Err(PbError::WrongWireType {
            field,
            wire_type: got,
            expected,
            offset,
        })
    }
}

fn put_key(buf: &mut impl BufMut, field: u64, wire_type: u8) {
    put_varint(buf, (field << 3) | u64::from(wire_type));
}

fn put_bytes_field(buf: &mut impl BufMut, field: u64, data: &[u8]) {
    wire::put_bytes_field(buf, field, data);
}

/// One link of a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The CID the link points to.
    pub cid: Cid,
    /// The link name (directory entry name; empty for file chunks).
    pub name: Option<String>,
    /// Cumulative size of the linked DAG in bytes, as kubo computes it.
    pub tsize: Option<u64>,
}

impl PbLink {
    /// A link with a name and cumulative size, as importers write them.
    pub fn new(cid: Cid, name: impl Into<String>, tsize: u64) -> Self {
        Self {
            cid,
            name: Some(name.into()),
            tsize: Some(tsize),
        }
    }

    fn encoded_len(&self) -> usize {
        let hash = self.cid.encoded_len();
        let mut n = 1 + varint_len(hash as u64) + hash;
        if let Some(name) = &self.name {
            n += 1 + varint_len(name.len() as u64) + name.len();
        }
        if let Some(t) = self.tsize {
            n += 1 + varint_len(t);
        }
        n
    }
}

/// A dag-pb node: links (in the order given) and optional data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PbNode {
    /// The node's links.
    pub links: Vec<PbLink>,
    /// The node's payload; for UnixFS, an encoded [`UnixFsData`].
    pub data: Option<Bytes>,
}

impl PbNode {
    /// Encodes the node in canonical dag-pb form (links first, then data).
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_shard::pb::PbNode;
    /// let node = PbNode { links: vec![], data: Some(bytes::Bytes::from_static(b"\x08\x01")) };
    /// assert_eq!(&node.encode()[..], b"\x0a\x02\x08\x01");
    /// assert_eq!(PbNode::decode(node.encode()).unwrap(), node);
    /// ```
    pub fn encode(&self) -> Bytes {
        let mut size = 0;
        for l in &self.links {
            let n = l.encoded_len();
            size += 1 + varint_len(n as u64) + n;
        }
        if let Some(d) = &self.data {
            size += 1 + varint_len(d.len() as u64) + d.len();
        }
        let mut buf = BytesMut::with_capacity(size);
        let mut cid_buf = Vec::with_capacity(64);
        for l in &self.links {
            put_key(&mut buf, 2, WT_LEN);
            put_varint(&mut buf, l.encoded_len() as u64);
            cid_buf.clear();
            // Writing into a Vec cannot fail.
            let _ = l.cid.write_bytes(&mut cid_buf);
            put_bytes_field(&mut buf, 1, &cid_buf);
            if let Some(name) = &l.name {
                put_bytes_field(&mut buf, 2, name.as_bytes());
            }
            if let Some(t) = l.tsize {
                put_key(&mut buf, 3, WT_VARINT);
                put_varint(&mut buf, t);
            }
        }
        if let Some(d) = &self.data {
            put_bytes_field(&mut buf, 1, d);
        }
        buf.freeze()
    }

    /// Decodes a dag-pb node strictly: fields in canonical order, no unknown fields.
    ///
    /// The returned data borrows from `block` without copying.
    ///
    /// # Errors
    ///
    /// A [`PbError`] naming the offending byte offset.
    pub fn decode(block: Bytes) -> Result<Self, PbError> {
        let mut r = Reader::new(&block, 0);
        let mut links = Vec::new();
        let mut data = None;
        while !r.is_empty() {
            let (field, wt, at) = r.key()?;
            match field {
                2 => {
                    expect_wt(field, wt, WT_LEN, at)?;
                    if data.is_some() {
                        return Err(PbError::NonCanonical {
                            field,
                            message: "PBNode",
                            offset: at,
                        });
                    }
                    let range = r.len_delimited()?;
                    let index = links.len();
                    links.push(decode_link(&block[range.clone()], range.start, index)?);
                }
                1 => {
                    expect_wt(field, wt, WT_LEN, at)?;
                    if data.is_some() {
                        return Err(PbError::NonCanonical {
                            field,
                            message: "PBNode",
                            offset: at,
                        });
                    }
                    let range = r.len_delimited()?;
                    data = Some(block.slice(range));
                }
                _ => {
                    return Err(PbError::UnknownField {
                        field,
                        message: "PBNode",
                        offset: at,
                    });
                }
            }
        }
        Ok(Self { links, data })
    }
}

fn decode_link(buf: &[u8], base: usize, index: usize) -> Result<PbLink, PbError> {
    let mut r = Reader::new(buf, base);
    let mut last = 0;
    let mut cid = None;
    let mut name = None;
    let mut tsize = None;
    while !r.is_empty() {
        let (field, wt, at) = r.key()?;
        if field <= last {
            return Err(PbError::NonCanonical {
                field,
                message: "PBLink",
                offset: at,
            });
        }
        last = field;
        match field {
            1 => {
                expect_wt(field, wt, WT_LEN, at)?;
                let range = r.len_delimited()?;
                let bytes = &buf[range];
                let parsed = Cid::try_from(bytes).map_err(|_| PbError::BadCid { index })?;
                // Reject trailing garbage after the CID.
                if parsed.encoded_len() != bytes.len() {
                    return Err(PbError::BadCid { index });
                }
                cid = Some(parsed);
            }
            2 => {
                expect_wt(field, wt, WT_LEN, at)?;
                let range = r.len_delimited()?;
                let s = std::str::from_utf8(&buf[range]).map_err(|_| PbError::BadName { index })?;
                name = Some(s.to_owned());
            }
            3 => {
                expect_wt(field, wt, WT_VARINT, at)?;
                tsize = Some(r.varint()?);
            }
            _ => {
                return Err(PbError::UnknownField {
                    field,
                    message: "PBLink",
                    offset: at,
                });
            }
        }
    }
    Ok(PbLink {
        cid: cid.ok_or(PbError::MissingHash { index })?,
        name,
        tsize,
    })
}

/// The UnixFS node type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// Raw bytes (legacy leaf type; kubo's trickle layout still writes it).
    Raw,
    /// A directory whose entries are the node's links.
    Directory,
    /// A file or a part of one.
    File,
    /// Metadata (unused by current importers).
    Metadata,
    /// A symbolic link; the target is in `data`.
    Symlink,
    /// A node of a HAMT-sharded directory.
    HamtShard,
}

impl DataType {
    fn from_u64(v: u64) -> Result<Self, PbError> {
        Ok(match v {
            0 => Self::Raw,
            1 => Self::Directory,
            2 => Self::File,
            3 => Self::Metadata,
            4 => Self::Symlink,
            5 => Self::HamtShard,
            other => return Err(PbError::UnknownType(other)),
        })
    }

    fn as_u64(self) -> u64 {
        match self {
            Self::Raw => 0,
            Self::Directory => 1,
            Self::File => 2,
            Self::Metadata => 3,
            Self::Symlink => 4,
            Self::HamtShard => 5,
        }
    }
}

/// The UnixFS `Data` message carried in a dag-pb node's data field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixFsData {
    /// Node type.
    pub kind: DataType,
    /// Inline bytes (file content, symlink target, HAMT bitfield).
    pub data: Option<Bytes>,
    /// Total file size below this node.
    pub filesize: Option<u64>,
    /// File size below each link, in link order.
    pub blocksizes: Vec<u64>,
    /// HAMT hash function multicode.
    pub hash_type: Option<u64>,
    /// HAMT fanout.
    pub fanout: Option<u64>,
    /// POSIX mode bits, when recorded.
    pub mode: Option<u32>,
    /// Modification time (seconds, nanoseconds), when recorded.
    pub mtime: Option<(i64, Option<u32>)>,
}

impl UnixFsData {
    /// A node of `kind` with every optional field empty.
    pub fn new(kind: DataType) -> Self {
        Self {
            kind,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
            mode: None,
            mtime: None,
        }
    }

    /// Encodes in field order, as kubo and the JS importer do.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(
            16 + self.data.as_ref().map_or(0, Bytes::len) + self.blocksizes.len() * 5,
        );
        put_key(&mut buf, 1, WT_VARINT);
        put_varint(&mut buf, self.kind.as_u64());
        if let Some(d) = &self.data {
            put_bytes_field(&mut buf, 2, d);
        }
        if let Some(s) = self.filesize {
            put_key(&mut buf, 3, WT_VARINT);
            put_varint(&mut buf, s);
        }
        for &b in &self.blocksizes {
            put_key(&mut buf, 4, WT_VARINT);
            put_varint(&mut buf, b);
        }
        if let Some(h) = self.hash_type {
            put_key(&mut buf, 5, WT_VARINT);
            put_varint(&mut buf, h);
        }
        if let Some(f) = self.fanout {
            put_key(&mut buf, 6, WT_VARINT);
            put_varint(&mut buf, f);
        }
        if let Some(m) = self.mode {
            put_key(&mut buf, 7, WT_VARINT);
            put_varint(&mut buf, u64::from(m));
        }
        if let Some((secs, nanos)) = self.mtime {
            let mut inner = BytesMut::new();
            put_key(&mut inner, 1, WT_VARINT);
            put_varint(&mut inner, secs as u64);
            if let Some(n) = nanos {
                put_key(&mut inner, 2, WT_I32);
                inner.put_u32_le(n);
            }
            put_bytes_field(&mut buf, 8, &inner);
        }
        buf.freeze()
    }

    /// Decodes a UnixFS `Data` message; `data` borrows from `bytes`.
    ///
    /// Protobuf allows fields in any order and `blocksizes` packed or not; both are accepted.
    ///
    /// # Errors
    ///
    /// A [`PbError`] naming the offending byte offset within `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Self, PbError> {
        let mut r = Reader::new(bytes, 0);
        let mut kind = None;
        let mut out = Self::new(DataType::Raw);
        while !r.is_empty() {
            let (field, wt, at) = r.key()?;
            match field {
                1 => {
                    expect_wt(field, wt, WT_VARINT, at)?;
                    kind = Some(DataType::from_u64(r.varint()?)?);
                }
                2 => {
                    expect_wt(field, wt, WT_LEN, at)?;
                    out.data = Some(bytes.slice(r.len_delimited()?));
                }
                3 => {
                    expect_wt(field, wt, WT_VARINT, at)?;
                    out.filesize = Some(r.varint()?);
                }
                4 => match wt {
                    WT_VARINT => out.blocksizes.push(r.varint()?),
                    WT_LEN => {
                        let range = r.len_delimited()?;
                        let mut packed = Reader::new(&bytes[range.clone()], range.start);
                        while !packed.is_empty() {
                            out.blocksizes.push(packed.varint()?);
                        }
                    }
                    other => {
                        return Err(PbError::WrongWireType {
                            field,
                            wire_type: other,
                            expected: WT_VARINT,
                            offset: at,
                        });
                    }
                },
                5 => {
                    expect_wt(field, wt, WT_VARINT, at)?;
                    out.hash_type = Some(r.varint()?);
                }
                6 => {
                    expect_wt(field, wt, WT_VARINT, at)?;
                    out.fanout = Some(r.varint()?);
                }
                7 => {
                    expect_wt(field, wt, WT_VARINT, at)?;
                    out.mode = Some(r.varint()? as u32);
                }
                8 => {
                    expect_wt(field, wt, WT_LEN, at)?;
                    let range = r.len_delimited()?;
                    let mut t = Reader::new(&bytes[range.clone()], range.start);
                    let mut secs = 0i64;
                    let mut nanos = None;
                    while !t.is_empty() {
                        let (f, w, a) = t.key()?;
                        match f {
                            1 => {
                                expect_wt(f, w, WT_VARINT, a)?;
                                secs = t.varint()? as i64;
                            }
                            2 => {
                                expect_wt(f, w, WT_I32, a)?;
                                let b = t.fixed(4)?;
                                nanos = Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                            }
                            _ => t.skip(w, f, a)?,
                        }
                    }
                    out.mtime = Some((secs, nanos));
                }
                // Unknown fields in UnixFS are skipped, as protobuf readers do.
                _ => r.skip(wt, field, at)?,
            }
        }
        out.kind = kind.ok_or(PbError::MissingType)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut r = Reader::new(&b, 0);
            assert_eq!(r.varint().unwrap(), v);
        }
    }

    #[test]
    fn rejects_overlong_varint() {
        let b = [0xffu8; 11];
        assert_eq!(
            Reader::new(&b, 0).varint(),
            Err(PbError::BadVarint { offset: 0 })
        );
    }

    #[test]
    fn rejects_data_before_links() {
        // Data (field 1) then a link (field 2) is not canonical.
        let bytes = Bytes::from_static(b"\x0a\x00\x12\x00");
        assert!(matches!(
            PbNode::decode(bytes),
            Err(PbError::NonCanonical { field: 2, .. })
        ));
    }

    #[test]
    fn link_without_hash() {
        let bytes = Bytes::from_static(b"\x12\x02\x18\x01");
        assert_eq!(
            PbNode::decode(bytes),
            Err(PbError::MissingHash { index: 0 })
        );
    }

    #[test]
    fn truncated_reports_offset() {
        let bytes = Bytes::from_static(b"\x0a\x05\x08");
        assert_eq!(PbNode::decode(bytes), Err(PbError::Truncated { offset: 1 }));
    }

    #[test]
    fn unixfs_roundtrip_with_mtime() {
        let mut d = UnixFsData::new(DataType::File);
        d.data = Some(Bytes::from_static(b"abc"));
        d.filesize = Some(3);
        d.blocksizes = vec![1, 2];
        d.mode = Some(0o644);
        d.mtime = Some((-5, Some(7)));
        assert_eq!(UnixFsData::decode(&d.encode()).unwrap(), d);
    }
}
