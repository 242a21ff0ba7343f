//! A Hedera node and mirror node on loopback, serving a [`LocalLedger`] over Hedera's gRPC
//! protobufs: exactly the calls the official SDK makes, so the SDK backend can be tested
//! without the internet.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use hedera_proto::mirror::{ConsensusTopicQuery, ConsensusTopicResponse};
use hedera_proto::services as pb;
use hedera_proto::services::consensus_service_server::{ConsensusService, ConsensusServiceServer};
use hedera_proto::services::crypto_service_server::{CryptoService, CryptoServiceServer};
use hedera_proto::services::token_service_server::{TokenService, TokenServiceServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response};

use super::convert::{
    account_in, account_out, key_out, receipt_out, record_out, status_code, token_in, token_out,
    topic_in, topic_out, transaction_in, ts_in, ts_out, tx_id_in, tx_id_out,
};
use crate::local::LocalLedger;
use crate::types::{NftId, Timestamp, TopicId};
use crate::{Ledger, LedgerError, Status};

#[allow(non_camel_case_types, missing_docs, unreachable_pub, clippy::all)]
mod mirror {
    include!(concat!(
        env!("OUT_DIR"),
        "/com.hedera.mirror.api.proto.ConsensusService.rs"
    ));
}
use mirror::consensus_service_server::{
    ConsensusService as MirrorService, ConsensusServiceServer as MirrorServer,
};

type GrpcResult<T> = Result<Response<T>, tonic::Status>;

/// Largest gRPC request a loopback node decodes; transactions above Hedera's limit
/// ([`crate::fees::MAX_TRANSACTION_BYTES`]) but below this one are answered with
/// `TRANSACTION_OVERSIZE`.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Messages buffered per mirror subscription.
const MIRROR_BUFFER: usize = 256;

#[derive(Clone)]
struct Node {
    ledger: LocalLedger,
    /// Topic messages the mirror has streamed, to all subscribers.
    streamed: Arc<AtomicU64>,
}

impl Node {
    async fn submit(&self, req: Request<pb::Transaction>) -> GrpcResult<pb::TransactionResponse> {
        use prost::Message;
        // Hedera measures the whole `Transaction`, signatures included.
        if req.get_ref().encoded_len() > crate::fees::MAX_TRANSACTION_BYTES {
            return Ok(precheck(Status::TransactionOversize));
        }
        let code = match transaction_in(req.get_ref()) {
            Err(status) => status_code(status),
            Ok(signed) => match self.ledger.execute_signed(signed).await {
                // Reached consensus (successfully or not): the receipt tells the outcome.
                Ok(_) | Err(LedgerError::Failed { .. }) => status_code(Status::Ok),
                Err(LedgerError::Precheck { status, .. }) => status_code(status),
                Err(e) => return Err(tonic::Status::internal(e.to_string())),
            },
        };
        Ok(Response::new(pb::TransactionResponse {
            node_transaction_precheck_code: code,
            cost: 0,
        }))
    }

    async fn query(&self, req: Request<pb::Query>) -> GrpcResult<pb::Response> {
        use pb::query::Query as Q;
        use pb::response::Response as R;
        let q = req
            .into_inner()
            .query
            .ok_or_else(|| tonic::Status::invalid_argument("empty query"))?;
        let header = |status: Status, response_type: i32| {
            Some(pb::ResponseHeader {
                node_transaction_precheck_code: status_code(status),
                response_type,
                cost: 0,
                state_proof: Vec::new(),
            })
        };
        let rt = |h: &Option<pb::QueryHeader>| h.as_ref().map_or(0, |h| h.response_type);
        let cost_only = |h: &Option<pb::QueryHeader>| rt(h) == pb::ResponseType::CostAnswer as i32;
        let response = match q {
            Q::CryptogetAccountBalance(b) => {
                let account = match &b.balance_source {
                    Some(pb::crypto_get_account_balance_query::BalanceSource::AccountId(a)) => {
                        account_in(Some(a))
                    }
                    _ => Err(Status::InvalidAccountId),
                };
                let found = match account {
                    Ok(a) => outcome(self.ledger.balance(a).await.map(|bal| (a, bal)))?,
                    Err(s) => Err(s),
                };
                let (status, account_id, balance) = match found {
                    Ok((a, bal)) => (Status::Ok, Some(account_out(a)), bal as u64),
                    Err(s) => (s, None, 0),
                };
                R::CryptogetAccountBalance(pb::CryptoGetAccountBalanceResponse {
                    header: header(status, rt(&b.header)),
                    account_id,
                    balance,
                    ..Default::default()
                })
            }
            Q::TransactionGetReceipt(g) => {
                let found = match tx_id_in(g.transaction_id.as_ref()) {
                    Ok(id) => outcome(self.ledger.receipt(id).await)?,
                    Err(_) => Err(Status::InvalidTransactionId),
                };
                let (status, receipt) = match found {
                    Ok(r) => (Status::Ok, Some(receipt_out(&r))),
                    Err(s) => (s, None),
                };
                R::TransactionGetReceipt(pb::TransactionGetReceiptResponse {
                    header: header(status, rt(&g.header)),
                    receipt,
                    ..Default::default()
                })
            }
            Q::TransactionGetRecord(g) => {
                if cost_only(&g.header) {
                    R::TransactionGetRecord(pb::TransactionGetRecordResponse {
                        header: header(Status::Ok, rt(&g.header)),
                        ..Default::default()
                    })
                } else {
                    let found = match tx_id_in(g.transaction_id.as_ref()) {
                        Ok(id) => outcome(self.ledger.record(id).await)?,
                        Err(_) => Err(Status::InvalidTransactionId),
                    };
                    let (status, record) = match found {
                        Ok(r) => (Status::Ok, Some(record_out(&r))),
                        Err(s) => (s, None),
                    };
                    R::TransactionGetRecord(pb::TransactionGetRecordResponse {
                        header: header(status, rt(&g.header)),
                        transaction_record: record,
                        ..Default::default()
                    })
                }
            }
            Q::ConsensusGetTopicInfo(g) => {
                if cost_only(&g.header) {
                    R::ConsensusGetTopicInfo(pb::ConsensusGetTopicInfoResponse {
                        header: header(Status::Ok, rt(&g.header)),
                        ..Default::default()
                    })
                } else {
                    let found = match topic_in(g.topic_id.as_ref()) {
                        Ok(t) => outcome(self.ledger.topic_info(t).await.map(|i| (t, i)))?,
                        Err(s) => Err(s),
                    };
                    let (status, topic_id, info) = match found {
                        Ok((t, i)) => (
                            Status::Ok,
                            Some(topic_out(t)),
                            Some(pb::ConsensusTopicInfo {
                                memo: i.memo,
                                running_hash: i.running_hash,
                                sequence_number: i.sequence,
                                submit_key: i.submit_key.map(key_out),
                                expiration_time: Some(ts_out(Timestamp {
                                    secs: i64::from(i32::MAX),
                                    nanos: 0,
                                })),
                                auto_renew_period: Some(pb::Duration { seconds: 7_776_000 }),
                                ..Default::default()
                            }),
                        ),
                        Err(s) => (s, None, None),
                    };
                    R::ConsensusGetTopicInfo(pb::ConsensusGetTopicInfoResponse {
                        header: header(status, rt(&g.header)),
                        topic_id,
                        topic_info: info,
                    })
                }
            }
            Q::TokenGetNftInfo(g) => {
                if cost_only(&g.header) {
                    R::TokenGetNftInfo(pb::TokenGetNftInfoResponse {
                        header: header(Status::Ok, rt(&g.header)),
                        nft: None,
                    })
                } else {
                    let nft_id = g.nft_id.as_ref();
                    let id = nft_id.ok_or(Status::InvalidNftId).and_then(|n| {
                        Ok(NftId {
                            token: token_in(n.token_id.as_ref())?,
                            serial: u64::try_from(n.serial_number)
                                .map_err(|_| Status::InvalidNftId)?,
                        })
                    });
                    let found = match id {
                        Ok(id) => outcome(self.ledger.nft_info(id).await)?,
                        Err(s) => Err(s),
                    };
                    let (status, nft) = match found {
                        Ok(info) => (
                            Status::Ok,
                            Some(pb::TokenNftInfo {
                                nft_id: Some(pb::NftId {
                                    token_id: Some(token_out(info.id.token)),
                                    serial_number: info.id.serial as i64,
                                }),
                                account_id: Some(account_out(info.owner)),
                                creation_time: Some(ts_out(Timestamp::default())),
                                metadata: info.metadata.to_vec(),
                                ..Default::default()
                            }),
                        ),
                        Err(s) => (s, None),
                    };
                    R::TokenGetNftInfo(pb::TokenGetNftInfoResponse {
                        header: header(status, rt(&g.header)),
                        nft,
                    })
                }
            }
            other => not_supported(other),
        };
        Ok(Response::new(pb::Response {
            response: Some(response),
        }))
    }
}

/// A precheck answer with no cost.
fn precheck(status: Status) -> Response<pb::TransactionResponse> {
    Response::new(pb::TransactionResponse {
        node_transaction_precheck_code: status_code(status),
        cost: 0,
    })
}

/// The answer to a query this node does not serve: the response of the query's own kind with
/// `NOT_SUPPORTED` in its header, as an SDK reads a node's refusal.
fn not_supported(q: pb::query::Query) -> pb::response::Response {
    use pb::query::Query as Q;
    use pb::response::Response as R;
    macro_rules! answer {
        ($($q:ident => $r:ident($resp:ident)),* $(,)?) => {
            match q {
                $(Q::$q(q) => R::$r(pb::$resp {
                    header: Some(pb::ResponseHeader {
                        node_transaction_precheck_code: status_code(Status::NotSupported),
                        response_type: q.header.as_ref().map_or(0, |h| h.response_type),
                        cost: 0,
                        state_proof: Vec::new(),
                    }),
                    ..Default::default()
                }),)*
            }
        };
    }
    answer! {
        GetByKey => GetByKey(GetByKeyResponse),
        GetBySolidityId => GetBySolidityId(GetBySolidityIdResponse),
        ContractCallLocal => ContractCallLocal(ContractCallLocalResponse),
        ContractGetInfo => ContractGetInfo(ContractGetInfoResponse),
        ContractGetBytecode => ContractGetBytecodeResponse(ContractGetBytecodeResponse),
        ContractGetRecords => ContractGetRecordsResponse(ContractGetRecordsResponse),
        CryptogetAccountBalance => CryptogetAccountBalance(CryptoGetAccountBalanceResponse),
        CryptoGetAccountRecords => CryptoGetAccountRecords(CryptoGetAccountRecordsResponse),
        CryptoGetInfo => CryptoGetInfo(CryptoGetInfoResponse),
        CryptoGetLiveHash => CryptoGetLiveHash(CryptoGetLiveHashResponse),
        CryptoGetProxyStakers => CryptoGetProxyStakers(CryptoGetStakersResponse),
        FileGetContents => FileGetContents(FileGetContentsResponse),
        FileGetInfo => FileGetInfo(FileGetInfoResponse),
        TransactionGetReceipt => TransactionGetReceipt(TransactionGetReceiptResponse),
        TransactionGetRecord => TransactionGetRecord(TransactionGetRecordResponse),
        TransactionGetFastRecord => TransactionGetFastRecord(TransactionGetFastRecordResponse),
        ConsensusGetTopicInfo => ConsensusGetTopicInfo(ConsensusGetTopicInfoResponse),
        NetworkGetVersionInfo => NetworkGetVersionInfo(NetworkGetVersionInfoResponse),
        TokenGetInfo => TokenGetInfo(TokenGetInfoResponse),
        ScheduleGetInfo => ScheduleGetInfo(ScheduleGetInfoResponse),
        TokenGetAccountNftInfos => TokenGetAccountNftInfos(TokenGetAccountNftInfosResponse),
        TokenGetNftInfo => TokenGetNftInfo(TokenGetNftInfoResponse),
        TokenGetNftInfos => TokenGetNftInfos(TokenGetNftInfosResponse),
        NetworkGetExecutionTime => NetworkGetExecutionTime(NetworkGetExecutionTimeResponse),
        AccountDetails => AccountDetails(GetAccountDetailsResponse),
    }
}

/// Splits a ledger error into a Hedera status (answered in the response header) or a node
/// failure (answered as a gRPC error).
fn outcome<T>(r: Result<T, LedgerError>) -> Result<Result<T, Status>, tonic::Status> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => match e.status() {
            Some(s) => Ok(Err(s)),
            None => Err(tonic::Status::internal(e.to_string())),
        },
    }
}

/// Implements one of Hedera's node services: the listed transactions and queries are served,
/// every other method of the service answers with Hedera's `NOT_SUPPORTED` status (the
/// precheck code of a transaction, the header of a query's response).
macro_rules! node_service {
    (
        $service:ident {
            submit: [$($tx:ident),* $(,)?],
            query: [$($q:ident),* $(,)?],
            unserved_tx: [$($utx:ident),* $(,)?],
            unserved_query: [$($uq:ident),* $(,)?] $(,)?
        }
    ) => {
        #[tonic::async_trait]
        impl $service for Node {
            $(
                async fn $tx(&self, r: Request<pb::Transaction>) -> GrpcResult<pb::TransactionResponse> {
                    self.submit(r).await
                }
            )*
            $(
                async fn $q(&self, r: Request<pb::Query>) -> GrpcResult<pb::Response> {
                    self.query(r).await
                }
            )*
            $(
                async fn $utx(&self, _: Request<pb::Transaction>) -> GrpcResult<pb::TransactionResponse> {
                    Ok(precheck(Status::NotSupported))
                }
            )*
            $(
                async fn $uq(&self, r: Request<pb::Query>) -> GrpcResult<pb::Response> {
                    let q = r
                        .into_inner()
                        .query
                        .ok_or_else(|| tonic::Status::invalid_argument("empty query"))?;
                    Ok(Response::new(pb::Response {
                        response: Some(not_supported(q)),
                    }))
                }
            )*
        }
    };
}

node_service!(CryptoService {
    submit: [create_account, crypto_transfer],
    query: [
        crypto_get_balance,
        get_transaction_receipts,
        get_tx_record_by_tx_id
    ],
    unserved_tx: [
        update_account,
        crypto_delete,
        approve_allowances,
        delete_allowances,
        add_live_hash,
        delete_live_hash
    ],
    unserved_query: [get_live_hash, get_account_records, get_account_info],
});

node_service!(ConsensusService {
    submit: [create_topic, submit_message],
    query: [get_topic_info],
    unserved_tx: [update_topic, delete_topic],
    unserved_query: [],
});

node_service!(TokenService {
    submit: [create_token, mint_token, associate_tokens],
    query: [get_token_nft_info],
    unserved_tx: [
        update_token,
        burn_token,
        delete_token,
        wipe_token_account,
        freeze_token_account,
        unfreeze_token_account,
        grant_kyc_to_token_account,
        revoke_kyc_from_token_account,
        dissociate_tokens,
        update_token_fee_schedule,
        pause_token,
        unpause_token,
        update_nfts,
        reject_token,
        airdrop_tokens,
        cancel_airdrop,
        claim_airdrop,
    ],
    unserved_query: [get_token_info],
});

type TopicStream =
    Pin<Box<dyn Stream<Item = Result<ConsensusTopicResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl MirrorService for Node {
    type subscribeTopicStream = TopicStream;

    /// Streams a topic's messages from `consensusStartTime` (before `consensusEndTime`, at most
    /// `limit`), then keeps the subscription open for new ones unless an end or a limit is set.
    async fn subscribe_topic(&self, req: Request<ConsensusTopicQuery>) -> GrpcResult<TopicStream> {
        let q = req.into_inner();
        let topic = topic_in(q.topic_id.as_ref())
            .map_err(|_| tonic::Status::invalid_argument("missing or invalid topicID"))?;
        // Unknown topics are refused up front, as the mirror node does.
        let info = self
            .ledger
            .topic_info(topic)
            .await
            .map_err(|_| tonic::Status::not_found(format!("topic {topic} does not exist")))?;
        let start = q
            .consensus_start_time
            .as_ref()
            .map(|t| ts_in(Some(t)))
            .transpose()
            .map_err(|_| tonic::Status::invalid_argument("bad start time"))?
            .unwrap_or_default();
        let end = q
            .consensus_end_time
            .as_ref()
            .map(|t| ts_in(Some(t)))
            .transpose()
            .map_err(|_| tonic::Status::invalid_argument("bad end time"))?;
        let limit = if q.limit == 0 { u64::MAX } else { q.limit };
        let mut next_seq = first_at_or_after(&self.ledger, topic, info.sequence, start)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(MIRROR_BUFFER);
        let ledger = self.ledger.clone();
        let streamed = self.streamed.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let batch = match ledger.topic_messages(topic, next_seq, 1000).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(tonic::Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let drained = batch.len() < 1000;
                for m in batch {
                    next_seq = m.sequence + 1;
                    if m.consensus < start {
                        continue;
                    }
                    if end.is_some_and(|e| m.consensus >= e) {
                        return;
                    }
                    let resp = ConsensusTopicResponse {
                        consensus_timestamp: Some(ts_out(m.consensus)),
                        message: m.message.to_vec(),
                        running_hash: m.running_hash,
                        sequence_number: m.sequence,
                        running_hash_version: 3,
                        chunk_info: m.chunk.map(|c| pb::ConsensusMessageChunkInfo {
                            initial_transaction_id: Some(tx_id_out(c.initial)),
                            total: c.total as i32,
                            number: c.number as i32,
                        }),
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return; // subscriber gone
                    }
                    streamed.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    if sent >= limit {
                        return;
                    }
                }
                if drained {
                    if end.is_some_and(|e| ledger.now() >= e) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The first sequence number of `topic` (of `count` messages) that reached consensus at or
/// after `start`, `count + 1` if none did. Consensus times grow with sequence numbers, so a
/// binary search finds it in some log2(`count`) reads of one message: a subscription from a
/// recent time does not scan the topic from its first message.
async fn first_at_or_after(
    ledger: &LocalLedger,
    topic: TopicId,
    count: u64,
    start: Timestamp,
) -> Result<u64, LedgerError> {
    let (mut lo, mut hi) = (1u64, count.saturating_add(1));
    if start == Timestamp::default() {
        return Ok(lo);
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match ledger.topic_messages(topic, mid, 1).await?.first() {
            Some(m) if m.consensus < start => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// A running loopback node: its consensus-node and mirror addresses.
#[derive(Debug)]
pub struct LoopbackNode {
    /// Address of the consensus node (gRPC, plaintext), account 0.0.3.
    pub node: SocketAddr,
    /// Address of the mirror node's topic subscription service.
    pub mirror: SocketAddr,
    streamed: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackNode {
    /// Serves `ledger` on two fresh ports of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// [`LedgerError::Transport`] when the ports cannot be bound.
    pub async fn start(ledger: LocalLedger) -> Result<Self, LedgerError> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self::bind(ledger, any, any).await
    }

    /// Serves `ledger`: the consensus node's API on `node`, the mirror's on `mirror` (port 0
    /// for a port chosen by the system).
    ///
    /// # Errors
    ///
    /// [`LedgerError::Transport`] when an address cannot be bound.
    pub async fn bind(
        ledger: LocalLedger,
        node: SocketAddr,
        mirror: SocketAddr,
    ) -> Result<Self, LedgerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| LedgerError::Transport(format!("binding {addr}: {e}")))
        };
        let (node_l, mirror_l) = (bind(node).await?, bind(mirror).await?);
        let node = node_l
            .local_addr()
            .map_err(|e| LedgerError::Transport(e.to_string()))?;
        let mirror = mirror_l
            .local_addr()
            .map_err(|e| LedgerError::Transport(e.to_string()))?;
        let streamed = Arc::new(AtomicU64::new(0));
        let svc = Node {
            ledger,
            streamed: streamed.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = futures::FutureExt::shared(async move {
            let _ = stopped.await;
        });
        let s1 = stopped.clone();
        let consensus = tonic::transport::Server::builder()
            .add_service(
                CryptoServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ConsensusServiceServer::new(svc.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                TokenServiceServer::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(node_l), s1);
        let mirror_srv = tonic::transport::Server::builder()
            .add_service(MirrorServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(TcpListenerStream::new(mirror_l), stopped);
        let task = tokio::spawn(async move {
            let _ = tokio::join!(consensus, mirror_srv);
        });
        Ok(Self {
            node,
            mirror,
            streamed,
            shutdown: Some(stop),
            task,
        })
    }

    /// Topic messages (chunks) the mirror has streamed so far, to all subscribers: what the
    /// readers of its topics cost it.
    pub fn messages_streamed(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    /// Stops serving and waits for the servers to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for LoopbackNode {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}
