//! The marketplace's state, rebuilt by anyone from the ordered messages of its consensus topic:
//! a pure state machine (no I/O, no clock but the consensus times it is given), so every
//! replica that replays the same topic reaches the same state.
//!
//! The catalog is fed [`TopicMessage`]s as the ledger serves them: besides the bytes and the
//! consensus time, each names the account that paid for (and so signed) its submission. A
//! listing counts only when its seller published it, and a content root belongs to the seller
//! of its first listing in consensus order (see the crate's README). A message split in
//! chunks is applied when its last chunk arrives, at that chunk's consensus time.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use cid::Cid;
use streamspace_ledger::{AccountId, PublicKey, Timestamp, TopicMessage, TransactionId};

use crate::message::{DecodeError, License, Listing, ListingId, Message, RevokeReason, Signed};

/// A message the catalog refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// Malformed, over a limit, or badly signed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A listing id already taken.
    #[error("listing {0} exists")]
    Exists(ListingId),
    /// No such listing.
    #[error("no listing {0}")]
    UnknownListing(ListingId),
    /// The listing was withdrawn.
    #[error("listing {0} was withdrawn")]
    Withdrawn(ListingId),
    /// Signed by a key other than the one that must sign it.
    #[error("{what} for {listing} signed by a key that may not")]
    WrongSigner {
        /// What was signed.
        what: &'static str,
        /// The listing.
        listing: ListingId,
    },
    /// A version not above the current one (a replay, or out of order).
    #[error("listing {listing} version {got} is not above {current}")]
    StaleVersion {
        /// The listing.
        listing: ListingId,
        /// The version in the message.
        got: u32,
        /// The current version.
        current: u32,
    },
    /// An update that changes the content.
    #[error("an update of {0} may not change its content")]
    ContentChanged(ListingId),
    /// A license for a version of the listing that never existed.
    #[error("license for version {version} of {listing}, which never existed")]
    UnknownVersion {
        /// The listing.
        listing: ListingId,
        /// The version.
        version: u32,
    },
    /// A second license for one payment.
    #[error("payment {0:?} already licensed")]
    Replayed(TransactionId),
    /// No license for that payment.
    #[error("no license for payment {0:?}")]
    UnknownLicense(TransactionId),
    /// The license was revoked.
    #[error("license for payment {0:?} was revoked")]
    Revoked(TransactionId),
    /// A resale of a license that is not an ownership NFT, or of another NFT.
    #[error("license for payment {0:?} cannot be resold so")]
    NotResellable(TransactionId),
    /// A listing not published by its seller: the topic message was paid for by another
    /// account, or the ledger did not say which.
    #[error("listing {listing} published by {publisher:?}, not by its seller")]
    NotTheSeller {
        /// The listing.
        listing: ListingId,
        /// The account that paid for the submission, if known.
        publisher: Option<AccountId>,
    },
    /// The content root was claimed by another seller's earlier listing.
    #[error("content {content} was listed first by {owner}")]
    Claimed {
        /// The content root.
        content: Cid,
        /// The seller whose listing claimed it.
        owner: AccountId,
    },
    /// A chunk of a split message that cannot be part of one: numbered outside its total,
    /// more than [`MAX_CHUNKS`], a total that disagrees with its other chunks, a chunk
    /// received twice, or more bytes than a market message holds.
    #[error("chunk of a split message refused: {0}")]
    BadChunk(&'static str),
}

/// Most chunks of a split message (Hedera's limit is 20; a market message of
/// [`MAX_BODY`](crate::message::MAX_BODY) bytes takes 17 of 1,024 bytes).
pub const MAX_CHUNKS: u32 = 20;
/// Most split messages awaiting their other chunks. Past it, the oldest of the publisher
/// with the most waiting is dropped, so a publisher flooding partial messages evicts its own
/// first.
pub const MAX_PENDING: usize = 1024;
/// Seconds after the first chunk's valid start past which a split message can no longer be
/// completed (Hedera's longest transaction valid duration): it is dropped then.
pub const CHUNK_WINDOW_SECS: i64 = 180;
/// Most bytes of a signed market message: tag, body, key, signature.
const MAX_MESSAGE: usize = 16 + crate::message::MAX_BODY + 96;

/// The chunks of a split message received so far.
#[derive(Debug, Clone)]
struct Partial {
    chunks: Vec<Option<Bytes>>,
    bytes: usize,
    arrival: u64,
}

/// A listing's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The current version.
    pub listing: Listing,
    /// Every version's price and terms, by version (licenses refer to them).
    pub versions: BTreeMap<u32, Listing>,
    /// The key that listed it.
    pub seller_key: PublicKey,
    /// When it was withdrawn, if it was.
    pub withdrawn: Option<Timestamp>,
}

/// A license as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// The license.
    pub license: License,
    /// When it reached consensus.
    pub at: Timestamp,
    /// Payouts to rights holders.
    pub payouts: Vec<(AccountId, u64)>,
    /// Whether it was revoked, and why.
    pub revoked: Option<RevokeReason>,
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// A listing appeared.
    Listed(ListingId),
    /// A listing changed.
    Updated(ListingId),
    /// A listing was withdrawn.
    Withdrawn(ListingId),
    /// A license was issued.
    Licensed(TransactionId),
    /// A license was revoked.
    Revoked(TransactionId),
    /// A chunk of a split message, kept until the message is whole (then applied at the
    /// consensus time of its last chunk).
    Chunk,
}

/// Income of one rights holder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Income {
    /// Licenses that paid it.
    pub sales: u64,
    /// Tinybars earned.
    pub earned: u64,
    /// Tinybars of revoked (refunded) sales.
    pub refunded: u64,
}

/// The marketplace state.
///
/// # Examples
///
/// ```
/// use streamspace_ledger::{AccountId, PublicKey, Timestamp, TopicMessage, TransactionId};
/// use streamspace_market::catalog::Catalog;
/// use streamspace_market::message::{Listing, ListingId, Message, Share, Terms};
/// let seller = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let listing = Listing {
///     id: ListingId { seller: AccountId::new(1001), number: 1 },
///     version: 1,
///     content: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o".parse()?,
///     title: "Night Train".into(),
///     description: String::new(),
///     tags: vec!["film".into()],
///     price: 500_000_000,
///     terms: Terms { rental_secs: Some(48 * 3600), devices: 2, regions: vec![] },
///     split: vec![Share { account: AccountId::new(1001), bps: 10_000 }],
///     royalty_bps: 0,
///     key_service: PublicKey::from(&seller),
/// };
/// let mut catalog = Catalog::default();
/// let bytes = Message::List(listing).sign(&seller).encode();
/// // As the ledger serves it: the submission was paid for by the seller's account.
/// let published = TopicMessage {
///     sequence: 1,
///     consensus: Timestamp::default(),
///     message: bytes.into(),
///     running_hash: vec![0; 48],
///     id: Some(TransactionId { payer: AccountId::new(1001), valid_start: Timestamp::default() }),
///     chunk: None,
/// };
/// catalog.apply(&published)?;
/// assert_eq!(catalog.search("night").count(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    listings: BTreeMap<ListingId, Entry>,
    sales: HashMap<TransactionId, Sale>,
    claims: HashMap<Cid, AccountId>,
    pending: HashMap<TransactionId, Partial>,
    arrivals: u64,
    rejected: u64,
}

/// The account that paid for a topic message's submission, and so signed it: the ledger
/// refuses a submission its payer did not sign, and a chunk whose first chunk another account
/// paid for.
pub fn publisher(message: &TopicMessage) -> Option<AccountId> {
    match message.chunk {
        Some(c) => Some(c.initial.payer),
        None => message.id.map(|id| id.payer),
    }
}

fn whole(message: &TopicMessage) -> bool {
    message.chunk.is_none_or(|c| c.total == 1)
}

impl Catalog {
    /// Applies one message of the topic, as the ledger served it.
    ///
    /// # Errors
    ///
    /// [`MarketError`]; the state is unchanged but for the count of rejected messages.
    pub fn apply(&mut self, message: &TopicMessage) -> Result<Applied, MarketError> {
        let r = self.try_apply(message);
        if r.is_err() {
            self.rejected += 1;
        }
        r
    }

    /// Replays many messages in order, verifying their signatures in batches across threads
    /// first; the same result as applying them one by one.
    pub fn replay<'a>(
        &mut self,
        messages: impl IntoIterator<Item = &'a TopicMessage>,
    ) -> Vec<Result<Applied, MarketError>> {
        let messages: Vec<&TopicMessage> = messages.into_iter().collect();
        let bytes: Vec<&[u8]> = messages.iter().map(|m| &m.message[..]).collect();
        let verified = Signed::decode_verified_many(&bytes);
        messages
            .into_iter()
            .zip(verified)
            .map(|(m, v)| {
                let r = if whole(m) {
                    v.map_err(MarketError::from)
                        .and_then(|s| self.apply_verified(m.consensus, publisher(m), s))
                } else {
                    self.chunk(m)
                };
                if r.is_err() {
                    self.rejected += 1;
                }
                r
            })
            .collect()
    }

    fn try_apply(&mut self, message: &TopicMessage) -> Result<Applied, MarketError> {
        if !whole(message) {
            return self.chunk(message);
        }
        let signed = Signed::decode_verified(&message.message)?;
        self.apply_verified(message.consensus, publisher(message), signed)
    }

    /// Keeps a chunk of a split message; applies the message once it is whole. Every chunk
    /// names the first chunk's transaction, whose payer the ledger requires of every chunk.
    fn chunk(&mut self, message: &TopicMessage) -> Result<Applied, MarketError> {
        let Some(c) = message.chunk else {
            return Err(MarketError::BadChunk("no chunk info"));
        };
        if c.total > MAX_CHUNKS {
            return Err(MarketError::BadChunk("too many chunks"));
        }
        if c.number == 0 || c.number > c.total {
            return Err(MarketError::BadChunk("numbered outside its total"));
        }
        let slot = (c.number - 1) as usize;
        let total = c.total as usize;
        if let Some(p) = self.pending.get(&c.initial) {
            if p.chunks.len() != total {
                return Err(MarketError::BadChunk("total differs from its other chunks"));
            }
            if p.chunks[slot].is_some() {
                return Err(MarketError::BadChunk("received twice"));
            }
            if p.bytes + message.message.len() > MAX_MESSAGE {
                return Err(MarketError::BadChunk("longer than a market message"));
            }
        } else if message.message.len() > MAX_MESSAGE {
            return Err(MarketError::BadChunk("longer than a market message"));
        }
        if message.consensus > c.initial.valid_start.plus_secs(CHUNK_WINDOW_SECS) {
            self.pending.remove(&c.initial);
            return Err(MarketError::BadChunk("after its message's validity window"));
        }
        if !self.pending.contains_key(&c.initial) {
            self.make_room(message.consensus);
        }
        self.arrivals += 1;
        let arrival = self.arrivals;
        let p = self.pending.entry(c.initial).or_insert_with(|| Partial {
            chunks: vec![None; total],
            bytes: 0,
            arrival,
        });
        p.chunks[slot] = Some(message.message.clone());
        p.bytes += message.message.len();
        if p.chunks.iter().any(Option::is_none) {
            return Ok(Applied::Chunk);
        }
        let whole: Vec<u8> = p
            .chunks
            .iter()
            .flatten()
            .flat_map(|b| b.iter().copied())
            .collect();
        self.pending.remove(&c.initial);
        let signed = Signed::decode_verified(&whole)?;
        self.apply_verified(message.consensus, Some(c.initial.payer), signed)
    }

    /// Drops split messages that can no longer be completed at `now`, then, if still full, the
    /// oldest of the publisher with the most waiting.
    fn make_room(&mut self, now: Timestamp) {
        self.pending
            .retain(|id, _| now <= id.valid_start.plus_secs(CHUNK_WINDOW_SECS));
        if self.pending.len() < MAX_PENDING {
            return;
        }
        let mut per: HashMap<AccountId, usize> = HashMap::new();
        for id in self.pending.keys() {
            *per.entry(id.payer).or_default() += 1;
        }
        let victim = self
            .pending
            .iter()
            .max_by_key(|(id, p)| (per[&id.payer], std::cmp::Reverse(p.arrival)))
            .map(|(id, _)| *id);
        if let Some(id) = victim {
            self.pending.remove(&id);
        }
    }

    fn apply_verified(
        &mut self,
        at: Timestamp,
        publisher: Option<AccountId>,
        signed: Signed,
    ) -> Result<Applied, MarketError> {
        let signer = signed.signer;
        match signed.message {
            Message::List(l) => {
                if publisher != Some(l.id.seller) {
                    return Err(MarketError::NotTheSeller {
                        listing: l.id,
                        publisher,
                    });
                }
                if self.listings.contains_key(&l.id) {
                    return Err(MarketError::Exists(l.id));
                }
                if l.version != 1 {
                    return Err(MarketError::StaleVersion {
                        listing: l.id,
                        got: l.version,
                        current: 0,
                    });
                }
                match self.claims.get(&l.content) {
                    Some(owner) if *owner != l.id.seller => {
                        return Err(MarketError::Claimed {
                            content: l.content,
                            owner: *owner,
                        });
                    }
                    _ => {}
                }
                let id = l.id;
                self.claims.insert(l.content, l.id.seller);
                self.listings.insert(
                    id,
                    Entry {
                        versions: BTreeMap::from([(1, l.clone())]),
                        listing: l,
                        seller_key: signer,
                        withdrawn: None,
                    },
                );
                Ok(Applied::Listed(id))
            }
            Message::Update(l) => {
                let e = self.live(l.id, signer, "update")?;
                if l.version <= e.listing.version {
                    return Err(MarketError::StaleVersion {
                        listing: l.id,
                        got: l.version,
                        current: e.listing.version,
                    });
                }
                if l.content != e.listing.content {
                    return Err(MarketError::ContentChanged(l.id));
                }
                let id = l.id;
                e.versions.insert(l.version, l.clone());
                e.listing = l;
                Ok(Applied::Updated(id))
            }
            Message::Withdraw { listing, version } => {
                let e = self.live(listing, signer, "withdrawal")?;
                if version <= e.listing.version {
                    return Err(MarketError::StaleVersion {
                        listing,
                        got: version,
                        current: e.listing.version,
                    });
                }
                e.listing.version = version;
                e.withdrawn = Some(at);
                Ok(Applied::Withdrawn(listing))
            }
            Message::License(license) => {
                let e = self
                    .listings
                    .get(&license.listing)
                    .ok_or(MarketError::UnknownListing(license.listing))?;
                let terms =
                    e.versions
                        .get(&license.version)
                        .ok_or(MarketError::UnknownVersion {
                            listing: license.listing,
                            version: license.version,
                        })?;
                if terms.key_service != signer {
                    return Err(MarketError::WrongSigner {
                        what: "license",
                        listing: license.listing,
                    });
                }
                if self.sales.contains_key(&license.payment) {
                    return Err(MarketError::Replayed(license.payment));
                }
                let payouts = match license.resale {
                    None => terms.payouts(),
                    Some(r) => {
                        let previous = self
                            .sales
                            .get(&r.previous)
                            .ok_or(MarketError::UnknownLicense(r.previous))?;
                        if previous.license.nft.is_none() || previous.license.nft != license.nft {
                            return Err(MarketError::NotResellable(r.previous));
                        }
                        terms.royalties(r.price)
                    }
                };
                let payment = license.payment;
                if let Some(previous) = license.resale.and_then(|r| self.sales.get_mut(&r.previous))
                {
                    previous.revoked = Some(RevokeReason::Resold(payment));
                }
                self.sales.insert(
                    payment,
                    Sale {
                        license,
                        at,
                        payouts,
                        revoked: None,
                    },
                );
                Ok(Applied::Licensed(payment))
            }
            Message::Revoke { payment, reason } => {
                let sale = self
                    .sales
                    .get(&payment)
                    .ok_or(MarketError::UnknownLicense(payment))?;
                let listing = sale.license.listing;
                let allowed = self
                    .listings
                    .get(&listing)
                    .and_then(|e| e.versions.get(&sale.license.version))
                    .is_some_and(|v| v.key_service == signer);
                if !allowed {
                    return Err(MarketError::WrongSigner {
                        what: "revocation",
                        listing,
                    });
                }
                if sale.revoked.is_some() {
                    return Err(MarketError::Revoked(payment));
                }
                if let Some(s) = self.sales.get_mut(&payment) {
                    s.revoked = Some(reason);
                }
                Ok(Applied::Revoked(payment))
            }
        }
    }

    fn live(
        &mut self,
        id: ListingId,
        signer: PublicKey,
        what: &'static str,
    ) -> Result<&mut Entry, MarketError> {
        let e = self
            .listings
            .get_mut(&id)
            .ok_or(MarketError::UnknownListing(id))?;
        if e.seller_key != signer {
            return Err(MarketError::WrongSigner { what, listing: id });
        }
        if e.withdrawn.is_some() {
            return Err(MarketError::Withdrawn(id));
        }
        Ok(e)
    }

    /// A listing, withdrawn or not.
    pub fn listing(&self, id: ListingId) -> Option<&Entry> {
        self.listings.get(&id)
    }

    /// The seller a content root belongs to: the seller of its first listing in consensus
    /// order. It stays the seller's after the listing is withdrawn.
    pub fn owner(&self, content: &Cid) -> Option<AccountId> {
        self.claims.get(content).copied()
    }

    /// Listings on offer whose title contains `text` (case-insensitive) or that carry it as a
    /// tag.
    pub fn search<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a Listing> + 'a {
        let needle = text.to_lowercase();
        self.on_offer().filter(move |l| {
            l.title.to_lowercase().contains(&needle)
                || l.tags.iter().any(|t| t.eq_ignore_ascii_case(&needle))
        })
    }

    /// Listings on offer priced within `min..=max` tinybars.
    pub fn priced(&self, min: u64, max: u64) -> impl Iterator<Item = &Listing> + '_ {
        self.on_offer()
            .filter(move |l| (min..=max).contains(&l.price))
    }

    /// Listings not withdrawn.
    pub fn on_offer(&self) -> impl Iterator<Item = &Listing> + '_ {
        self.listings
            .values()
            .filter(|e| e.withdrawn.is_none())
            .map(|e| &e.listing)
    }

    /// The license sold for `payment`, if any.
    pub fn sale(&self, payment: &TransactionId) -> Option<&Sale> {
        self.sales.get(payment)
    }

    /// Every sale, for audit.
    pub fn sales(&self) -> impl Iterator<Item = &Sale> + '_ {
        self.sales.values()
    }

    /// What each rights holder earned, and what was refunded.
    pub fn income(&self) -> BTreeMap<AccountId, Income> {
        let mut out: BTreeMap<AccountId, Income> = BTreeMap::new();
        for s in self.sales.values() {
            for (account, amount) in &s.payouts {
                let i = out.entry(*account).or_default();
                i.sales += 1;
                if matches!(
                    s.revoked,
                    Some(RevokeReason::Refunded(_) | RevokeReason::Disputed)
                ) {
                    i.refunded += amount;
                } else {
                    i.earned += amount;
                }
            }
        }
        out
    }

    /// Messages refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}
