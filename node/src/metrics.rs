//! Prometheus metrics of a running node, read from its counters at each scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use streamspace_shard::store::DiskStore;
use streamspace_transport::Node;

use crate::gateway::CacheStats;
use crate::run::Paid;

/// Where the figures come from.
#[derive(Clone)]
pub(crate) struct Sources {
    pub node: Node<DiskStore>,
    pub paid: Option<Arc<Paid>>,
    pub cache: Arc<CacheStats>,
    pub earned_last: Arc<AtomicU64>,
}

pub(crate) fn router(sources: Sources) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources)
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The text exposition of the node's figures now.
pub(crate) fn render(s: &Sources) -> Result<String, std::fmt::Error> {
    let stats = s.node.stats();
    let mut r = Registry::with_prefix("streamspace");
    let per_peer = |sent: bool| {
        let f = Family::<Vec<(String, String)>, Counter<u64>>::default();
        for (peer, c) in &stats.peers {
            let v = if sent { c.bytes_sent } else { c.bytes_received };
            f.get_or_create(&vec![("peer".to_owned(), peer.to_string())])
                .inc_by(v);
        }
        f
    };
    r.register(
        "peer_bytes_sent",
        "Bytes of shards served to each peer",
        per_peer(true),
    );
    r.register(
        "peer_bytes_received",
        "Bytes of verified shards received from each peer",
        per_peer(false),
    );
    counter(
        &mut r,
        "shards_served",
        "Shards served to peers",
        stats.shards_served,
    );
    counter(
        &mut r,
        "bytes_served",
        "Bytes served to peers",
        stats.bytes_served,
    );
    counter(
        &mut r,
        "shards_received",
        "Verified shards received from peers",
        stats.shards_received,
    );
    counter(
        &mut r,
        "bad_blocks",
        "Blocks that failed verification",
        stats.bad_blocks,
    );
    counter(
        &mut r,
        "refused_connections",
        "Connections refused by the allowlist",
        stats.refused_connections,
    );
    counter(
        &mut r,
        "metered_refusals",
        "Shards the metering hook paused or refused",
        stats.metered_refusals,
    );
    let store = s.node.store();
    gauge(
        &mut r,
        "store_bytes",
        "Bytes held in the block store",
        store.used_bytes() as i64,
    );
    gauge(
        &mut r,
        "store_blocks",
        "Blocks held in the block store",
        store.len() as i64,
    );
    gauge(
        &mut r,
        "peers",
        "Peers with traffic",
        stats.peers.len() as i64,
    );
    let hits = s.cache.hits();
    let misses = s.cache.misses();
    counter(
        &mut r,
        "cache_hits",
        "Gateway blocks found in the store",
        hits,
    );
    counter(
        &mut r,
        "cache_misses",
        "Gateway blocks fetched from the network",
        misses,
    );
    let ratio =
        prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    ratio.set(if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    });
    r.register(
        "cache_hit_ratio",
        "Share of gateway blocks found in the store",
        ratio,
    );
    if let Some(p) = &s.paid {
        counter(
            &mut r,
            "receipts_accepted",
            "Receipts accepted from payers",
            p.receipts_accepted.load(Ordering::Relaxed),
        );
        counter(
            &mut r,
            "receipts_refused",
            "Receipts refused",
            p.receipts_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut r,
            "receipts_sent",
            "Receipts sent to payees",
            p.receipts_sent.load(Ordering::Relaxed),
        );
        let (earned, shards) = p.earned_now();
        gauge(
            &mut r,
            "earned_period_tinybars",
            "Tinybars owed to this node in the current period, by its newest receipts",
            earned as i64,
        );
        gauge(
            &mut r,
            "paid_shards_period",
            "Shards paid for by receipts in the current period",
            shards as i64,
        );
        gauge(
            &mut r,
            "earned_last_period_tinybars",
            "Tinybars earned in the last closed period",
            s.earned_last.load(Ordering::Relaxed) as i64,
        );
    }
    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

async fn scrape(State(s): State<Sources>) -> Response {
    match render(&s) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
