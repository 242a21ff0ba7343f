//! Accounting on both sides of a stream of shards: the payee's [`ReceiptBook`] (keep the newest
//! receipt per payer, never serve more than `max_ahead` shards beyond it, refuse bad receipts)
//! and the payer's [`PayerTab`] (sign only for what was received at the agreed price).

use std::collections::{HashMap, HashSet, VecDeque};

use ed25519_dalek::SigningKey;
use streamspace_ledger::{AccountId, PublicKey};

use crate::receipt::{DomainId, ReceiptBody, ReceiptError, ReceiptSigner, SignedReceipt};

/// A price set by a payee: a part per shard and a part per byte, the latter in tinybars per
/// GiB because one byte is worth far less than a tinybar.
///
/// The amount owed for `shards` shards totalling `bytes` bytes is
/// `shards × per_shard + ⌈bytes × per_gib / 2³⁰⌉`, computed on cumulative totals so that payer
/// and payee round once, identically.
///
/// # Examples
///
/// ```
/// use streamspace_payments::book::Price;
/// let p = Price { per_shard: 1_000, per_gib: 4_000_000 };
/// // Two 256 KiB shards: 2,000 for the shards, ⌈512 KiB × 4,000,000 / 1 GiB⌉ = 1,954 for the bytes.
/// assert_eq!(p.owed(2, 512 * 1024), 2_000 + 1_954);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Price {
    /// Tinybars per shard.
    pub per_shard: u64,
    /// Tinybars per GiB (2³⁰ bytes) of shard data.
    pub per_gib: u64,
}

impl Price {
    /// A price per shard only.
    pub const fn per_shard(per_shard: u64) -> Self {
        Self {
            per_shard,
            per_gib: 0,
        }
    }

    /// A price per byte only, in tinybars per GiB.
    pub const fn per_gib(per_gib: u64) -> Self {
        Self {
            per_shard: 0,
            per_gib,
        }
    }

    /// What `shards` shards of `bytes` bytes in total cost, saturating at `u64::MAX`.
    pub fn owed(&self, shards: u64, bytes: u64) -> u64 {
        let by_bytes = (u128::from(bytes) * u128::from(self.per_gib)).div_ceil(1 << 30);
        let total = u128::from(shards) * u128::from(self.per_shard) + by_bytes;
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

/// The tier a node serves at: Tier-1 nodes have fast links and spread copies; edge nodes sit
/// near viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ServiceTier {
    /// A well-connected node that replicates content in demand.
    Tier1,
    /// A low-powered node near viewers that caches what they ask for.
    Edge,
}

/// A payee's prices by the tier it serves at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PriceList {
    /// Price when serving as a Tier-1 node.
    pub tier1: Price,
    /// Price when serving as an edge node.
    pub edge: Price,
}

impl PriceList {
    /// The price for `tier`.
    pub fn price(&self, tier: ServiceTier) -> Price {
        match tier {
            ServiceTier::Tier1 => self.tier1,
            ServiceTier::Edge => self.edge,
        }
    }
}

impl Default for PriceList {
    /// [`DEFAULT_PRICE_PER_SHARD`] at both tiers.
    fn default() -> Self {
        Self {
            tier1: Price::per_shard(DEFAULT_PRICE_PER_SHARD),
            edge: Price::per_shard(DEFAULT_PRICE_PER_SHARD),
        }
    }
}

/// A payee's price and exposure limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The price asked.
    pub price: Price,
    /// Shards served beyond the newest valid receipt before service pauses (default
    /// [`DEFAULT_MAX_AHEAD`]), for payers not on the allowlist with a tier of their own. What
    /// a payer that stops paying takes from this payee in a period is at most `max_ahead`
    /// times the price of one shard.
    pub max_ahead: u64,
    /// Refused receipts or requests from one payer after which it should be disconnected.
    pub disconnect_after: u64,
}

impl Terms {
    /// Default limits at the price of `tier` in `prices`.
    pub fn for_tier(prices: &PriceList, tier: ServiceTier) -> Self {
        Self {
            price: prices.price(tier),
            ..Self::default()
        }
    }
}

impl Default for Terms {
    fn default() -> Self {
        Self {
            price: Price::per_shard(DEFAULT_PRICE_PER_SHARD),
            max_ahead: DEFAULT_MAX_AHEAD,
            disconnect_after: 8,
        }
    }
}

/// Default price: 10,000 tinybars (0.0001 hbar) per 256 KiB shard.
pub const DEFAULT_PRICE_PER_SHARD: u64 = 10_000;

/// Default shards served beyond a payer's newest receipt: 64 (16 MiB of 256 KiB shards). A
/// fetcher keeps up to 16 shards in flight per peer (4 requests of 4 blocks) and each receipt
/// travels back a round trip after its shard, so a payee sees some 32 shards unacknowledged
/// from an honest payer at full speed; 64 leaves room for a round trip of jitter and hedged
/// copies, where a smaller bound pauses honest payers. The loss it allows: at most
/// 64 × [`DEFAULT_PRICE_PER_SHARD`] = 640,000 tinybars (0.0064 hbar) per payer, per payee,
/// per period.
pub const DEFAULT_MAX_AHEAD: u64 = 64;

/// How far a payee trusts one payer: credit at most `max_credit` tinybars in a period (and never
/// more than the collateral the payer locked), and up to `max_ahead` shards served before a
/// receipt is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreditTier {
    /// Most credit extended in a period, in tinybars.
    pub max_credit: u64,
    /// Shards served beyond the newest receipt.
    pub max_ahead: u64,
}

/// The payers a payee deals with, and their credit tiers.
///
/// In open mode any payer with collateral is admitted at the book's default terms; in closed
/// mode only listed payers are. A payer proved to have cheated is struck off and refused in both
/// modes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allowlist {
    /// Whether payers that are not listed are admitted.
    pub open: bool,
    /// Listed payers and their tiers.
    pub payers: std::collections::BTreeMap<AccountId, CreditTier>,
    /// Payers struck off after a fraud proof.
    pub banned: std::collections::BTreeSet<AccountId>,
}

impl Allowlist {
    /// An open allowlist: everyone with collateral is admitted at default terms.
    pub fn open() -> Self {
        Self {
            open: true,
            ..Self::default()
        }
    }

    /// A closed allowlist of `payers`.
    pub fn closed(payers: impl IntoIterator<Item = (AccountId, CreditTier)>) -> Self {
        Self {
            open: false,
            payers: payers.into_iter().collect(),
            banned: Default::default(),
        }
    }

    /// The tier of `payer`: `Ok(Some)` when listed, `Ok(None)` when admitted at default terms.
    ///
    /// # Errors
    ///
    /// [`BookError::NotAllowed`] for a banned payer, or an unlisted one in closed mode.
    pub fn tier(&self, payer: AccountId) -> Result<Option<CreditTier>, BookError> {
        if self.banned.contains(&payer) {
            return Err(BookError::NotAllowed(payer));
        }
        match self.payers.get(&payer) {
            Some(t) => Ok(Some(*t)),
            None if self.open => Ok(None),
            None => Err(BookError::NotAllowed(payer)),
        }
    }

    /// Strikes `payer` off for good.
    pub fn ban(&mut self, payer: AccountId) {
        self.payers.remove(&payer);
        self.banned.insert(payer);
    }
}

/// A receipt the payee refuses. Each refusal is counted by kind.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BookError {
    /// A receipt of another deployment (another network, ledger, clearing account or
    /// settlement topic), naming this payer.
    #[error("receipt of {0} is for another domain")]
    ForeignDomain(AccountId),
    /// Not addressed to this payee.
    #[error("receipt is for payee {0}, not this node")]
    WrongPayee(AccountId),
    /// For another period.
    #[error("receipt is for period {got}, current period is {current}")]
    WrongPeriod {
        /// Period in the receipt.
        got: u64,
        /// Current period.
        current: u64,
    },
    /// From a payer not admitted (no collateral locked for the period).
    #[error("payer {0} is not admitted")]
    UnknownPayer(AccountId),
    /// A payer the allowlist refuses: not listed in closed mode, or banned after fraud.
    #[error("payer {0} is not on the allowlist")]
    NotAllowed(AccountId),
    /// Signed with a key that is not the payer's.
    #[error("receipt of {0} is signed with another key")]
    KeyMismatch(AccountId),
    /// Malformed or forged.
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    /// Not newer than the receipt held (a replay or a decreasing amount).
    #[error("receipt of {payer} is not newer than the one held ({held_shards} shards)")]
    Stale {
        /// The payer.
        payer: AccountId,
        /// Shards in the receipt held.
        held_shards: u64,
    },
    /// Acknowledges more shards than this payee has served the payer in the period (a receipt
    /// signed ahead, to be served on credit that no receipt covers).
    #[error("receipt of {payer} acknowledges {shards} shards, {served} served")]
    Unserved {
        /// The payer.
        payer: AccountId,
        /// Shards acknowledged.
        shards: u64,
        /// Shards served so far.
        served: u64,
    },
    /// Pays more than the price of the shards it acknowledges (a receipt must state what was
    /// served at the agreed price, neither less nor more).
    #[error("receipt of {payer} pays {amount} for {shards} shards, {owed} owed")]
    Overpaid {
        /// The payer.
        payer: AccountId,
        /// Amount signed.
        amount: u64,
        /// Shards acknowledged.
        shards: u64,
        /// Amount owed at the agreed price.
        owed: u64,
    },
    /// Pays less than the price of the shards it acknowledges.
    #[error("receipt of {payer} pays {amount} for {shards} shards, {owed} owed")]
    Underpaid {
        /// The payer.
        payer: AccountId,
        /// Amount signed.
        amount: u64,
        /// Shards acknowledged.
        shards: u64,
        /// Amount owed at the agreed price.
        owed: u64,
    },
    /// Promises more than the payer's credit for the period: its collateral, capped by its
    /// credit tier.
    #[error("receipt of {payer} for {amount} exceeds its credit {credit}")]
    BeyondCollateral {
        /// The payer.
        payer: AccountId,
        /// Amount signed.
        amount: u64,
        /// Credit for the period.
        credit: u64,
    },
    /// Serving one more shard would take the payer's shard or byte count past `u64::MAX`.
    #[error("payer {0}'s shard or byte count would overflow")]
    Overflow(AccountId),
    /// Service paused: the payer is `max_ahead` shards ahead of its newest receipt.
    #[error("payer {payer} owes a receipt for {unpaid} shards before more are served")]
    ReceiptDue {
        /// The payer.
        payer: AccountId,
        /// Shards served and not yet acknowledged.
        unpaid: u64,
    },
}

impl BookError {
    /// The admitted payer the error is about, where there is one.
    pub fn payer(&self) -> Option<AccountId> {
        match self {
            Self::KeyMismatch(p) | Self::Overflow(p) | Self::ForeignDomain(p) => Some(*p),
            Self::Stale { payer, .. }
            | Self::Unserved { payer, .. }
            | Self::Underpaid { payer, .. }
            | Self::Overpaid { payer, .. }
            | Self::BeyondCollateral { payer, .. }
            | Self::ReceiptDue { payer, .. } => Some(*payer),
            _ => None,
        }
    }

    /// A short name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ForeignDomain(_) => "foreign_domain",
            Self::WrongPayee(_) => "wrong_payee",
            Self::WrongPeriod { .. } => "wrong_period",
            Self::UnknownPayer(_) => "unknown_payer",
            Self::NotAllowed(_) => "not_allowed",
            Self::KeyMismatch(_) => "key_mismatch",
            Self::Receipt(_) => "malformed_or_forged",
            Self::Stale { .. } => "stale",
            Self::Unserved { .. } => "unserved",
            Self::Underpaid { .. } => "underpaid",
            Self::Overpaid { .. } => "overpaid",
            Self::BeyondCollateral { .. } => "beyond_collateral",
            Self::ReceiptDue { .. } => "receipt_due",
            Self::Overflow(_) => "overflow",
        }
    }
}

/// One period's account of a payer: its credit and the newest receipt for the period.
#[derive(Debug, Clone)]
struct PeriodAccount {
    credit: u64,
    /// Cumulative bytes of the shards the newest receipt acknowledges.
    paid_bytes: u64,
    newest: Option<SignedReceipt>,
}

impl PeriodAccount {
    fn new(credit: u64) -> Self {
        Self {
            credit,
            paid_bytes: 0,
            newest: None,
        }
    }

    fn paid_shards(&self) -> u64 {
        self.newest.map_or(0, |r| r.body.shards)
    }
}

#[derive(Debug, Clone)]
struct PayerState {
    key: PublicKey,
    credit: u64,
    max_ahead: u64,
    /// Shards served in the current period, and the bytes they held (for reports).
    served: u64,
    served_bytes: u64,
    /// Bytes of each shard served that no receipt acknowledges yet, oldest first (at most
    /// `max_ahead`). Shards are not tied to a period: a receipt of either period open at a
    /// boundary acknowledges the oldest ones, so clocks skewed around the boundary neither
    /// lose an honest payee's pay nor let a shard be paid twice.
    pool: VecDeque<u64>,
    current: PeriodAccount,
    /// The previous period while its grace lasts.
    closing: Option<PeriodAccount>,
    /// Whether the payer may still pay in the previous period: not once it paid in the
    /// current one.
    closing_open: bool,
    refused: u64,
}

impl PayerState {
    /// Cumulative bytes a receipt of `account` acknowledging `shards` shards covers, and how
    /// many shards of the pool it takes (`None` when fewer were served).
    fn covers(&self, account: &PeriodAccount, shards: u64) -> Option<(u64, usize)> {
        let new = usize::try_from(shards.checked_sub(account.paid_shards())?).ok()?;
        if new > self.pool.len() {
            return None;
        }
        let bytes = self
            .pool
            .iter()
            .take(new)
            .try_fold(account.paid_bytes, |sum, b| sum.checked_add(*b))?;
        Some((bytes, new))
    }
}

/// What [`ReceiptBook::tick`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tick {
    /// The book moved on to this period (its receipts are accepted from now on).
    pub opened: Option<u64>,
    /// The previous period's grace ended: these are its final receipts, one per payer, for
    /// settlement; later receipts of that period are refused.
    pub closed: Option<(u64, Vec<SignedReceipt>)>,
}

/// The payee's book for one period: storage is O(payers), one receipt each.
///
/// # Examples
///
/// ```
/// use streamspace_ledger::{AccountId, PublicKey, TopicId};
/// use streamspace_payments::book::{PayerTab, Price, ReceiptBook, Terms};
/// use streamspace_payments::receipt::Domain;
/// let (me, viewer) = (AccountId::new(1002), AccountId::new(1001));
/// let domain = Domain::new("main", "hedera:testnet", AccountId::new(5005), TopicId::new(6006)).id();
/// let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
/// let terms = Terms { price: Price::per_shard(100), max_ahead: 1, ..Terms::default() };
/// let mut book = ReceiptBook::new(domain, me, 1, terms);
/// book.admit(viewer, PublicKey::from(&key), 1_000_000)?;
/// let mut tab = PayerTab::new(domain, viewer, key, 1);
/// tab.agree(me, terms.price);
///
/// book.serve(viewer, 262_144)?;                  // one shard ahead is allowed…
/// assert!(book.serve(viewer, 262_144).is_err()); // …a second is not, until a receipt arrives
/// tab.received(me, 262_144);
/// let receipt = tab.sign(me);
/// assert_eq!(receipt.body.amount, 100);
/// book.accept(&receipt.encode())?;
/// book.serve(viewer, 262_144)?;
/// # Ok::<(), streamspace_payments::book::BookError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReceiptBook {
    domain: DomainId,
    me: AccountId,
    period: u64,
    /// The previous period, while its receipts are still accepted.
    closing: Option<u64>,
    terms: Terms,
    allowlist: Allowlist,
    payers: HashMap<AccountId, PayerState>,
    refusals: HashMap<&'static str, u64>,
}

impl ReceiptBook {
    /// An empty book of payee `me` for `period` in `domain`, admitting any payer with
    /// collateral.
    pub fn new(domain: DomainId, me: AccountId, period: u64, terms: Terms) -> Self {
        Self::with_allowlist(domain, me, period, terms, Allowlist::open())
    }

    /// An empty book of payee `me` for `period` in `domain` that admits payers as `allowlist`
    /// says.
    pub fn with_allowlist(
        domain: DomainId,
        me: AccountId,
        period: u64,
        terms: Terms,
        allowlist: Allowlist,
    ) -> Self {
        Self {
            domain,
            me,
            period,
            closing: None,
            terms,
            allowlist,
            payers: HashMap::new(),
            refusals: HashMap::new(),
        }
    }

    /// The allowlist, with the payers struck off so far (to carry into the next period).
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The period whose receipts the book takes, and the previous one while its grace lasts.
    pub fn periods(&self) -> (u64, Option<u64>) {
        (self.period, self.closing)
    }

    /// Admits a payer with its key and the collateral it locked for the current period. Its
    /// credit is the collateral, capped by its credit tier if it has one.
    ///
    /// # Errors
    ///
    /// [`BookError::NotAllowed`] (counted) when the allowlist refuses the payer.
    pub fn admit(
        &mut self,
        payer: AccountId,
        key: PublicKey,
        collateral: u64,
    ) -> Result<(), BookError> {
        let tier = self.allowlist.tier(payer);
        let tier = self.count(tier)?;
        let (credit, max_ahead) = match tier {
            Some(t) => (collateral.min(t.max_credit), t.max_ahead),
            None => (collateral, self.terms.max_ahead),
        };
        let entry = self.payers.entry(payer).or_insert(PayerState {
            key,
            credit,
            max_ahead,
            served: 0,
            served_bytes: 0,
            pool: VecDeque::new(),
            current: PeriodAccount::new(credit),
            closing: None,
            closing_open: false,
            refused: 0,
        });
        entry.key = key;
        entry.credit = credit;
        entry.current.credit = credit;
        entry.max_ahead = max_ahead;
        Ok(())
    }

    /// Moves the book on to `period` (later than the current one): receipts of `period` are
    /// accepted from now on, and those of the period it leaves keep being accepted until
    /// [`ReceiptBook::end_grace`] — a payer whose clock is behind still pays for what it
    /// received before it saw the boundary. A payer's credit carries over until it is
    /// admitted again with the new period's collateral. A grace still open for an older
    /// period ends first; its final receipts are returned.
    pub fn roll(&mut self, period: u64) -> Option<(u64, Vec<SignedReceipt>)> {
        if period <= self.period {
            return None;
        }
        let ended = self.end_grace();
        self.closing = Some(self.period);
        self.period = period;
        for p in self.payers.values_mut() {
            let next = PeriodAccount::new(p.credit);
            p.closing = Some(std::mem::replace(&mut p.current, next));
            p.closing_open = true;
            p.served = 0;
            p.served_bytes = 0;
        }
        ended
    }

    /// Ends the previous period's grace: its receipts are refused from now on. Returns the
    /// period and its final receipts (one per payer that sent any), for settlement.
    pub fn end_grace(&mut self) -> Option<(u64, Vec<SignedReceipt>)> {
        let period = self.closing.take()?;
        let receipts = self
            .payers
            .values_mut()
            .filter_map(|p| {
                p.closing_open = false;
                p.closing.take().and_then(|c| c.newest)
            })
            .collect();
        Some((period, receipts))
    }

    /// Drives the book by the clock (Unix seconds `now`, periods of `period_secs`): the next
    /// period opens `grace_secs` before its start, so that a payer whose clock is ahead is not
    /// refused, and the period before it stays open until `grace_secs` after its end, so that
    /// one whose clock is behind is not either. Outside that window a period's receipts are
    /// refused ([`BookError::WrongPeriod`]). The grace is at most half a period.
    pub fn tick(&mut self, now: u64, period_secs: u64, grace_secs: u64) -> Tick {
        let period_secs = period_secs.max(1);
        let grace = grace_secs.min(period_secs / 2);
        let mut out = Tick::default();
        let ahead = now.saturating_add(grace) / period_secs;
        if ahead > self.period {
            out.closed = self.roll(ahead);
            out.opened = Some(ahead);
        }
        let start = self.period.saturating_mul(period_secs);
        if self.closing.is_some() && now >= start.saturating_add(grace) {
            out.closed = self.end_grace();
        }
        out
    }

    /// Removes a payer after a fraud proof (or a settlement that struck it off, see
    /// [`crate::netting::StruckOff`]) and strikes it off the allowlist: it is not served or
    /// admitted again, and [`ReceiptBook::should_disconnect`] says to drop it. Its newest
    /// receipt of the current period is returned for settlement.
    pub fn expel(&mut self, payer: AccountId) -> Option<SignedReceipt> {
        self.allowlist.ban(payer);
        self.payers.remove(&payer).and_then(|p| p.current.newest)
    }

    /// Records one shard of `bytes` bytes served to `payer`, if the exposure limit allows it.
    ///
    /// # Errors
    ///
    /// [`BookError::UnknownPayer`], [`BookError::ReceiptDue`] or [`BookError::Overflow`]; all
    /// are counted.
    pub fn serve(&mut self, payer: AccountId, bytes: u64) -> Result<(), BookError> {
        let result = match self.payers.get_mut(&payer) {
            None => Err(BookError::UnknownPayer(payer)),
            Some(p) => {
                let unpaid = p.pool.len() as u64;
                if unpaid >= p.max_ahead {
                    Err(BookError::ReceiptDue { payer, unpaid })
                } else {
                    match (p.served.checked_add(1), p.served_bytes.checked_add(bytes)) {
                        (Some(served), Some(served_bytes)) => {
                            p.served = served;
                            p.served_bytes = served_bytes;
                            p.pool.push_back(bytes);
                            Ok(())
                        }
                        _ => Err(BookError::Overflow(payer)),
                    }
                }
            }
        };
        self.count(result)
    }

    fn count<T>(&mut self, r: Result<T, BookError>) -> Result<T, BookError> {
        if let Err(e) = &r {
            let n = self.refusals.entry(e.kind()).or_default();
            *n = n.saturating_add(1);
            if let Some(p) = e.payer().and_then(|p| self.payers.get_mut(&p)) {
                p.refused = p.refused.saturating_add(1);
            }
        }
        r
    }

    /// Whether the transport should drop `payer`: it was struck off ([`ReceiptBook::expel`]),
    /// or refused often enough (`Terms::disconnect_after`).
    pub fn should_disconnect(&self, payer: AccountId) -> bool {
        self.allowlist.banned.contains(&payer)
            || self
                .payers
                .get(&payer)
                .is_some_and(|p| p.refused >= self.terms.disconnect_after)
    }

    /// Takes a receipt from the wire: decodes, verifies and keeps it if it is the newest.
    ///
    /// A receipt may acknowledge only shards this book served the payer, and must pay exactly
    /// their price under the book's [`Terms`] (per shard and per byte, on cumulative totals,
    /// as [`PayerTab::sign`] computes it): a payer cannot sign ahead for shards it has not
    /// received, so it never holds more than `max_ahead` shards no receipt pays for. It may be
    /// of the current period or, during its grace, of the previous one; either acknowledges
    /// the oldest shards no receipt paid for, and a receipt of the current period closes the
    /// previous one for its payer.
    ///
    /// # Errors
    ///
    /// A [`BookError`] (counted); the book is unchanged.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<SignedReceipt, BookError> {
        let r = self.check(bytes);
        let (r, bytes_at, new) = self.count(r)?;
        let current = r.body.period == self.period;
        if let Some(p) = self.payers.get_mut(&r.body.payer) {
            p.pool.drain(..new.min(p.pool.len()));
            let account = if current {
                // The payer has moved on: the previous period is final for it.
                p.closing_open = false;
                &mut p.current
            } else {
                match p.closing.as_mut() {
                    Some(c) => c,
                    None => &mut p.current,
                }
            };
            account.paid_bytes = bytes_at;
            account.newest = Some(r);
        }
        Ok(r)
    }

    fn check(&self, bytes: &[u8]) -> Result<(SignedReceipt, u64, usize), BookError> {
        let r = SignedReceipt::decode(bytes)?;
        let b = r.body;
        if b.domain != self.domain {
            return Err(BookError::ForeignDomain(b.payer));
        }
        if b.payee != self.me {
            return Err(BookError::WrongPayee(b.payee));
        }
        let wrong_period = BookError::WrongPeriod {
            got: b.period,
            current: self.period,
        };
        if b.period != self.period && Some(b.period) != self.closing {
            return Err(wrong_period);
        }
        let p = match self.payers.get(&b.payer) {
            Some(p) => p,
            None if self.allowlist.tier(b.payer).is_err() => {
                return Err(BookError::NotAllowed(b.payer));
            }
            None => return Err(BookError::UnknownPayer(b.payer)),
        };
        let account = if b.period == self.period {
            &p.current
        } else {
            // The previous period, closed for this payer once it paid in the current one.
            p.closing
                .as_ref()
                .filter(|_| p.closing_open)
                .ok_or(wrong_period)?
        };
        if p.key != r.payer_key {
            return Err(BookError::KeyMismatch(b.payer));
        }
        r.verify()?;
        if let Some(held) = account.newest {
            if b.shards <= held.body.shards || b.amount < held.body.amount {
                return Err(BookError::Stale {
                    payer: b.payer,
                    held_shards: held.body.shards,
                });
            }
        }
        let Some((bytes_at, new)) = p.covers(account, b.shards) else {
            return Err(BookError::Unserved {
                payer: b.payer,
                shards: b.shards,
                served: account.paid_shards().saturating_add(p.pool.len() as u64),
            });
        };
        let owed = self.terms.price.owed(b.shards, bytes_at);
        if b.amount < owed {
            return Err(BookError::Underpaid {
                payer: b.payer,
                amount: b.amount,
                shards: b.shards,
                owed,
            });
        }
        if b.amount > owed {
            return Err(BookError::Overpaid {
                payer: b.payer,
                amount: b.amount,
                shards: b.shards,
                owed,
            });
        }
        if b.amount > account.credit {
            return Err(BookError::BeyondCollateral {
                payer: b.payer,
                amount: b.amount,
                credit: account.credit,
            });
        }
        Ok((r, bytes_at, new))
    }

    /// The newest receipt of every payer for the current period, for settlement.
    pub fn newest(&self) -> impl Iterator<Item = &SignedReceipt> {
        self.payers
            .values()
            .filter_map(|p| p.current.newest.as_ref())
    }

    /// The newest receipt of every payer for the previous period, while its grace lasts.
    pub fn closing(&self) -> impl Iterator<Item = &SignedReceipt> {
        self.payers
            .values()
            .filter_map(|p| p.closing.as_ref().and_then(|c| c.newest.as_ref()))
    }

    /// Refusals so far, by kind.
    pub fn refusals(&self) -> &HashMap<&'static str, u64> {
        &self.refusals
    }
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Received {
    price: Price,
    shards: u64,
    bytes: u64,
}

impl Received {
    fn allowed(&self) -> u64 {
        self.price.owed(self.shards, self.bytes)
    }
}

/// Most blocks a payer keeps asked of one payee and not yet received ([`PayerTab::ask`]).
pub const MAX_ASKED_PER_PAYEE: usize = 65_536;

/// The payer's side: counts shards and bytes received per payee and signs cumulative receipts,
/// never for more than was received at the agreed price.
///
/// A block counts only if it was asked of that payee and not received from it yet
/// ([`PayerTab::ask`], then [`PayerTab::receive`]): a payee that pads its answers with valid
/// blocks nobody asked for, sends a block asked of another peer, or sends one block twice is
/// not paid for them, and each is counted against it ([`PayerTab::unrequested`]).
pub struct PayerTab {
    domain: DomainId,
    account: AccountId,
    signer: ReceiptSigner,
    period: u64,
    received: HashMap<AccountId, Received>,
    asked: HashMap<AccountId, HashSet<Vec<u8>>>,
    unrequested: HashMap<AccountId, u64>,
    store: Option<redb::Database>,
}

/// What the payer signed for, per period and payee: `(period, shard, realm, num)` →
/// postcard of the counts and price.
const TAB: redb::TableDefinition<'_, (u64, u64, u64, u64), &[u8]> =
    redb::TableDefinition::new("tab");
/// The domain the tab file belongs to.
const TAB_META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");

/// The payer's persisted tab could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TabError {
    /// The file could not be opened, read or written.
    #[error("payer tab storage: {0}")]
    Storage(String),
    /// The file belongs to another deployment.
    #[error("the payer tab file belongs to another domain")]
    OtherDomain,
}

fn tab_err(e: impl std::fmt::Display) -> TabError {
    TabError::Storage(e.to_string())
}

impl std::fmt::Debug for PayerTab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayerTab")
            .field("account", &self.account)
            .field("period", &self.period)
            .field("payees", &self.received.len())
            .field("persisted", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// A block the payer did not ask of this payee (or already received from it): not paid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("payee {payee} sent a block that was not asked of it; {count} so far")]
pub struct Unrequested {
    /// The payee.
    pub payee: AccountId,
    /// Unrequested blocks from this payee so far.
    pub count: u64,
}

/// The payer refuses to sign.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error(
    "payee {payee} asks {asked} for {shards} shards, more than the agreed price allows ({allowed})"
)]
pub struct Overcharged {
    /// The payee.
    pub payee: AccountId,
    /// Amount asked.
    pub asked: u64,
    /// Shards received.
    pub shards: u64,
    /// Most the payer will sign.
    pub allowed: u64,
}

impl PayerTab {
    /// The tab of payer `account` (signing with `key`) for `period` in `domain`.
    pub fn new(domain: DomainId, account: AccountId, key: SigningKey, period: u64) -> Self {
        Self {
            domain,
            account,
            signer: ReceiptSigner::new(&key),
            period,
            received: HashMap::new(),
            asked: HashMap::new(),
            unrequested: HashMap::new(),
            store: None,
        }
    }

    /// The tab of `period`, kept in the redb file at `path` so that a payer that restarts
    /// (or is killed) resumes its cumulative counts where the last receipt it sent left
    /// them, instead of at zero: its next receipt is accepted, and the payee is owed exactly
    /// what it served. Receipts signed with [`PayerTab::sign_durable`] are on disk before they
    /// are returned. Periods older than the previous one are pruned. Asks are not kept: a
    /// block in flight at a crash is not paid (at most the blocks in flight per payee).
    ///
    /// # Errors
    ///
    /// [`TabError`] when the file cannot be used or is of another domain.
    pub fn open(
        path: impl AsRef<std::path::Path>,
        domain: DomainId,
        account: AccountId,
        key: SigningKey,
        period: u64,
    ) -> Result<Self, TabError> {
        use redb::ReadableTable;
        let db = redb::Database::create(path.as_ref()).map_err(tab_err)?;
        let mut tab = Self::new(domain, account, key, period);
        let txn = db.begin_write().map_err(tab_err)?;
        {
            let mut meta = txn.open_table(TAB_META).map_err(tab_err)?;
            let held = meta
                .get("domain")
                .map_err(tab_err)?
                .map(|v| v.value().to_vec());
            match held {
                Some(d) if d != domain.0 => return Err(TabError::OtherDomain),
                Some(_) => {}
                None => {
                    meta.insert("domain", domain.0.as_slice())
                        .map_err(tab_err)?;
                }
            }
            let mut t = txn.open_table(TAB).map_err(tab_err)?;
            let keep = period.saturating_sub(1);
            t.retain(|(p, ..), _| p >= keep).map_err(tab_err)?;
            for row in t
                .range((period, 0, 0, 0)..=(period, u64::MAX, u64::MAX, u64::MAX))
                .map_err(tab_err)?
            {
                let (k, v) = row.map_err(tab_err)?;
                let (_, shard, realm, num) = k.value();
                let r: Received = postcard::from_bytes(v.value()).map_err(tab_err)?;
                let payee = AccountId(streamspace_ledger::EntityId { shard, realm, num });
                tab.received.insert(payee, r);
            }
        }
        txn.commit().map_err(tab_err)?;
        tab.store = Some(db);
        Ok(tab)
    }

    /// Signs a cumulative receipt to `payee` as [`PayerTab::sign`], after making the counts
    /// it states durable (when the tab was [opened](PayerTab::open) from a file).
    ///
    /// # Errors
    ///
    /// [`TabError::Storage`] when they cannot be written: no receipt is signed then.
    pub fn sign_durable(&self, payee: AccountId) -> Result<SignedReceipt, TabError> {
        if let Some(db) = &self.store {
            let r = self.received.get(&payee).copied().unwrap_or_default();
            let v = postcard::to_allocvec(&r).map_err(tab_err)?;
            let txn = db.begin_write().map_err(tab_err)?;
            txn.open_table(TAB)
                .map_err(tab_err)?
                .insert(
                    (self.period, payee.0.shard, payee.0.realm, payee.0.num),
                    v.as_slice(),
                )
                .map_err(tab_err)?;
            txn.commit().map_err(tab_err)?;
        }
        Ok(self.sign(payee))
    }

    /// Records that `block` (its CID's bytes) was asked of `payee`. Returns `false`, recording
    /// nothing, when [`MAX_ASKED_PER_PAYEE`] blocks are already outstanding there: the caller
    /// asks again once some arrive. Asking twice for one block is one ask.
    pub fn ask(&mut self, payee: AccountId, block: &[u8]) -> bool {
        let asked = self.asked.entry(payee).or_default();
        if asked.contains(block) {
            return true;
        }
        if asked.len() >= MAX_ASKED_PER_PAYEE {
            return false;
        }
        asked.insert(block.to_vec())
    }

    /// Records a verified block of `bytes` bytes from `payee`: counted, to be paid, only if it
    /// was asked of `payee` and not received from it since. An ask is answered once; a
    /// block asked of two peers (a hedged request) is paid to each that sends it.
    ///
    /// # Errors
    ///
    /// [`Unrequested`] (counted against `payee`, nothing owed) otherwise.
    pub fn receive(
        &mut self,
        payee: AccountId,
        block: &[u8],
        bytes: u64,
    ) -> Result<(), Unrequested> {
        let was_asked = self
            .asked
            .get_mut(&payee)
            .is_some_and(|asked| asked.remove(block));
        if !was_asked {
            let n = self.unrequested.entry(payee).or_default();
            *n = n.saturating_add(1);
            return Err(Unrequested { payee, count: *n });
        }
        self.received(payee, bytes);
        Ok(())
    }

    /// Blocks `payee` sent that were not asked of it (see [`PayerTab::receive`]).
    pub fn unrequested(&self, payee: AccountId) -> u64 {
        self.unrequested.get(&payee).copied().unwrap_or(0)
    }

    /// Blocks asked of `payee` and not received yet.
    pub fn outstanding(&self, payee: AccountId) -> usize {
        self.asked.get(&payee).map_or(0, HashSet::len)
    }

    /// Agrees on `payee`'s price (zero until agreed). Amounts are computed on cumulative totals,
    /// so a price agreed anew applies to every shard of the period.
    pub fn agree(&mut self, payee: AccountId, price: Price) {
        self.received.entry(payee).or_default().price = price;
    }

    /// Records one verified shard of `bytes` bytes received from `payee`, which the caller
    /// has matched to a request made of `payee` ([`PayerTab::receive`] does the matching).
    /// Counts stop at `u64::MAX` (a payee's book refuses to serve past it).
    pub fn received(&mut self, payee: AccountId, bytes: u64) {
        let r = self.received.entry(payee).or_default();
        r.shards = r.shards.saturating_add(1);
        r.bytes = r.bytes.saturating_add(bytes);
    }

    /// Signs a cumulative receipt to `payee` for everything received, at the agreed price.
    pub fn sign(&self, payee: AccountId) -> SignedReceipt {
        let r = self.received.get(&payee).copied().unwrap_or_default();
        self.body(payee, r.allowed(), r.shards)
    }

    /// Signs the amount a payee asks for, if it does not exceed what was received at the
    /// agreed price.
    ///
    /// # Errors
    ///
    /// [`Overcharged`] when it does.
    pub fn sign_asked(&self, payee: AccountId, asked: u64) -> Result<SignedReceipt, Overcharged> {
        let r = self.received.get(&payee).copied().unwrap_or_default();
        let allowed = r.allowed();
        if asked > allowed {
            return Err(Overcharged {
                payee,
                asked,
                shards: r.shards,
                allowed,
            });
        }
        Ok(self.body(payee, asked, r.shards))
    }

    fn body(&self, payee: AccountId, amount: u64, shards: u64) -> SignedReceipt {
        self.signer.sign(&ReceiptBody {
            domain: self.domain,
            payer: self.account,
            payee,
            period: self.period,
            amount,
            shards,
        })
    }
}
