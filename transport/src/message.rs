//! The shard exchange protocol's messages and their encoding.
//!
//! Every request opens a stream (`/streamspace/exchange/1.1.0`) carrying one request and one
//! response, each framed as a 4-byte big-endian length followed by the message. Messages are
//! bounded ([`MAX_MESSAGE`]) and so are their lists ([`MAX_WANT`]); decoding is strict (no
//! trailing bytes, no unknown tags) and errors say what was wrong and at which offset.
//!
//! ```text
//! request  = 0x01 want   root? cids        ask for blocks (root names the content, for demand)
//!          | 0x02 have   root? cids        ask which of these the peer holds
//!          | 0x03 status                   ask the peer's tier, spare capacity and roots
//!          | 0x04 payment data             hand the peer a payment (a receipt), opaque here
//!          | 0x05 cancel cids              blocks asked for earlier and no longer wanted
//! response = 0x81 blocks (cid data)* missing-cids deferred-cids
//!          | 0x82 haves  count bitmap
//!          | 0x83 status tier capacity roots
//!          | 0x84 refused reason retry-after-ms
//!          | 0x85 accepted                 the payment was taken
//! root?    = 0x00 | 0x01 cid
//! cids     = varint n (≤ MAX_WANT), then n × cid
//! cid      = varint length, CID bytes
//! data     = varint length (≤ MAX_BLOCK_SIZE; ≤ MAX_PAYMENT in a payment), bytes
//! ```
//!
//! Blocks, have lists and status are kept apart from the framing so a Bitswap 1.2 codec can
//! later map its wantlist entries and block presences onto the same [`Request`] and
//! [`Response`].

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use streamspace_shard::block::MAX_BLOCK_SIZE;
use streamspace_shard::wire;

/// Most CIDs in one want or have list.
pub const MAX_WANT: usize = 64;
/// Most block bytes a server puts in one response; the rest of a want list is deferred.
pub const MAX_RESPONSE_DATA: usize = 4 * 1024 * 1024;
/// Largest encoded message (a full response plus its CIDs).
pub const MAX_MESSAGE: usize = MAX_RESPONSE_DATA + MAX_BLOCK_SIZE + 4 * MAX_WANT * 80 + 64;
/// Largest payment message (receipts are 185 bytes).
pub const MAX_PAYMENT: usize = 1024;
/// Most roots a status lists.
pub const MAX_STATUS_ROOTS: usize = 256;
/// Longest CID accepted (a CIDv1 with a 64-byte digest needs 70).
const MAX_CID_LEN: usize = 128;

/// The tier a node announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Fast links; replicates content in demand to other Tier-1 nodes.
    Tier1,
    /// Near viewers; caches what they ask for.
    Edge,
}

/// Why a peer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The metering hook paused service (a receipt is due, say).
    Paused,
    /// The metering hook refused service.
    Refused,
    /// Too many requests in progress.
    Overloaded,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Send these blocks.
    Want {
        /// The content they belong to, if the asker says.
        root: Option<Cid>,
        /// Blocks wanted, in the order wanted.
        cids: Vec<Cid>,
    },
    /// Which of these blocks do you hold?
    Have {
        /// The content they belong to, if the asker says.
        root: Option<Cid>,
        /// Blocks asked about.
        cids: Vec<Cid>,
    },
    /// Tier, spare capacity and roots held.
    Status,
    /// A payment for shards served (a signed receipt), handed to the peer's metering hook.
    Payment {
        /// The payment, opaque to the transport.
        data: Bytes,
    },
    /// Blocks asked for earlier (another peer sent them first): not to be sent if not sent
    /// yet. Answered with [`Response::Accepted`].
    Cancel {
        /// The blocks no longer wanted.
        cids: Vec<Cid>,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Blocks sent, blocks not held, blocks left for a later request (response full).
    Blocks {
        /// Blocks, each to be verified against its CID by the receiver.
        blocks: Vec<(Cid, Bytes)>,
        /// Wanted blocks the peer does not hold.
        missing: Vec<Cid>,
        /// Wanted blocks that did not fit in this response.
        deferred: Vec<Cid>,
        /// Wanted blocks not sent because the asker cancelled them while the answer was
        /// being prepared (so that a cancel is seen to have taken effect).
        cancelled: Vec<Cid>,
    },
    /// One bit per CID asked about, in order: held or not.
    Haves {
        /// Whether each block is held.
        have: Vec<bool>,
    },
    /// The peer's tier, spare capacity in bytes and some roots it holds.
    Status {
        /// Its tier.
        tier: Tier,
        /// Bytes it can still store.
        capacity: u64,
        /// Roots it holds (at most [`MAX_STATUS_ROOTS`]).
        roots: Vec<Cid>,
    },
    /// The payment was taken.
    Accepted,
    /// Not served.
    Refused {
        /// Why.
        reason: RefusalReason,
        /// When to ask again, in milliseconds.
        retry_after_ms: u64,
    },
}

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The message ended early.
    #[error("message truncated at byte {offset}: {what} expected")]
    Truncated {
        /// Where.
        offset: usize,
        /// What was expected.
        what: &'static str,
    },
    /// An unknown message or field tag.
    #[error("unknown {what} tag {tag:#04x} at byte {offset}")]
    Tag {
        /// Where.
        offset: usize,
        /// What kind of tag.
        what: &'static str,
        /// The tag.
        tag: u8,
    },
    /// A length or count over its limit.
    #[error("{what} of {len} at byte {offset} is over the limit of {max}")]
    TooLong {
        /// Where.
        offset: usize,
        /// What.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A malformed varint.
    #[error("malformed varint at byte {offset}")]
    Varint {
        /// Where.
        offset: usize,
    },
    /// A CID that does not parse.
    #[error("malformed CID at byte {offset}: {reason}")]
    Cid {
        /// Where.
        offset: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// Bytes after the end of the message.
    #[error("{extra} trailing bytes after the message")]
    Trailing {
        /// How many.
        extra: usize,
    },
}

struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes) -> Self {
        Self { buf, at: 0 }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MessageError> {
        let b = *self.buf.get(self.at).ok_or(MessageError::Truncated {
            offset: self.at,
            what,
        })?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, MessageError> {
        match wire::uvarint(&self.buf[self.at..], self.at) {
            Ok(Some((v, used))) => {
                self.at += used;
                Ok(v)
            }
            Ok(None) => Err(MessageError::Truncated {
                offset: self.at,
                what,
            }),
            Err(_) => Err(MessageError::Varint { offset: self.at }),
        }
    }

    fn len(&mut self, what: &'static str, max: usize) -> Result<usize, MessageError> {
        let offset = self.at;
        let len = self.varint(what)?;
        match usize::try_from(len) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(MessageError::TooLong {
                offset,
                what,
                len,
                max,
            }),
        }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, MessageError> {
        if self.buf.len() - self.at < n {
            return Err(MessageError::Truncated {
                offset: self.buf.len(),
                what,
            });
        }
        let b = self.buf.slice(self.at..self.at + n);
        self.at += n;
        Ok(b)
    }

    fn cid(&mut self) -> Result<Cid, MessageError> {
        let n = self.len("CID length", MAX_CID_LEN)?;
        let offset = self.at;
        let b = self.bytes(n, "CID")?;
        let cid = Cid::try_from(&b[..]).map_err(|e| MessageError::Cid {
            offset,
            reason: e.to_string(),
        })?;
        // Canonical: what we re-encode must be what was sent (no trailing bytes, no varint
        // with bits past the 64th).
        if cid.to_bytes() != b {
            return Err(MessageError::Cid {
                offset,
                reason: "not in canonical form".into(),
            });
        }
        Ok(cid)
    }

    fn cids(&mut self, max: usize) -> Result<Vec<Cid>, MessageError> {
        let n = self.len("CID count", max)?;
        (0..n).map(|_| self.cid()).collect()
    }

    fn finish(self) -> Result<(), MessageError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(MessageError::Trailing { extra }),
        }
    }
}

fn put_varint(out: &mut BytesMut, v: u64) {
    wire::put_varint(out, v);
}

fn put_cid(out: &mut BytesMut, cid: &Cid) {
    let b = cid.to_bytes();
    put_varint(out, b.len() as u64);
    out.put_slice(&b);
}

fn put_cids(out: &mut BytesMut, cids: &[Cid]) {
    put_varint(out, cids.len() as u64);
    for c in cids {
        put_cid(out, c);
    }
}

impl Request {
    /// Encodes the request (without the length frame).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Self::Want { root, cids } | Self::Have { root, cids } => {
                out.put_u8(if matches!(self, Self::Want { .. }) {
                    0x01
                } else {
                    0x02
                });
                match root {
                    None => out.put_u8(0),
                    Some(r) => {
                        out.put_u8(1);
                        put_cid(&mut out, r);
                    }
                }
                put_cids(&mut out, cids);
            }
            Self::Status => out.put_u8(0x03),
            Self::Payment { data } => {
                out.put_u8(0x04);
                put_varint(&mut out, data.len() as u64);
                out.put_slice(data);
            }
            Self::Cancel { cids } => {
                out.put_u8(0x05);
                put_cids(&mut out, cids);
            }
        }
        out.freeze()
    }

    /// Decodes a request.
    ///
    /// # Errors
    ///
    /// [`MessageError`] for anything but one well-formed request within the limits.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_transport::message::Request;
    /// let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".parse()?;
    /// let want = Request::Want { root: None, cids: vec![cid] };
    /// assert_eq!(Request::decode(want.encode())?, want);
    /// assert!(Request::decode(bytes::Bytes::from_static(&[0x01, 0x00, 0x41])).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode(buf: Bytes) -> Result<Self, MessageError> {
        let mut r = Reader::new(&buf);
        let req = match r.u8("message tag")? {
            tag @ (0x01 | 0x02) => {
                let root = match r.u8("root flag")? {
                    0 => None,
                    1 => Some(r.cid()?),
                    tag => {
                        return Err(MessageError::Tag {
                            offset: r.at - 1,
                            what: "root flag",
                            tag,
                        });
                    }
                };
                let cids = r.cids(MAX_WANT)?;
                if tag == 0x01 {
                    Self::Want { root, cids }
                } else {
                    Self::Have { root, cids }
                }
            }
            0x03 => Self::Status,
            0x04 => {
                let n = r.len("payment length", MAX_PAYMENT)?;
                Self::Payment {
                    data: r.bytes(n, "payment")?,
                }
            }
            0x05 => Self::Cancel {
                cids: r.cids(MAX_WANT)?,
            },
            tag => {
                return Err(MessageError::Tag {
                    offset: 0,
                    what: "request",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// The encoding in pieces whose concatenation is [`Response::encode`]: blocks' bytes are
    /// the blocks themselves, not copies, so that an answer is written without a second
    /// buffer of its size.
    pub fn encode_parts(&self) -> Vec<Bytes> {
        let Self::Blocks {
            blocks,
            missing,
            deferred,
            cancelled,
        } = self
        else {
            return vec![self.encode()];
        };
        let mut parts = Vec::with_capacity(2 * blocks.len() + 2);
        let mut head = BytesMut::new();
        head.put_u8(0x81);
        put_varint(&mut head, blocks.len() as u64);
        for (cid, data) in blocks {
            put_cid(&mut head, cid);
            put_varint(&mut head, data.len() as u64);
            parts.push(head.split().freeze());
            parts.push(data.clone());
        }
        put_cids(&mut head, missing);
        put_cids(&mut head, deferred);
        put_cids(&mut head, cancelled);
        parts.push(head.freeze());
        parts
    }

    /// Encodes the response (without the length frame).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Self::Blocks {
                blocks,
                missing,
                deferred,
                cancelled,
            } => {
                out.reserve(blocks.iter().map(|(_, d)| d.len() + 48).sum());
                out.put_u8(0x81);
                put_varint(&mut out, blocks.len() as u64);
                for (cid, data) in blocks {
                    put_cid(&mut out, cid);
                    put_varint(&mut out, data.len() as u64);
                    out.put_slice(data);
                }
                put_cids(&mut out, missing);
                put_cids(&mut out, deferred);
                put_cids(&mut out, cancelled);
            }
            Self::Haves { have } => {
                out.put_u8(0x82);
                put_varint(&mut out, have.len() as u64);
                for chunk in have.chunks(8) {
                    let byte = chunk
                        .iter()
                        .enumerate()
                        .fold(0u8, |b, (i, h)| b | (u8::from(*h) << i));
                    out.put_u8(byte);
                }
            }
            Self::Status {
                tier,
                capacity,
                roots,
            } => {
                out.put_u8(0x83);
                out.put_u8(match tier {
                    Tier::Tier1 => 1,
                    Tier::Edge => 2,
                });
                put_varint(&mut out, *capacity);
                put_cids(&mut out, roots);
            }
            Self::Accepted => out.put_u8(0x85),
            Self::Refused {
                reason,
                retry_after_ms,
            } => {
                out.put_u8(0x84);
                out.put_u8(match reason {
                    RefusalReason::Paused => 1,
                    RefusalReason::Refused => 2,
                    RefusalReason::Overloaded => 3,
                });
                put_varint(&mut out, *retry_after_ms);
            }
        }
        out.freeze()
    }

    /// Decodes a response. Block data is a zero-copy slice of `buf`; it is *not* verified
    /// against its CID here (the fetcher does that, and penalises the sender).
    ///
    /// # Errors
    ///
    /// [`MessageError`] for anything but one well-formed response within the limits.
    pub fn decode(buf: Bytes) -> Result<Self, MessageError> {
        let mut r = Reader::new(&buf);
        let resp = match r.u8("message tag")? {
            0x81 => {
                let n = r.len("block count", MAX_WANT)?;
                let mut blocks = Vec::with_capacity(n);
                let mut total = 0usize;
                for _ in 0..n {
                    let cid = r.cid()?;
                    let offset = r.at;
                    let len = r.len("block length", MAX_BLOCK_SIZE)?;
                    total += len;
                    if total > MAX_RESPONSE_DATA + MAX_BLOCK_SIZE {
                        return Err(MessageError::TooLong {
                            offset,
                            what: "response data",
                            len: total as u64,
                            max: MAX_RESPONSE_DATA + MAX_BLOCK_SIZE,
                        });
                    }
                    blocks.push((cid, r.bytes(len, "block data")?));
                }
                Self::Blocks {
                    blocks,
                    missing: r.cids(MAX_WANT)?,
                    deferred: r.cids(MAX_WANT)?,
                    cancelled: r.cids(MAX_WANT)?,
                }
            }
            0x82 => {
                let n = r.len("have count", MAX_WANT)?;
                let bits = r.bytes(n.div_ceil(8), "have bitmap")?;
                let have = (0..n).map(|i| bits[i / 8] >> (i % 8) & 1 == 1).collect();
                // Canonical: unused bits of the last byte are zero.
                if n % 8 != 0 && bits[n / 8] >> (n % 8) != 0 {
                    return Err(MessageError::Tag {
                        offset: r.at - 1,
                        what: "have bitmap padding",
                        tag: bits[n / 8],
                    });
                }
                Self::Haves { have }
            }
            0x83 => {
                let tier = match r.u8("tier")? {
                    1 => Tier::Tier1,
                    2 => Tier::Edge,
                    tag => {
                        return Err(MessageError::Tag {
                            offset: r.at - 1,
                            what: "tier",
                            tag,
                        });
                    }
                };
                Self::Status {
                    tier,
                    capacity: r.varint("capacity")?,
                    roots: r.cids(MAX_STATUS_ROOTS)?,
                }
            }
            0x85 => Self::Accepted,
            0x84 => {
                let reason = match r.u8("refusal reason")? {
                    1 => RefusalReason::Paused,
                    2 => RefusalReason::Refused,
                    3 => RefusalReason::Overloaded,
                    tag => {
                        return Err(MessageError::Tag {
                            offset: r.at - 1,
                            what: "refusal reason",
                            tag,
                        });
                    }
                };
                Self::Refused {
                    reason,
                    retry_after_ms: r.varint("retry after")?,
                }
            }
            tag => {
                return Err(MessageError::Tag {
                    offset: 0,
                    what: "response",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(resp)
    }
}
