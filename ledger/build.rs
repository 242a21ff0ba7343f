//! Generates the server side of the mirror node's topic subscription service for the loopback
//! node (the `hedera` feature). The message types come from `hiero-sdk-proto`, so no `.proto`
//! file is compiled here.

fn main() {
    #[cfg(feature = "hedera")]
    {
        let method = tonic_build::manual::Method::builder()
            .name("subscribe_topic")
            .route_name("subscribeTopic")
            .input_type("::hedera_proto::mirror::ConsensusTopicQuery")
            .output_type("::hedera_proto::mirror::ConsensusTopicResponse")
            .codec_path("::tonic::codec::ProstCodec")
            .server_streaming()
            .build();
        let service = tonic_build::manual::Service::builder()
            .name("ConsensusService")
            .package("com.hedera.mirror.api.proto")
            .method(method)
            .build();
        tonic_build::manual::Builder::new()
            .build_client(false)
            .compile(&[service]);
    }
}
