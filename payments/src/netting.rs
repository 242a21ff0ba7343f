//! Period close: net every account's position and plan the fewest ledger transfers.
//!
//! Payers lock collateral in the period's clearing (escrow) account. At close, each account's
//! net position is what it earned minus what it owes across all newest receipts; nodes that
//! both serve and view settle only the difference. The clearing account then pays out, in one
//! or more multi-party transfers of at most [`MAX_RECIPIENTS`] recipients (Hedera's limit of 10
//! accounts per transfer list, one of them the clearing account):
//!
//! - to each payer: its collateral plus its net position (unused collateral comes back);
//! - to each payee that locked nothing: its net earnings.
//!
//! Everything paid in is paid out: the transfers sum to the collateral, so the clearing
//! account ends where it started, less the ledger fees its operator pays.
//!
//! # A payer that promised more than its collateral
//!
//! Each payee checks receipts against the payer's collateral, but only its own: a payer can
//! promise its collateral to several payees at once. Such a payer does not stop the period:
//! it is struck off ([`StruckOff`], with the [`FraudProof`] of its own receipts), and its
//! collateral — all of it — pays its payees **in consensus order of what they posted**. The
//! receipts are taken in the order given (the order the clearing read them from the
//! settlement topic); each one that raises a payee's claim claims the increase at its
//! position; increases are paid in full, in order, until the collateral runs out, the one
//! that crosses the line in part, those after it not at all. A claim covered once stays
//! covered whatever is posted after it, so a payee that posts its receipts as it goes, and
//! sees them covered, knows what it will be paid.

use std::collections::{BTreeMap, BTreeSet};

use streamspace_ledger::AccountId;

use crate::fraud::FraudProof;
use crate::receipt::SignedReceipt;

/// Recipients per settlement transfer (10 accounts per Hedera transfer list, less the payer).
pub const MAX_RECIPIENTS: usize = 9;

/// Why a period cannot be settled as it stands.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NettingError {
    /// A sum does not fit: the collateral of a period beyond what one ledger transfer can
    /// move (`i64::MAX` tinybars, more than all the hbar there is), or a payout beyond it.
    #[error("{what} overflows")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
}

/// A payer whose receipts add up to more than its collateral: struck off, its collateral paid
/// to its payees in consensus order (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StruckOff {
    /// The payer.
    pub payer: AccountId,
    /// What its newest receipts promise, in total (`u64::MAX` if more).
    pub owed: u64,
    /// Its collateral, all of it paid out to its payees.
    pub collateral: u64,
    /// The fewest of its receipts (largest first) whose sum exceeds its collateral: proof,
    /// checkable by anyone with its key and collateral, that it promised what it could not pay.
    pub proof: FraudProof,
}

/// A settlement plan: the transfers out of the clearing account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Each account's net position (earned minus owed), in tinybars.
    pub net: BTreeMap<AccountId, i128>,
    /// Payouts in account order; each chunk of [`MAX_RECIPIENTS`] is one transfer.
    pub payouts: Vec<(AccountId, u64)>,
    /// Total paid in as collateral (and paid out again).
    pub collateral: u64,
    /// What each (payer, payee) pair is settled for: the newest receipt's amount, or less for
    /// a payer struck off.
    pub settled: BTreeMap<(AccountId, AccountId), u64>,
    /// Payers that promised more than their collateral, in account order.
    pub struck_off: Vec<StruckOff>,
}

impl Plan {
    /// The transfers, each as a Hedera transfer list: the clearing account's debit first.
    ///
    /// # Errors
    ///
    /// [`NettingError::Overflow`] when a transfer would move more than `i64::MAX` tinybars
    /// (never for a plan made by [`plan`]).
    pub fn transfers(
        &self,
        clearing: AccountId,
    ) -> Result<Vec<Vec<(AccountId, i64)>>, NettingError> {
        let overflow = NettingError::Overflow {
            what: "a settlement transfer",
        };
        let tinybars = |v: u64| i64::try_from(v).map_err(|_| overflow.clone());
        self.payouts
            .chunks(MAX_RECIPIENTS)
            .map(|chunk| {
                let total = chunk
                    .iter()
                    .try_fold(0u64, |t, (_, v)| t.checked_add(*v))
                    .ok_or(overflow.clone())?;
                let mut list = vec![(clearing, -tinybars(total)?)];
                for (a, v) in chunk {
                    list.push((*a, tinybars(*v)?));
                }
                Ok(list)
            })
            .collect()
    }
}

/// A key for "the larger receipt": the higher amount, then the more shards. A payee holding
/// two receipts of one payer is owed the larger; a smaller one posted later (by the payer,
/// say) never displaces it.
fn rank(r: &SignedReceipt) -> (u64, u64) {
    (r.body.amount, r.body.shards)
}

/// Nets the receipts of a period against the collateral locked per payer.
///
/// `posted` holds verified receipts of one period in consensus order (the order the clearing
/// read them from the settlement topic; receipts never posted after them, in any fixed order).
/// A pair may appear several times: the larger receipt counts (higher amount, then more
/// shards), and the order decides who is paid first when a payer promised more than its
/// collateral (see the [module docs](self)). Every sum is checked: nothing wraps.
///
/// # Errors
///
/// [`NettingError::Overflow`] for a collateral total beyond what a ledger transfer can move.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use streamspace_ledger::AccountId;
/// use streamspace_payments::{netting::plan, receipt::{DomainId, ReceiptBody}};
/// let key = |s| ed25519_dalek::SigningKey::from_bytes(&[s; 32]);
/// let (a, b, c) = (AccountId::new(1001), AccountId::new(1002), AccountId::new(1003));
/// let d = DomainId([7; 32]);
/// // a and b serve each other: a owes b 700, b owes a 500.
/// let r1 = ReceiptBody { domain: d, payer: a, payee: b, period: 1, amount: 700, shards: 7 }.sign(&key(1));
/// let r2 = ReceiptBody { domain: d, payer: b, payee: a, period: 1, amount: 500, shards: 5 }.sign(&key(2));
/// let collateral = BTreeMap::from([(a, 1_000), (b, 1_000)]);
/// let p = plan(&[r1, r2], &collateral)?;
/// assert_eq!(p.net[&a], -200);
/// assert_eq!(p.payouts, vec![(a, 800), (b, 1_200)]);
///
/// // b also promised c 800: 1,300 against 1,000 locked. a posted first and is paid in full;
/// // c gets the 500 left, b nothing back, and b is struck off.
/// let r3 = ReceiptBody { domain: d, payer: b, payee: c, period: 1, amount: 800, shards: 8 }.sign(&key(2));
/// let p = plan(&[r1, r2, r3], &collateral)?;
/// assert_eq!((p.settled[&(b, a)], p.settled[&(b, c)]), (500, 500));
/// assert_eq!(p.struck_off[0].payer, b);
/// assert_eq!(p.payouts, vec![(a, 800), (b, 700), (c, 500)]);
/// # Ok::<(), streamspace_payments::netting::NettingError>(())
/// ```
pub fn plan(
    posted: &[SignedReceipt],
    collateral: &BTreeMap<AccountId, u64>,
) -> Result<Plan, NettingError> {
    // Payouts come out of the collateral: a total that fits one transfer bounds every sum
    // below (net positions are in i128, where no sum of u64 amounts can overflow).
    let total = collateral
        .values()
        .try_fold(0u64, |t, c| t.checked_add(*c))
        .filter(|t| i64::try_from(*t).is_ok())
        .ok_or(NettingError::Overflow {
            what: "the period's collateral",
        })?;
    // The larger receipt per pair, and per payer the increases of its payees' claims in
    // consensus order.
    let mut newest: BTreeMap<(AccountId, AccountId), SignedReceipt> = BTreeMap::new();
    let mut claims: BTreeMap<AccountId, Vec<(AccountId, u64)>> = BTreeMap::new();
    for r in posted {
        let pair = (r.body.payer, r.body.payee);
        let held = newest.get(&pair).map_or(0, |h| h.body.amount);
        if newest.get(&pair).is_none_or(|h| rank(r) > rank(h)) {
            newest.insert(pair, *r);
        }
        if r.body.amount > held {
            claims
                .entry(r.body.payer)
                .or_default()
                .push((r.body.payee, r.body.amount - held));
        }
    }
    let mut owed: BTreeMap<AccountId, u128> = BTreeMap::new();
    for ((payer, _), r) in &newest {
        *owed.entry(*payer).or_default() += u128::from(r.body.amount);
    }
    let mut settled: BTreeMap<(AccountId, AccountId), u64> = newest
        .iter()
        .map(|(pair, r)| (*pair, r.body.amount))
        .collect();
    let mut struck_off = Vec::new();
    for (payer, total_owed) in &owed {
        let c = collateral.get(payer).copied().unwrap_or(0);
        if *total_owed <= u128::from(c) {
            continue;
        }
        // Over-committed: its collateral pays its payees' claims in consensus order.
        let mut left = c;
        let mut paid: BTreeMap<AccountId, u64> = BTreeMap::new();
        for (payee, increase) in claims.get(payer).map(Vec::as_slice).unwrap_or_default() {
            let part = (*increase).min(left);
            left -= part;
            let p = paid.entry(*payee).or_default();
            // At most the collateral in all: no overflow.
            *p = p.saturating_add(part);
        }
        for ((p, payee), amount) in settled.range_mut((*payer, AccountId::new(0))..) {
            if p != payer {
                break;
            }
            *amount = paid.get(payee).copied().unwrap_or(0);
        }
        struck_off.push(StruckOff {
            payer: *payer,
            owed: u64::try_from(*total_owed).unwrap_or(u64::MAX),
            collateral: c,
            proof: proof_of(*payer, c, &newest),
        });
    }
    let mut net: BTreeMap<AccountId, i128> = BTreeMap::new();
    for ((payer, payee), amount) in &settled {
        *net.entry(*payer).or_default() -= i128::from(*amount);
        *net.entry(*payee).or_default() += i128::from(*amount);
    }
    let mut accounts: BTreeMap<AccountId, i128> = net.clone();
    for (a, c) in collateral {
        *accounts.entry(*a).or_default() += i128::from(*c);
    }
    let payouts = accounts
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(a, v)| {
            u64::try_from(v)
                .map(|v| (a, v))
                .map_err(|_| NettingError::Overflow { what: "a payout" })
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        net,
        payouts,
        collateral: total,
        settled,
        struck_off,
    })
}

/// The fewest receipts of `payer` (largest first, signed with the key of its largest) whose
/// sum exceeds `collateral`.
fn proof_of(
    payer: AccountId,
    collateral: u64,
    newest: &BTreeMap<(AccountId, AccountId), SignedReceipt>,
) -> FraudProof {
    let mut mine: Vec<&SignedReceipt> = newest
        .range((payer, AccountId::new(0))..)
        .take_while(|((p, _), _)| *p == payer)
        .map(|(_, r)| r)
        .collect();
    mine.sort_by(|a, b| {
        b.body
            .amount
            .cmp(&a.body.amount)
            .then(a.body.payee.cmp(&b.body.payee))
    });
    let key = mine.first().map(|r| r.payer_key);
    let mut payees = BTreeSet::new();
    let mut sum: u128 = 0;
    let mut receipts = Vec::new();
    for r in mine {
        if Some(r.payer_key) != key || !payees.insert(r.body.payee) {
            continue;
        }
        receipts.push(*r);
        sum += u128::from(r.body.amount);
        if sum > u128::from(collateral) {
            break;
        }
    }
    FraudProof { receipts }
}
