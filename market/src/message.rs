//! What goes on the market's consensus topic: listings, their updates and withdrawals,
//! licenses and revocations, each signed with Ed25519.
//!
//! A signed message is
//!
//! ```text
//! "streamspace-mkt1"   16 bytes, domain tag
//! body                 postcard encoding of a `Message` (canonical: re-encoding gives the
//!                      same bytes), at most MAX_BODY bytes
//! signer               32 bytes, Ed25519 public key
//! signature            64 bytes, over the tag and the body
//! ```

use cid::Cid;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use streamspace_ledger::{AccountId, NftId, PublicKey, Timestamp, TransactionId};

const DOMAIN: &[u8; 16] = b"streamspace-mkt1";
/// Largest message body.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest title.
pub const MAX_TITLE: usize = 200;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 4000;
/// Most tags, and longest tag.
pub const MAX_TAGS: usize = 16;
/// Longest tag.
pub const MAX_TAG: usize = 32;
/// Most rights holders sharing revenue (a purchase pays each in one transfer of at most 10
/// accounts, the buyer included).
pub const MAX_HOLDERS: usize = 9;
/// Most regions in license terms.
pub const MAX_REGIONS: usize = 64;

/// A listing's identity: its seller and a number the seller chose. Only the seller's account
/// can publish it ([`crate::Catalog::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListingId {
    /// The seller.
    pub seller: AccountId,
    /// Chosen by the seller, unique among its listings.
    pub number: u64,
}

impl std::fmt::Display for ListingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.seller, self.number)
    }
}

/// A string that is not `seller/number` (`0.0.1001/7`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid listing id {0:?}: expected seller/number")]
pub struct ParseListingIdError(pub String);

impl std::str::FromStr for ListingId {
    type Err = ParseListingIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseListingIdError(s.to_owned());
        let (seller, number) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            seller: seller.parse().map_err(|_| bad())?,
            number: number.parse().map_err(|_| bad())?,
        })
    }
}

/// What a license grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// Seconds of viewing from the purchase; `None` for ownership.
    pub rental_secs: Option<u64>,
    /// Devices the key may be released to.
    pub devices: u16,
    /// ISO 3166 region codes where it may be watched; empty for everywhere.
    pub regions: Vec<String>,
}

/// One rights holder's share, in basis points (1/100 of a percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The account paid.
    pub account: AccountId,
    /// Basis points of the price; all shares add up to 10,000.
    pub bps: u16,
}

/// A listing: content offered at a price, on terms, with its revenue split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Its identity.
    pub id: ListingId,
    /// Starts at 1; every update raises it.
    pub version: u32,
    /// The content's root CID (the encrypted item).
    #[serde(with = "cid_bytes")]
    pub content: Cid,
    /// Title.
    pub title: String,
    /// Free text.
    pub description: String,
    /// Search tags.
    pub tags: Vec<String>,
    /// Price in tinybars.
    pub price: u64,
    /// What a purchase grants.
    pub terms: Terms,
    /// Who is paid, in what shares.
    pub split: Vec<Share>,
    /// For ownership: the royalty on every resale, in basis points of the resale price, paid
    /// to the rights holders in their shares.
    pub royalty_bps: u16,
    /// The key of the service that issues licenses and releases keys (the seller's own, or a
    /// node it delegates to).
    pub key_service: PublicKey,
}

/// A license: the right of one buyer to one listing, bound to the buyer's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    /// The listing bought.
    pub listing: ListingId,
    /// The listing's version at the purchase (its price and terms).
    pub version: u32,
    /// The buyer's account.
    pub buyer: AccountId,
    /// The buyer's Ed25519 key, the one its payment's memo committed to
    /// ([`crate::service::key_commitment`]); key requests must be signed with it.
    pub buyer_key: PublicKey,
    /// The payment: one ledger transfer carrying the split. Identifies the license.
    pub payment: TransactionId,
    /// When viewing may start.
    pub start: Timestamp,
    /// When it ends; `None` for ownership.
    pub expiry: Option<Timestamp>,
    /// Devices the key may be released to.
    pub devices: u16,
    /// Regions where the key may be released (from the listing's terms); empty for everywhere.
    pub regions: Vec<String>,
    /// For ownership: the NFT on the ledger that carries it (its holder may resell it).
    pub nft: Option<NftId>,
    /// For a resale: the license it replaces and the price paid.
    pub resale: Option<Resale>,
}

/// A license bought from its previous holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resale {
    /// The payment of the license replaced.
    pub previous: TransactionId,
    /// What the new holder paid, royalties included.
    pub price: u64,
}

/// Why a license was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The purchase was refunded (the refund transfer is named).
    Refunded(TransactionId),
    /// A dispute was upheld.
    Disputed,
    /// Its NFT was resold (the resale transfer is named).
    Resold(TransactionId),
}

/// A message on the market topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A new listing, signed by its seller.
    List(Listing),
    /// A new version of a listing, signed by the key that listed it.
    Update(Listing),
    /// A listing withdrawn, signed by the key that listed it.
    Withdraw {
        /// The listing.
        listing: ListingId,
        /// Its version after withdrawal (above the last).
        version: u32,
    },
    /// A license issued after a verified payment, signed by the listing's key service.
    License(License),
    /// A license revoked, signed by the listing's key service.
    Revoke {
        /// The license (its payment).
        payment: TransactionId,
        /// Why.
        reason: RevokeReason,
    },
}

/// A message and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The message.
    pub message: Message,
    /// Who signed it.
    pub signer: PublicKey,
    signature: [u8; 64],
}

/// A message that does not decode, or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Too short, or not a market message.
    #[error("not a market message: {0}")]
    Framing(&'static str),
    /// The body is over [`MAX_BODY`].
    #[error("message body of {0} bytes is over the limit")]
    TooLong(usize),
    /// The body does not decode, or not canonically.
    #[error("malformed message body: {0}")]
    Body(String),
    /// A field over its limit or out of range.
    #[error("invalid {field}: {why}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

fn field(field: &'static str, why: &'static str) -> DecodeError {
    DecodeError::Field { field, why }
}

impl Listing {
    /// Checks the limits and the split.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Field`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.version == 0 {
            return Err(field("version", "starts at 1"));
        }
        if self.title.is_empty() || self.title.len() > MAX_TITLE {
            return Err(field("title", "empty or too long"));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(field("description", "too long"));
        }
        if self.tags.len() > MAX_TAGS || self.tags.iter().any(|t| t.is_empty() || t.len() > MAX_TAG)
        {
            return Err(field("tags", "too many, empty or too long"));
        }
        if self.terms.devices == 0 {
            return Err(field("terms.devices", "at least one device"));
        }
        if self.terms.rental_secs == Some(0) {
            return Err(field(
                "terms.rental_secs",
                "a rental lasts at least a second",
            ));
        }
        if self.terms.regions.len() > MAX_REGIONS
            || self
                .terms
                .regions
                .iter()
                .any(|r| r.len() != 2 || !r.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(field("terms.regions", "two upper-case letters each"));
        }
        if self.split.is_empty() || self.split.len() > MAX_HOLDERS {
            return Err(field("split", "one to nine rights holders"));
        }
        if self.royalty_bps > 10_000 {
            return Err(field("royalty_bps", "at most 10,000"));
        }
        let total: u32 = self.split.iter().map(|s| u32::from(s.bps)).sum();
        if total != 10_000 {
            return Err(field("split", "shares must add up to 10,000 basis points"));
        }
        let mut accounts: Vec<_> = self.split.iter().map(|s| s.account).collect();
        accounts.sort();
        accounts.dedup();
        if accounts.len() != self.split.len() {
            return Err(field("split", "an account listed twice"));
        }
        Ok(())
    }

    /// What each rights holder receives of the price: its share rounded down, the remainder
    /// of the rounding to the first holder. The amounts add up to the price.
    pub fn payouts(&self) -> Vec<(AccountId, u64)> {
        self.split_amount(self.price)
    }

    /// The royalties due on a resale at `price`: `royalty_bps` of it, split as
    /// [`Listing::payouts`] splits the price.
    pub fn royalties(&self, price: u64) -> Vec<(AccountId, u64)> {
        let royalty = u128::from(price) * u128::from(self.royalty_bps) / 10_000;
        self.split_amount(u64::try_from(royalty).unwrap_or(u64::MAX))
    }

    fn split_amount(&self, total: u64) -> Vec<(AccountId, u64)> {
        let mut out: Vec<(AccountId, u64)> = self
            .split
            .iter()
            .map(|s| {
                let amount = u128::from(total) * u128::from(s.bps) / 10_000;
                (s.account, u64::try_from(amount).unwrap_or(u64::MAX))
            })
            .collect();
        let paid: u64 = out.iter().map(|(_, a)| *a).sum();
        if let Some(first) = out.first_mut() {
            first.1 += total - paid;
        }
        out
    }
}

impl Message {
    /// Signs the message.
    pub fn sign(self, key: &SigningKey) -> Signed {
        let body = postcard::to_allocvec(&self).unwrap_or_default();
        let signature = key.sign(&signed_bytes(&body)).to_bytes();
        Signed {
            message: self,
            signer: PublicKey::from(key),
            signature,
        }
    }

    fn validate(&self) -> Result<(), DecodeError> {
        match self {
            Self::List(l) | Self::Update(l) => l.validate(),
            Self::License(l) if l.devices == 0 => Err(field("license.devices", "at least one")),
            Self::License(l) if l.regions.len() > MAX_REGIONS => {
                Err(field("license.regions", "too many"))
            }
            Self::License(l) if l.expiry.is_some_and(|e| e <= l.start) => {
                Err(field("license.expiry", "before its start"))
            }
            _ => Ok(()),
        }
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + body.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(body);
    v
}

impl Signed {
    /// The encoding in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(&self.message).unwrap_or_default();
        let mut out = signed_bytes(&body);
        out.extend_from_slice(&self.signer.0);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and checks limits, without verifying the signature ([`Signed::verify`]).
    ///
    /// # Errors
    ///
    /// [`DecodeError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use streamspace_market::message::{Message, Signed};
    /// use streamspace_ledger::{AccountId, TransactionId, Timestamp};
    /// let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    /// let m = Message::Revoke {
    ///     payment: TransactionId { payer: AccountId::new(1001), valid_start: Timestamp::default() },
    ///     reason: streamspace_market::message::RevokeReason::Disputed,
    /// }.sign(&key);
    /// let back = Signed::decode(&m.encode())?;
    /// back.verify()?;
    /// assert_eq!(back, m);
    /// assert!(Signed::decode(&m.encode()[..40]).is_err());
    /// # Ok::<(), streamspace_market::message::DecodeError>(())
    /// ```
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < DOMAIN.len() + 96 {
            return Err(DecodeError::Framing("too short"));
        }
        if &b[..DOMAIN.len()] != DOMAIN {
            return Err(DecodeError::Framing("domain tag"));
        }
        let body = &b[DOMAIN.len()..b.len() - 96];
        if body.len() > MAX_BODY {
            return Err(DecodeError::TooLong(body.len()));
        }
        let message: Message =
            postcard::from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))?;
        if postcard::to_allocvec(&message).ok().as_deref() != Some(body) {
            return Err(DecodeError::Body("not in canonical form".into()));
        }
        message.validate()?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&b[b.len() - 96..b.len() - 64]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[b.len() - 64..]);
        Ok(Self {
            message,
            signer: PublicKey(signer),
            signature,
        })
    }

    /// Decodes and verifies the signature over the bytes as received (canonical, so the same
    /// as re-encoded).
    ///
    /// # Errors
    ///
    /// [`DecodeError`].
    pub fn decode_verified(b: &[u8]) -> Result<Self, DecodeError> {
        let s = Self::decode(b)?;
        let key = VerifyingKey::from_bytes(&s.signer.0).map_err(|_| DecodeError::BadSignature)?;
        key.verify(&b[..b.len() - 96], &Signature::from_bytes(&s.signature))
            .map_err(|_| DecodeError::BadSignature)?;
        Ok(s)
    }

    /// Decodes and verifies many messages, with Ed25519 batch verification over chunks spread
    /// across threads; a chunk that fails as a whole is verified one by one to tell which. The
    /// results are in the order given.
    pub fn decode_verified_many(messages: &[&[u8]]) -> Vec<Result<Self, DecodeError>> {
        use rayon::prelude::*;
        messages
            .par_chunks(64)
            .flat_map_iter(|chunk| {
                let decoded: Vec<Result<Self, DecodeError>> =
                    chunk.iter().map(|b| Self::decode(b)).collect();
                let mut msgs = Vec::new();
                let mut sigs = Vec::new();
                let mut keys = Vec::new();
                let mut all_keys = true;
                for (b, d) in chunk.iter().zip(&decoded) {
                    if let Ok(s) = d {
                        match VerifyingKey::from_bytes(&s.signer.0) {
                            Ok(k) => {
                                msgs.push(&b[..b.len() - 96]);
                                sigs.push(Signature::from_bytes(&s.signature));
                                keys.push(k);
                            }
                            Err(_) => all_keys = false,
                        }
                    }
                }
                let batch_ok = all_keys && ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok();
                chunk
                    .iter()
                    .zip(decoded)
                    .map(|(b, d)| match d {
                        Ok(s) if batch_ok => Ok(s),
                        Ok(_) => Self::decode_verified(b),
                        Err(e) => Err(e),
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Checks the signature against the signer's key.
    ///
    /// # Errors
    ///
    /// [`DecodeError::BadSignature`].
    pub fn verify(&self) -> Result<(), DecodeError> {
        let body = postcard::to_allocvec(&self.message).map_err(|_| DecodeError::BadSignature)?;
        let key =
            VerifyingKey::from_bytes(&self.signer.0).map_err(|_| DecodeError::BadSignature)?;
        key.verify(
            &signed_bytes(&body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| DecodeError::BadSignature)
    }
}

mod cid_bytes {
    use cid::Cid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&cid.to_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        let b: &[u8] = Deserialize::deserialize(d)?;
        Cid::try_from(b).map_err(serde::de::Error::custom)
    }
}
