//! Closed networks: the peers admitted, in a list signed by the network operator's key.
//!
//! Layout (all integers big-endian or unsigned varints):
//!
//! ```text
//! "streamspace-allowlist-v1"  24 bytes, domain tag
//! network                     varint length (≤ 64) + UTF-8
//! expires                     u64, Unix seconds
//! peers                       varint count (≤ 100,000), then varint length + peer id bytes each
//! operator                    32 bytes, Ed25519 public key
//! signature                   64 bytes, by the operator over everything above
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use libp2p::PeerId;
use libp2p::identity::ed25519;
use streamspace_shard::wire;

const DOMAIN: &[u8; 24] = b"streamspace-allowlist-v1";
const MAX_NETWORK: usize = 64;
/// Most peers an allowlist names.
pub const MAX_PEERS: usize = 100_000;

/// A list of admitted peers signed by a network operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAllowlist {
    /// The network it admits to.
    pub network: String,
    /// When it stops being valid.
    pub expires: SystemTime,
    /// The peers admitted.
    pub peers: BTreeSet<PeerId>,
    operator: [u8; 32],
    signature: [u8; 64],
}

/// An allowlist that does not decode or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowlistError {
    /// The bytes are not an allowlist.
    #[error("malformed allowlist at byte {offset}: {what}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What was wrong.
        what: &'static str,
    },
    /// Signed by another key than the operator's.
    #[error("allowlist signed by another key than the network operator's")]
    WrongOperator,
    /// The signature does not verify.
    #[error("allowlist signature does not verify")]
    BadSignature,
    /// For another network.
    #[error("allowlist is for network {0:?}")]
    WrongNetwork(String),
    /// Past its expiry.
    #[error("allowlist expired")]
    Expired,
    /// Not newer than the list in force (it expires no later): an old list replayed.
    #[error("allowlist expires no later than the one in force")]
    NotNewer,
}

/// The pub/sub topic on which a closed network's operator publishes new allowlists
/// (`/streamspace/<network>/allowlist/1`). Every member listens; a list that verifies and
/// expires later than the one in force replaces it (see
/// [`Node::update_allowlist`](crate::Node::update_allowlist)). A list published there is at
/// most [`MAX_PUBSUB_MESSAGE`](crate::MAX_PUBSUB_MESSAGE) bytes, some 1,700 peers; a larger
/// network hands lists to its nodes by other means.
pub fn topic(network: &str) -> String {
    format!("/streamspace/{network}/allowlist/1")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn body(network: &str, expires: SystemTime, peers: &BTreeSet<PeerId>) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_slice(DOMAIN);
    wire::put_varint(&mut out, network.len() as u64);
    out.put_slice(network.as_bytes());
    out.put_u64(unix(expires));
    wire::put_varint(&mut out, peers.len() as u64);
    for p in peers {
        let b = p.to_bytes();
        wire::put_varint(&mut out, b.len() as u64);
        out.put_slice(&b);
    }
    out
}

impl SignedAllowlist {
    /// Signs a list of `peers` for `network`, valid until `expires`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use libp2p::identity::{ed25519, Keypair};
    /// use streamspace_transport::allowlist::SignedAllowlist;
    /// let operator = ed25519::Keypair::generate();
    /// let member = Keypair::generate_ed25519().public().to_peer_id();
    /// let list = SignedAllowlist::sign(&operator, "studio", SystemTime::now() + Duration::from_secs(3600), [member]);
    /// let back = SignedAllowlist::decode(&list.encode())?;
    /// back.verify(&operator.public(), "studio", SystemTime::now())?;
    /// assert!(back.peers.contains(&member));
    /// # Ok::<(), streamspace_transport::allowlist::AllowlistError>(())
    /// ```
    pub fn sign(
        operator: &ed25519::Keypair,
        network: &str,
        expires: SystemTime,
        peers: impl IntoIterator<Item = PeerId>,
    ) -> Self {
        let peers: BTreeSet<PeerId> = peers.into_iter().collect();
        // Whole seconds, as encoded.
        let expires = UNIX_EPOCH + Duration::from_secs(unix(expires));
        let msg = body(network, expires, &peers);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&operator.sign(&msg));
        Self {
            network: network.to_owned(),
            expires,
            peers,
            operator: operator.public().to_bytes(),
            signature,
        }
    }

    /// The encoding described in the module docs.
    pub fn encode(&self) -> Bytes {
        let mut out = body(&self.network, self.expires, &self.peers);
        out.put_slice(&self.operator);
        out.put_slice(&self.signature);
        out.freeze()
    }

    /// Decodes without verifying (see [`SignedAllowlist::verify`]).
    ///
    /// # Errors
    ///
    /// [`AllowlistError::Malformed`].
    pub fn decode(b: &[u8]) -> Result<Self, AllowlistError> {
        let bad = |offset, what| AllowlistError::Malformed { offset, what };
        if b.len() < DOMAIN.len() || &b[..DOMAIN.len()] != DOMAIN {
            return Err(bad(0, "not an allowlist (domain tag)"));
        }
        let mut at = DOMAIN.len();
        let varint = |at: &mut usize, what| -> Result<usize, AllowlistError> {
            let (v, used) = wire::uvarint(&b[*at..], *at)
                .ok()
                .flatten()
                .ok_or_else(|| bad(*at, what))?;
            *at += used;
            usize::try_from(v).map_err(|_| bad(*at, what))
        };
        let take = |at: &mut usize, n: usize, what| -> Result<&[u8], AllowlistError> {
            let s = b
                .get(*at..at.saturating_add(n))
                .ok_or_else(|| bad(*at, what))?;
            *at += n;
            Ok(s)
        };
        let n = varint(&mut at, "network length")?;
        if n > MAX_NETWORK {
            return Err(bad(at, "network name too long"));
        }
        let network = std::str::from_utf8(take(&mut at, n, "network name")?)
            .map_err(|_| bad(at, "network name is not UTF-8"))?
            .to_owned();
        let mut e = [0u8; 8];
        e.copy_from_slice(take(&mut at, 8, "expiry")?);
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(u64::from_be_bytes(e)))
            .ok_or_else(|| bad(at - 8, "expiry out of range"))?;
        let count = varint(&mut at, "peer count")?;
        if count > MAX_PEERS {
            return Err(bad(at, "too many peers"));
        }
        let mut peers = BTreeSet::new();
        for _ in 0..count {
            let len = varint(&mut at, "peer id length")?;
            let offset = at;
            let id = take(&mut at, len.min(128), "peer id")?;
            if len > 128 {
                return Err(bad(offset, "peer id too long"));
            }
            let id = PeerId::from_bytes(id).map_err(|_| bad(offset, "malformed peer id"))?;
            if !peers.insert(id) {
                return Err(bad(offset, "peer listed twice"));
            }
        }
        let mut operator = [0u8; 32];
        operator.copy_from_slice(take(&mut at, 32, "operator key")?);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(take(&mut at, 64, "signature")?);
        if at != b.len() {
            return Err(bad(at, "trailing bytes"));
        }
        let list = Self {
            network,
            expires,
            peers,
            operator,
            signature,
        };
        // Canonical: peers in order (re-encoding must give the signed bytes).
        if list.encode() != b {
            return Err(bad(0, "peers not in canonical order"));
        }
        Ok(list)
    }

    /// Checks that `operator` signed this list for `network` and that it has not expired at
    /// `now`.
    ///
    /// # Errors
    ///
    /// [`AllowlistError`] naming the first check that failed.
    pub fn verify(
        &self,
        operator: &ed25519::PublicKey,
        network: &str,
        now: SystemTime,
    ) -> Result<(), AllowlistError> {
        if operator.to_bytes() != self.operator {
            return Err(AllowlistError::WrongOperator);
        }
        let msg = body(&self.network, self.expires, &self.peers);
        if !operator.verify(&msg, &self.signature) {
            return Err(AllowlistError::BadSignature);
        }
        if self.network != network {
            return Err(AllowlistError::WrongNetwork(self.network.clone()));
        }
        if now >= self.expires {
            return Err(AllowlistError::Expired);
        }
        Ok(())
    }
}
