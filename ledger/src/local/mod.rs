//! The embedded ledger: Hedera's semantics in one redb file.
//!
//! Transactions are checked as Hedera checks them (signatures of every key Hedera would
//! require, valid-start window, duplicates, fees, balances, limits), then applied by one
//! committer thread that groups whatever is queued into a single database transaction and
//! acknowledges each caller only after that transaction is durable (group commit). A process
//! killed at any point restarts with every acknowledged transaction present and none
//! half-applied.

mod apply;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use ed25519_dalek::SigningKey;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::tx::{PublicKey, SignedTransaction, Transaction};
use crate::types::{AccountId, NftId, Timestamp, TopicId, TransactionId};
use crate::{Ledger, LedgerError, NftInfo, Receipt, Record, Status, TopicInfo, TopicMessage};

pub(crate) const ACCOUNTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("accounts");
pub(crate) const TOPICS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("topics");
pub(crate) const MESSAGES: TableDefinition<'_, (u64, u64), &[u8]> =
    TableDefinition::new("messages");
pub(crate) const TOKENS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("tokens");
pub(crate) const NFTS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("nfts");
pub(crate) const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Accounts that must sign every transfer crediting them (`receiverSigRequired`), kept apart
/// from the account records so that ledgers written before it still open.
pub(crate) const RECEIVER_SIG: TableDefinition<'_, u64, ()> = TableDefinition::new("receiver_sig");
/// Keys of accounts controlled by more than one Ed25519 key (postcard of a [`crate::Key`]),
/// kept apart from the account records so that ledgers written before them still open. Where
/// an account has a row here, only this key signs for it.
pub(crate) const ACCOUNT_KEYS: TableDefinition<'_, u64, &[u8]> =
    TableDefinition::new("account_keys");

/// The treasury account created at genesis.
pub const TREASURY: AccountId = AccountId::new(2);
/// Hbar supply at genesis, all in the treasury: 50 billion hbar, as on Hedera.
pub const GENESIS_SUPPLY: i64 = 50_000_000_000 * crate::types::TINYBARS_PER_HBAR;
/// First number given to accounts, topics and tokens created after genesis.
pub const FIRST_USER_ENTITY: u64 = 1001;
/// Most transactions committed in one database transaction.
const MAX_BATCH: usize = 4096;
/// Transactions queued for the committer at most.
const QUEUE: usize = 8192;

/// A source of the ledger's time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    /// Moves the clock forward by `secs` seconds.
    pub fn advance(&self, secs: i64) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t = t.plus_secs(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AccountRec {
    pub(crate) key: PublicKey,
    pub(crate) balance: i64,
    pub(crate) tokens: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicRec {
    pub(crate) memo: String,
    pub(crate) submit_key: Option<PublicKey>,
    pub(crate) sequence: u64,
    pub(crate) running_hash: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenRec {
    pub(crate) name: String,
    pub(crate) symbol: String,
    pub(crate) treasury: u64,
    pub(crate) supply_key: PublicKey,
    pub(crate) minted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NftRec {
    pub(crate) owner: u64,
    pub(crate) metadata: Vec<u8>,
}

/// Counters the committer keeps between batches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) next_entity: u64,
    pub(crate) last_consensus: Timestamp,
}

pub(crate) fn storage(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

pub(crate) fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, LedgerError> {
    postcard::from_bytes(b).map_err(storage)
}

struct Job {
    signed: SignedTransaction,
    signers: HashSet<PublicKey>,
    reply: oneshot::Sender<Result<Receipt, LedgerError>>,
}

/// The embedded ledger. Clones share one database and one committer.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use streamspace_ledger::{Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock};
/// let dir = tempfile::tempdir()?;
/// let treasury_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
/// let ledger = LocalLedger::open(dir.path().join("ledger.redb"), PublicKey::from(&treasury_key), Arc::new(SystemClock))?;
/// let treasury = Operator { account: streamspace_ledger::local::TREASURY, key: treasury_key };
/// let alice_key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let alice = ledger.create_account(&treasury, PublicKey::from(&alice_key), 1_000_000_000).await?;
/// assert_eq!(ledger.balance(alice).await?, 1_000_000_000);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalLedger {
    shared: Arc<Shared>,
}

struct Shared {
    db: Arc<Database>,
    clock: Arc<dyn Clock>,
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    /// Closes the queue and waits for the committer to finish what was queued, so the file is
    /// released when the last handle is dropped.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for LocalLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLedger").finish_non_exhaustive()
    }
}

impl LocalLedger {
    /// Opens the ledger file at `path`, creating it with a genesis state (the treasury
    /// [`TREASURY`] holding [`GENESIS_SUPPLY`] under `treasury_key`) if it does not exist.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Storage`] when the file cannot be opened.
    pub fn open(
        path: impl AsRef<Path>,
        treasury_key: PublicKey,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LedgerError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(storage)?;
        }
        let db = Database::create(path).map_err(storage)?;
        let meta = Self::init(&db, treasury_key)?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel(QUEUE);
        let (db2, clock2) = (db.clone(), clock.clone());
        let committer = std::thread::Builder::new()
            .name("ledger-committer".into())
            .spawn(move || committer(&db2, &*clock2, meta, rx))
            .map_err(storage)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                clock,
                jobs: Some(jobs),
                committer: Some(committer),
            }),
        })
    }

    fn init(db: &Database, treasury_key: PublicKey) -> Result<Meta, LedgerError> {
        let txn = db.begin_write().map_err(storage)?;
        let meta = {
            let mut meta_t = txn.open_table(META).map_err(storage)?;
            let existing = meta_t
                .get("meta")
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            match existing {
                Some(b) => dec(&b)?,
                None => {
                    let mut accounts = txn.open_table(ACCOUNTS).map_err(storage)?;
                    let rec = |balance| AccountRec {
                        key: treasury_key,
                        balance,
                        tokens: Vec::new(),
                    };
                    accounts
                        .insert(TREASURY.num(), enc(&rec(GENESIS_SUPPLY)).as_slice())
                        .map_err(storage)?;
                    for system in [3, crate::fees::FEE_COLLECTOR.num()] {
                        accounts
                            .insert(system, enc(&rec(0)).as_slice())
                            .map_err(storage)?;
                    }
                    let m = Meta {
                        next_entity: FIRST_USER_ENTITY,
                        last_consensus: Timestamp::default(),
                    };
                    meta_t.insert("meta", enc(&m).as_slice()).map_err(storage)?;
                    m
                }
            }
        };
        for t in [TOPICS, TOKENS] {
            txn.open_table(t).map_err(storage)?;
        }
        txn.open_table(MESSAGES).map_err(storage)?;
        txn.open_table(NFTS).map_err(storage)?;
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(ACCOUNTS).map_err(storage)?;
        txn.open_table(RECEIVER_SIG).map_err(storage)?;
        txn.open_table(ACCOUNT_KEYS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(meta)
    }

    /// Submits a transaction signed elsewhere (its signatures are verified here) and waits
    /// until it is durable.
    ///
    /// # Errors
    ///
    /// As [`Ledger::execute`].
    pub async fn execute_signed(&self, signed: SignedTransaction) -> Result<Receipt, LedgerError> {
        // Hedera's size limit covers the body and every signature (32-byte key, 64-byte
        // signature each).
        let size = signed
            .body_bytes
            .len()
            .saturating_add(signed.sigs.len().saturating_mul(96));
        if size > crate::fees::MAX_TRANSACTION_BYTES {
            return Err(LedgerError::Precheck {
                status: Status::TransactionOversize,
                id: signed.body.id,
            });
        }
        let signers = signed.verified_signers();
        let (reply, rx) = oneshot::channel();
        let jobs = self.shared.jobs.as_ref().ok_or(LedgerError::Closed)?;
        jobs.send(Job {
            signed,
            signers,
            reply,
        })
        .await
        .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let txn = self.shared.db.begin_read().map_err(storage)?;
        f(&txn)
    }

    fn get_record(&self, id: &TransactionId) -> Result<Option<Record>, LedgerError> {
        self.read(|txn| {
            let t = txn.open_table(RECORDS).map_err(storage)?;
            let row = t.get(id.to_bytes().as_slice()).map_err(storage)?;
            row.map(|v| dec::<Record>(v.value())).transpose()
        })
    }
}

impl LocalLedger {
    /// The record of `id` if it reached consensus at most
    /// [`RECEIPT_RETENTION_SECS`](crate::fees::RECEIPT_RETENTION_SECS) ago, as Hedera's nodes
    /// answer receipt and record queries.
    fn retained(&self, id: &TransactionId) -> Result<Option<Record>, LedgerError> {
        let now = self.shared.clock.now();
        Ok(self.get_record(id)?.filter(|r| {
            r.receipt
                .consensus
                .plus_secs(crate::fees::RECEIPT_RETENTION_SECS)
                >= now
        }))
    }
}

fn committer(db: &Database, clock: &dyn Clock, mut meta: Meta, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let now = clock.now();
        let mut batch_meta = meta;
        let result = (|| {
            let txn = db.begin_write().map_err(storage)?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            {
                let mut tables = apply::Tables::open(&txn)?;
                for job in &jobs {
                    outcomes.push(apply::apply(
                        &mut tables,
                        &mut batch_meta,
                        &job.signed.body,
                        &job.signers,
                        now,
                    )?);
                }
                tables.save_meta(&batch_meta)?;
            }
            txn.commit().map_err(storage)?;
            Ok::<_, LedgerError>(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                meta = batch_meta;
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(LedgerError::Storage(msg.clone())));
                }
            }
        }
    }
}

fn query_err(status: Status) -> LedgerError {
    LedgerError::Query { status }
}

impl Ledger for LocalLedger {
    async fn execute(
        &self,
        tx: Transaction,
        signers: &[&SigningKey],
    ) -> Result<Receipt, LedgerError> {
        self.execute_signed(tx.sign(signers)).await
    }

    async fn receipt(&self, id: TransactionId) -> Result<Receipt, LedgerError> {
        self.retained(&id)?
            .map(|r| r.receipt)
            .ok_or(query_err(Status::ReceiptNotFound))
    }

    async fn record(&self, id: TransactionId) -> Result<Record, LedgerError> {
        self.retained(&id)?.ok_or(query_err(Status::RecordNotFound))
    }

    /// Every record is kept in the file: the embedded ledger is its own mirror node.
    async fn history(&self, id: TransactionId) -> Result<Record, LedgerError> {
        self.get_record(&id)?
            .ok_or(query_err(Status::RecordNotFound))
    }

    async fn balance(&self, account: AccountId) -> Result<i64, LedgerError> {
        if account.0.shard != 0 || account.0.realm != 0 {
            return Err(query_err(Status::InvalidAccountId));
        }
        self.read(|txn| {
            let t = txn.open_table(ACCOUNTS).map_err(storage)?;
            let row = t.get(account.num()).map_err(storage)?;
            let rec: AccountRec = dec(row.ok_or(query_err(Status::InvalidAccountId))?.value())?;
            Ok(rec.balance)
        })
    }

    async fn topic_info(&self, topic: TopicId) -> Result<TopicInfo, LedgerError> {
        self.read(|txn| {
            let t = txn.open_table(TOPICS).map_err(storage)?;
            let row = t.get(topic.num()).map_err(storage)?;
            let rec: TopicRec = dec(row.ok_or(query_err(Status::InvalidTopicId))?.value())?;
            Ok(TopicInfo {
                memo: rec.memo,
                sequence: rec.sequence,
                running_hash: rec.running_hash,
                submit_key: rec.submit_key,
            })
        })
    }

    async fn topic_messages(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TopicMessage>, LedgerError> {
        let db = self.shared.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            if txn
                .open_table(TOPICS)
                .map_err(storage)?
                .get(topic.num())
                .map_err(storage)?
                .is_none()
            {
                return Err(query_err(Status::InvalidTopicId));
            }
            let t = txn.open_table(MESSAGES).map_err(storage)?;
            let mut out = Vec::new();
            for row in t
                .range((topic.num(), from.max(1))..=(topic.num(), u64::MAX))
                .map_err(storage)?
                .take(limit)
            {
                let (_, v) = row.map_err(storage)?;
                out.push(dec(v.value())?);
            }
            Ok(out)
        })
        .await
        .map_err(storage)?
    }

    async fn nft_info(&self, nft: NftId) -> Result<NftInfo, LedgerError> {
        self.read(|txn| {
            let t = txn.open_table(NFTS).map_err(storage)?;
            let row = t.get((nft.token.num(), nft.serial)).map_err(storage)?;
            let rec: NftRec = dec(row.ok_or(query_err(Status::InvalidNftId))?.value())?;
            Ok(NftInfo {
                id: nft,
                owner: AccountId::new(rec.owner),
                metadata: rec.metadata.into(),
            })
        })
    }

    fn now(&self) -> Timestamp {
        self.shared.clock.now()
    }
}
