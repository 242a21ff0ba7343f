//! Buying and key release: the buyer pays with one atomic ledger transfer that carries the split
//! and names the listing in its memo; the listing's key service checks that payment on the
//! ledger, issues a license bound to the buyer's key, and releases the content key — wrapped
//! with HPKE (RFC 9180: X25519, HKDF-SHA256, ChaCha20-Poly1305) to one of the buyer's devices —
//! only for a valid, paid, unexpired, unrevoked license and within its device limit.
//!
//! The service enforces a license only when it releases a key: once a device holds the
//! content key, neither expiry nor revocation takes it back, the device limit counts distinct
//! device keys (not devices), and a request's region is declared by the buyer, not verified.
//! The crate's README says what each term can and cannot mean.

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use streamspace_ledger::{
    AccountId, ChunkInfo, Ledger, LedgerError, NftId, NftTransfer, Operator, PublicKey, Receipt,
    Status, Timestamp, TokenId, TopicId, TopicMessage, Transaction, TransactionId, TxKind,
};
use streamspace_shard::crypto::ContentKey;
use streamspace_shard::keywrap::{self, RecipientKey, WrapError};

use crate::catalog::{Applied, Catalog, MarketError};
use crate::message::{License, Listing, ListingId, Message, Resale, RevokeReason, Signed};
pub use crate::state::StateError;
use crate::state::{Held, State};

const HPKE_INFO: &[u8] = b"streamspace-market content key v1";
const HPKE_EPOCH_INFO: &[u8] = b"streamspace-market epoch key v1";
/// Epochs past the live one whose keys are released ahead: the next, so that a viewer holds
/// it when the stream crosses the boundary.
pub const EPOCH_LOOKAHEAD: u64 = 1;
/// Epoch starts a live listing remembers (the oldest are forgotten first): at 30 segments of
/// 2 s per epoch, 68 hours.
pub const EPOCHS_KEPT: usize = 4096;
const REQUEST_DOMAIN: &[u8; 16] = b"streamspace-kreq";

/// A purchase or key release refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The payment did not succeed on the ledger.
    #[error("payment {0:?} has status {1:?}")]
    NotPaid(TransactionId, Status),
    /// The payment's memo names another listing or version.
    #[error("payment {0:?} is not for this listing")]
    WrongListing(TransactionId),
    /// A rights holder was paid less than its share.
    #[error("payment {payment:?} pays {account} {paid}, its share is {share}")]
    Underpaid {
        /// The payment.
        payment: TransactionId,
        /// The rights holder.
        account: AccountId,
        /// What it received.
        paid: i64,
        /// Its share.
        share: u64,
    },
    /// This service does not issue licenses for the listing.
    #[error("listing {0} names another key service")]
    NotMine(ListingId),
    /// A license was issued for this payment already.
    #[error("payment {0:?} is licensed already")]
    Replayed(TransactionId),
    /// The license does not decode, is not signed by this service, or is not a license.
    #[error("not a license of this service: {0}")]
    BadLicense(String),
    /// The license was revoked.
    #[error("license for {0:?} was revoked")]
    Revoked(TransactionId),
    /// Outside the license's validity.
    #[error("license for {0:?} is not valid now")]
    Expired(TransactionId),
    /// The key request is not signed by the license's buyer, or names another license.
    #[error("key request not signed by the buyer of {0:?}")]
    NotTheBuyer(TransactionId),
    /// The device is not in a region the license covers.
    #[error("license for {0:?} does not cover the device's region")]
    OutOfRegion(TransactionId),
    /// The license's device limit is reached: that many distinct device keys have the
    /// content key already.
    #[error("license for {0:?} allows {1} devices, all in use")]
    TooManyDevices(TransactionId, u16),
    /// The service holds no key for the listing's content.
    #[error("no content key for listing {0}")]
    NoContentKey(ListingId),
    /// The listing is not a live event this service holds epoch keys for
    /// ([`KeyService::add_live`]).
    #[error("listing {0} is not a live event of this service")]
    NotLive(ListingId),
    /// The epoch asked for is not live: the stream has not reached it (a key is released for
    /// the live epoch and the next one only), or has not started.
    #[error("epoch {epoch} of listing {listing} is not live (the live epoch is {live:?})")]
    EpochNotLive {
        /// The listing.
        listing: ListingId,
        /// The epoch asked for.
        epoch: u64,
        /// The live epoch, `None` before the stream's first.
        live: Option<u64>,
    },
    /// A rental or pay-per-view asks for an epoch that had ended before the license began (or
    /// whose end this service no longer knows).
    #[error("epoch {epoch} ended before license {payment:?} began")]
    EpochBeforeLicense {
        /// The license.
        payment: TransactionId,
        /// The epoch asked for.
        epoch: u64,
    },
    /// The listed content is not in the publisher's store.
    #[error("content {0} is not in the store")]
    ContentMissing(cid::Cid),
    /// The listing breaks a rule (see [`Listing::validate`]).
    #[error(transparent)]
    Invalid(#[from] crate::message::DecodeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] streamspace_shard::store::StoreError),
    /// An ownership listing, and this service has no NFT class to mint licenses in.
    #[error("ownership licenses need an NFT class (KeyService::with_nft_class)")]
    NoNftClass,
    /// The device key is not an X25519 public key, or unwrapping failed.
    #[error("key wrapping: {0}")]
    Wrap(&'static str),
    /// The key asked for is not the one the paying transaction's memo commits to.
    #[error("transaction {0:?} commits to another license key")]
    NotCommitted(TransactionId),
    /// This service issued no license for that payment.
    #[error("no license of this service for payment {0:?}")]
    NotIssued(TransactionId),
    /// The payment names a listing, or a version of it, not published on the market topic.
    #[error("listing {0} version {1} is not on the market topic")]
    UnknownListing(ListingId, u32),
    /// A rental: only ownership licenses are resold.
    #[error("license for {0:?} is not an ownership license")]
    NotOwnership(TransactionId),
    /// The resale did not move the license's NFT from its holder to the resale's payer.
    #[error("resale {0:?} did not move the license's NFT from its holder to its payer")]
    NftNotMoved(TransactionId),
    /// The catalog refused a market message.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The key service's own record could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Signs a new listing for publication on the market topic, after checking its rules and
/// that its content is in the publisher's `store` (nobody can buy what cannot be fetched).
///
/// # Errors
///
/// [`ServiceError::Invalid`] or [`ServiceError::ContentMissing`].
pub async fn list<S: streamspace_shard::store::BlockStore>(
    store: &S,
    seller_key: &SigningKey,
    listing: Listing,
) -> Result<Signed, ServiceError> {
    listing.validate()?;
    if !store.has(&listing.content).await? {
        return Err(ServiceError::ContentMissing(listing.content));
    }
    Ok(Message::List(listing).sign(seller_key))
}

/// Signs the listing of a live event for publication on the market topic, after checking its
/// rules. Its `content` names the stream (`streamspace-node` uses the label of the stream's
/// key, `streamspace_live::StreamKey::label`): the segments do not exist yet, so unlike
/// [`list`] nothing is looked for in a store. Its key service sells it with
/// [`KeyService::add_live`].
///
/// # Errors
///
/// [`ServiceError::Invalid`].
pub fn list_live(seller_key: &SigningKey, listing: Listing) -> Result<Signed, ServiceError> {
    listing.validate()?;
    Ok(Message::List(listing).sign(seller_key))
}

/// Publishes a market message on `topic`, paid for (and so signed) by `publisher`: a listing
/// counts only when its seller's account publishes it ([`crate::Catalog::apply`]).
///
/// Every chunk carries its chunk info, a message of one chunk too, so that the mirror node
/// names the submitting transaction (and its payer) for every message, as it does only for
/// messages with chunk info.
///
/// # Errors
///
/// [`ServiceError::Ledger`] if a chunk is refused.
pub async fn publish<L: Ledger>(
    ledger: &L,
    publisher: &Operator,
    topic: TopicId,
    message: &Signed,
) -> Result<Vec<Receipt>, ServiceError> {
    let bytes = Bytes::from(message.encode());
    let first = TransactionId::generate(publisher.account, ledger.now());
    let mut txs = streamspace_ledger::tx::chunk_message(
        first,
        topic,
        &bytes,
        streamspace_ledger::fees::MAX_MESSAGE_BYTES,
    );
    if let [tx] = txs.as_mut_slice() {
        if let TxKind::SubmitMessage { chunk, .. } = &mut tx.kind {
            *chunk = Some(ChunkInfo {
                initial: first,
                total: 1,
                number: 1,
            });
        }
    }
    let mut out = Vec::with_capacity(txs.len());
    for tx in txs {
        let r = ledger.execute(tx, &[&publisher.key]).await?;
        if r.status != Status::Success {
            return Err(ServiceError::NotPaid(r.id, r.status));
        }
        out.push(r);
    }
    Ok(out)
}

const COMMITMENT_DOMAIN: &[u8] = b"streamspace-market buyer key v1";

/// The commitment to a license key that a purchase or resale carries in its memo: the first
/// 16 bytes of `SHA-256("streamspace-market buyer key v1" || key)`. The key service binds the
/// license to a key only if it matches, so nobody who merely sees the payment can claim its
/// license with a key of its own.
pub fn key_commitment(key: &PublicKey) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_DOMAIN);
    h.update(key.0);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The memo a purchase carries: the listing and the version bought, and the commitment to the
/// key the license is to be bound to ([`key_commitment`]), as
/// `streamspace-market:<seller>/<number>@<version>~<32 hex digits>`.
///
/// # Examples
///
/// ```
/// use streamspace_ledger::{AccountId, PublicKey};
/// use streamspace_market::message::ListingId;
/// let listing = ListingId { seller: AccountId::new(1001), number: 7 };
/// let memo = streamspace_market::service::memo(listing, 1, &PublicKey([3; 32]));
/// assert!(memo.starts_with("streamspace-market:0.0.1001/7@1~"));
/// assert!(memo.len() <= 100, "Hedera's memo limit");
/// ```
pub fn memo(listing: ListingId, version: u32, buyer_key: &PublicKey) -> String {
    format!(
        "streamspace-market:{listing}@{version}~{}",
        hex(&key_commitment(buyer_key))
    )
}

/// Pays for `listing`: one atomic transfer from the buyer to every rights holder, its share
/// each, with the listing named in the memo and the buyer's commitment to `buyer_key`, the
/// key its license is to be bound to (see [`memo`]).
///
/// # Errors
///
/// [`ServiceError::Ledger`] (insufficient balance, say), or [`ServiceError::NotPaid`].
pub async fn pay<L: Ledger>(
    ledger: &L,
    buyer: &Operator,
    listing: &Listing,
    buyer_key: &PublicKey,
) -> Result<TransactionId, ServiceError> {
    let price = i64::try_from(listing.price).map_err(|_| LedgerError::Transport("price".into()))?;
    let mut hbar = vec![(buyer.account, -price)];
    for (account, amount) in listing.payouts() {
        hbar.push((account, amount as i64));
    }
    let id = TransactionId::generate(buyer.account, ledger.now());
    let mut tx = Transaction::new(
        id,
        TxKind::Transfer {
            hbar,
            nfts: Vec::new(),
        },
    );
    tx.memo = memo(listing.id, listing.version, buyer_key);
    let receipt = ledger.execute(tx, &[&buyer.key]).await?;
    if receipt.status != Status::Success {
        return Err(ServiceError::NotPaid(id, receipt.status));
    }
    Ok(id)
}

/// Checks a license as anyone can: it decodes, is signed by `service`, and is valid at `now`.
/// (Whether it was revoked is on the market topic: see [`crate::Catalog::sale`].)
///
/// # Errors
///
/// [`ServiceError::BadLicense`] or [`ServiceError::Expired`].
pub fn check_license(
    license: &[u8],
    service: &PublicKey,
    now: Timestamp,
) -> Result<License, ServiceError> {
    let signed =
        Signed::decode_verified(license).map_err(|e| ServiceError::BadLicense(e.to_string()))?;
    if signed.signer != *service {
        return Err(ServiceError::BadLicense("signed by another service".into()));
    }
    let Message::License(l) = signed.message else {
        return Err(ServiceError::BadLicense("not a license".into()));
    };
    if now < l.start || l.expiry.is_some_and(|e| now >= e) {
        return Err(ServiceError::Expired(l.payment));
    }
    Ok(l)
}

fn check_paid(
    record: &streamspace_ledger::Record,
    payment: TransactionId,
    due: &[(AccountId, u64)],
) -> Result<(), ServiceError> {
    for (account, share) in due {
        let paid = record
            .transfers
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, v)| *v)
            .sum::<i64>();
        // The payer may be a rights holder too: its net is its share less what it paid.
        if *account != payment.payer && !u64::try_from(paid).is_ok_and(|p| p >= *share) {
            return Err(ServiceError::Underpaid {
                payment,
                account: *account,
                paid,
                share: *share,
            });
        }
    }
    Ok(())
}

/// The memo of a resale of the NFT `nft` of a license of `listing`, with the new holder's
/// commitment to `buyer_key` ([`key_commitment`]), as
/// `streamspace-market:resale:<seller>/<number>#<serial>~<32 hex digits>`.
pub fn resale_memo(listing: ListingId, nft: NftId, buyer_key: &PublicKey) -> String {
    format!(
        "{}~{}",
        resale_head(listing, nft),
        hex(&key_commitment(buyer_key))
    )
}

fn resale_head(listing: ListingId, nft: NftId) -> String {
    format!("streamspace-market:resale:{listing}#{}", nft.serial)
}

/// A memo split into what it names and the key commitment it carries.
fn split_commitment(memo: &str) -> Option<(&str, &str)> {
    memo.rsplit_once('~')
}

/// The listing and version a purchase memo ([`memo`]) names, and its key commitment.
fn parse_memo(memo: &str) -> Option<(ListingId, u32, &str)> {
    let (head, commitment) = split_commitment(memo)?;
    let rest = head.strip_prefix("streamspace-market:")?;
    let (listing, version) = rest.rsplit_once('@')?;
    Some((listing.parse().ok()?, version.parse().ok()?, commitment))
}

/// Associates `account` with the key service's NFT class, so it can receive ownership
/// licenses (Hedera requires it before an account holds a token).
///
/// # Errors
///
/// [`ServiceError::Ledger`].
pub async fn associate<L: Ledger>(
    ledger: &L,
    account: &Operator,
    token: TokenId,
) -> Result<(), ServiceError> {
    let tx = Transaction::new(
        TransactionId::generate(account.account, ledger.now()),
        TxKind::Associate {
            account: account.account,
            tokens: vec![token],
        },
    );
    let r = ledger.execute(tx, &[&account.key]).await?;
    if r.status != Status::Success {
        return Err(ServiceError::NotPaid(r.id, r.status));
    }
    Ok(())
}

/// Resells an ownership license: one atomic transfer moves its NFT from `owner` to `buyer`,
/// pays `owner` the price less royalties, and pays every rights holder its royalty. Both sign.
/// The memo commits to `buyer_key`, the key the new holder's license is to be bound to
/// ([`resale_memo`]).
///
/// # Errors
///
/// [`ServiceError::Ledger`] if the transfer fails (nothing moves then).
pub async fn resell<L: Ledger>(
    ledger: &L,
    owner: &Operator,
    buyer: &Operator,
    listing: &Listing,
    license: &License,
    price: u64,
    buyer_key: &PublicKey,
) -> Result<TransactionId, ServiceError> {
    let nft = license
        .nft
        .ok_or(ServiceError::WrongListing(license.payment))?;
    let royalties = listing.royalties(price);
    let royalty: u64 = royalties.iter().map(|(_, a)| a).sum();
    let total = i64::try_from(price).map_err(|_| LedgerError::Transport("price".into()))?;
    let mut hbar = vec![
        (buyer.account, -total),
        (owner.account, (price - royalty) as i64),
    ];
    hbar.extend(royalties.iter().map(|(a, v)| (*a, *v as i64)));
    let id = TransactionId::generate(buyer.account, ledger.now());
    let mut tx = Transaction::new(
        id,
        TxKind::Transfer {
            hbar,
            nfts: vec![NftTransfer {
                nft,
                from: owner.account,
                to: buyer.account,
            }],
        },
    );
    tx.memo = resale_memo(license.listing, nft, buyer_key);
    let r = ledger.execute(tx, &[&buyer.key, &owner.key]).await?;
    if r.status != Status::Success {
        return Err(ServiceError::NotPaid(id, r.status));
    }
    Ok(id)
}

/// A buyer's request for the key, for one of its devices, signed with the key its license is
/// bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// The license (its payment).
    pub payment: TransactionId,
    /// A label for the device, as the buyer names it; for the buyer's records only. The
    /// service counts devices by their keys.
    pub device: [u8; 16],
    /// The device's X25519 public key, to wrap the content key to. It is what the service
    /// counts against the license's device limit.
    pub device_key: [u8; 32],
    /// The region the device is in (ISO 3166 alpha-2), as the buyer declares it.
    pub region: Option<[u8; 2]>,
    signature: [u8; 64],
}

impl KeyRequest {
    fn signed_bytes(
        payment: &TransactionId,
        device: &[u8; 16],
        device_key: &[u8; 32],
        region: Option<[u8; 2]>,
    ) -> Vec<u8> {
        let mut b = REQUEST_DOMAIN.to_vec();
        b.extend_from_slice(&postcard::to_allocvec(payment).unwrap_or_default());
        b.extend_from_slice(device);
        b.extend_from_slice(device_key);
        b.extend_from_slice(&region.unwrap_or([0, 0]));
        b
    }

    /// Signs a request with the buyer's key, for a device whose region is not declared (only
    /// licenses valid everywhere release keys to it).
    pub fn sign(
        buyer: &SigningKey,
        payment: TransactionId,
        device: [u8; 16],
        device_key: [u8; 32],
    ) -> Self {
        Self::sign_in(buyer, payment, device, device_key, None)
    }

    /// Signs a request for a device in `region`.
    pub fn sign_in(
        buyer: &SigningKey,
        payment: TransactionId,
        device: [u8; 16],
        device_key: [u8; 32],
        region: Option<[u8; 2]>,
    ) -> Self {
        let signature = buyer
            .sign(&Self::signed_bytes(&payment, &device, &device_key, region))
            .to_bytes();
        Self {
            payment,
            device,
            device_key,
            region,
            signature,
        }
    }

    fn verify(&self, buyer: &PublicKey) -> bool {
        VerifyingKey::from_bytes(&buyer.0).is_ok_and(|k| {
            k.verify(
                &Self::signed_bytes(&self.payment, &self.device, &self.device_key, self.region),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
        })
    }
}

/// A content key wrapped to one device (HPKE, see [`streamspace_shard::keywrap`]).
pub use streamspace_shard::keywrap::WrappedKey;

/// A device's X25519 key pair, to receive content keys.
#[derive(Debug)]
pub struct DeviceKey(RecipientKey);

impl DeviceKey {
    /// A new random key pair.
    pub fn generate() -> Self {
        Self(RecipientKey::generate())
    }

    /// The public key, for [`KeyRequest::sign`].
    pub fn public_bytes(&self) -> [u8; 32] {
        self.0.public_bytes()
    }

    /// Unwraps the key of `epoch` of a live listing released for `payment`
    /// ([`KeyService::release_epoch`]).
    ///
    /// # Errors
    ///
    /// [`ServiceError::Wrap`] if the key was not wrapped to this device for that license and
    /// epoch.
    pub fn unwrap_epoch(
        &self,
        wrapped: &WrappedKey,
        payment: &TransactionId,
        epoch: u64,
    ) -> Result<ContentKey, ServiceError> {
        self.0
            .unwrap(wrapped, HPKE_EPOCH_INFO, &epoch_aad(payment, epoch))
            .map_err(|e| match e {
                WrapError::Encapped => ServiceError::Wrap("malformed encapsulated key"),
                _ => ServiceError::Wrap("does not open with this device key for this epoch"),
            })
    }

    /// Unwraps a content key released for `payment`.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Wrap`] if the key was not wrapped to this device for that license.
    pub fn unwrap(
        &self,
        wrapped: &WrappedKey,
        payment: &TransactionId,
    ) -> Result<ContentKey, ServiceError> {
        let aad = postcard::to_allocvec(payment).unwrap_or_default();
        self.0
            .unwrap(wrapped, HPKE_INFO, &aad)
            .map_err(|e| match e {
                WrapError::Encapped => ServiceError::Wrap("malformed encapsulated key"),
                _ => ServiceError::Wrap("does not open with this device key"),
            })
    }
}

fn epoch_aad(payment: &TransactionId, epoch: u64) -> Vec<u8> {
    let mut aad = postcard::to_allocvec(payment).unwrap_or_default();
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// The keys of a live listing, one per epoch, that a key service releases epoch by epoch
/// instead of one content key: a viewer holds the keys of the epochs it watched, so a key it
/// leaks opens that epoch only. `streamspace-node` implements it over a live stream's key.
///
/// ```
/// use streamspace_market::service::EpochKeys;
/// use streamspace_shard::crypto::ContentKey;
///
/// struct Fixed(Vec<ContentKey>);
/// impl EpochKeys for Fixed {
///     fn epoch_key(&self, epoch: u64) -> ContentKey {
///         self.0[epoch as usize % self.0.len()].clone()
///     }
/// }
/// ```
pub trait EpochKeys: Send + Sync {
    /// The key of `epoch`.
    fn epoch_key(&self, epoch: u64) -> ContentKey;
}

struct LiveListing {
    keys: Box<dyn EpochKeys>,
    /// When each epoch went live, as far as this service was told ([`KeyService::live_edge`]);
    /// at most [`EPOCHS_KEPT`].
    started: std::collections::BTreeMap<u64, Timestamp>,
}

/// The NFT class ownership licenses are minted in: its treasury holds the supply key.
#[derive(Debug, Clone)]
pub struct NftClass {
    /// The treasury (and supply key).
    pub treasury: Operator,
    /// The token.
    pub token: TokenId,
}

impl NftClass {
    /// Creates the class on the ledger, `treasury` paying and holding the supply key.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Ledger`].
    pub async fn create<L: Ledger>(ledger: &L, treasury: Operator) -> Result<Self, ServiceError> {
        let tx = Transaction::new(
            TransactionId::generate(treasury.account, ledger.now()),
            TxKind::CreateNft {
                name: "StreamSpace license".into(),
                symbol: "SSLIC".into(),
                treasury: treasury.account,
                supply_key: PublicKey::from(&treasury.key),
            },
        );
        let r = ledger.execute(tx, &[&treasury.key]).await?;
        let token = match (r.status, r.token) {
            (Status::Success, Some(t)) => t,
            (status, _) => return Err(ServiceError::NotPaid(r.id, status)),
        };
        Ok(Self { treasury, token })
    }
}

/// The service that issues licenses for the listings naming its key, and releases their
/// content keys to licensed devices.
///
/// It follows the market topic as anyone can ([`KeyService::sync`]), so the listings it sells
/// — their prices, splits, royalties and terms — are the ones published in consensus order, never
/// a value a caller hands it; and it answers from its own record of the licenses it issued,
/// looked up by their payment, never from a license a caller shows it.
pub struct KeyService {
    nft: Option<NftClass>,
    key: SigningKey,
    topic: TopicId,
    content: HashMap<ListingId, ContentKey>,
    live: HashMap<ListingId, LiveListing>,
    catalog: Catalog,
    next: u64,
    state: State,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("public", &self.public())
            .field("topic", &self.topic)
            .field("listings", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// Topic messages read per query while following the topic.
const PAGE: usize = 1000;

impl KeyService {
    /// A service signing with `key`, selling the listings of the market topic `topic` that name
    /// it, its record in memory only: after a restart it knows what the topic holds
    /// ([`KeyService::sync`]) and nothing more. [`KeyService::open`] keeps it in a file.
    pub fn new(key: SigningKey, topic: TopicId) -> Self {
        Self {
            nft: None,
            key,
            topic,
            content: HashMap::new(),
            live: HashMap::new(),
            catalog: Catalog::default(),
            next: 1,
            state: State::default(),
        }
    }

    /// A service as [`KeyService::new`] whose record — licenses issued, revocations, the device
    /// keys each license's key was released to — is kept in the redb file at `path` (created if
    /// missing), every change committed before the service answers. After a restart it opens
    /// the same file and answers as before; [`KeyService::sync`] then follows the topic from
    /// its start, merging in the licenses and revocations this service signed there (so a
    /// file lost or restored from an old copy is made good from the topic, all but its device
    /// records, which the topic does not carry).
    ///
    /// # Errors
    ///
    /// [`ServiceError::State`]: the file cannot be opened, belongs to another service key, or
    /// holds a record this service did not sign.
    pub fn open(
        path: impl AsRef<std::path::Path>,
        key: SigningKey,
        topic: TopicId,
    ) -> Result<Self, ServiceError> {
        let state = State::open(path.as_ref(), &PublicKey::from(&key))?;
        Ok(Self {
            state,
            ..Self::new(key, topic)
        })
    }

    /// Mints ownership licenses as NFTs of `class`.
    pub fn with_nft_class(mut self, class: NftClass) -> Self {
        self.nft = Some(class);
        self
    }

    /// Its public key, for listings' `key_service`.
    pub fn public(&self) -> PublicKey {
        PublicKey::from(&self.key)
    }

    /// The market topic it follows.
    pub fn topic(&self) -> TopicId {
        self.topic
    }

    /// The catalog as far as it has followed the topic.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Holds the content key of `listing`.
    pub fn add_content(&mut self, listing: ListingId, key: ContentKey) {
        self.content.insert(listing, key);
    }

    /// Sells `listing` as a live event: its keys are `keys`, released epoch by epoch
    /// ([`KeyService::release_epoch`]) as the stream reaches them ([`KeyService::live_edge`]).
    pub fn add_live(&mut self, listing: ListingId, keys: impl EpochKeys + 'static) {
        self.live.insert(
            listing,
            LiveListing {
                keys: Box::new(keys),
                started: std::collections::BTreeMap::new(),
            },
        );
    }

    /// Tells the service that `listing`'s stream reached `epoch` at `now` (its publisher
    /// calls this as it announces the epoch's first segment, or a node that verifies the
    /// stream's manifests does). An epoch at or behind the live one changes nothing.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotLive`] if the listing is not a live event of this service.
    pub fn live_edge(
        &mut self,
        listing: ListingId,
        epoch: u64,
        now: Timestamp,
    ) -> Result<(), ServiceError> {
        let live = self
            .live
            .get_mut(&listing)
            .ok_or(ServiceError::NotLive(listing))?;
        if live
            .started
            .last_key_value()
            .is_none_or(|(e, _)| epoch > *e)
        {
            live.started.insert(epoch, now);
            while live.started.len() > EPOCHS_KEPT {
                live.started.pop_first();
            }
        }
        Ok(())
    }

    /// The live epoch of `listing`, if its stream has started.
    pub fn live_epoch(&self, listing: ListingId) -> Option<u64> {
        self.live
            .get(&listing)?
            .started
            .last_key_value()
            .map(|(e, _)| *e)
    }

    /// The license issued for `payment`, if this service issued one.
    pub fn license(&self, payment: &TransactionId) -> Option<&Signed> {
        self.state.license(payment).map(|h| &h.signed)
    }

    /// Whether the license for `payment` was revoked.
    pub fn is_revoked(&self, payment: &TransactionId) -> bool {
        self.state.revocation(payment).is_some()
    }

    /// Applies one message of the market topic: licenses and revocations this service signed
    /// to its own record (which is how it rebuilds that record from the topic), and the
    /// message to its catalog.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Market`] if the catalog refuses the message (licenses and revocations
    /// signed by this service are recorded all the same), [`ServiceError::State`] if the
    /// record cannot be written (nothing is applied then).
    pub fn apply(&mut self, message: &TopicMessage) -> Result<Applied, ServiceError> {
        let mine = Signed::decode_verified(&message.message)
            .ok()
            .filter(|s| s.signer == self.public());
        match mine {
            Some(
                signed @ Signed {
                    message: Message::License(_),
                    ..
                },
            ) => {
                if let Some(held) = Held::new(signed) {
                    self.state.issued(held)?;
                }
            }
            Some(
                signed @ Signed {
                    message: Message::Revoke { payment, .. },
                    ..
                },
            ) => self.state.revoked(payment, signed)?,
            _ => {}
        }
        self.next = self.next.max(message.sequence + 1);
        Ok(self.catalog.apply(message)?)
    }

    /// Reads the market topic from where it left off (its start, after a restart). Returns
    /// how many messages it read; messages the catalog refuses are read and skipped.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Ledger`], or [`ServiceError::State`] (it resumes from that message).
    pub async fn sync<L: Ledger>(&mut self, ledger: &L) -> Result<usize, ServiceError> {
        let mut read = 0;
        loop {
            let msgs = ledger.topic_messages(self.topic, self.next, PAGE).await?;
            for m in &msgs {
                match self.apply(m) {
                    Ok(_) | Err(ServiceError::Market(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            read += msgs.len();
            if msgs.len() < PAGE {
                return Ok(read);
            }
        }
    }

    /// The listing version `id@version` as published, following the topic further if it is
    /// not known yet.
    async fn terms<L: Ledger>(
        &mut self,
        ledger: &L,
        id: ListingId,
        version: u32,
    ) -> Result<Listing, ServiceError> {
        let known = |c: &Catalog| {
            c.listing(id)
                .and_then(|e| e.versions.get(&version))
                .cloned()
        };
        if let Some(l) = known(&self.catalog) {
            return Ok(l);
        }
        self.sync(ledger).await?;
        known(&self.catalog).ok_or(ServiceError::UnknownListing(id, version))
    }

    /// Checks `payment` on the ledger — it succeeded, its memo names a listing of this service
    /// as published on the topic, and it pays every rights holder its share — and issues a
    /// license bound to `buyer_key`, to publish on the market topic. Asked again for the same
    /// payment and key, it answers with the same license.
    ///
    /// # Errors
    ///
    /// [`ServiceError`]: unpaid, a memo naming no listing of the topic, a key other than the
    /// one the memo commits to, not this service's listing, underpaid share.
    pub async fn issue<L: Ledger>(
        &mut self,
        ledger: &L,
        payment: TransactionId,
        buyer_key: PublicKey,
    ) -> Result<Signed, ServiceError> {
        if let Some(held) = self.state.license(&payment) {
            // Issued to the key the payer committed to; anyone asking with another is refused.
            return match held.license.resale {
                None if held.license.buyer_key == buyer_key => Ok(held.signed.clone()),
                None => Err(ServiceError::NotCommitted(payment)),
                Some(_) => Err(ServiceError::Replayed(payment)),
            };
        }
        let record = ledger.history(payment).await?;
        if record.receipt.status != Status::Success {
            return Err(ServiceError::NotPaid(payment, record.receipt.status));
        }
        let (id, version, commitment) =
            parse_memo(&record.memo).ok_or(ServiceError::WrongListing(payment))?;
        if commitment != hex(&key_commitment(&buyer_key)) {
            return Err(ServiceError::NotCommitted(payment));
        }
        let listing = self.terms(ledger, id, version).await?;
        if listing.key_service != self.public() {
            return Err(ServiceError::NotMine(listing.id));
        }
        check_paid(&record, payment, &listing.payouts())?;
        let nft = if listing.terms.rental_secs.is_none() {
            Some(self.mint(ledger, payment).await?)
        } else {
            None
        };
        let start = record.receipt.consensus;
        let expiry = listing
            .terms
            .rental_secs
            .map(|s| start.plus_secs(i64::try_from(s).unwrap_or(i64::MAX)));
        let signed = Message::License(License {
            listing: listing.id,
            version: listing.version,
            buyer: payment.payer,
            buyer_key,
            payment,
            start,
            expiry,
            devices: listing.terms.devices,
            regions: listing.terms.regions.clone(),
            nft,
            resale: None,
        })
        .sign(&self.key);
        let held = Held::new(signed.clone()).ok_or(ServiceError::Replayed(payment))?;
        self.state.issued(held)?;
        Ok(signed)
    }

    /// Mints the NFT of an ownership license and hands it to the buyer.
    async fn mint<L: Ledger>(
        &self,
        ledger: &L,
        payment: TransactionId,
    ) -> Result<NftId, ServiceError> {
        let class = self.nft.as_ref().ok_or(ServiceError::NoNftClass)?;
        let t = &class.treasury;
        let metadata = Bytes::from(postcard::to_allocvec(&payment).unwrap_or_default());
        let tx = Transaction::new(
            TransactionId::generate(t.account, ledger.now()),
            TxKind::MintNft {
                token: class.token,
                metadata: vec![metadata],
            },
        );
        let receipt = ledger.execute(tx, &[&t.key]).await?;
        let serial = match (receipt.status, receipt.serials.first()) {
            (Status::Success, Some(s)) => *s,
            (status, _) => return Err(ServiceError::NotPaid(receipt.id, status)),
        };
        let nft = NftId {
            token: class.token,
            serial,
        };
        let tx = Transaction::new(
            TransactionId::generate(t.account, ledger.now()),
            TxKind::Transfer {
                hbar: Vec::new(),
                nfts: vec![NftTransfer {
                    nft,
                    from: t.account,
                    to: payment.payer,
                }],
            },
        );
        let receipt = ledger.execute(tx, &[&t.key]).await?;
        if receipt.status != Status::Success {
            return Err(ServiceError::NotPaid(receipt.id, receipt.status));
        }
        Ok(nft)
    }

    /// Checks a resale on the ledger and issues the new holder's license. The license resold
    /// is the one this service issued for the payment `old` and still holds (not revoked);
    /// the resale transfer `resale` must name that license's listing and NFT serial in its memo,
    /// move that NFT from the license's holder to the resale's payer, and pay every rights
    /// holder its royalty at the rate of the listing version the license was bought at; the new
    /// license is bound to `buyer_key` only if the memo commits to it ([`resale_memo`]).
    /// Returns the revocation of the old license and the new license, both to publish. Asked
    /// again for the same resale and key, it answers with the same pair.
    ///
    /// # Errors
    ///
    /// [`ServiceError`]: no license of this service for `old`, revoked, not an ownership
    /// license, the memo names another listing or NFT or commits to another key, the NFT did
    /// not move so, a royalty is short, the resale licensed already.
    pub async fn reissue<L: Ledger>(
        &mut self,
        ledger: &L,
        old: TransactionId,
        resale: TransactionId,
        buyer_key: PublicKey,
    ) -> Result<(Signed, Signed), ServiceError> {
        let held = self
            .state
            .license(&old)
            .ok_or(ServiceError::NotIssued(old))?
            .license
            .clone();
        if let Some(again) = self.state.license(&resale) {
            let of_old = again.license.resale.is_some_and(|r| r.previous == old);
            return match (of_old, self.state.revocation(&old)) {
                (true, Some(_)) if again.license.buyer_key != buyer_key => {
                    Err(ServiceError::NotCommitted(resale))
                }
                (true, Some(revocation)) => Ok((revocation.clone(), again.signed.clone())),
                _ => Err(ServiceError::Replayed(resale)),
            };
        }
        if self.state.revocation(&old).is_some() {
            return Err(ServiceError::Revoked(old));
        }
        let nft = held.nft.ok_or(ServiceError::NotOwnership(old))?;
        let listing = self.terms(ledger, held.listing, held.version).await?;
        if listing.key_service != self.public() {
            return Err(ServiceError::NotMine(listing.id));
        }
        let record = ledger.history(resale).await?;
        if record.receipt.status != Status::Success {
            return Err(ServiceError::NotPaid(resale, record.receipt.status));
        }
        let (head, commitment) =
            split_commitment(&record.memo).ok_or(ServiceError::WrongListing(resale))?;
        if head != resale_head(held.listing, nft) {
            return Err(ServiceError::WrongListing(resale));
        }
        if commitment != hex(&key_commitment(&buyer_key)) {
            return Err(ServiceError::NotCommitted(resale));
        }
        let moved = record
            .nft_transfers
            .iter()
            .any(|t| t.nft == nft && t.from == held.buyer && t.to == resale.payer);
        if !moved {
            return Err(ServiceError::NftNotMoved(resale));
        }
        let spent = record
            .transfers
            .iter()
            .filter(|(a, _)| *a == resale.payer)
            .map(|(_, v)| *v)
            .sum::<i64>();
        let price = u64::try_from(-spent - record.fee).unwrap_or(0);
        check_paid(&record, resale, &listing.royalties(price))?;
        let revocation = Message::Revoke {
            payment: old,
            reason: RevokeReason::Resold(resale),
        }
        .sign(&self.key);
        let license = Message::License(License {
            listing: held.listing,
            version: held.version,
            buyer: resale.payer,
            buyer_key,
            payment: resale,
            start: record.receipt.consensus,
            expiry: None,
            devices: held.devices,
            regions: held.regions.clone(),
            nft: Some(nft),
            resale: Some(Resale {
                previous: old,
                price,
            }),
        })
        .sign(&self.key);
        let new = Held::new(license.clone()).ok_or(ServiceError::Replayed(resale))?;
        self.state.resold(old, revocation.clone(), new)?;
        Ok((revocation, license))
    }

    /// Releases the content key of the license issued for `request.payment` to the device the
    /// request names, wrapped to its key. Distinct device keys count against the license's
    /// device limit; a key released to before is released to again. What this can and cannot
    /// enforce once a key is out is in the crate's README.
    ///
    /// # Errors
    ///
    /// [`ServiceError`]: no license of this service for the payment, revoked, expired at
    /// `now`, request not signed by the buyer, out of region, too many devices, no content
    /// key.
    pub fn release(
        &mut self,
        request: &KeyRequest,
        now: Timestamp,
    ) -> Result<WrappedKey, ServiceError> {
        let payment = request.payment;
        let listing = self.admit(request, now, |service, l| {
            service
                .content
                .contains_key(&l.listing)
                .then_some(())
                .ok_or(ServiceError::NoContentKey(l.listing))
        })?;
        let key = self
            .content
            .get(&listing)
            .ok_or(ServiceError::NoContentKey(listing))?;
        let aad = postcard::to_allocvec(&payment).unwrap_or_default();
        keywrap::wrap(&request.device_key, key, HPKE_INFO, &aad)
            .map_err(|_| ServiceError::Wrap("sealing failed"))
    }

    /// Releases the key of `epoch` of a live listing to the device `request` names, wrapped
    /// to its key, under every rule of [`KeyService::release`] and these: the epoch is the
    /// live one or at most [`EPOCH_LOOKAHEAD`] past it (nobody holds keys of a stream's
    /// future, to leak them before it is shown); and for a rental or pay-per-view, the epoch
    /// was still live when the license began (a late buyer opens the event from where it
    /// joined, not its past). An ownership license opens every epoch up to the live edge.
    /// The device unwraps it with [`DeviceKey::unwrap_epoch`].
    ///
    /// # Errors
    ///
    /// Those of [`KeyService::release`] ([`ServiceError::NotLive`] in place of
    /// [`ServiceError::NoContentKey`]), [`ServiceError::EpochNotLive`],
    /// [`ServiceError::EpochBeforeLicense`].
    pub fn release_epoch(
        &mut self,
        request: &KeyRequest,
        epoch: u64,
        now: Timestamp,
    ) -> Result<WrappedKey, ServiceError> {
        let payment = request.payment;
        let listing = self.admit(request, now, |service, l| {
            let live = service
                .live
                .get(&l.listing)
                .ok_or(ServiceError::NotLive(l.listing))?;
            let edge = live.started.last_key_value().map(|(e, _)| *e);
            if edge.is_none_or(|edge| epoch > edge.saturating_add(EPOCH_LOOKAHEAD)) {
                return Err(ServiceError::EpochNotLive {
                    listing: l.listing,
                    epoch,
                    live: edge,
                });
            }
            let live_then = edge.is_some_and(|edge| epoch >= edge)
                || live
                    .started
                    .get(&(epoch + 1))
                    .is_some_and(|ended| *ended > l.start);
            if l.expiry.is_some() && !live_then {
                return Err(ServiceError::EpochBeforeLicense { payment, epoch });
            }
            Ok(())
        })?;
        let key = self
            .live
            .get(&listing)
            .ok_or(ServiceError::NotLive(listing))?
            .keys
            .epoch_key(epoch);
        keywrap::wrap(
            &request.device_key,
            &key,
            HPKE_EPOCH_INFO,
            &epoch_aad(&payment, epoch),
        )
        .map_err(|_| ServiceError::Wrap("sealing failed"))
    }

    /// The checks every release makes — license, revocation, validity at `now`, the buyer's
    /// signature, region, `has_key` (what the listing's key is), device limit — counting the
    /// device when they pass. Returns the license's listing.
    fn admit(
        &mut self,
        request: &KeyRequest,
        now: Timestamp,
        has_key: impl FnOnce(&Self, &License) -> Result<(), ServiceError>,
    ) -> Result<ListingId, ServiceError> {
        let payment = request.payment;
        let l = &self
            .state
            .license(&payment)
            .ok_or(ServiceError::NotIssued(payment))?
            .license;
        if self.state.revocation(&payment).is_some() {
            return Err(ServiceError::Revoked(payment));
        }
        if now < l.start || l.expiry.is_some_and(|e| now >= e) {
            return Err(ServiceError::Expired(payment));
        }
        if !request.verify(&l.buyer_key) {
            return Err(ServiceError::NotTheBuyer(payment));
        }
        let in_region = l.regions.is_empty()
            || request
                .region
                .is_some_and(|r| l.regions.iter().any(|x| x.as_bytes() == r));
        if !in_region {
            return Err(ServiceError::OutOfRegion(payment));
        }
        has_key(self, l)?;
        let listing = l.listing;
        if !keywrap::is_public_key(&request.device_key) {
            return Err(ServiceError::Wrap("malformed device key"));
        }
        // A device is its key: the label is the buyer's to choose, so a known label with a new
        // key is a new device.
        let limit = l.devices;
        let devices = self.state.devices(&payment);
        if !devices.contains(&request.device_key) {
            if devices.len() >= usize::from(limit) {
                return Err(ServiceError::TooManyDevices(payment, limit));
            }
            self.state.add_device(payment, request.device_key)?;
        }
        Ok(listing)
    }

    /// Revokes the license issued for `payment` (after an upheld dispute, say): no key is
    /// released for it any more. Returns the message to publish on the market topic.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotIssued`], [`ServiceError::Revoked`] if it was already, or
    /// [`ServiceError::State`] (nothing is revoked then).
    pub fn revoke(
        &mut self,
        payment: TransactionId,
        reason: RevokeReason,
    ) -> Result<Signed, ServiceError> {
        if self.state.license(&payment).is_none() {
            return Err(ServiceError::NotIssued(payment));
        }
        if self.state.revocation(&payment).is_some() {
            return Err(ServiceError::Revoked(payment));
        }
        let signed = Message::Revoke { payment, reason }.sign(&self.key);
        self.state.revoked(payment, signed.clone())?;
        Ok(signed)
    }

    /// Refunds the buyer of the license issued for `payment` from `from` (a rights holder or
    /// the seller) and revokes the license. A revoked license is not refunded.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotIssued`], [`ServiceError::Revoked`], or [`ServiceError::Ledger`] if
    /// the refund transfer fails; nothing is revoked then.
    pub async fn refund<L: Ledger>(
        &mut self,
        ledger: &L,
        from: &Operator,
        payment: TransactionId,
        amount: u64,
    ) -> Result<Signed, ServiceError> {
        let license = &self
            .state
            .license(&payment)
            .ok_or(ServiceError::NotIssued(payment))?
            .license;
        if self.state.revocation(&payment).is_some() {
            return Err(ServiceError::Revoked(payment));
        }
        let (buyer, listing) = (license.buyer, license.listing);
        let amount = i64::try_from(amount).map_err(|_| LedgerError::Transport("amount".into()))?;
        let id = TransactionId::generate(from.account, ledger.now());
        let mut tx = Transaction::new(
            id,
            TxKind::Transfer {
                hbar: vec![(from.account, -amount), (buyer, amount)],
                nfts: Vec::new(),
            },
        );
        tx.memo = format!("streamspace-market:refund:{listing}");
        let receipt = ledger.execute(tx, &[&from.key]).await?;
        if receipt.status != Status::Success {
            return Err(ServiceError::NotPaid(id, receipt.status));
        }
        self.revoke(payment, RevokeReason::Refunded(id))
    }
}
