//! The clearing role: reads the receipts members post to the settlement topic, keeps those
//! signed by a member's key, and settles every period that ended (plus a grace for late
//! posts) once, with the crash-safe [`Settler`].
//!
//! # Examples
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use streamspace_ledger::local::TREASURY;
//! use streamspace_ledger::{Ledger, LocalLedger, SystemClock, Operator, PublicKey};
//! use streamspace_ledger::{Transaction, TransactionId, TxKind};
//! use streamspace_payments::clearing::{Clearing, Member};
//! use streamspace_payments::receipt::Domain;
//! use streamspace_payments::settle::Journal;
//!
//! let dir = tempfile::tempdir()?;
//! let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
//! let ledger = LocalLedger::open(
//!     dir.path().join("ledger.redb"),
//!     PublicKey::from(&key),
//!     Arc::new(SystemClock),
//! )?;
//! let clearing = Operator { account: TREASURY, key };
//! let tx = Transaction::new(
//!     TransactionId::generate(TREASURY, ledger.now()),
//!     TxKind::CreateTopic { memo: "settlement".into(), submit_key: None },
//! );
//! let topic = ledger.execute(tx, &[&clearing.key]).await?.topic.expect("a topic");
//! let domain = Domain::new("main", "private", clearing.account, topic);
//! let journal = Journal::open(dir.path().join("clearing.redb"), domain.id())?;
//! let mut c = Clearing::new(ledger, clearing, &domain, journal, Vec::<Member>::new(), 3600)?;
//! // Once a second or so: read what was posted, settle what ended.
//! let outcome = c.poll(1_700_000_000).await;
//! assert_eq!(outcome.kept, 0);
//! assert!(outcome.settled.is_empty() && outcome.topic_error.is_none());
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
//! # .map_err(|e| e.to_string())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use streamspace_ledger::{AccountId, Ledger, Operator, PublicKey, TopicId};

use crate::receipt::{Domain, DomainId, SignedReceipt};
use crate::settle::{Journal, RECEIPTS_TAG, Report, SettleError, Settler, parse_receipts_message};

/// At most this many topic messages are read per [`Clearing::poll`].
pub const MESSAGES_PER_POLL: usize = 1000;

/// A member of the network as the clearing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its ledger account.
    pub account: AccountId,
    /// The key its receipts must be signed with.
    pub key: PublicKey,
    /// Tinybars it locks each period.
    pub collateral: u64,
}

/// What one [`Clearing::poll`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Poll {
    /// Receipts read from the topic and kept (signed by a member, for a period not yet
    /// closed and not in the future).
    pub kept: usize,
    /// Messages refused (not a receipts message of this format, or malformed), by sequence
    /// number.
    pub refused: Vec<u64>,
    /// Periods settled, with their reports.
    pub settled: Vec<(u64, Report)>,
    /// Periods whose settlement failed this time (retried at the next poll).
    pub failed: Vec<(u64, SettleError)>,
    /// Reading the topic failed (retried at the next poll).
    pub topic_error: Option<streamspace_ledger::LedgerError>,
}

/// The clearing role of a network (see the module docs).
pub struct Clearing<L> {
    ledger: L,
    topic: TopicId,
    domain: DomainId,
    settler: Settler<L>,
    journal: Journal,
    collateral: BTreeMap<AccountId, u64>,
    keys: HashMap<AccountId, PublicKey>,
    next_sequence: u64,
    closed: BTreeSet<u64>,
    period_secs: u64,
}

impl<L: Ledger + Clone> Clearing<L> {
    /// The clearing of `members` in `domain`, settling from `clearing`'s account (the
    /// domain's), reading receipts from the domain's topic, journaling in `journal`, with
    /// periods of `period_secs` seconds.
    ///
    /// # Errors
    ///
    /// [`SettleError::NotTheDomain`] as [`Settler::new`].
    pub fn new(
        ledger: L,
        clearing: Operator,
        domain: &Domain,
        journal: Journal,
        members: impl IntoIterator<Item = Member>,
        period_secs: u64,
    ) -> Result<Self, SettleError> {
        let members: Vec<Member> = members.into_iter().collect();
        Ok(Self {
            settler: Settler::new(ledger.clone(), journal.clone(), clearing, domain)?,
            ledger,
            topic: domain.topic,
            domain: domain.id(),
            journal,
            collateral: members.iter().map(|m| (m.account, m.collateral)).collect(),
            keys: members.iter().map(|m| (m.account, m.key)).collect(),
            next_sequence: 1,
            closed: BTreeSet::new(),
            period_secs: period_secs.max(1),
        })
    }

    /// How long after a period's end it is settled, so that members can post late receipts:
    /// a quarter of the period, between 3 s and 5 min.
    pub fn grace_secs(&self) -> u64 {
        (self.period_secs / 4).clamp(3, 300)
    }

    /// Reads new receipts from the topic and settles every period that ended at least
    /// [`grace_secs`](Self::grace_secs) before `now_secs` (Unix seconds) and is not settled
    /// yet. A period that fails is retried at the next poll; settlement is idempotent.
    pub async fn poll(&mut self, now_secs: u64) -> Poll {
        let mut out = Poll::default();
        let now_period = now_secs / self.period_secs;
        match self
            .ledger
            .topic_messages(self.topic, self.next_sequence, MESSAGES_PER_POLL)
            .await
        {
            Ok(messages) => {
                for m in messages {
                    self.next_sequence = self.next_sequence.max(m.sequence.saturating_add(1));
                    if !m.message.starts_with(RECEIPTS_TAG) {
                        continue;
                    }
                    match parse_receipts_message(&m.message, &self.domain) {
                        Ok(rs) => {
                            let known: Vec<SignedReceipt> = rs
                                .into_iter()
                                .filter(|r| {
                                    self.keys.get(&r.body.payer) == Some(&r.payer_key)
                                        && r.body.period <= now_period
                                        && !self.closed.contains(&r.body.period)
                                })
                                .collect();
                            out.kept += known.len();
                            if let Err(e) = self.journal.record_posted(m.sequence, &known) {
                                out.failed.push((now_period, e));
                            }
                        }
                        Err(_) => out.refused.push(m.sequence),
                    }
                }
            }
            Err(e) => out.topic_error = Some(e),
        }
        let periods = match self.journal.periods() {
            Ok(p) => p,
            Err(e) => {
                out.failed.push((now_period, e));
                return out;
            }
        };
        let grace = self.grace_secs();
        for period in periods.into_iter().filter(|p| {
            p.checked_add(1)
                .and_then(|n| n.checked_mul(self.period_secs))
                .and_then(|end| end.checked_add(grace))
                .is_some_and(|ready| ready <= now_secs)
        }) {
            if self.closed.contains(&period) {
                continue;
            }
            match self.settler.close(period, &self.collateral).await {
                Ok(r) => {
                    self.closed.insert(period);
                    out.settled.push((period, r));
                }
                Err(e) => out.failed.push((period, e)),
            }
        }
        out
    }
}
