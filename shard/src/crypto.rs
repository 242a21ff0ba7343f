//! Per-shard encryption of content: XChaCha20-Poly1305 over 256 KiB ciphertext shards.
//!
//! A publisher encrypts before addressing, so CIDs name ciphertext and every node can verify
//! and serve shards it cannot read. The plaintext is cut into chunks of [`PLAIN_CHUNK`] bytes;
//! chunk `i` is sealed with the item's [`ContentKey`] into exactly one shard of at most
//! [`SHARD_SIZE`] bytes (ciphertext plus a 16-byte tag):
//!
//! ```text
//! nonce (24 bytes) = item id (16) || i as u64 big-endian (8)
//! aad              = "streamspace-shard-v1" || item id (16) || i as u64 big-endian || last (1 byte: 0 or 1)
//! ```
//!
//! The index in nonce and associated data stops shards being reordered, the item id stops them
//! being swapped between items, and the `last` flag stops a stream being truncated at a shard
//! boundary. An empty item is one sealed empty chunk. The sealed stream is imported as an
//! ordinary UnixFS file with [`SHARD_SIZE`] chunks (see [`encrypted_options`]), so each leaf is
//! one shard and any IPFS tool can store and move it.
//!
//! # Key file format
//!
//! A content key is saved as UTF-8 text, one `name: value` per line; blank lines and lines
//! starting with `#` are ignored; unknown names are an error:
//!
//! ```text
//! # StreamSpace content key: anyone holding this file can read the content
//! streamspace-key: 1
//! item: 00112233445566778899aabbccddeeff                                  (16 bytes, hex)
//! key: 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f   (32 bytes, hex)
//! root: bafybei…                                                          (optional CID)
//! ```

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use cid::Cid;
use futures::{FutureExt, Stream, StreamExt};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::dag::ExportError;
use crate::export::{ByteRange, cat, file_size};
use crate::import::ImportOptions;
use crate::store::BlockStore;

/// Size of a ciphertext shard (and of the UnixFS chunks of an encrypted item).
pub const SHARD_SIZE: usize = 262_144;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per shard.
pub const PLAIN_CHUNK: usize = SHARD_SIZE - TAG_LEN;
const DOMAIN: &[u8] = b"streamspace-shard-v1";

/// The 256-bit key and 128-bit item id of one encrypted item.
///
/// Zeroized on drop; `Debug` shows the item id only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ContentKey {
    key: [u8; 32],
    item: [u8; 16],
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentKey")
            .field("item", &hex::encode(self.item))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Decryption failed. Deliberately says nothing more: wrong key, wrong item, tampered,
/// reordered or truncated shards all look the same.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("decryption failed")]
pub struct DecryptError;

/// A key file could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileError {
    /// A line that is not `name: value`, or a name this format does not define.
    #[error("key file line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A required field is missing.
    #[error("key file has no {0} line")]
    Missing(&'static str),
    /// A format version this crate does not read.
    #[error("key file version {0} is not supported")]
    Version(String),
}

/// Reading encrypted content failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The sealed shards did not open.
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// Fetching or verifying the ciphertext failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The ciphertext's length cannot be a sealed stream.
    #[error("{len} bytes is not a valid encrypted item length")]
    BadLength {
        /// Ciphertext length.
        len: u64,
    },
    /// A range starting past the end of the plaintext.
    #[error("offset {offset} is past the end of the {size}-byte content")]
    OffsetPastEnd {
        /// Requested offset.
        offset: u64,
        /// Plaintext size.
        size: u64,
    },
}

impl ContentKey {
    /// A fresh random key and item id from the operating system's generator.
    pub fn generate() -> Self {
        let mut k = Self {
            key: [0; 32],
            item: [0; 16],
        };
        rand::rngs::OsRng.fill_bytes(&mut k.key);
        rand::rngs::OsRng.fill_bytes(&mut k.item);
        k
    }

    /// A key from its parts.
    pub fn from_parts(key: [u8; 32], item: [u8; 16]) -> Self {
        Self { key, item }
    }

    /// The item id (public: it is bound into every shard's nonce).
    pub fn item_id(&self) -> [u8; 16] {
        self.item
    }

    /// The key of the file at `path` (relative, `/`-separated) in a directory encrypted with
    /// this key (see [`crate::store::add_encrypted_dir`]): the same key bytes under an item id
    /// derived from this one and the path, `SHA-256("streamspace-file-v1" || item || path)`
    /// cut to 16 bytes. Every file so gets nonces of its own, and a shard moved to another file
    /// fails to open. One key (one license) opens the whole directory.
    ///
    /// ```
    /// use streamspace_shard::crypto::ContentKey;
    /// let key = ContentKey::generate();
    /// let a = key.for_file("seg000.ts");
    /// assert_eq!(a.key_bytes(), key.key_bytes());
    /// assert_ne!(a.item_id(), key.for_file("seg001.ts").item_id());
    /// assert_eq!(a.item_id(), key.for_file("seg000.ts").item_id());
    /// ```
    pub fn for_file(&self, path: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"streamspace-file-v1");
        h.update(self.item);
        h.update(path.as_bytes());
        let digest = h.finalize();
        let mut item = [0u8; 16];
        item.copy_from_slice(&digest[..16]);
        Self {
            key: self.key,
            item,
        }
    }

    /// The raw key bytes, for wrapping to a viewer.
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn nonce_aad(&self, index: u64, last: bool) -> ([u8; 24], [u8; 45]) {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.item);
        nonce[16..].copy_from_slice(&index.to_be_bytes());
        let mut aad = [0u8; 45];
        aad[..20].copy_from_slice(DOMAIN);
        aad[20..36].copy_from_slice(&self.item);
        aad[36..44].copy_from_slice(&index.to_be_bytes());
        aad[44] = u8::from(last);
        (nonce, aad)
    }

    /// Seals plaintext chunk `index` (at most [`PLAIN_CHUNK`] bytes) into a shard.
    ///
    /// # Panics
    ///
    /// If `plain` is longer than [`PLAIN_CHUNK`] — a caller bug, not an input error.
    pub fn seal_chunk(&self, index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
        assert!(plain.len() <= PLAIN_CHUNK, "plaintext chunk too long");
        let mut buf = vec![0u8; plain.len() + TAG_LEN];
        buf[..plain.len()].copy_from_slice(plain);
        self.seal_in_place(index, last, &mut buf);
        buf
    }

    /// Seals in place: `buf` holds the plaintext followed by [`TAG_LEN`] spare bytes, and
    /// holds the shard afterwards.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`TAG_LEN`] or longer than [`SHARD_SIZE`] (a caller bug).
    pub fn seal_in_place(&self, index: u64, last: bool, buf: &mut [u8]) {
        assert!(
            (TAG_LEN..=SHARD_SIZE).contains(&buf.len()),
            "buffer must hold a chunk and its tag"
        );
        let (nonce, aad) = self.nonce_aad(index, last);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.key));
        let (body, tag_out) = buf.split_at_mut(buf.len() - TAG_LEN);
        // Encryption only fails for messages beyond 256 GiB.
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, body)
            .unwrap_or_default();
        tag_out.copy_from_slice(&tag);
    }

    /// Opens shard `index`.
    ///
    /// # Errors
    ///
    /// [`DecryptError`] for anything but the authentic shard `index` of this item.
    pub fn open_chunk(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        if sealed.len() < TAG_LEN || sealed.len() > SHARD_SIZE {
            return Err(DecryptError);
        }
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let (nonce, aad) = self.nonce_aad(index, last);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&self.key));
        let mut buf = body.to_vec();
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &aad,
                &mut buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| DecryptError)?;
        Ok(buf)
    }

    /// The key file text (see the [module docs](self)); zeroized when dropped.
    pub fn to_key_file(&self, root: Option<&Cid>) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::new());
        s.push_str("# StreamSpace content key: anyone holding this file can read the content\n");
        s.push_str("streamspace-key: 1\n");
        s.push_str(&format!("item: {}\n", hex::encode(self.item)));
        let key_hex = Zeroizing::new(hex::encode(self.key));
        s.push_str("key: ");
        s.push_str(&key_hex);
        s.push('\n');
        if let Some(r) = root {
            s.push_str(&format!("root: {r}\n"));
        }
        s
    }

    /// Parses a key file; returns the key and the root CID if the file names one.
    ///
    /// # Errors
    ///
    /// [`KeyFileError`] naming the line at fault.
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_shard::crypto::ContentKey;
    /// let key = ContentKey::generate();
    /// let (back, root) = ContentKey::from_key_file(&key.to_key_file(None))?;
    /// assert_eq!(back.item_id(), key.item_id());
    /// assert!(root.is_none());
    /// assert!(!format!("{key:?}").contains(&hex::encode(key.key_bytes())));
    /// # Ok::<(), streamspace_shard::crypto::KeyFileError>(())
    /// ```
    pub fn from_key_file(text: &str) -> Result<(Self, Option<Cid>), KeyFileError> {
        let mut version = None;
        let mut item = None;
        let mut key = None;
        let mut root = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyFileError::Line {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad("expected `name: value`"))?;
            let value = value.trim();
            match name.trim() {
                "streamspace-key" => version = Some(value.to_owned()),
                "item" => {
                    let mut b = [0u8; 16];
                    hex::decode_to_slice(value, &mut b)
                        .map_err(|_| bad("item must be 32 hex digits"))?;
                    item = Some(b);
                }
                "key" => {
                    let mut b = Zeroizing::new([0u8; 32]);
                    hex::decode_to_slice(value, &mut b[..])
                        .map_err(|_| bad("key must be 64 hex digits"))?;
                    key = Some(b);
                }
                "root" => root = Some(Cid::try_from(value).map_err(|_| bad("invalid root CID"))?),
                other => return Err(bad(&format!("unknown field {other:?}"))),
            }
        }
        match version.as_deref() {
            Some("1") => {}
            Some(v) => return Err(KeyFileError::Version(v.to_owned())),
            None => return Err(KeyFileError::Missing("streamspace-key")),
        }
        let key = key.ok_or(KeyFileError::Missing("key"))?;
        let item = item.ok_or(KeyFileError::Missing("item"))?;
        Ok((Self::from_parts(*key, item), root))
    }
}

/// Import options for a sealed stream: the given options with [`SHARD_SIZE`] chunks, so every
/// leaf is exactly one shard.
pub fn encrypted_options(mut opts: ImportOptions) -> ImportOptions {
    opts.chunker = crate::import::Chunker::Size(SHARD_SIZE);
    opts
}

/// Imports `reader` as an encrypted item: chunks of [`PLAIN_CHUNK`] bytes are sealed with `key`
/// and hashed in parallel, each sealed chunk one leaf of a [`SHARD_SIZE`]-chunked UnixFS file.
///
/// The DAG is identical to importing an [`EncryptingReader`] over the same input with
/// [`encrypted_options`]; this path only seals on every core instead of one.
///
/// # Errors
///
/// As [`crate::import::import_file`].
pub fn import_encrypted<R, F>(
    reader: R,
    key: &ContentKey,
    opts: &ImportOptions,
    sink: F,
) -> Result<crate::import::Imported, crate::import::ImportError>
where
    R: std::io::Read,
    F: FnMut(crate::Block) -> Result<(), crate::import::ImportError>,
{
    let opts = encrypted_options(opts.clone());
    let seal = |index: u64, last: bool, buf: &mut [u8]| key.seal_in_place(index, last, buf);
    crate::import::import_sealed(reader, &opts, PLAIN_CHUNK, TAG_LEN, &seal, sink)
}

/// The plaintext length of a sealed stream of `len` bytes, if `len` is a valid one.
pub fn plaintext_len(len: u64) -> Option<u64> {
    if len < TAG_LEN as u64 {
        return None;
    }
    let shards = len.div_ceil(SHARD_SIZE as u64);
    let last = len - (shards - 1) * SHARD_SIZE as u64;
    (last >= TAG_LEN as u64).then(|| len - shards * TAG_LEN as u64)
}

/// A reader that seals what it reads from `inner` into the shard stream of `key`.
///
/// Memory: one plaintext chunk read ahead and one sealed shard.
#[derive(Debug)]
pub struct EncryptingReader<R> {
    inner: R,
    key: ContentKey,
    index: u64,
    ahead: Option<Vec<u8>>,
    out: Vec<u8>,
    pos: usize,
    finished: bool,
}

impl<R: std::io::Read> EncryptingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, key: ContentKey) -> Self {
        Self {
            inner,
            key,
            index: 0,
            ahead: None,
            out: Vec::new(),
            pos: 0,
            finished: false,
        }
    }

    fn read_plain(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; PLAIN_CHUNK];
        let mut filled = 0;
        while filled < PLAIN_CHUNK {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn refill(&mut self) -> std::io::Result<()> {
        let current = match self.ahead.take() {
            Some(c) => c,
            None => self.read_plain()?,
        };
        // A full chunk may be followed by more; read one ahead to know if this is the last.
        let next = if current.len() == PLAIN_CHUNK {
            let n = self.read_plain()?;
            (!n.is_empty()).then_some(n)
        } else {
            None
        };
        let last = next.is_none();
        self.out = self.key.seal_chunk(self.index, last, &current);
        self.pos = 0;
        self.index += 1;
        self.ahead = next;
        self.finished = last;
        Ok(())
    }
}

impl<R: std::io::Read> std::io::Read for EncryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Streams the plaintext of the encrypted item `cid` within `range` (plaintext offsets).
///
/// Only the shards the range touches are fetched, each verified against its CID and then
/// authenticated before any of its bytes are yielded.
///
/// # Errors
///
/// Items are [`CryptoError`]s; a wrong key or tampered shard is [`CryptoError::Decrypt`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::TryStreamExt;
/// use streamspace_shard::{crypto::*, export::ByteRange, import::ImportOptions, store::*};
/// let store = MemoryStore::new();
/// let key = ContentKey::generate();
/// let sealed = EncryptingReader::new(&b"secret film"[..], key.clone());
/// let root = add_reader(Some(&store), sealed, encrypted_options(ImportOptions::default())).await?;
/// let out: Vec<bytes::Bytes> =
///     cat_decrypted(&store, root.cid, &key, ByteRange::new(7, None)).try_collect().await?;
/// assert_eq!(out.concat(), b"film");
/// # Ok(()) }
/// ```
pub fn cat_decrypted<'a, S: BlockStore>(
    store: &'a S,
    cid: Cid,
    key: &'a ContentKey,
    range: ByteRange,
) -> impl Stream<Item = Result<Bytes, CryptoError>> + 'a {
    async_decrypt(store, cid, key, range).flatten_stream()
}

async fn async_decrypt<'a, S: BlockStore>(
    store: &'a S,
    cid: Cid,
    key: &'a ContentKey,
    range: ByteRange,
) -> futures::stream::BoxStream<'a, Result<Bytes, CryptoError>> {
    let setup = async {
        let sealed_len = file_size(store, &cid).await?;
        let plain_len =
            plaintext_len(sealed_len).ok_or(CryptoError::BadLength { len: sealed_len })?;
        if range.offset > plain_len {
            return Err(CryptoError::OffsetPastEnd {
                offset: range.offset,
                size: plain_len,
            });
        }
        let end = range
            .length
            .map_or(plain_len, |l| range.offset.saturating_add(l).min(plain_len));
        Ok((sealed_len, end))
    };
    let (sealed_len, end) = match setup.await {
        Ok(v) => v,
        Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
    };
    if end <= range.offset {
        return futures::stream::empty().boxed();
    }
    let pc = PLAIN_CHUNK as u64;
    let first = range.offset / pc;
    let last_needed = (end - 1) / pc;
    let shards = sealed_len.div_ceil(SHARD_SIZE as u64);
    let c_start = first * SHARD_SIZE as u64;
    let c_end = ((last_needed + 1) * SHARD_SIZE as u64).min(sealed_len);
    let cipher = cat(store, cid, ByteRange::new(c_start, Some(c_end - c_start)));
    struct St<C> {
        cipher: C,
        buf: BytesMut,
        index: u64,
        done: bool,
    }
    let st = St {
        cipher: Box::pin(cipher),
        buf: BytesMut::new(),
        index: first,
        done: false,
    };
    let offset = range.offset;
    futures::stream::unfold(st, move |mut st| async move {
        if st.done || st.index > last_needed {
            return None;
        }
        let shard_len = if st.index + 1 == shards {
            (sealed_len - st.index * SHARD_SIZE as u64) as usize
        } else {
            SHARD_SIZE
        };
        while st.buf.len() < shard_len {
            match st.cipher.next().await {
                Some(Ok(b)) => st.buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(CryptoError::Export(e)), st));
                }
                None => {
                    st.done = true;
                    return Some((Err(CryptoError::BadLength { len: sealed_len }), st));
                }
            }
        }
        let sealed = st.buf.split_to(shard_len);
        let index = st.index;
        st.index += 1;
        match key.open_chunk(index, index + 1 == shards, &sealed) {
            Ok(plain) => {
                let chunk_start = index * pc;
                let from = offset.max(chunk_start) - chunk_start;
                let to = end.min(chunk_start + plain.len() as u64) - chunk_start;
                let out = Bytes::from(plain).slice(from as usize..to as usize);
                Some((Ok(out), st))
            }
            Err(e) => {
                st.done = true;
                Some((Err(e.into()), st))
            }
        }
    })
    .boxed()
}
