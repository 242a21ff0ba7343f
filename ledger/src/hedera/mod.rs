//! The Hedera backend, on the official SDK (`hiero-sdk`, imported as `hedera`).
//!
//! [`HederaLedger`] maps every [`Ledger`] call onto the SDK's transactions and queries, and
//! Hedera's answers back onto this crate's types and [`Status`] names. [`server::LoopbackNode`]
//! serves a [`crate::LocalLedger`] over Hedera's own gRPC protobufs, so the same conformance
//! suite runs against the SDK without the internet.
//!
//! # Example (testnet; not run in tests)
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use streamspace_ledger::{hedera::{HederaLedger, Network}, Ledger};
//! // HEDERA_OPERATOR_ID=0.0.1234 HEDERA_OPERATOR_KEY=<hex Ed25519 private key>
//! let ledger = HederaLedger::from_env(Network::Testnet)?;
//! let balance = ledger.balance("0.0.1234".parse()?).await?;
//! println!("{balance} tinybars");
//! # Ok(()) }
//! ```

mod convert;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use hedera::{Client, Hbar};

use crate::tx::{ChunkInfo, NftTransfer, PublicKey, Transaction, TxKind};
use crate::types::{AccountId, NftId, Timestamp, TokenId, TopicId, TransactionId};
use crate::{
    Ledger, LedgerError, NftInfo, Operator, Receipt, Record, Status, TopicInfo, TopicMessage,
};

/// Which Hedera network to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Network {
    /// Hedera mainnet.
    Mainnet,
    /// Hedera testnet.
    Testnet,
    /// Hedera previewnet.
    Previewnet,
    /// A custom address book: node address → node account, and mirror node addresses.
    Custom {
        /// `host:port` of each consensus node and its account id.
        nodes: HashMap<String, AccountId>,
        /// `host:port` of mirror nodes (the SDK uses the first).
        mirror: Vec<String>,
    },
}

/// The Hedera backend. Clones share one SDK client.
#[derive(Clone)]
pub struct HederaLedger {
    client: Client,
    network: Network,
    operator: AccountId,
    fast_retries: bool,
    /// A loopback node's mirror on an address the SDK would speak TLS to (see
    /// [`HederaLedger::loopback`]): read with a plaintext gRPC client instead.
    plain_mirror: Option<SocketAddr>,
    /// Where messages of each topic begin in consensus time, as read so far (see
    /// [`TopicIndex`]).
    index: Arc<Mutex<BTreeMap<TopicId, TopicIndex>>>,
}

/// The consensus times of messages read from one topic, by sequence number: a later read
/// from sequence `n` asks the mirror only for what reached consensus from the start of the
/// nearest message at or before `n`, instead of the whole topic from its first message, so
/// a reader that follows a topic does work in proportion to what is new, however long the
/// topic grows. Only the first chunk of a chunked message is indexed, so that a read never
/// starts inside one (the SDK would drop a message whose first chunks it did not see). At
/// most [`TOPIC_INDEX_ENTRIES`] per topic, the oldest dropped first: a read from further back
/// starts from the topic's beginning, as without the index.
type TopicIndex = BTreeMap<u64, Timestamp>;

/// Sequence numbers remembered per topic in the index.
const TOPIC_INDEX_ENTRIES: usize = 4096;

/// Topics remembered in the index; the one with the lowest topic number goes first.
const TOPIC_INDEX_TOPICS: usize = 256;

/// Chunks asked for beyond a read's limit, so that a chunked message that straddles the limit
/// still arrives whole through the SDK.
const CHUNK_MARGIN: u64 = 64;

/// How long a read of a topic from the mirror node may take: the SDK's subscription retries
/// an unreachable mirror without end, and a node's settlement loop must not wait forever.
const MIRROR_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the SDK reaches a mirror node at `addr` in plaintext: it speaks TLS to every
/// mirror whose address names neither `localhost` nor `127.0.0.1`.
fn sdk_mirror_is_plaintext(addr: &str) -> bool {
    addr.contains("localhost") || addr.contains("127.0.0.1")
}

impl std::fmt::Debug for HederaLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HederaLedger").finish_non_exhaustive()
    }
}

fn transport(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Transport(e.to_string())
}

fn sdk_account(a: AccountId) -> hedera::AccountId {
    hedera::AccountId::new(a.0.shard, a.0.realm, a.0.num)
}

fn our_account(a: hedera::AccountId) -> AccountId {
    AccountId(crate::EntityId {
        shard: a.shard,
        realm: a.realm,
        num: a.num,
    })
}

fn sdk_token(t: TokenId) -> hedera::TokenId {
    hedera::TokenId::new(t.0.shard, t.0.realm, t.0.num)
}

fn sdk_topic(t: TopicId) -> hedera::TopicId {
    hedera::TopicId::new(t.0.shard, t.0.realm, t.0.num)
}

fn sdk_key(k: &SigningKey) -> Result<hedera::PrivateKey, LedgerError> {
    hedera::PrivateKey::from_bytes_ed25519(&k.to_bytes()).map_err(transport)
}

fn sdk_public(k: PublicKey) -> Result<hedera::PublicKey, LedgerError> {
    hedera::PublicKey::from_bytes_ed25519(&k.0).map_err(transport)
}

fn sdk_account_key(k: &crate::tx::Key) -> Result<hedera::Key, LedgerError> {
    Ok(match k {
        crate::tx::Key::Ed25519(p) => hedera::Key::Single(sdk_public(*p)?),
        crate::tx::Key::Threshold { threshold, keys } => hedera::Key::KeyList(hedera::KeyList {
            keys: keys.iter().map(sdk_account_key).collect::<Result<_, _>>()?,
            threshold: Some(*threshold),
        }),
    })
}

fn to_time(t: Timestamp) -> Result<time::OffsetDateTime, LedgerError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).map_err(transport)
}

fn from_time(t: time::OffsetDateTime) -> Timestamp {
    Timestamp::from_nanos(t.unix_timestamp_nanos())
}

fn sdk_tx_id(id: TransactionId) -> Result<hedera::TransactionId, LedgerError> {
    Ok(hedera::TransactionId {
        account_id: sdk_account(id.payer),
        valid_start: to_time(id.valid_start)?,
        nonce: None,
        scheduled: false,
    })
}

fn our_tx_id(id: &hedera::TransactionId) -> TransactionId {
    TransactionId {
        payer: our_account(id.account_id),
        valid_start: from_time(id.valid_start),
    }
}

fn status_of(s: hedera::Status) -> Status {
    Status::from_name(s.as_str_name()).unwrap_or(Status::InvalidTransaction)
}

/// Maps an SDK error onto this crate's: precheck and receipt statuses keep their names.
fn sdk_error(e: hedera::Error, id: TransactionId) -> LedgerError {
    match e {
        hedera::Error::TimedOut(inner) => sdk_error(*inner, id),
        hedera::Error::TransactionPreCheckStatus { status, .. } => LedgerError::Precheck {
            status: status_of(status),
            id,
        },
        hedera::Error::ReceiptStatus { status, .. } => LedgerError::Failed {
            status: status_of(status),
            id,
        },
        hedera::Error::QueryNoPaymentPreCheckStatus { status }
        | hedera::Error::QueryPreCheckStatus { status, .. }
        | hedera::Error::QueryPaymentPreCheckStatus { status, .. } => LedgerError::Query {
            status: status_of(status),
        },
        other => transport(other),
    }
}

/// SDK calls that cannot panic.
///
/// hiero-sdk 0.45 panics ("timeout while network had no healthy nodes", in its retry loop)
/// when no node of the network answers for longer than the request timeout. A ledger that
/// is down must be an error the caller handles (a node retries next period), never a panic
/// that takes the caller's task with it: [`Unpanic::unpanic`] turns such a panic into the
/// SDK's own `Unavailable` error, which maps to [`LedgerError::Transport`].
trait Unpanic<T>: std::future::Future<Output = Result<T, hedera::Error>> + Sized {
    fn unpanic(self) -> impl std::future::Future<Output = Result<T, hedera::Error>> {
        use futures::FutureExt;
        std::panic::AssertUnwindSafe(self).catch_unwind().map(|r| {
            r.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the SDK panicked".into());
                Err(hedera::Error::GrpcStatus(tonic::Status::unavailable(what)))
            })
        })
    }
}

impl<T, F: std::future::Future<Output = Result<T, hedera::Error>>> Unpanic<T> for F {}

fn query_error(e: hedera::Error) -> LedgerError {
    match e {
        hedera::Error::TimedOut(inner) => query_error(*inner),
        hedera::Error::QueryNoPaymentPreCheckStatus { status }
        | hedera::Error::QueryPreCheckStatus { status, .. }
        | hedera::Error::QueryPaymentPreCheckStatus { status, .. }
        | hedera::Error::ReceiptStatus { status, .. } => LedgerError::Query {
            status: status_of(status),
        },
        other => transport(other),
    }
}

fn receipt_of(r: &hedera::TransactionReceipt, id: TransactionId, consensus: Timestamp) -> Receipt {
    Receipt {
        id,
        status: status_of(r.status),
        consensus,
        account: r.account_id.map(our_account),
        topic: r.topic_id.map(|t| {
            TopicId(crate::EntityId {
                shard: t.shard,
                realm: t.realm,
                num: t.num,
            })
        }),
        token: r.token_id.map(|t| {
            TokenId(crate::EntityId {
                shard: t.shard,
                realm: t.realm,
                num: t.num,
            })
        }),
        serials: r.serials.iter().map(|s| *s as u64).collect(),
        topic_sequence: r
            .topic_running_hash
            .as_ref()
            .map(|_| r.topic_sequence_number),
        topic_running_hash: r.topic_running_hash.clone(),
    }
}

/// A topic's messages up to `end`, chunk by chunk, from a mirror node speaking plaintext gRPC.
async fn plain_topic_messages(
    addr: SocketAddr,
    topic: TopicId,
    start: Timestamp,
    end: Timestamp,
    limit: u64,
) -> Result<Vec<TopicMessage>, LedgerError> {
    use futures::TryStreamExt;
    use hedera_proto::mirror::ConsensusTopicQuery;
    use hedera_proto::mirror::consensus_service_client::ConsensusServiceClient;
    let mut client = ConsensusServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| transport(format!("mirror node {addr}: {e}")))?;
    let query = ConsensusTopicQuery {
        topic_id: Some(convert::topic_out(topic)),
        consensus_start_time: Some(convert::ts_out(start)),
        consensus_end_time: Some(convert::ts_out(end)),
        limit,
    };
    let grpc = |e: tonic::Status| transport(format!("mirror node {addr}: {}", e.message()));
    let stream = client
        .subscribe_topic(query)
        .await
        .map_err(grpc)?
        .into_inner();
    let responses: Vec<_> = stream.try_collect().await.map_err(grpc)?;
    let bad = |what: &str| transport(format!("mirror node {addr}: a message with {what}"));
    responses
        .into_iter()
        .map(|r| {
            let consensus = convert::ts_in(r.consensus_timestamp.as_ref())
                .map_err(|_| bad("no consensus time"))?;
            let chunk = match &r.chunk_info {
                Some(c) => Some(ChunkInfo {
                    initial: convert::tx_id_in(c.initial_transaction_id.as_ref())
                        .map_err(|_| bad("a bad chunk transaction id"))?,
                    total: u32::try_from(c.total).map_err(|_| bad("a bad chunk count"))?,
                    number: u32::try_from(c.number).map_err(|_| bad("a bad chunk number"))?,
                }),
                None => None,
            };
            Ok(TopicMessage {
                sequence: r.sequence_number,
                consensus,
                message: Bytes::from(r.message),
                running_hash: r.running_hash,
                id: chunk.as_ref().filter(|c| c.number == 1).map(|c| c.initial),
                chunk,
            })
        })
        .collect()
}

impl HederaLedger {
    /// Where a read of `topic` from sequence `from` starts: the consensus time of the nearest
    /// indexed message at or before `from`, and how many sequence numbers lie between it and
    /// `from` (read and dropped).
    fn read_start(&self, topic: TopicId, from: u64) -> (Timestamp, u64) {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index
            .get(&topic)
            .and_then(|t| t.range(..=from).next_back())
            .map_or(
                (Timestamp::default(), from.saturating_sub(1)),
                |(seq, at)| (*at, from - seq),
            )
    }

    /// Indexes the messages a read returned, then keeps those from `from`, in order, at most
    /// `limit`.
    fn keep_read(
        &self,
        topic: TopicId,
        mut out: Vec<TopicMessage>,
        from: u64,
        limit: usize,
    ) -> Vec<TopicMessage> {
        {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if !index.contains_key(&topic) && index.len() >= TOPIC_INDEX_TOPICS {
                index.pop_first();
            }
            let t = index.entry(topic).or_default();
            for m in &out {
                if m.chunk.as_ref().is_none_or(|c| c.number == 1) {
                    t.insert(m.sequence, m.consensus);
                }
            }
            while t.len() > TOPIC_INDEX_ENTRIES {
                t.pop_first();
            }
        }
        out.retain(|m| m.sequence >= from);
        out.sort_by_key(|m| m.sequence);
        out.truncate(limit);
        out
    }

    /// A ledger on `network` paying queries with `operator`.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Transport`] for an unusable address book or key.
    pub fn new(network: Network, operator: &Operator) -> Result<Self, LedgerError> {
        let client = Self::client(&network, operator, false)?;
        Ok(Self {
            client,
            network,
            operator: operator.account,
            fast_retries: false,
            plain_mirror: None,
            index: Arc::default(),
        })
    }

    fn client(
        network: &Network,
        operator: &Operator,
        fast_retries: bool,
    ) -> Result<Client, LedgerError> {
        let client = match network.clone() {
            Network::Mainnet => Client::for_mainnet(),
            Network::Testnet => Client::for_testnet(),
            Network::Previewnet => Client::for_previewnet(),
            Network::Custom { nodes, mirror } => {
                let client = Client::for_network(
                    nodes
                        .into_iter()
                        .map(|(addr, a)| (addr, sdk_account(a)))
                        .collect(),
                )
                .map_err(transport)?;
                client.set_mirror_network(mirror);
                client
            }
        };
        client.set_operator(sdk_account(operator.account), sdk_key(&operator.key)?);
        if fast_retries {
            // A loopback node answers at once: a receipt it does not have will not appear
            // later, so give up after a few quick attempts instead of the SDK's two minutes.
            client.set_max_attempts(3);
            client.set_min_backoff(std::time::Duration::from_millis(20));
            client.set_max_backoff(std::time::Duration::from_millis(100));
            client.set_request_timeout(Some(std::time::Duration::from_secs(10)));
        }
        Ok(client)
    }

    /// A ledger on `network` with the operator from `HEDERA_OPERATOR_ID` (`0.0.N`) and
    /// `HEDERA_OPERATOR_KEY` (hex of the 32-byte Ed25519 private key).
    ///
    /// # Errors
    ///
    /// [`LedgerError::Transport`] when a variable is missing or malformed.
    pub fn from_env(network: Network) -> Result<Self, LedgerError> {
        let var = |k: &str| std::env::var(k).map_err(|_| transport(format!("{k} is not set")));
        let account: AccountId = var("HEDERA_OPERATOR_ID")?.parse().map_err(transport)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(var("HEDERA_OPERATOR_KEY")?.trim(), &mut key).map_err(transport)?;
        Self::new(
            network,
            &Operator {
                account,
                key: SigningKey::from_bytes(&key),
            },
        )
    }

    /// A ledger talking to a [`server::LoopbackNode`] (node account 0.0.3).
    ///
    /// # Errors
    ///
    /// As [`HederaLedger::new`].
    pub fn loopback(
        node: SocketAddr,
        mirror: SocketAddr,
        operator: &Operator,
    ) -> Result<Self, LedgerError> {
        let mut ledger = Self::new(
            Network::Custom {
                nodes: HashMap::from([(node.to_string(), AccountId::new(3))]),
                mirror: vec![mirror.to_string()],
            },
            operator,
        )?;
        // A loopback node serves plaintext gRPC. On another address than 127.0.0.1 (a test
        // network across machines or network namespaces) the SDK would open TLS to its
        // mirror, so topics are read there with a plaintext client of the same protobufs.
        if !sdk_mirror_is_plaintext(&mirror.to_string()) {
            ledger.plain_mirror = Some(mirror);
        }
        // A loopback node answers at once: a receipt it does not have will not appear later,
        // so give up after a few quick attempts instead of the SDK's two minutes.
        ledger.client.set_max_attempts(3);
        ledger
            .client
            .set_min_backoff(std::time::Duration::from_millis(20));
        ledger
            .client
            .set_max_backoff(std::time::Duration::from_millis(100));
        ledger
            .client
            .set_request_timeout(Some(std::time::Duration::from_secs(10)));
        Ok(ledger)
    }

    async fn run(
        &self,
        tx: impl Into<hedera::AnyTransaction>,
        body: &Transaction,
        signers: &[&SigningKey],
    ) -> Result<Receipt, LedgerError> {
        let mut tx: hedera::AnyTransaction = tx.into();
        let id = body.id;
        tx.transaction_id(sdk_tx_id(id)?)
            .node_account_ids([sdk_account(body.node)])
            .max_transaction_fee(Hbar::from_tinybars(body.max_fee))
            .transaction_valid_duration(time::Duration::seconds(body.valid_duration_secs))
            .transaction_memo(body.memo.clone());
        tx.freeze_with(&self.client).map_err(transport)?;
        for k in signers {
            tx.sign(sdk_key(k)?);
        }
        let response = tx
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(|e| sdk_error(e, id))?;
        let receipt = response
            .get_receipt(&self.client)
            .unpanic()
            .await
            .map_err(|e| sdk_error(e, id))?;
        let record = hedera::TransactionRecordQuery::new()
            .transaction_id(sdk_tx_id(id)?)
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(|e| sdk_error(e, id))?;
        Ok(receipt_of(
            &receipt,
            id,
            from_time(record.consensus_timestamp),
        ))
    }
}

impl Ledger for HederaLedger {
    async fn execute(
        &self,
        tx: Transaction,
        signers: &[&SigningKey],
    ) -> Result<Receipt, LedgerError> {
        match &tx.kind {
            TxKind::CreateAccount {
                key,
                initial_balance,
                receiver_sig_required,
            } => {
                let mut t = hedera::AccountCreateTransaction::new();
                t.set_key_without_alias(sdk_account_key(key)?)
                    .initial_balance(Hbar::from_tinybars(*initial_balance))
                    .receiver_signature_required(*receiver_sig_required);
                self.run(t, &tx, signers).await
            }
            TxKind::Transfer { hbar, nfts } => {
                let mut t = hedera::TransferTransaction::new();
                for (a, v) in hbar {
                    t.hbar_transfer(sdk_account(*a), Hbar::from_tinybars(*v));
                }
                for n in nfts {
                    t.nft_transfer(
                        hedera::NftId {
                            token_id: sdk_token(n.nft.token),
                            serial: n.nft.serial,
                        },
                        sdk_account(n.from),
                        sdk_account(n.to),
                    );
                }
                self.run(t, &tx, signers).await
            }
            TxKind::CreateTopic { memo, submit_key } => {
                let mut t = hedera::TopicCreateTransaction::new();
                t.topic_memo(memo.clone());
                if let Some(k) = submit_key {
                    t.submit_key(sdk_public(*k)?);
                }
                self.run(t, &tx, signers).await
            }
            TxKind::SubmitMessage {
                topic,
                message,
                chunk: None,
            } => {
                // One transaction, as built: the message goes out whole, however long, and the
                // network judges its size.
                let mut t = hedera::TopicMessageSubmitTransaction::new();
                t.topic_id(sdk_topic(*topic))
                    .message(message.to_vec())
                    .chunk_size(message.len().max(1))
                    .max_chunks(1);
                self.run(t, &tx, signers).await
            }
            // The SDK chunks messages itself (see `submit_message`); it takes no chunk info.
            TxKind::SubmitMessage { chunk: Some(_), .. } => Err(LedgerError::Precheck {
                status: Status::NotSupported,
                id: tx.id,
            }),
            TxKind::CreateNft {
                name,
                symbol,
                treasury,
                supply_key,
            } => {
                let mut t = hedera::TokenCreateTransaction::new();
                t.name(name.clone())
                    .symbol(symbol.clone())
                    .token_type(hedera::TokenType::NonFungibleUnique)
                    .treasury_account_id(sdk_account(*treasury))
                    .supply_key(sdk_public(*supply_key)?)
                    .auto_renew_account_id(sdk_account(tx.id.payer));
                self.run(t, &tx, signers).await
            }
            TxKind::MintNft { token, metadata } => {
                let mut t = hedera::TokenMintTransaction::new();
                t.token_id(sdk_token(*token))
                    .metadata(metadata.iter().map(|m| m.to_vec()));
                self.run(t, &tx, signers).await
            }
            TxKind::Associate { account, tokens } => {
                let mut t = hedera::TokenAssociateTransaction::new();
                t.account_id(sdk_account(*account))
                    .token_ids(tokens.iter().map(|t| sdk_token(*t)));
                self.run(t, &tx, signers).await
            }
        }
    }

    async fn submit_message(
        &self,
        payer: &Operator,
        topic: TopicId,
        message: Bytes,
        submit_key: Option<&SigningKey>,
    ) -> Result<Vec<Receipt>, LedgerError> {
        // The SDK pays chunks after the first from the client's operator, and Hedera requires
        // every chunk to have the first chunk's payer: a message paid by someone else goes
        // through a client operated by its payer.
        let own;
        let client = if payer.account == self.operator {
            &self.client
        } else {
            own = Self::client(&self.network, payer, self.fast_retries)?;
            &own
        };
        let first = TransactionId::generate(payer.account, self.now());
        let mut t = hedera::TopicMessageSubmitTransaction::new();
        t.topic_id(sdk_topic(topic))
            .message(message.to_vec())
            .transaction_id(sdk_tx_id(first)?)
            .node_account_ids([hedera::AccountId::new(0, 0, 3)]);
        t.freeze_with(client).map_err(transport)?;
        t.sign(sdk_key(&payer.key)?);
        if let Some(k) = submit_key {
            t.sign(sdk_key(k)?);
        }
        let responses = t
            .execute_all(client)
            .unpanic()
            .await
            .map_err(|e| sdk_error(e, first))?;
        let mut out = Vec::with_capacity(responses.len());
        for r in responses {
            let id = our_tx_id(&r.transaction_id);
            let receipt = r
                .get_receipt(client)
                .unpanic()
                .await
                .map_err(|e| sdk_error(e, id))?;
            out.push(receipt_of(&receipt, id, Timestamp::default()));
        }
        Ok(out)
    }

    async fn receipt(&self, id: TransactionId) -> Result<Receipt, LedgerError> {
        let record = self.record(id).await.map_err(|e| match e.status() {
            Some(Status::RecordNotFound) => LedgerError::Query {
                status: Status::ReceiptNotFound,
            },
            _ => e,
        })?;
        Ok(record.receipt)
    }

    async fn record(&self, id: TransactionId) -> Result<Record, LedgerError> {
        let r = hedera::TransactionRecordQuery::new()
            .transaction_id(sdk_tx_id(id)?)
            .validate_status(false)
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(query_error)?;
        let mut transfers: Vec<(AccountId, i64)> = r
            .transfers
            .iter()
            .map(|t| (our_account(t.account_id), t.amount.to_tinybars()))
            .collect();
        transfers.sort();
        let mut nft_transfers = Vec::new();
        for (token, list) in &r.token_nft_transfers {
            for n in list {
                nft_transfers.push(NftTransfer {
                    nft: NftId {
                        token: TokenId(crate::EntityId {
                            shard: token.shard,
                            realm: token.realm,
                            num: token.num,
                        }),
                        serial: n.serial,
                    },
                    from: our_account(n.sender),
                    to: our_account(n.receiver),
                });
            }
        }
        let fee = r.transaction_fee.to_tinybars();
        Ok(Record {
            receipt: receipt_of(&r.receipt, id, from_time(r.consensus_timestamp)),
            fee,
            transfers,
            nft_transfers,
            memo: r.transaction_memo,
        })
    }

    async fn balance(&self, account: AccountId) -> Result<i64, LedgerError> {
        let b = hedera::AccountBalanceQuery::new()
            .account_id(sdk_account(account))
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(query_error)?;
        Ok(b.hbars.to_tinybars())
    }

    async fn topic_info(&self, topic: TopicId) -> Result<TopicInfo, LedgerError> {
        let i = hedera::TopicInfoQuery::new()
            .topic_id(sdk_topic(topic))
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(query_error)?;
        let submit_key = match i.submit_key {
            Some(hedera::Key::Single(k)) => Some(PublicKey(
                <[u8; 32]>::try_from(k.to_bytes_raw().as_slice()).map_err(transport)?,
            )),
            _ => None,
        };
        Ok(TopicInfo {
            memo: i.topic_memo,
            sequence: i.sequence_number,
            running_hash: i.running_hash,
            submit_key,
        })
    }

    async fn topic_messages(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TopicMessage>, LedgerError> {
        // The mirror API selects by consensus time: read from the start of the nearest message
        // at or before `from` that an earlier read saw (the topic's beginning if none) up to
        // now, and keep the chunks from sequence number `from`.
        self.topic_info(topic).await?;
        let end = self.now().plus_secs(1);
        let (start, skipped) = self.read_start(topic, from);
        let wanted = skipped
            .saturating_add(limit as u64)
            .saturating_add(CHUNK_MARGIN);
        if let Some(addr) = self.plain_mirror {
            let out = tokio::time::timeout(
                MIRROR_DEADLINE,
                plain_topic_messages(addr, topic, start, end, wanted),
            )
            .await
            .map_err(|_| {
                transport(format!(
                    "the mirror node at {addr} did not answer within {MIRROR_DEADLINE:?}"
                ))
            })??;
            return Ok(self.keep_read(topic, out, from, limit));
        }
        let mut query = hedera::TopicMessageQuery::new();
        let query = query
            .topic_id(sdk_topic(topic))
            .start_time(to_time(start)?)
            .end_time(to_time(end)?)
            .limit(wanted)
            .execute(&self.client)
            .unpanic();
        let msgs = tokio::time::timeout(MIRROR_DEADLINE, query)
            .await
            .map_err(|_| {
                transport(format!(
                    "the mirror node did not answer within {MIRROR_DEADLINE:?}"
                ))
            })?
            .map_err(query_error)?;
        let mut out = Vec::new();
        for m in msgs {
            // The SDK reassembles chunked messages; split them back into the chunks the ledger
            // recorded, each with its own sequence number, time and running hash.
            match &m.chunks {
                Some(chunks) if chunks.len() > 1 => {
                    let initial = m.transaction.as_ref().map(our_tx_id);
                    let mut offset = 0;
                    for (i, c) in chunks.iter().enumerate() {
                        let part = m
                            .contents
                            .get(offset..offset + c.content_size)
                            .unwrap_or_default();
                        offset += c.content_size;
                        let initial = initial.ok_or_else(|| {
                            transport("chunked message without its transaction id")
                        })?;
                        out.push(TopicMessage {
                            sequence: c.sequence_number,
                            consensus: from_time(c.consensus_timestamp),
                            message: Bytes::copy_from_slice(part),
                            running_hash: c.running_hash.clone(),
                            id: (i == 0).then_some(initial),
                            chunk: Some(ChunkInfo {
                                initial,
                                total: chunks.len() as u32,
                                number: i as u32 + 1,
                            }),
                        });
                    }
                }
                _ => out.push(TopicMessage {
                    sequence: m.sequence_number,
                    consensus: from_time(m.consensus_timestamp),
                    message: Bytes::from(m.contents.clone()),
                    running_hash: m.running_hash.clone(),
                    id: m.transaction.as_ref().map(our_tx_id),
                    chunk: None,
                }),
            }
        }
        Ok(self.keep_read(topic, out, from, limit))
    }

    async fn nft_info(&self, nft: NftId) -> Result<NftInfo, LedgerError> {
        let i = hedera::TokenNftInfoQuery::new()
            .nft_id(hedera::NftId {
                token_id: sdk_token(nft.token),
                serial: nft.serial,
            })
            .execute(&self.client)
            .unpanic()
            .await
            .map_err(query_error)?;
        Ok(NftInfo {
            id: nft,
            owner: our_account(i.account_id),
            metadata: Bytes::from(i.metadata),
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
