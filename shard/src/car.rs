//! CAR (content-addressed archive) files: a streaming v1 writer and a streaming v1/v2 reader.
//!
//! A CARv1 is `varint(len) header` followed by sections `varint(len) CID bytes`, where the
//! header is the dag-cbor map `{"roots": [CID…], "version": 1}` ([spec]). A CARv2 wraps a
//! CARv1 payload behind an 11-byte pragma and a 40-byte header giving the payload's offset
//! and size; its index is not needed to read the payload in order and is skipped.
//!
//! [`CarDecoder`] is a sans-IO decoder: feed it bytes, take headers and verified blocks out.
//! [`read_car`] and [`write_car`] drive it over tokio I/O.
//!
//! [spec]: https://ipld.io/specs/transport/car/carv1/

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cid::Cid;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::block::{Block, BlockError, MAX_BLOCK_SIZE};
use crate::dag::{ExportError, walk};
use crate::store::{BlockStore, StoreError};

/// Largest CAR header accepted.
pub const MAX_HEADER_SIZE: usize = 1024 * 1024;
/// Largest section accepted: a CID plus a block of [`MAX_BLOCK_SIZE`].
pub const MAX_SECTION_SIZE: usize = MAX_BLOCK_SIZE + 256;
/// The CARv2 pragma: a CARv1 header of `{"version": 2}`.
pub const CARV2_PRAGMA: [u8; 11] = [
    0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02,
];
const CARV2_HEADER_LEN: usize = 40;

/// Reading or writing a CAR failed. Offsets are byte offsets in the CAR file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    /// The file ended inside a header or section.
    #[error("CAR truncated at byte {offset}")]
    Truncated {
        /// Offset of the incomplete header or section.
        offset: u64,
    },
    /// A malformed length varint.
    #[error("bad varint at byte {offset}")]
    BadVarint {
        /// Offset of the varint.
        offset: u64,
    },
    /// A header that is not the dag-cbor map CAR requires.
    #[error("bad CAR header at byte {offset}: {reason}")]
    BadHeader {
        /// Offset of the header.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A CAR version other than 1 or 2.
    #[error("unsupported CAR version {0}")]
    UnsupportedVersion(u64),
    /// A header or section longer than the limits.
    #[error("section of {len} bytes at byte {offset} exceeds the {limit}-byte limit")]
    TooLarge {
        /// Offset of the section.
        offset: u64,
        /// Its declared length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A section that does not start with a valid CID.
    #[error("invalid CID in section at byte {offset}")]
    BadCid {
        /// Offset of the section.
        offset: u64,
    },
    /// A block whose bytes do not match its CID.
    #[error("block at byte {offset}: {source}")]
    Block {
        /// Offset of the section.
        offset: u64,
        /// The mismatch.
        source: BlockError,
    },
    /// An I/O error.
    #[error("CAR I/O at byte {offset}: {source}")]
    Io {
        /// Bytes processed before the error.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the DAG to export failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Storing imported blocks failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    roots: &'a [Cid],
    version: u64,
}

#[derive(Deserialize)]
struct HeaderIn {
    version: u64,
    #[serde(default)]
    roots: Option<Vec<Cid>>,
}

/// What [`CarDecoder`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CarItem {
    /// The (inner) CARv1 header: the roots and the container version (1 or 2).
    Header {
        /// Root CIDs.
        roots: Vec<Cid>,
        /// 1 for CARv1, 2 for a CARv2 container.
        version: u64,
    },
    /// A verified block.
    Block(Block),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    V2Header,
    Skip { until: u64 },
    InnerHeader,
    Sections,
    Done,
}

/// A sans-IO CAR decoder.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use streamspace_shard::{block::{Block, RAW}, car::{encode_header, encode_section, CarDecoder, CarItem}};
/// let block = Block::encode(cid::Version::V1, RAW, bytes::Bytes::from_static(b"shard"));
/// let mut car = BytesMut::from(&encode_header(&[*block.cid()])[..]);
/// encode_section(block.cid(), block.data(), &mut car);
/// let mut dec = CarDecoder::new();
/// assert!(matches!(dec.decode(&mut car)?, Some(CarItem::Header { version: 1, .. })));
/// assert_eq!(dec.decode(&mut car)?, Some(CarItem::Block(block)));
/// assert_eq!(dec.decode(&mut car)?, None);
/// dec.finish(&car)?;
/// # Ok::<(), streamspace_shard::car::CarError>(())
/// ```
#[derive(Debug)]
pub struct CarDecoder {
    state: State,
    /// Absolute offset of the first byte of the buffer the caller holds.
    offset: u64,
    /// Absolute offset where the CARv1 payload ends (CARv2), if bounded.
    payload_end: Option<u64>,
}

impl Default for CarDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a varint-prefixed frame from the front of `buf`; `Ok(None)` when more bytes are needed.
fn frame(buf: &BytesMut, offset: u64, limit: usize) -> Result<Option<(usize, usize)>, CarError> {
    let Some((len, prefix)) =
        crate::wire::uvarint(buf, 0).map_err(|_| CarError::BadVarint { offset })?
    else {
        return Ok(None);
    };
    if len > limit as u64 {
        return Err(CarError::TooLarge { offset, len, limit });
    }
    let len = len as usize;
    if buf.len() - prefix < len {
        Ok(None)
    } else {
        Ok(Some((prefix, len)))
    }
}

impl CarDecoder {
    /// A decoder at the start of a CAR file.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            offset: 0,
            payload_end: None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the decoder has read everything it needs (a CARv2 payload's end); the caller
    /// may stop reading.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn consume(&mut self, buf: &mut BytesMut, n: usize) -> Bytes {
        self.offset += n as u64;
        buf.split_to(n).freeze()
    }

    fn header(&mut self, buf: &mut BytesMut) -> Result<Option<HeaderIn>, CarError> {
        let at = self.offset;
        let Some((prefix, len)) = frame(buf, at, MAX_HEADER_SIZE)? else {
            return Ok(None);
        };
        self.consume(buf, prefix);
        let body = self.consume(buf, len);
        let h: HeaderIn =
            serde_ipld_dagcbor::from_slice(&body).map_err(|e| CarError::BadHeader {
                offset: at,
                reason: e.to_string(),
            })?;
        Ok(Some(h))
    }

    /// Decodes the next item from the front of `buf`, removing the bytes it used.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete item yet (or the payload is done).
    ///
    /// # Errors
    ///
    /// [`CarError`] naming the offset of the bad header or section. After an error the decoder
    /// must not be used again.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<CarItem>, CarError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Start => {
                    let Some(h) = self.header(buf)? else {
                        return Ok(None);
                    };
                    match h.version {
                        1 => {
                            self.state = State::Sections;
                            return Ok(Some(CarItem::Header {
                                roots: h.roots.unwrap_or_default(),
                                version: 1,
                            }));
                        }
                        2 if self.offset == CARV2_PRAGMA.len() as u64 => {
                            self.state = State::V2Header;
                        }
                        v => return Err(CarError::UnsupportedVersion(v)),
                    }
                }
                State::V2Header => {
                    if buf.len() < CARV2_HEADER_LEN {
                        return Ok(None);
                    }
                    let at = self.offset;
                    let mut h = self.consume(buf, CARV2_HEADER_LEN);
                    h.advance(16); // characteristics
                    let data_offset = h.get_u64_le();
                    let data_size = h.get_u64_le();
                    if data_offset < self.offset {
                        return Err(CarError::BadHeader {
                            offset: at,
                            reason: format!("CARv2 data offset {data_offset} inside its header"),
                        });
                    }
                    let end = data_offset
                        .checked_add(data_size)
                        .ok_or(CarError::BadHeader {
                            offset: at,
                            reason: "CARv2 data size overflows".into(),
                        })?;
                    self.payload_end = Some(end);
                    self.state = State::Skip { until: data_offset };
                }
                State::Skip { until } => {
                    let skip = (until - self.offset).min(buf.len() as u64) as usize;
                    self.consume(buf, skip);
                    if self.offset < until {
                        return Ok(None);
                    }
                    self.state = State::InnerHeader;
                }
                State::InnerHeader => {
                    let at = self.offset;
                    let Some(h) = self.header(buf)? else {
                        return Ok(None);
                    };
                    if h.version != 1 {
                        return Err(CarError::BadHeader {
                            offset: at,
                            reason: format!("CARv2 payload has version {}", h.version),
                        });
                    }
                    self.state = State::Sections;
                    return Ok(Some(CarItem::Header {
                        roots: h.roots.unwrap_or_default(),
                        version: 2,
                    }));
                }
                State::Sections => {
                    if self.payload_end.is_some_and(|end| self.offset >= end) {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    let at = self.offset;
                    let Some((prefix, len)) = frame(buf, at, MAX_SECTION_SIZE)? else {
                        return Ok(None);
                    };
                    if self
                        .payload_end
                        .is_some_and(|end| at + (prefix + len) as u64 > end)
                    {
                        return Err(CarError::Truncated { offset: at });
                    }
                    self.consume(buf, prefix);
                    let section = self.consume(buf, len);
                    let mut cursor = std::io::Cursor::new(&section[..]);
                    let cid = Cid::read_bytes(&mut cursor)
                        .map_err(|_| CarError::BadCid { offset: at })?;
                    let data = section.slice(cursor.position() as usize..);
                    let block = Block::new(cid, data)
                        .map_err(|source| CarError::Block { offset: at, source })?;
                    return Ok(Some(CarItem::Block(block)));
                }
            }
        }
    }

    /// Checks that the input may end here with `rest` left unread.
    ///
    /// # Errors
    ///
    /// [`CarError::Truncated`] when the file ended inside a header or section.
    pub fn finish(&self, rest: &BytesMut) -> Result<(), CarError> {
        let complete = match self.state {
            State::Done => true,
            State::Sections => rest.is_empty() && self.payload_end.is_none_or(|e| self.offset >= e),
            _ => false,
        };
        if complete {
            Ok(())
        } else {
            Err(CarError::Truncated {
                offset: self.offset,
            })
        }
    }
}

/// Encodes a CARv1 header with these roots.
pub fn encode_header(roots: &[Cid]) -> Bytes {
    // Serializing a struct of CIDs and an integer cannot fail.
    let body = serde_ipld_dagcbor::to_vec(&HeaderOut { roots, version: 1 }).unwrap_or_default();
    let mut out = BytesMut::with_capacity(body.len() + 4);
    put_uvarint(&mut out, body.len() as u64);
    out.put_slice(&body);
    out.freeze()
}

fn put_uvarint(out: &mut BytesMut, v: u64) {
    crate::wire::put_varint(out, v);
}

/// Appends one CAR section (`varint(len) CID bytes`) to `out`.
pub fn encode_section(cid: &Cid, data: &[u8], out: &mut BytesMut) {
    let cid_bytes = cid.to_bytes();
    put_uvarint(out, (cid_bytes.len() + data.len()) as u64);
    out.put_slice(&cid_bytes);
    out.put_slice(data);
}

/// What a CAR read or write covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarSummary {
    /// Root CIDs of the header.
    pub roots: Vec<Cid>,
    /// Blocks read or written.
    pub blocks: u64,
    /// Bytes of the CAR file.
    pub bytes: u64,
}

/// Writes the DAG below `root` as a CARv1 to `out`, blocks depth-first from the root, each once.
///
/// # Errors
///
/// [`CarError`] when a block is missing or corrupt, or writing fails.
pub async fn write_car<S: BlockStore, W: AsyncWrite + Unpin>(
    store: &S,
    root: Cid,
    mut out: W,
) -> Result<CarSummary, CarError> {
    let io = |offset, source| CarError::Io { offset, source };
    let header = encode_header(&[root]);
    out.write_all(&header).await.map_err(|e| io(0, e))?;
    let mut written = header.len() as u64;
    let mut blocks = 0;
    let mut buf = BytesMut::new();
    let mut stream = std::pin::pin!(walk(store, root));
    while let Some((cid, data)) = stream.try_next().await? {
        buf.clear();
        encode_section(&cid, &data, &mut buf);
        out.write_all(&buf).await.map_err(|e| io(written, e))?;
        written += buf.len() as u64;
        blocks += 1;
    }
    out.flush().await.map_err(|e| io(written, e))?;
    Ok(CarSummary {
        roots: vec![root],
        blocks,
        bytes: written,
    })
}

/// Reads a CARv1 or CARv2 from `input`, verifying every block and storing it in `store`.
///
/// Memory is bounded by one read buffer and one batch of blocks.
///
/// # Errors
///
/// [`CarError`] for malformed input (with its offset), a block that does not match its CID,
/// or a store error. Blocks of earlier batches may already be stored.
pub async fn read_car<R: AsyncRead + Unpin, S: BlockStore>(
    mut input: R,
    store: &S,
) -> Result<CarSummary, CarError> {
    let mut dec = CarDecoder::new();
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut roots = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut blocks = 0;
    let mut eof = false;
    loop {
        while let Some(item) = dec.decode(&mut buf)? {
            match item {
                CarItem::Header { roots: r, .. } => roots = r,
                CarItem::Block(b) => {
                    blocks += 1;
                    batch_bytes += b.data().len();
                    batch.push(b);
                    if batch.len() >= 64 || batch_bytes >= 8 << 20 {
                        store.put_many(std::mem::take(&mut batch)).await?;
                        batch_bytes = 0;
                    }
                }
            }
        }
        if eof || dec.is_done() {
            break;
        }
        buf.reserve(64 * 1024);
        let n = input
            .read_buf(&mut buf)
            .await
            .map_err(|source| CarError::Io {
                offset: dec.offset() + buf.len() as u64,
                source,
            })?;
        eof = n == 0;
    }
    if !dec.is_done() {
        dec.finish(&buf)?;
    }
    if !batch.is_empty() {
        store.put_many(batch).await?;
    }
    Ok(CarSummary {
        roots,
        blocks,
        bytes: dec.offset(),
    })
}
