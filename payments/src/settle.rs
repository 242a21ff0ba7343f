//! Durable, idempotent settlement of a period.
//!
//! The [`Journal`] (one redb file) records every receipt as it arrives and every settlement
//! step before it is sent. Closing a period first writes the whole plan — each transfer and the
//! anchor message with the transaction id it will use — in one database transaction; then sends
//! the steps in order, marking each done once the ledger confirms it. A process killed at any
//! point resumes from the journal: a step that reached consensus is found by its transaction id
//! (the ledger refuses the resend as a duplicate, and its record carries the step's memo), a
//! step that never did, or whose id another transaction of the clearing account took, is sent
//! again with a new id. Nothing is paid twice, nothing is lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use streamspace_ledger::{
    AccountId, Ledger, LedgerError, Operator, Status, Timestamp, TopicId, Transaction,
    TransactionId, TxKind,
};

use crate::merkle::{Hash, Tree};
use crate::netting::{NettingError, plan};
use crate::receipt::{Domain, DomainId, SignedReceipt};

/// (period, payer, payee) → newest receipt (layout 2; a journal of layout 1 kept them in
/// `receipts`, which is not read).
const RECEIPTS: TableDefinition<'_, (u64, u64, u64), &[u8]> = TableDefinition::new("receipts-v2");
/// (period, consensus position, payer, payee) → a receipt read from the settlement topic that
/// raised its payee's claim.
const POSTED: TableDefinition<'_, (u64, u64, u64, u64), &[u8]> = TableDefinition::new("posted");
/// "domain" → the [`DomainId`] the journal belongs to.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// (period, step) → planned or done step.
const STEPS: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("steps");

/// Settlement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettleError {
    /// The journal's storage failed.
    #[error("journal: {0}")]
    Journal(String),
    /// The period cannot be netted.
    #[error(transparent)]
    Netting(#[from] NettingError),
    /// The ledger refused a step for a reason a retry will not fix.
    #[error("settlement step {step}: {source}")]
    Ledger {
        /// Step index.
        step: u32,
        /// The ledger's error.
        source: LedgerError,
    },
    /// A receipt of another deployment was offered to the journal (nothing was recorded).
    #[error("receipt of {payer} to {payee} is for another domain")]
    ForeignDomain {
        /// The payer it names.
        payer: AccountId,
        /// The payee it names.
        payee: AccountId,
    },
    /// The journal file belongs to another deployment.
    #[error("the journal belongs to another domain")]
    JournalDomain,
    /// The settler's clearing account, journal or topic is not the domain's.
    #[error(
        "operator {operator} or the journal is not of the domain (clearing account {clearing})"
    )]
    NotTheDomain {
        /// The account of the operator given.
        operator: AccountId,
        /// The domain's clearing account.
        clearing: AccountId,
    },
    /// Stopped by fault injection (tests): the journal holds everything done so far.
    #[error("interrupted before step {0}")]
    Interrupted(u32),
}

fn journal_err(e: impl std::fmt::Display) -> SettleError {
    SettleError::Journal(e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    Transfer(Vec<(AccountId, i64)>),
    /// A message on the settlement topic: the anchor, or a part of a fraud proof.
    Anchor(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Step {
    id: TransactionId,
    action: Action,
    done: Option<Timestamp>,
}

/// The durable record of receipts and settlement steps of one [`Domain`].
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    domain: DomainId,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens or creates the journal file of `domain`'s receipts.
    ///
    /// # Errors
    ///
    /// [`SettleError::Journal`]; [`SettleError::JournalDomain`] for a journal created for
    /// another domain.
    pub fn open(path: impl AsRef<Path>, domain: DomainId) -> Result<Self, SettleError> {
        let db = Database::create(path.as_ref()).map_err(journal_err)?;
        let txn = db.begin_write().map_err(journal_err)?;
        txn.open_table(RECEIPTS).map_err(journal_err)?;
        txn.open_table(POSTED).map_err(journal_err)?;
        txn.open_table(STEPS).map_err(journal_err)?;
        {
            let mut meta = txn.open_table(META).map_err(journal_err)?;
            let held = meta
                .get("domain")
                .map_err(journal_err)?
                .map(|v| v.value().to_vec());
            match held {
                Some(d) if d != domain.0 => return Err(SettleError::JournalDomain),
                Some(_) => {}
                None => {
                    meta.insert("domain", &domain.0[..]).map_err(journal_err)?;
                }
            }
        }
        txn.commit().map_err(journal_err)?;
        Ok(Self {
            db: Arc::new(db),
            domain,
        })
    }

    /// The domain whose receipts the journal holds.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Records receipts durably, keeping the newest per (period, payer, payee): the larger
    /// (higher amount, then more shards), so that a smaller receipt recorded later — posted by
    /// the payer itself, say — never displaces the one its payee holds. Receipts must already
    /// be verified, against the payer's key too (see [`crate::book::ReceiptBook`]).
    ///
    /// # Errors
    ///
    /// [`SettleError::ForeignDomain`] (and nothing recorded) when a receipt is of another
    /// domain; [`SettleError::Journal`].
    pub fn record(&self, receipts: &[SignedReceipt]) -> Result<(), SettleError> {
        self.write(None, receipts)
    }

    /// Records receipts read from the settlement topic at consensus `position` (the message's
    /// sequence number): as [`Journal::record`], and each receipt that raises its payee's
    /// claim is remembered at that position, for the order in which a payer that promised
    /// more than its collateral pays (see [`crate::netting`]).
    ///
    /// # Errors
    ///
    /// As [`Journal::record`].
    pub fn record_posted(
        &self,
        position: u64,
        receipts: &[SignedReceipt],
    ) -> Result<(), SettleError> {
        self.write(Some(position), receipts)
    }

    fn write(&self, position: Option<u64>, receipts: &[SignedReceipt]) -> Result<(), SettleError> {
        if let Some(r) = receipts.iter().find(|r| r.body.domain != self.domain) {
            return Err(SettleError::ForeignDomain {
                payer: r.body.payer,
                payee: r.body.payee,
            });
        }
        let txn = self.db.begin_write().map_err(journal_err)?;
        {
            let mut t = txn.open_table(RECEIPTS).map_err(journal_err)?;
            let mut posted = txn.open_table(POSTED).map_err(journal_err)?;
            for r in receipts {
                let (period, payer, payee) =
                    (r.body.period, r.body.payer.num(), r.body.payee.num());
                let held = t
                    .get((period, payer, payee))
                    .map_err(journal_err)?
                    .and_then(|old| SignedReceipt::decode(old.value()).ok());
                let newer = held.is_none_or(|o| {
                    (r.body.amount, r.body.shards) > (o.body.amount, o.body.shards)
                });
                if newer {
                    t.insert((period, payer, payee), r.encode().as_slice())
                        .map_err(journal_err)?;
                    if let Some(at) = position {
                        posted
                            .insert((period, at, payer, payee), r.encode().as_slice())
                            .map_err(journal_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(journal_err)
    }

    /// The receipts of `period` recorded with [`Journal::record_posted`] that raised a claim,
    /// in consensus order (then by payer and payee).
    ///
    /// # Errors
    ///
    /// [`SettleError::Journal`].
    pub fn posted(&self, period: u64) -> Result<Vec<SignedReceipt>, SettleError> {
        let txn = self.db.begin_read().map_err(journal_err)?;
        let t = txn.open_table(POSTED).map_err(journal_err)?;
        let mut out = Vec::new();
        for row in t
            .range((period, 0, 0, 0)..=(period, u64::MAX, u64::MAX, u64::MAX))
            .map_err(journal_err)?
        {
            let (_, v) = row.map_err(journal_err)?;
            out.push(SignedReceipt::decode(v.value()).map_err(journal_err)?);
        }
        Ok(out)
    }

    /// The newest receipts of `period`, by payer then payee.
    ///
    /// # Errors
    ///
    /// [`SettleError::Journal`].
    pub fn receipts(&self, period: u64) -> Result<Vec<SignedReceipt>, SettleError> {
        let txn = self.db.begin_read().map_err(journal_err)?;
        let t = txn.open_table(RECEIPTS).map_err(journal_err)?;
        let mut out = Vec::new();
        for row in t
            .range((period, 0, 0)..=(period, u64::MAX, u64::MAX))
            .map_err(journal_err)?
        {
            let (_, v) = row.map_err(journal_err)?;
            out.push(SignedReceipt::decode(v.value()).map_err(journal_err)?);
        }
        Ok(out)
    }

    /// The periods that hold receipts, in order.
    ///
    /// # Errors
    ///
    /// [`SettleError::Journal`].
    pub fn periods(&self) -> Result<Vec<u64>, SettleError> {
        let txn = self.db.begin_read().map_err(journal_err)?;
        let t = txn.open_table(RECEIPTS).map_err(journal_err)?;
        let mut out = Vec::new();
        // One seek per period: jump past each period's last key.
        let mut from = 0u64;
        loop {
            let mut rows = t
                .range((from, 0, 0)..=(u64::MAX, u64::MAX, u64::MAX))
                .map_err(journal_err)?;
            let Some(row) = rows.next() else { break };
            let (k, _) = row.map_err(journal_err)?;
            let period = k.value().0;
            out.push(period);
            match period.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    fn steps(&self, period: u64) -> Result<Vec<Step>, SettleError> {
        let txn = self.db.begin_read().map_err(journal_err)?;
        let t = txn.open_table(STEPS).map_err(journal_err)?;
        let mut out = Vec::new();
        for row in t
            .range((period, 0)..=(period, u32::MAX))
            .map_err(journal_err)?
        {
            let (_, v) = row.map_err(journal_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(journal_err)?);
        }
        Ok(out)
    }

    fn put_steps(&self, period: u64, steps: &[(u32, &Step)]) -> Result<(), SettleError> {
        let txn = self.db.begin_write().map_err(journal_err)?;
        {
            let mut t = txn.open_table(STEPS).map_err(journal_err)?;
            for (i, s) in steps {
                let v = postcard::to_allocvec(s).map_err(journal_err)?;
                t.insert((period, *i), v.as_slice()).map_err(journal_err)?;
            }
        }
        txn.commit().map_err(journal_err)
    }
}

/// Where a fault may be injected (tests of crash safety).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// After the plan is journaled, before the step is sent.
    BeforeSend,
    /// After the ledger confirmed the step, before the journal records it.
    AfterSend,
}

/// What closing a period did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Receipts settled.
    pub receipts: usize,
    /// Ledger transfers in the plan.
    pub transfers: usize,
    /// Tinybars paid out of the clearing account.
    pub paid_out: u64,
    /// Merkle root of the settled receipts, anchored on the topic.
    pub root: Hash,
    /// Ledger fees of the steps sent by this call.
    pub fees: i64,
    /// Payers that promised more than their collateral: struck off, their collateral paid to
    /// their payees in consensus order, the proof published on the topic (see
    /// [`crate::netting`]). The node expels them ([`crate::book::ReceiptBook::expel`]).
    pub struck_off: Vec<crate::netting::StruckOff>,
}

/// Settles periods out of a clearing account.
#[derive(Debug)]
pub struct Settler<L> {
    ledger: L,
    journal: Journal,
    clearing: Operator,
    topic: TopicId,
}

/// Locks `amount` tinybars of `payer`'s collateral for `period` in the clearing account: one
/// ledger transfer per payer per period.
///
/// # Errors
///
/// The ledger's error; `INVALID_ACCOUNT_AMOUNTS` at precheck, with nothing sent, for an amount
/// beyond what one transfer can move (`i64::MAX` tinybars).
pub async fn lock_collateral<L: Ledger>(
    ledger: &L,
    payer: &Operator,
    clearing: AccountId,
    period: u64,
    amount: u64,
) -> Result<streamspace_ledger::Receipt, LedgerError> {
    let id = TransactionId::generate(payer.account, ledger.now());
    let amount = i64::try_from(amount).map_err(|_| LedgerError::Precheck {
        status: Status::InvalidAccountAmounts,
        id,
    })?;
    let tx = Transaction::new(
        id,
        TxKind::Transfer {
            hbar: vec![(payer.account, -amount), (clearing, amount)],
            nfts: Vec::new(),
        },
    )
    .with_memo(format!("streamspace collateral {period}"));
    ledger.execute(tx, &[&payer.key]).await
}

/// Publishes a fraud proof on a consensus topic, where every node can read and check it, in
/// as many messages as [`crate::fraud::FraudProof::messages`] makes (a reader merges them).
///
/// # Errors
///
/// The ledger's error.
pub async fn publish_fraud_proof<L: Ledger>(
    ledger: &L,
    publisher: &Operator,
    topic: TopicId,
    proof: &crate::fraud::FraudProof,
    submit_key: Option<&ed25519_dalek::SigningKey>,
) -> Result<Vec<streamspace_ledger::Receipt>, LedgerError> {
    let mut out = Vec::new();
    for m in proof.messages() {
        out.extend(
            ledger
                .submit_message(publisher, topic, m, submit_key)
                .await?,
        );
    }
    Ok(out)
}

/// Tag opening a settlement-topic message that carries receipts.
pub const RECEIPTS_TAG: &[u8; 23] = b"streamspace-receipts-v2";
/// Receipts per settlement-topic message: a message (23-byte tag, count, 4 × 217 bytes) stays
/// within one 1,024-byte chunk.
pub const RECEIPTS_PER_MESSAGE: usize = 4;

/// A settlement-topic message that is not a valid receipts message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptsMessageError {
    /// It does not open with [`RECEIPTS_TAG`].
    #[error("not a receipts message")]
    NotReceipts,
    /// The count byte says no receipts, or more than [`RECEIPTS_PER_MESSAGE`].
    #[error("receipts message declares {0} receipts: not 1 to {RECEIPTS_PER_MESSAGE}")]
    Count(u8),
    /// The body after the count is not the declared number of whole receipts (a message cut
    /// short, even at a receipt boundary, or padded).
    #[error("receipts message declares {declared} receipts and carries {bytes} bytes of them")]
    Length {
        /// Receipts the count byte declares (0 when the count byte itself is missing).
        declared: u8,
        /// Bytes after the count byte.
        bytes: usize,
    },
    /// A receipt does not decode or verify.
    #[error("receipt {index}: {source}")]
    Receipt {
        /// Its position in the message.
        index: usize,
        /// Why.
        source: crate::receipt::ReceiptError,
    },
}

/// How payees hand their newest receipts to the clearing: settlement-topic messages, each
/// [`RECEIPTS_TAG`], one byte counting the receipts (1 to [`RECEIPTS_PER_MESSAGE`]), then
/// that many encoded receipts. The count makes a message cut short at a receipt boundary
/// detectable: it no longer holds the receipts it declares.
///
/// ```
/// use streamspace_ledger::{AccountId, TopicId};
/// use streamspace_payments::receipt::{Domain, ReceiptBody};
/// use streamspace_payments::settle::{parse_receipts_message, receipts_messages};
/// let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
/// let domain = Domain::new("main", "hedera:testnet", AccountId::new(5005), TopicId::new(6006)).id();
/// let receipts: Vec<_> = (0..7)
///     .map(|i| ReceiptBody { domain, payer: AccountId::new(1001), payee: AccountId::new(2000 + i), period: 1, amount: 10, shards: 1 }.sign(&key))
///     .collect();
/// let messages = receipts_messages(&receipts);
/// assert_eq!(messages.len(), 2);
/// let back: Vec<_> = messages.iter().flat_map(|m| parse_receipts_message(m, &domain).unwrap()).collect();
/// assert_eq!(back, receipts);
/// // Cut at a receipt boundary, the first message no longer holds what it declares.
/// let cut = &messages[0][..messages[0].len() - streamspace_payments::receipt::ENCODED_LEN];
/// assert!(parse_receipts_message(cut, &domain).is_err());
/// ```
pub fn receipts_messages(receipts: &[SignedReceipt]) -> Vec<Bytes> {
    use crate::receipt::ENCODED_LEN;
    receipts
        .chunks(RECEIPTS_PER_MESSAGE)
        .map(|c| {
            let mut m = Vec::with_capacity(RECEIPTS_TAG.len() + 1 + c.len() * ENCODED_LEN);
            m.extend_from_slice(RECEIPTS_TAG);
            // At most RECEIPTS_PER_MESSAGE (4) receipts per chunk: the count fits a byte.
            m.push(u8::try_from(c.len()).unwrap_or(u8::MAX));
            for r in c {
                m.extend_from_slice(&r.encode());
            }
            Bytes::from(m)
        })
        .collect()
}

/// Decodes a receipts message and verifies that every receipt is of `domain` and its
/// signature verifies (not who signed: check the payer's key against the ledger's or the
/// member list).
///
/// # Errors
///
/// [`ReceiptsMessageError`] naming what is wrong, and which receipt; a receipt of another
/// domain is [`crate::receipt::ReceiptError::ForeignDomain`].
pub fn parse_receipts_message(
    message: &[u8],
    domain: &DomainId,
) -> Result<Vec<SignedReceipt>, ReceiptsMessageError> {
    use crate::receipt::ENCODED_LEN;
    let body = message
        .strip_prefix(&RECEIPTS_TAG[..])
        .ok_or(ReceiptsMessageError::NotReceipts)?;
    let Some((&declared, receipts)) = body.split_first() else {
        return Err(ReceiptsMessageError::Length {
            declared: 0,
            bytes: 0,
        });
    };
    if declared == 0 || usize::from(declared) > RECEIPTS_PER_MESSAGE {
        return Err(ReceiptsMessageError::Count(declared));
    }
    if receipts.len() != usize::from(declared) * ENCODED_LEN {
        return Err(ReceiptsMessageError::Length {
            declared,
            bytes: receipts.len(),
        });
    }
    receipts
        .chunks(ENCODED_LEN)
        .enumerate()
        .map(|(index, c)| {
            let r = SignedReceipt::decode(c)
                .map_err(|source| ReceiptsMessageError::Receipt { index, source })?;
            r.verify_in(domain)
                .map_err(|source| ReceiptsMessageError::Receipt { index, source })?;
            Ok(r)
        })
        .collect()
}

/// The anchor message: a tag, the period, the receipt count and the Merkle root.
pub fn anchor_message(period: u64, count: u64, root: &Hash) -> Vec<u8> {
    let mut m = b"streamspace-period-v1".to_vec();
    m.extend_from_slice(&period.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(root);
    m
}

impl<L: Ledger> Settler<L> {
    /// A settler of `domain`'s periods, paying from its clearing account (whose operator is
    /// `clearing`) and anchoring on its settlement topic.
    ///
    /// # Errors
    ///
    /// [`SettleError::NotTheDomain`] when `clearing` is not the domain's clearing account or
    /// `journal` is of another domain.
    pub fn new(
        ledger: L,
        journal: Journal,
        clearing: Operator,
        domain: &Domain,
    ) -> Result<Self, SettleError> {
        if clearing.account != domain.clearing || journal.domain() != domain.id() {
            return Err(SettleError::NotTheDomain {
                operator: clearing.account,
                clearing: domain.clearing,
            });
        }
        Ok(Self {
            ledger,
            journal,
            clearing,
            topic: domain.topic,
        })
    }

    /// Closes `period`: nets its journaled receipts against `collateral`, pays out, publishes
    /// the fraud proof of every payer that promised more than its collateral (struck off and
    /// its collateral paid to its payees in consensus order, see [`crate::netting`]) and
    /// anchors the Merkle root. A payer that over-promised never stops the period. Safe to
    /// call again after any failure or crash.
    ///
    /// # Errors
    ///
    /// [`SettleError`].
    pub async fn close(
        &self,
        period: u64,
        collateral: &BTreeMap<AccountId, u64>,
    ) -> Result<Report, SettleError> {
        self.close_with_faults(period, collateral, |_, _| false)
            .await
    }

    /// [`Settler::close`], stopping with [`SettleError::Interrupted`] where `fault` says.
    ///
    /// # Errors
    ///
    /// As [`Settler::close`].
    pub async fn close_with_faults(
        &self,
        period: u64,
        collateral: &BTreeMap<AccountId, u64>,
        fault: impl Fn(u32, Phase) -> bool,
    ) -> Result<Report, SettleError> {
        let receipts = self.journal.receipts(period)?;
        // Consensus order: receipts as posted on the topic, then any recorded otherwise.
        let mut order = self.journal.posted(period)?;
        order.extend_from_slice(&receipts);
        let netted = plan(&order, collateral)?;
        let root = Tree::new(&receipts).root();
        let transfers = netted.transfers(self.clearing.account)?;
        let paid_out = netted
            .payouts
            .iter()
            .try_fold(0u64, |t, (_, v)| t.checked_add(*v))
            .ok_or(NettingError::Overflow {
                what: "the period's payouts",
            })?;
        let mut steps = self.journal.steps(period)?;
        if steps.is_empty() {
            // Plan once, durably, with the transaction id of every step: the payouts, the
            // proofs against payers struck off, the anchor.
            let mut actions: Vec<Action> =
                transfers.iter().cloned().map(Action::Transfer).collect();
            for s in &netted.struck_off {
                actions.extend(
                    s.proof
                        .messages()
                        .iter()
                        .map(|m| Action::Anchor(m.to_vec())),
                );
            }
            actions.push(Action::Anchor(anchor_message(
                period,
                u64::try_from(receipts.len()).unwrap_or(u64::MAX),
                &root,
            )));
            if u32::try_from(actions.len()).is_err() {
                return Err(NettingError::Overflow {
                    what: "the number of settlement steps",
                }
                .into());
            }
            // Ids from the generator, which never hands out one twice in this process: an id
            // computed here could equal one the clearing account used before, and a resend
            // would then take that transaction's receipt for the step's.
            let now = self.ledger.now();
            steps = actions
                .into_iter()
                .map(|action| Step {
                    id: TransactionId::generate(self.clearing.account, now),
                    action,
                    done: None,
                })
                .collect();
            let refs: Vec<_> = (0u32..).zip(steps.iter()).collect();
            self.journal.put_steps(period, &refs)?;
        }
        let mut fees: i64 = 0;
        for (i, step) in (0u32..).zip(steps.iter_mut()) {
            if step.done.is_some() {
                continue;
            }
            if fault(i, Phase::BeforeSend) {
                return Err(SettleError::Interrupted(i));
            }
            let consensus = self.send(i, step, period).await?;
            // Fees are reported, not paid from the plan: a sum past i64::MAX stays at it.
            fees = fees.saturating_add(
                self.ledger
                    .record(step.id)
                    .await
                    .map(|r| r.fee)
                    .unwrap_or(0),
            );
            if fault(i, Phase::AfterSend) {
                return Err(SettleError::Interrupted(i));
            }
            step.done = Some(consensus);
            self.journal.put_steps(period, &[(i, step)])?;
        }
        Ok(Report {
            receipts: receipts.len(),
            transfers: transfers.len(),
            paid_out,
            root,
            fees,
            struck_off: netted.struck_off,
        })
    }

    /// Sends one step with its journaled id; a resend of a step that already reached consensus
    /// is recognised, not repeated.
    async fn send(&self, i: u32, step: &mut Step, period: u64) -> Result<Timestamp, SettleError> {
        loop {
            let kind = match &step.action {
                Action::Transfer(list) => TxKind::Transfer {
                    hbar: list.clone(),
                    nfts: Vec::new(),
                },
                Action::Anchor(m) => TxKind::SubmitMessage {
                    topic: self.topic,
                    message: Bytes::from(m.clone()),
                    chunk: None,
                },
            };
            let memo = format!("streamspace settlement {period}/{i}");
            let tx = Transaction::new(step.id, kind).with_memo(memo.clone());
            match self.ledger.execute(tx, &[&self.clearing.key]).await {
                Ok(r) => return Ok(r.consensus),
                Err(LedgerError::Precheck {
                    status: Status::DuplicateTransaction | Status::TransactionExpired,
                    ..
                }) => {
                    // What holds this id: the step itself sent before a crash, or another
                    // transaction of the clearing account (another process, another tool)
                    // that happened to choose the same id. Only the first is this step: the
                    // record's memo tells them apart.
                    let found = match self.ledger.record(step.id).await {
                        Ok(r) => Some(r),
                        Err(e)
                            if matches!(
                                e.status(),
                                Some(Status::RecordNotFound | Status::ReceiptNotFound)
                            ) =>
                        {
                            // The node keeps records for minutes only: a step sent before a
                            // crash long ago is found in the ledger's history, not resent.
                            match self.ledger.history(step.id).await {
                                Ok(r) => Some(r),
                                Err(e) if e.status() == Some(Status::RecordNotFound) => None,
                                Err(e) => return Err(SettleError::Ledger { step: i, source: e }),
                            }
                        }
                        Err(e) => return Err(SettleError::Ledger { step: i, source: e }),
                    };
                    match found {
                        Some(r) if r.memo == memo => {
                            if r.receipt.status == Status::Success {
                                return Ok(r.receipt.consensus);
                            }
                            return Err(SettleError::Ledger {
                                step: i,
                                source: LedgerError::Failed {
                                    status: r.receipt.status,
                                    id: step.id,
                                },
                            });
                        }
                        found => {
                            // Never reached consensus and can no longer (its valid start is
                            // past), or the id is another transaction's: journal a fresh id.
                            if found.is_some() {
                                tracing::warn!(
                                    period,
                                    step = i,
                                    id = %step.id,
                                    "a settlement step's transaction id was taken by another \
                                     transaction of the clearing account; sending with a new id"
                                );
                            }
                            step.id =
                                TransactionId::generate(self.clearing.account, self.ledger.now());
                            self.journal.put_steps(period, &[(i, step)])?;
                        }
                    }
                }
                Err(e) => return Err(SettleError::Ledger { step: i, source: e }),
            }
        }
    }
}
