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

use std::collections::BTreeMap;

use streamspace_ledger::AccountId;

use crate::receipt::SignedReceipt;

/// Recipients per settlement transfer (10 accounts per Hedera transfer list, less the payer).
pub const MAX_RECIPIENTS: usize = 9;

/// Why a period cannot be settled as it stands.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NettingError {
    /// Receipts of a payer add up to more than its collateral (see [`crate::fraud`]).
    #[error("payer {payer} owes {owed}, more than its collateral {collateral}")]
    OverCollateral {
        /// The payer.
        payer: AccountId,
        /// Total of its newest receipts.
        owed: u64,
        /// Its collateral.
        collateral: u64,
    },
    /// A sum does not fit: the collateral of a period beyond what one ledger transfer can
    /// move (`i64::MAX` tinybars, more than all the hbar there is), or a payout beyond it.
    #[error("{what} overflows")]
    Overflow {
        /// What overflowed.
        what: &'static str,
    },
    /// Two receipts for the same payer and payee.
    #[error("two receipts from {payer} to {payee}")]
    Duplicate {
        /// The payer.
        payer: AccountId,
        /// The payee.
        payee: AccountId,
    },
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
        let tinybars = |v: u64| {
            i64::try_from(v).map_err(|_| NettingError::Overflow {
                what: "a settlement transfer",
            })
        };
        self.payouts
            .chunks(MAX_RECIPIENTS)
            .map(|chunk| {
                let total = chunk
                    .iter()
                    .try_fold(0u64, |t, (_, v)| t.checked_add(*v))
                    .ok_or(NettingError::Overflow {
                        what: "a settlement transfer",
                    })?;
                let mut list = vec![(clearing, -tinybars(total)?)];
                for (a, v) in chunk {
                    list.push((*a, tinybars(*v)?));
                }
                Ok(list)
            })
            .collect()
    }
}

/// Nets the newest receipts of a period against the collateral locked per payer.
///
/// Receipts must already be verified; each (payer, payee) pair appears once.
///
/// # Errors
///
/// [`NettingError`] for a duplicate pair, a payer owing more than its collateral, or a
/// collateral total beyond what a ledger transfer can move. Every sum is checked: nothing
/// wraps.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use streamspace_ledger::AccountId;
/// use streamspace_payments::{netting::plan, receipt::{DomainId, ReceiptBody}};
/// let key = |s| ed25519_dalek::SigningKey::from_bytes(&[s; 32]);
/// let (a, b) = (AccountId::new(1001), AccountId::new(1002));
/// // a and b serve each other: a owes b 700, b owes a 500.
/// let r1 = ReceiptBody { domain: DomainId([7; 32]), payer: a, payee: b, period: 1, amount: 700, shards: 7 }.sign(&key(1));
/// let r2 = ReceiptBody { domain: DomainId([7; 32]), payer: b, payee: a, period: 1, amount: 500, shards: 5 }.sign(&key(2));
/// let collateral = BTreeMap::from([(a, 1_000), (b, 1_000)]);
/// let p = plan(&[r1, r2], &collateral)?;
/// assert_eq!(p.net[&a], -200);
/// assert_eq!(p.payouts, vec![(a, 800), (b, 1_200)]);
/// # Ok::<(), streamspace_payments::netting::NettingError>(())
/// ```
pub fn plan(
    receipts: &[SignedReceipt],
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
    let mut net: BTreeMap<AccountId, i128> = BTreeMap::new();
    let mut owed: BTreeMap<AccountId, u128> = BTreeMap::new();
    let mut pairs = std::collections::HashSet::new();
    for r in receipts {
        let b = r.body;
        if !pairs.insert((b.payer, b.payee)) {
            return Err(NettingError::Duplicate {
                payer: b.payer,
                payee: b.payee,
            });
        }
        *net.entry(b.payer).or_default() -= i128::from(b.amount);
        *net.entry(b.payee).or_default() += i128::from(b.amount);
        *owed.entry(b.payer).or_default() += u128::from(b.amount);
    }
    for (payer, total) in &owed {
        let c = collateral.get(payer).copied().unwrap_or(0);
        if *total > u128::from(c) {
            return Err(NettingError::OverCollateral {
                payer: *payer,
                owed: u64::try_from(*total).unwrap_or(u64::MAX),
                collateral: c,
            });
        }
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
    })
}
