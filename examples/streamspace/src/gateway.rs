//! `streamspace gateway`: a node on the repository's store with the HTTP gateway of
//! [`streamspace_node::gateway`] in front.

use std::sync::Arc;

use streamspace_node::gateway::{CacheStats, Keyring, read_keyring, router_with_keys};
use streamspace_transport::Node;

/// Options of `streamspace gateway`.
#[derive(clap::Args, Debug)]
pub(crate) struct GatewayArgs {
    /// HTTP address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Peers to join through (multiaddrs ending in `/p2p/<peer id>`).
    #[arg(long)]
    bootstrap: Vec<streamspace_transport::Multiaddr>,
    /// Directory of content key files (one per licensed item, naming its root): serves their
    /// plaintext on `/play/{root}[/path]`. Plaintext is served on loopback addresses only.
    #[arg(long)]
    keys: Option<std::path::PathBuf>,
}

/// Runs a node on the repository's store with the gateway in front, until Ctrl-C.
pub(crate) async fn run(
    store: streamspace_shard::store::DiskStore,
    args: &GatewayArgs,
) -> anyhow::Result<()> {
    let keys = match &args.keys {
        Some(dir) => {
            anyhow::ensure!(
                args.listen.ip().is_loopback(),
                "--keys serves plaintext: listen on a loopback address, not {}",
                args.listen
            );
            read_keyring(dir)?
        }
        None => Keyring::new(),
    };
    let mut config =
        streamspace_transport::Config::new(streamspace_transport::Keypair::generate_ed25519());
    config.bootstrap = args.bootstrap.clone();
    let node = Node::start(
        config,
        std::sync::Arc::new(store),
        std::sync::Arc::new(streamspace_transport::meter::Free),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "gateway on http://{}/ipfs/<cid>, node {} on {:?}",
        listener.local_addr()?,
        node.peer_id(),
        node.dialable_addrs().await?
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(streamspace_node::http::serve(
        listener,
        router_with_keys(
            node.clone(),
            Arc::new(CacheStats::default()),
            Arc::new(keys),
        ),
        streamspace_node::http::HttpLimits::default(),
        stop_rx,
    ));
    crate::node::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let stats = node.stats();
    println!(
        "fetched {} shards ({} bytes) from the network; served {} shards to peers",
        stats.shards_received, stats.bytes_received, stats.shards_served
    );
    node.shutdown().await;
    Ok(())
}
