//! Accounting on both sides of a stream of shards: the payee's [`ReceiptBook`] (keep the newest
//! receipt per payer, never serve more than `max_ahead` shards beyond it, refuse bad receipts)
//! and the payer's [`PayerTab`] (sign only for what was received at the agreed price).

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use streamspace_ledger::{AccountId, PublicKey};

use crate::receipt::{ReceiptBody, ReceiptError, SignedReceipt};

/// A payee's prices and exposure limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Tinybars per shard.
    pub price_per_shard: u64,
    /// Shards served beyond the newest valid receipt before service pauses (default 1).
    pub max_ahead: u64,
    /// Refused receipts or requests from one payer after which it should be disconnected.
    pub disconnect_after: u64,
}

impl Default for Terms {
    fn default() -> Self {
        Self {
            price_per_shard: DEFAULT_PRICE_PER_SHARD,
            max_ahead: 1,
            disconnect_after: 8,
        }
    }
}

/// Default price: 10,000 tinybars (0.0001 hbar) per 256 KiB shard.
pub const DEFAULT_PRICE_PER_SHARD: u64 = 10_000;

/// A receipt the payee refuses. Each refusal is counted by kind.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BookError {
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
    /// From a payer not admitted (no collateral, not on the allowlist).
    #[error("payer {0} is not admitted")]
    UnknownPayer(AccountId),
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
    /// Promises more than the payer's collateral for the period.
    #[error("receipt of {payer} for {amount} exceeds its collateral {collateral}")]
    BeyondCollateral {
        /// The payer.
        payer: AccountId,
        /// Amount signed.
        amount: u64,
        /// Collateral locked for the period.
        collateral: u64,
    },
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
            Self::KeyMismatch(p) => Some(*p),
            Self::Stale { payer, .. }
            | Self::Underpaid { payer, .. }
            | Self::BeyondCollateral { payer, .. }
            | Self::ReceiptDue { payer, .. } => Some(*payer),
            _ => None,
        }
    }

    /// A short name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WrongPayee(_) => "wrong_payee",
            Self::WrongPeriod { .. } => "wrong_period",
            Self::UnknownPayer(_) => "unknown_payer",
            Self::KeyMismatch(_) => "key_mismatch",
            Self::Receipt(_) => "malformed_or_forged",
            Self::Stale { .. } => "stale",
            Self::Underpaid { .. } => "underpaid",
            Self::BeyondCollateral { .. } => "beyond_collateral",
            Self::ReceiptDue { .. } => "receipt_due",
        }
    }
}

#[derive(Debug, Clone)]
struct PayerState {
    key: PublicKey,
    collateral: u64,
    served: u64,
    refused: u64,
    newest: Option<SignedReceipt>,
}

/// The payee's book for one period: storage is O(payers), one receipt each.
///
/// # Examples
///
/// ```
/// use streamspace_ledger::{AccountId, PublicKey};
/// use streamspace_payments::book::{PayerTab, ReceiptBook, Terms};
/// let (me, viewer) = (AccountId::new(1002), AccountId::new(1001));
/// let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
/// let terms = Terms { price_per_shard: 100, max_ahead: 1, disconnect_after: 8 };
/// let mut book = ReceiptBook::new(me, 1, terms);
/// book.admit(viewer, PublicKey::from(&key), 1_000_000);
/// let mut tab = PayerTab::new(viewer, key, 1);
///
/// book.serve(viewer)?;                       // one shard ahead is allowed…
/// assert!(book.serve(viewer).is_err());      // …a second is not, until a receipt arrives
/// tab.received(me);
/// let receipt = tab.sign(me, 100).expect("the price of one shard");
/// book.accept(&receipt.encode())?;
/// book.serve(viewer)?;
/// # Ok::<(), streamspace_payments::book::BookError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReceiptBook {
    me: AccountId,
    period: u64,
    terms: Terms,
    payers: HashMap<AccountId, PayerState>,
    refusals: HashMap<&'static str, u64>,
}

impl ReceiptBook {
    /// An empty book for `period`.
    pub fn new(me: AccountId, period: u64, terms: Terms) -> Self {
        Self {
            me,
            period,
            terms,
            payers: HashMap::new(),
            refusals: HashMap::new(),
        }
    }

    /// Admits a payer with its key and the collateral it locked for the period.
    pub fn admit(&mut self, payer: AccountId, key: PublicKey, collateral: u64) {
        let entry = self.payers.entry(payer).or_insert(PayerState {
            key,
            collateral,
            served: 0,
            refused: 0,
            newest: None,
        });
        entry.key = key;
        entry.collateral = collateral;
    }

    /// Removes a payer (after a fraud proof); its newest receipt is returned for settlement.
    pub fn expel(&mut self, payer: AccountId) -> Option<SignedReceipt> {
        self.payers.remove(&payer).and_then(|p| p.newest)
    }

    /// Records one shard served to `payer`, if the exposure limit allows it.
    ///
    /// # Errors
    ///
    /// [`BookError::UnknownPayer`] or [`BookError::ReceiptDue`]; both are counted.
    pub fn serve(&mut self, payer: AccountId) -> Result<(), BookError> {
        let max_ahead = self.terms.max_ahead;
        let result = match self.payers.get_mut(&payer) {
            None => Err(BookError::UnknownPayer(payer)),
            Some(p) => {
                let paid = p.newest.map_or(0, |r| r.body.shards);
                let unpaid = p.served.saturating_sub(paid);
                if unpaid >= max_ahead {
                    Err(BookError::ReceiptDue { payer, unpaid })
                } else {
                    p.served += 1;
                    Ok(())
                }
            }
        };
        self.count(result)
    }

    fn count<T>(&mut self, r: Result<T, BookError>) -> Result<T, BookError> {
        if let Err(e) = &r {
            *self.refusals.entry(e.kind()).or_default() += 1;
            if let Some(p) = e.payer().and_then(|p| self.payers.get_mut(&p)) {
                p.refused += 1;
            }
        }
        r
    }

    /// Whether `payer` has been refused often enough (`Terms::disconnect_after`) that the
    /// transport should drop it.
    pub fn should_disconnect(&self, payer: AccountId) -> bool {
        self.payers
            .get(&payer)
            .is_some_and(|p| p.refused >= self.terms.disconnect_after)
    }

    /// Takes a receipt from the wire: decodes, verifies and keeps it if it is the newest.
    ///
    /// # Errors
    ///
    /// A [`BookError`] (counted); the book is unchanged.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<SignedReceipt, BookError> {
        let r = self.check(bytes);
        let r = self.count(r)?;
        if let Some(p) = self.payers.get_mut(&r.body.payer) {
            p.newest = Some(r);
        }
        Ok(r)
    }

    fn check(&self, bytes: &[u8]) -> Result<SignedReceipt, BookError> {
        let r = SignedReceipt::decode(bytes)?;
        let b = r.body;
        if b.payee != self.me {
            return Err(BookError::WrongPayee(b.payee));
        }
        if b.period != self.period {
            return Err(BookError::WrongPeriod {
                got: b.period,
                current: self.period,
            });
        }
        let p = self
            .payers
            .get(&b.payer)
            .ok_or(BookError::UnknownPayer(b.payer))?;
        if p.key != r.payer_key {
            return Err(BookError::KeyMismatch(b.payer));
        }
        r.verify()?;
        if let Some(held) = p.newest {
            if b.shards <= held.body.shards || b.amount < held.body.amount {
                return Err(BookError::Stale {
                    payer: b.payer,
                    held_shards: held.body.shards,
                });
            }
        }
        let owed = b.shards.saturating_mul(self.terms.price_per_shard);
        if b.amount < owed {
            return Err(BookError::Underpaid {
                payer: b.payer,
                amount: b.amount,
                shards: b.shards,
                owed,
            });
        }
        if b.amount > p.collateral {
            return Err(BookError::BeyondCollateral {
                payer: b.payer,
                amount: b.amount,
                collateral: p.collateral,
            });
        }
        Ok(r)
    }

    /// The newest receipt of every payer, for settlement.
    pub fn newest(&self) -> impl Iterator<Item = &SignedReceipt> {
        self.payers.values().filter_map(|p| p.newest.as_ref())
    }

    /// Refusals so far, by kind.
    pub fn refusals(&self) -> &HashMap<&'static str, u64> {
        &self.refusals
    }
}

/// The payer's side: counts shards received per payee and signs cumulative receipts, never for
/// more than the received shards at the agreed price.
#[derive(Debug)]
pub struct PayerTab {
    account: AccountId,
    key: SigningKey,
    period: u64,
    received: HashMap<AccountId, u64>,
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
    /// A tab for `period`.
    pub fn new(account: AccountId, key: SigningKey, period: u64) -> Self {
        Self {
            account,
            key,
            period,
            received: HashMap::new(),
        }
    }

    /// Records one verified shard received from `payee`.
    pub fn received(&mut self, payee: AccountId) {
        *self.received.entry(payee).or_default() += 1;
    }

    /// Signs a cumulative receipt to `payee` at `price_per_shard`.
    ///
    /// # Errors
    ///
    /// [`Overcharged`] never happens here (the amount is computed); see [`PayerTab::sign_asked`].
    pub fn sign(
        &self,
        payee: AccountId,
        price_per_shard: u64,
    ) -> Result<SignedReceipt, Overcharged> {
        let shards = self.received.get(&payee).copied().unwrap_or(0);
        self.sign_asked(
            payee,
            shards.saturating_mul(price_per_shard),
            price_per_shard,
        )
    }

    /// Signs the amount a payee asks for, if it does not exceed what was received at the price.
    ///
    /// # Errors
    ///
    /// [`Overcharged`] when it does.
    pub fn sign_asked(
        &self,
        payee: AccountId,
        asked: u64,
        price_per_shard: u64,
    ) -> Result<SignedReceipt, Overcharged> {
        let shards = self.received.get(&payee).copied().unwrap_or(0);
        let allowed = shards.saturating_mul(price_per_shard);
        if asked > allowed {
            return Err(Overcharged {
                payee,
                asked,
                shards,
                allowed,
            });
        }
        Ok(ReceiptBody {
            payer: self.account,
            payee,
            period: self.period,
            amount: asked,
            shards,
        }
        .sign(&self.key))
    }
}
