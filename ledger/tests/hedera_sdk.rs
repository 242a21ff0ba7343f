//! The conformance suite through the official Hedera SDK, talking Hedera's gRPC protobufs to
//! a loopback node that serves the embedded ledger; plus malformed bytes on the wire.
#![cfg(feature = "hedera")]

mod suite;

use std::sync::Arc;

use streamspace_ledger::hedera::HederaLedger;
use streamspace_ledger::hedera::server::LoopbackNode;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{Ledger, LocalLedger, Operator, PublicKey, SystemClock};
use suite::{Harness, key};

async fn sdk() -> Harness<HederaLedger> {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let treasury_key = key(200);
    let local = LocalLedger::open(
        dir.path().join("ledger.redb"),
        PublicKey::from(&treasury_key),
        Arc::new(SystemClock),
    )
    .unwrap();
    let node = Box::leak(Box::new(LoopbackNode::start(local).await.unwrap()));
    let treasury = Operator {
        account: TREASURY,
        key: treasury_key,
    };
    let ledger = HederaLedger::loopback(node.node, node.mirror, &treasury).unwrap();
    Harness { ledger, treasury }
}

conformance_tests!(sdk());

/// Bytes that are not a Hedera transaction get a clear answer, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_on_the_wire() {
    use hedera_proto::services::crypto_service_client::CryptoServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let k = key(200);
    let local = LocalLedger::open(
        dir.path().join("l.redb"),
        PublicKey::from(&k),
        Arc::new(SystemClock),
    )
    .unwrap();
    let node = LoopbackNode::start(local).await.unwrap();
    let mut client = CryptoServiceClient::connect(format!("http://{}", node.node))
        .await
        .unwrap();

    // Well-formed gRPC, garbage inside: a precheck code, not a crash.
    let garbage = hedera_proto::services::Transaction {
        signed_transaction_bytes: vec![0xff, 0x01, 0x02],
        ..Default::default()
    };
    let r = client.crypto_transfer(garbage).await.unwrap().into_inner();
    assert_ne!(r.node_transaction_precheck_code, 0, "garbage accepted");

    // Garbage that is not even the outer protobuf: a gRPC error.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", node.node))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/proto.CryptoService/cryptoTransfer");
    let res: Result<tonic::Response<hedera_proto::services::TransactionResponse>, _> = raw
        .unary(
            tonic::Request::new(RawBytes(vec![0xff; 16])),
            path,
            RawCodec,
        )
        .await;
    assert!(res.is_err(), "undecodable request answered as if valid");

    // Still serving.
    let h = HederaLedger::loopback(
        node.node,
        node.mirror,
        &Operator {
            account: TREASURY,
            key: k,
        },
    )
    .unwrap();
    assert!(h.balance(TREASURY).await.unwrap() > 0);
    node.stop().await;
}

/// Request bytes sent as they are; responses decoded as a `TransactionResponse`.
#[derive(Debug, Clone)]
struct RawBytes(Vec<u8>);

#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = RawBytes;
    type Decode = hedera_proto::services::TransactionResponse;
    type Encoder = RawEncoder;
    type Decoder = <tonic::codec::ProstCodec<RawBytes2, hedera_proto::services::TransactionResponse> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic::codec::ProstCodec::<
            RawBytes2,
            hedera_proto::services::TransactionResponse,
        >::default())
    }
}

/// A placeholder message type for the decoder half of `ProstCodec`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBytes2 {}

#[derive(Debug)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = RawBytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: RawBytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

/// A loopback node and an SDK client of it paying with the treasury, for driving the SDK
/// directly with fields the [`Ledger`] trait does not have.
async fn raw_sdk() -> (LoopbackNode, LocalLedger, hedera::Client) {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let k = key(200);
    let local = LocalLedger::open(
        dir.path().join("l.redb"),
        PublicKey::from(&k),
        Arc::new(SystemClock),
    )
    .unwrap();
    let node = LoopbackNode::start(local.clone()).await.unwrap();
    let client = hedera::Client::for_network(std::collections::HashMap::from([(
        node.node.to_string(),
        hedera::AccountId::new(0, 0, 3),
    )]))
    .unwrap();
    client.set_mirror_network([node.mirror.to_string()]);
    client.set_operator(
        hedera::AccountId::new(0, 0, TREASURY.num()),
        hedera::PrivateKey::from_bytes_ed25519(&k.to_bytes()).unwrap(),
    );
    client.set_max_attempts(3);
    client.set_request_timeout(Some(std::time::Duration::from_secs(10)));
    (node, local, client)
}

/// The Hedera status an SDK error carries (precheck or receipt).
fn sdk_status(e: hedera::Error) -> hedera::Status {
    match e {
        hedera::Error::TimedOut(inner) => sdk_status(*inner),
        hedera::Error::TransactionPreCheckStatus { status, .. }
        | hedera::Error::ReceiptStatus { status, .. }
        | hedera::Error::QueryNoPaymentPreCheckStatus { status }
        | hedera::Error::QueryPreCheckStatus { status, .. }
        | hedera::Error::QueryPaymentPreCheckStatus { status, .. } => status,
        other => panic!("no Hedera status in {other:?}"),
    }
}

/// Fields the ledger does not model are refused with `NOT_SUPPORTED` before consensus — a
/// royalty fee is never accepted and then not charged — and the payer is charged nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_not_modelled_are_refused_not_ignored() {
    let (node, local, client) = raw_sdk().await;
    let before = local.balance(TREASURY).await.unwrap();
    let supply = hedera::PrivateKey::from_bytes_ed25519(&[9; 32]).unwrap();

    // A token whose resales would owe a royalty.
    let royalty = hedera::AnyCustomFee {
        fee: hedera::Fee::Royalty(hedera::RoyaltyFeeData {
            numerator: 1,
            denominator: 10,
            fallback_fee: Some(hedera::FixedFeeData::from_hbar(hedera::Hbar::new(1))),
        }),
        fee_collector_account_id: Some(hedera::AccountId::new(0, 0, TREASURY.num())),
        all_collectors_are_exempt: false,
    };
    let mut t = hedera::TokenCreateTransaction::new();
    t.name("Film")
        .symbol("FILM")
        .token_type(hedera::TokenType::NonFungibleUnique)
        .treasury_account_id(hedera::AccountId::new(0, 0, TREASURY.num()))
        .supply_key(supply.public_key())
        .custom_fees([royalty]);
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);

    // An account that would associate tokens on its own.
    let mut t = hedera::AccountCreateTransaction::new();
    t.set_key_without_alias(supply.public_key())
        .max_automatic_token_associations(5);
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);

    // An admin key on a topic (updates and deletes are not modelled).
    let mut t = hedera::TopicCreateTransaction::new();
    t.admin_key(supply.public_key());
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);

    // An auto-renew period Hedera would refuse.
    let mut t = hedera::AccountCreateTransaction::new();
    t.set_key_without_alias(supply.public_key())
        .auto_renew_period(time::Duration::days(1));
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::AutorenewDurationNotInRange);

    // A transaction kind the node does not serve.
    let mut t = hedera::AccountDeleteTransaction::new();
    t.account_id(hedera::AccountId::new(0, 0, 3))
        .transfer_account_id(hedera::AccountId::new(0, 0, TREASURY.num()));
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);

    // Nothing was charged: every refusal came before consensus.
    assert_eq!(local.balance(TREASURY).await.unwrap(), before);

    // The same token without the royalty is created.
    let mut t = hedera::TokenCreateTransaction::new();
    t.name("Film")
        .symbol("FILM")
        .token_type(hedera::TokenType::NonFungibleUnique)
        .treasury_account_id(hedera::AccountId::new(0, 0, TREASURY.num()))
        .supply_key(supply.public_key());
    let r = t
        .execute(&client)
        .await
        .unwrap()
        .get_receipt(&client)
        .await
        .unwrap();
    assert!(r.token_id.is_some());
    node.stop().await;
}

/// Queries the node does not serve answer with `NOT_SUPPORTED` in the response header, which
/// the SDK reads as a status, not as a bare gRPC error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_queries_answer_not_supported() {
    let (node, _local, client) = raw_sdk().await;
    let e = hedera::AccountInfoQuery::new()
        .account_id(hedera::AccountId::new(0, 0, TREASURY.num()))
        .execute(&client)
        .await
        .unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);
    let e = hedera::TokenInfoQuery::new()
        .token_id(hedera::TokenId::new(0, 0, 1001))
        .execute(&client)
        .await
        .unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::NotSupported);
    node.stop().await;
}

/// A 12 KB transaction sent as one (no chunking) is refused with `TRANSACTION_OVERSIZE`, with
/// no fee and no message; the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_transaction_on_the_wire() {
    let (node, local, client) = raw_sdk().await;
    let r = hedera::TopicCreateTransaction::new()
        .execute(&client)
        .await
        .unwrap()
        .get_receipt(&client)
        .await
        .unwrap();
    let topic = r.topic_id.unwrap();
    let before = local.balance(TREASURY).await.unwrap();
    let mut t = hedera::TopicMessageSubmitTransaction::new();
    t.topic_id(topic)
        .message(vec![1u8; 12 * 1024])
        .chunk_size(12 * 1024)
        .max_chunks(1);
    let e = t.execute(&client).await.unwrap_err();
    assert_eq!(sdk_status(e), hedera::Status::TransactionOversize);
    assert_eq!(local.balance(TREASURY).await.unwrap(), before);
    let ours = streamspace_ledger::TopicId::new(topic.num);
    assert_eq!(local.topic_info(ours).await.unwrap().sequence, 0);
    node.stop().await;
}

/// A reader that follows a topic (a node reads its settlement topic every second) costs the
/// mirror what is new, not the whole topic again: anyone may submit to a topic without a
/// submit key and make it long, and that must not make every follower's work grow with it.
/// Both ways of reading are tried: through the SDK (mirror on 127.0.0.1) and the plaintext
/// client used for a loopback mirror on another address (127.0.0.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_long_topic_streams_only_what_is_new() {
    use streamspace_ledger::{Transaction, TransactionId, TxKind};
    for mirror_ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let dir = tempfile::tempdir().unwrap();
        let treasury = Operator {
            account: TREASURY,
            key: key(200),
        };
        let local = LocalLedger::open(
            dir.path().join("ledger.redb"),
            PublicKey::from(&treasury.key),
            Arc::new(SystemClock),
        )
        .unwrap();
        let node = LoopbackNode::bind(
            local.clone(),
            ([127, 0, 0, 1], 0).into(),
            (mirror_ip, 0).into(),
        )
        .await
        .unwrap();
        let ledger = HederaLedger::loopback(node.node, node.mirror, &treasury).unwrap();
        let tx = Transaction::new(
            TransactionId::generate(TREASURY, local.now()),
            TxKind::CreateTopic {
                memo: "long".into(),
                submit_key: None,
            },
        );
        let topic = local
            .execute(tx, &[&treasury.key])
            .await
            .unwrap()
            .topic
            .expect("topic id");
        let spam = 300u64;
        for i in 0..spam {
            local
                .submit_message(&treasury, topic, format!("spam {i}").into(), None)
                .await
                .unwrap();
        }

        let all = ledger.topic_messages(topic, 1, 1000).await.unwrap();
        assert_eq!(all.len(), spam as usize, "mirror {mirror_ip:?}");
        assert!(all.iter().zip(1..).all(|(m, s)| m.sequence == s));

        // Following it: each read from the next sequence number streams what is new.
        for round in 1..=3u64 {
            local
                .submit_message(&treasury, topic, format!("new {round}").into(), None)
                .await
                .unwrap();
            let before = node.messages_streamed();
            let new = ledger
                .topic_messages(topic, spam + round, 1000)
                .await
                .unwrap();
            let cost = node.messages_streamed() - before;
            assert_eq!(new.len(), 1, "mirror {mirror_ip:?}, round {round}");
            assert_eq!(new[0].sequence, spam + round);
            assert_eq!(&new[0].message[..], format!("new {round}").as_bytes());
            assert!(
                cost <= 2,
                "mirror {mirror_ip:?}: a read of one new message streamed {cost} of a topic of {}",
                spam + round
            );
        }
        // Nothing new: nothing, and next to nothing streamed.
        let before = node.messages_streamed();
        assert!(
            ledger
                .topic_messages(topic, spam + 4, 1000)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(node.messages_streamed() - before <= 1);

        // A reader that has not read the topic before, from its middle: the right messages,
        // and no more streamed than up to them and the limit (with the chunk margin).
        let fresh = HederaLedger::loopback(node.node, node.mirror, &treasury).unwrap();
        let before = node.messages_streamed();
        let mid = fresh.topic_messages(topic, 150, 10).await.unwrap();
        let cost = node.messages_streamed() - before;
        assert_eq!(
            mid.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            (150..160).collect::<Vec<_>>()
        );
        assert!(cost <= 149 + 10 + 64, "streamed {cost}");
        // And back to an earlier point it has indexed: from there, not from the start.
        let before = node.messages_streamed();
        let back = fresh.topic_messages(topic, 155, 2).await.unwrap();
        assert_eq!(
            back.iter().map(|m| m.sequence).collect::<Vec<_>>(),
            [155, 156]
        );
        assert!(node.messages_streamed() - before <= 2 + 64);
        node.stop().await;
    }
}
