//! The Bitswap message and its protobuf codec (`bitswap/message/pb/message.proto` of boxo,
//! the reference implementation), for the three versions of the protocol:
//!
//! - 1.0.0 sends blocks as bare bytes (field 2); their CIDs are CIDv0 (dag-pb, SHA-256);
//! - 1.1.0 sends blocks with a CID prefix (field 3), so any CID version and codec;
//! - 1.2.0 adds want-have, send-dont-have and block presences (HAVE / DONT_HAVE).
//!
//! ```text
//! message Message {
//!   message Wantlist {
//!     enum WantType { Block = 0; Have = 1; }
//!     message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3;
//!                     WantType wantType = 4; bool sendDontHave = 5; }
//!     repeated Entry entries = 1; bool full = 2;
//!   }
//!   message Block { bytes prefix = 1; bytes data = 2; }
//!   enum BlockPresenceType { Have = 0; DontHave = 1; }
//!   message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
//!   Wantlist wantlist = 1;
//!   repeated bytes blocks = 2;             // 1.0.0
//!   repeated Block payload = 3;            // 1.1.0 and later
//!   repeated BlockPresence blockPresences = 4;
//!   int32 pendingBytes = 5;
//! }
//! ```
//!
//! Decoding never panics on untrusted bytes: every failure is a [`MessageError`]. Messages
//! are at most [`MAX_MESSAGE`] bytes, blocks at most [`MAX_BLOCK`], CIDs at most
//! [`MAX_CID`]; unknown fields are skipped, as protobuf requires.
//!
//! # Examples
//!
//! ```
//! use bytes::Bytes;
//! use streamspace_transport::bitswap::message::{Entry, Message, Version, WantType, Wantlist};
//! use streamspace_shard::block::{cid_of, RAW};
//!
//! let cid = cid_of(cid::Version::V1, RAW, b"hello");
//! let msg = Message {
//!     wantlist: Some(Wantlist { full: true, entries: vec![Entry::want(cid, WantType::Have)] }),
//!     ..Message::default()
//! };
//! let wire = msg.encode(Version::V1_2);
//! assert_eq!(Message::decode(Bytes::from(wire))?, msg);
//! # Ok::<(), streamspace_transport::bitswap::message::MessageError>(())
//! ```

use bytes::{BufMut, Bytes};
use cid::Cid;
use streamspace_shard::block::{DAG_PB, IDENTITY, SHA2_256, cid_of};
use streamspace_shard::wire::{self, Reader, WireError, WireType};

/// The largest message read or written: 4 MiB, as kubo and Helia bound them.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The largest block: 2 MiB (kubo's and Helia's bound too).
pub const MAX_BLOCK: usize = 2 << 20;
/// The longest CID accepted, in bytes (boxo's bound).
pub const MAX_CID: usize = 168;

/// A version of the protocol, each with its protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// `/ipfs/bitswap/1.0.0`: blocks without prefixes, CIDv0 only, no presences.
    V1_0,
    /// `/ipfs/bitswap/1.1.0`: blocks with CID prefixes.
    V1_1,
    /// `/ipfs/bitswap/1.2.0`: want-have, send-dont-have, block presences.
    V1_2,
}

impl Version {
    /// Every version, newest first (the order protocols are offered in).
    pub const ALL: [Self; 3] = [Self::V1_2, Self::V1_1, Self::V1_0];

    /// Its protocol name.
    pub const fn protocol(self) -> &'static str {
        match self {
            Self::V1_0 => "/ipfs/bitswap/1.0.0",
            Self::V1_1 => "/ipfs/bitswap/1.1.0",
            Self::V1_2 => "/ipfs/bitswap/1.2.0",
        }
    }

    /// The version a protocol name names.
    pub fn from_protocol(p: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.protocol() == p)
    }

    /// Whether it carries want-have, send-dont-have and presences.
    pub const fn has_presences(self) -> bool {
        matches!(self, Self::V1_2)
    }
}

/// What a want asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum WantType {
    /// The block itself.
    #[default]
    Block,
    /// Whether the peer has it (answered with the block itself when it is tiny).
    Have,
}

/// One entry of a wantlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The block wanted (or no longer wanted).
    pub cid: Cid,
    /// Higher first.
    pub priority: i32,
    /// Revokes an earlier want of `cid`.
    pub cancel: bool,
    /// Block or have.
    pub want_type: WantType,
    /// Answer DONT_HAVE when the block is not held (1.2.0).
    pub send_dont_have: bool,
}

impl Entry {
    /// A want of `cid` of priority 1, asking for DONT_HAVE answers.
    pub fn want(cid: Cid, want_type: WantType) -> Self {
        Self {
            cid,
            priority: 1,
            cancel: false,
            want_type,
            send_dont_have: true,
        }
    }

    /// A cancel of `cid`.
    pub fn cancel(cid: Cid) -> Self {
        Self {
            cid,
            priority: 0,
            cancel: true,
            want_type: WantType::Block,
            send_dont_have: false,
        }
    }
}

/// A wantlist: a delta (entries added and cancelled) or the full list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wantlist {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Replaces every earlier want of the sender.
    pub full: bool,
}

/// Whether a peer holds a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    /// It does.
    Have,
    /// It does not.
    DontHave,
}

/// A block's CID without its digest: enough, with the data, to name the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// CID version (0 or 1).
    pub version: u64,
    /// Its codec (multicodec).
    pub codec: u64,
    /// Its multihash function.
    pub mh_code: u64,
    /// Its digest's length.
    pub mh_len: u64,
}

impl Prefix {
    /// The prefix of `cid`.
    pub fn of(cid: &Cid) -> Self {
        Self {
            version: cid.version() as u64,
            codec: cid.codec(),
            mh_code: cid.hash().code(),
            mh_len: u64::from(cid.hash().size()),
        }
    }

    /// The prefix 1.0.0 implies: CIDv0, dag-pb, SHA-256.
    pub const V0: Self = Self {
        version: 0,
        codec: DAG_PB,
        mh_code: SHA2_256,
        mh_len: 32,
    };

    /// The CID of `data` under this prefix.
    ///
    /// # Errors
    ///
    /// [`MessageError::Unsupported`] for a hash function other than SHA-256 (or a length
    /// other than 32), a CIDv0 that is not dag-pb, or a version other than 0 and 1.
    pub fn cid_for(&self, data: &[u8]) -> Result<Cid, MessageError> {
        let version = match (self.version, self.codec) {
            (0, DAG_PB) => cid::Version::V0,
            (1, _) => cid::Version::V1,
            _ => return Err(MessageError::Unsupported(*self)),
        };
        if self.mh_code != SHA2_256 || self.mh_len != 32 {
            return Err(MessageError::Unsupported(*self));
        }
        Ok(cid_of(version, self.codec, data))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        wire::put_varint(out, self.version);
        wire::put_varint(out, self.codec);
        wire::put_varint(out, self.mh_code);
        wire::put_varint(out, self.mh_len);
    }

    fn decode(buf: &[u8], offset: usize) -> Result<Self, MessageError> {
        let mut pos = 0;
        let mut next = || -> Result<u64, MessageError> {
            match wire::uvarint(&buf[pos.min(buf.len())..], offset + pos)? {
                Some((v, n)) => {
                    pos += n;
                    Ok(v)
                }
                None => Err(WireError::Truncated {
                    offset: offset + pos,
                }
                .into()),
            }
        };
        let p = Self {
            version: next()?,
            codec: next()?,
            mh_code: next()?,
            mh_len: next()?,
        };
        Ok(p)
    }
}

/// A block in a message: its prefix and data (the CID is the prefix and the data's hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The prefix (for 1.0.0 blocks, [`Prefix::V0`]).
    pub prefix: Prefix,
    /// The block.
    pub data: Bytes,
}

/// A Bitswap message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Wants and cancels.
    pub wantlist: Option<Wantlist>,
    /// Blocks sent.
    pub blocks: Vec<Payload>,
    /// HAVE and DONT_HAVE answers (1.2.0).
    pub presences: Vec<(Cid, Presence)>,
    /// Bytes of wanted blocks the sender still has queued for the receiver.
    pub pending_bytes: i32,
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The protobuf or varint framing is broken.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A field has the wrong wire type.
    #[error("field {field} of {message} has the wrong wire type, at byte {offset}")]
    WireType {
        /// The message type.
        message: &'static str,
        /// The field number.
        field: u64,
        /// Where its key starts.
        offset: usize,
    },
    /// The message is longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes, at most {MAX_MESSAGE}")]
    TooLong(usize),
    /// A block is larger than [`MAX_BLOCK`].
    #[error("block of {0} bytes, at most {MAX_BLOCK}")]
    BlockTooLarge(usize),
    /// A CID that does not parse or is longer than [`MAX_CID`].
    #[error("invalid CID at byte {0}")]
    Cid(usize),
    /// A block whose prefix names a hash function or CID form this node does not verify.
    #[error("unsupported block prefix {0:?}")]
    Unsupported(Prefix),
    /// An enum value protobuf does not define for the field.
    #[error("unknown {what} {value} at byte {offset}")]
    Enum {
        /// The enum.
        what: &'static str,
        /// The value.
        value: u64,
        /// Where it was.
        offset: usize,
    },
}

fn expect(key: &wire::Key, want: WireType, message: &'static str) -> Result<(), MessageError> {
    if key.wire_type == want {
        Ok(())
    } else {
        Err(MessageError::WireType {
            message,
            field: key.field,
            offset: key.offset,
        })
    }
}

fn parse_cid(raw: &[u8], offset: usize) -> Result<Cid, MessageError> {
    if raw.len() > MAX_CID {
        return Err(MessageError::Cid(offset));
    }
    let cid = Cid::try_from(raw).map_err(|_| MessageError::Cid(offset))?;
    // Only a canonical encoding names the same CID twice the same way.
    if cid.to_bytes() != raw {
        return Err(MessageError::Cid(offset));
    }
    Ok(cid)
}

/// A protobuf `int32` as a varint: negative values are sign-extended to 64 bits.
fn int32(v: u64) -> i32 {
    v as i64 as i32
}

fn put_int32_field(out: &mut Vec<u8>, field: u64, v: i32) {
    wire::put_varint_field(out, field, i64::from(v) as u64);
}

impl Message {
    /// Whether the message says nothing.
    pub fn is_empty(&self) -> bool {
        self.wantlist
            .as_ref()
            .is_none_or(|w| w.entries.is_empty() && !w.full)
            && self.blocks.is_empty()
            && self.presences.is_empty()
    }

    /// The message for a peer speaking `version`: for 1.0.0 and 1.1.0, presences are left
    /// out, want-have entries become want-block and send-dont-have is dropped; for 1.0.0,
    /// blocks are sent bare (only CIDv0 blocks can be: others are left out).
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        if let Some(wl) = &self.wantlist {
            let mut w = Vec::with_capacity(wl.entries.len() * 48);
            for e in &wl.entries {
                let mut b = Vec::with_capacity(48);
                wire::put_bytes_field(&mut b, 1, &e.cid.to_bytes());
                if e.priority != 0 {
                    put_int32_field(&mut b, 2, e.priority);
                }
                if e.cancel {
                    wire::put_varint_field(&mut b, 3, 1);
                }
                if version.has_presences() {
                    if e.want_type == WantType::Have {
                        wire::put_varint_field(&mut b, 4, 1);
                    }
                    if e.send_dont_have {
                        wire::put_varint_field(&mut b, 5, 1);
                    }
                }
                wire::put_bytes_field(&mut w, 1, &b);
            }
            if wl.full {
                wire::put_varint_field(&mut w, 2, 1);
            }
            wire::put_bytes_field(&mut out, 1, &w);
        }
        for b in &self.blocks {
            if version == Version::V1_0 {
                if b.prefix == Prefix::V0 {
                    wire::put_bytes_field(&mut out, 2, &b.data);
                }
                continue;
            }
            let mut prefix = Vec::with_capacity(8);
            b.prefix.encode(&mut prefix);
            let len =
                wire::bytes_field_len(1, prefix.len()) + wire::bytes_field_len(2, b.data.len());
            wire::put_key(&mut out, 3, WireType::Len);
            wire::put_varint(&mut out, len as u64);
            wire::put_bytes_field(&mut out, 1, &prefix);
            wire::put_bytes_field(&mut out, 2, &b.data);
        }
        if version.has_presences() {
            for (cid, p) in &self.presences {
                let mut b = Vec::with_capacity(48);
                wire::put_bytes_field(&mut b, 1, &cid.to_bytes());
                if *p == Presence::DontHave {
                    wire::put_varint_field(&mut b, 2, 1);
                }
                wire::put_bytes_field(&mut out, 4, &b);
            }
        }
        if self.pending_bytes != 0 {
            put_int32_field(&mut out, 5, self.pending_bytes);
        }
        out
    }

    /// An upper bound of the encoded length, within a few bytes per field.
    pub fn encoded_len_hint(&self) -> usize {
        let wl = self
            .wantlist
            .as_ref()
            .map_or(0, |w| 8 + w.entries.len() * (MAX_CID + 24));
        let blocks: usize = self.blocks.iter().map(|b| b.data.len() + 48).sum();
        wl + blocks + self.presences.len() * (MAX_CID + 8) + 12
    }

    /// Decodes a message (any version: bare 1.0.0 blocks are read as CIDv0 blocks).
    ///
    /// # Errors
    ///
    /// [`MessageError`] for anything but a well-formed message within the bounds.
    pub fn decode(buf: Bytes) -> Result<Self, MessageError> {
        if buf.len() > MAX_MESSAGE {
            return Err(MessageError::TooLong(buf.len()));
        }
        let mut msg = Self::default();
        let mut r = Reader::new(&buf);
        while !r.is_empty() {
            let key = r.key()?;
            match key.field {
                1 => {
                    expect(&key, WireType::Len, "Message")?;
                    let at = r.offset();
                    let body = r.len_delimited()?;
                    let wl = decode_wantlist(body, at)?;
                    // Repeated occurrences of a message field merge, as protobuf says.
                    match &mut msg.wantlist {
                        Some(old) => {
                            old.entries.extend(wl.entries);
                            old.full |= wl.full;
                        }
                        None => msg.wantlist = Some(wl),
                    }
                }
                2 => {
                    expect(&key, WireType::Len, "Message")?;
                    let data = r.len_delimited()?;
                    if data.len() > MAX_BLOCK {
                        return Err(MessageError::BlockTooLarge(data.len()));
                    }
                    msg.blocks.push(Payload {
                        prefix: Prefix::V0,
                        data: buf.slice_ref(data),
                    });
                }
                3 => {
                    expect(&key, WireType::Len, "Message")?;
                    let at = r.offset();
                    let body = r.len_delimited()?;
                    msg.blocks.push(decode_block(&buf, body, at)?);
                }
                4 => {
                    expect(&key, WireType::Len, "Message")?;
                    let at = r.offset();
                    let body = r.len_delimited()?;
                    msg.presences.push(decode_presence(body, at)?);
                }
                5 => {
                    expect(&key, WireType::Varint, "Message")?;
                    msg.pending_bytes = int32(r.varint()?);
                }
                _ => r.skip(&key)?,
            }
        }
        Ok(msg)
    }
}

fn decode_wantlist(buf: &[u8], base: usize) -> Result<Wantlist, MessageError> {
    let mut wl = Wantlist::default();
    let mut r = Reader::with_base(buf, base);
    while !r.is_empty() {
        let key = r.key()?;
        match key.field {
            1 => {
                expect(&key, WireType::Len, "Wantlist")?;
                let at = r.offset();
                let body = r.len_delimited()?;
                wl.entries.push(decode_entry(body, at)?);
            }
            2 => {
                expect(&key, WireType::Varint, "Wantlist")?;
                wl.full = r.varint()? != 0;
            }
            _ => r.skip(&key)?,
        }
    }
    Ok(wl)
}

fn decode_entry(buf: &[u8], base: usize) -> Result<Entry, MessageError> {
    let mut r = Reader::with_base(buf, base);
    let mut cid = None;
    let mut e = Entry {
        cid: Cid::default(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    while !r.is_empty() {
        let key = r.key()?;
        match key.field {
            1 => {
                expect(&key, WireType::Len, "Entry")?;
                let at = r.offset();
                cid = Some(parse_cid(r.len_delimited()?, at)?);
            }
            2 => {
                expect(&key, WireType::Varint, "Entry")?;
                e.priority = int32(r.varint()?);
            }
            3 => {
                expect(&key, WireType::Varint, "Entry")?;
                e.cancel = r.varint()? != 0;
            }
            4 => {
                expect(&key, WireType::Varint, "Entry")?;
                let at = r.offset();
                e.want_type = match r.varint()? {
                    0 => WantType::Block,
                    1 => WantType::Have,
                    value => {
                        return Err(MessageError::Enum {
                            what: "want type",
                            value,
                            offset: at,
                        });
                    }
                };
            }
            5 => {
                expect(&key, WireType::Varint, "Entry")?;
                e.send_dont_have = r.varint()? != 0;
            }
            _ => r.skip(&key)?,
        }
    }
    e.cid = cid.ok_or(MessageError::Cid(base))?;
    Ok(e)
}

fn decode_block(whole: &Bytes, buf: &[u8], base: usize) -> Result<Payload, MessageError> {
    let mut r = Reader::with_base(buf, base);
    let mut prefix = None;
    let mut data: &[u8] = &[];
    while !r.is_empty() {
        let key = r.key()?;
        match key.field {
            1 => {
                expect(&key, WireType::Len, "Block")?;
                let at = r.offset();
                prefix = Some(Prefix::decode(r.len_delimited()?, at)?);
            }
            2 => {
                expect(&key, WireType::Len, "Block")?;
                data = r.len_delimited()?;
                if data.len() > MAX_BLOCK {
                    return Err(MessageError::BlockTooLarge(data.len()));
                }
            }
            _ => r.skip(&key)?,
        }
    }
    let prefix = prefix.ok_or(MessageError::Wire(WireError::Truncated { offset: base }))?;
    Ok(Payload {
        prefix,
        data: if data.is_empty() {
            Bytes::new()
        } else {
            whole.slice_ref(data)
        },
    })
}

fn decode_presence(buf: &[u8], base: usize) -> Result<(Cid, Presence), MessageError> {
    let mut r = Reader::with_base(buf, base);
    let mut cid = None;
    let mut presence = Presence::Have;
    while !r.is_empty() {
        let key = r.key()?;
        match key.field {
            1 => {
                expect(&key, WireType::Len, "BlockPresence")?;
                let at = r.offset();
                cid = Some(parse_cid(r.len_delimited()?, at)?);
            }
            2 => {
                expect(&key, WireType::Varint, "BlockPresence")?;
                let at = r.offset();
                presence = match r.varint()? {
                    0 => Presence::Have,
                    1 => Presence::DontHave,
                    value => {
                        return Err(MessageError::Enum {
                            what: "presence",
                            value,
                            offset: at,
                        });
                    }
                };
            }
            _ => r.skip(&key)?,
        }
    }
    Ok((cid.ok_or(MessageError::Cid(base))?, presence))
}

/// Whether `cid` is an identity CID (its data inline): such wants are ignored, as kubo
/// ignores them.
pub fn is_identity(cid: &Cid) -> bool {
    cid.hash().code() == IDENTITY
}

/// Writes `msg` (already encoded) behind its unsigned-varint length, as Bitswap frames
/// messages on a stream.
pub fn frame(msg: &[u8], out: &mut impl BufMut) {
    wire::put_varint(out, msg.len() as u64);
    out.put_slice(msg);
}
