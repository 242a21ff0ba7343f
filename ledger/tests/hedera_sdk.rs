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
