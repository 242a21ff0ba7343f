//! Swarms on loopback, in one process:
//!
//! - one seeder and 20 fetchers of one 64 MiB item, all starting at once: what the seeder
//!   uploads, as a multiple of the item's size, and the time until all hold it;
//! - time to the first verified shard from a provider found through the DHT, in a 50-node
//!   network: p50 and p95 over 100 runs. Each run starts a fresh viewer that joins through a
//!   random node, asks the DHT for the providers of an item published on another random node,
//!   and fetches it.
//!
//! `cargo bench -p streamspace-benches --bench swarm`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{MemoryStore, add_reader};
use streamspace_transport::meter::Free;
use streamspace_transport::{Config, FetchOptions, Keypair, Node};

const NODES: usize = 50;
const RUNS: usize = 100;

fn loopback() -> Config {
    Config::new(Keypair::generate_ed25519()).loopback()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn one_seeder_twenty_fetchers() {
    const ITEM: usize = 64 * 1024 * 1024;
    let seeder = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("seeder");
    let data: Vec<u8> = (0..ITEM).map(|i| (i * 13 + i / 977) as u8).collect();
    let root = add_reader(
        Some(seeder.store().as_ref()),
        std::io::Cursor::new(data),
        ImportOptions::default(),
    )
    .await
    .expect("import")
    .cid;
    seeder.provide(root).await.expect("provide");
    let boot = seeder.dialable_addrs().await.expect("addrs");
    let mut fetchers = Vec::new();
    for _ in 0..20 {
        let mut c = loopback();
        c.bootstrap = boot.clone();
        fetchers.push(
            Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
                .await
                .expect("fetcher"),
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let runs: Vec<_> = fetchers
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move {
                n.fetch(
                    root,
                    FetchOptions {
                        announce: true,
                        window: 0,
                        ..FetchOptions::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut duplicates = 0;
    for r in runs {
        duplicates += r.await.expect("join").expect("fetch").duplicates;
    }
    let all = start.elapsed();
    let uploaded = seeder.stats().bytes_served;
    println!(
        "1 seeder, 20 fetchers, 64 MiB: seeder uploaded {:.2}x the item ({} bytes); all held it after {:.2} s; {} duplicate blocks",
        uploaded as f64 / ITEM as f64,
        uploaded,
        all.as_secs_f64(),
        duplicates,
    );
    for n in fetchers.iter().chain([&seeder]) {
        n.shutdown().await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means another bench was asked.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"dht".contains(a.as_str()))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(one_seeder_twenty_fetchers());
    rt.block_on(async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut nodes = Vec::new();
        let first = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .expect("node");
        let boot = first.dialable_addrs().await.expect("addrs");
        nodes.push(first);
        for _ in 1..NODES {
            let mut c = loopback();
            c.bootstrap = boot.clone();
            nodes.push(
                Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
                    .await
                    .expect("node"),
            );
        }
        // Let the routing tables fill.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut firsts = Vec::new();
        let mut totals = Vec::new();
        for run in 0..RUNS {
            let publisher = &nodes[rng.gen_range(0..NODES)];
            let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 + run * 7) as u8).collect();
            let root = add_reader(
                Some(publisher.store().as_ref()),
                std::io::Cursor::new(data),
                ImportOptions::default(),
            )
            .await
            .expect("import")
            .cid;
            publisher.provide(root).await.expect("provide");
            let mut c = loopback();
            c.bootstrap = nodes[rng.gen_range(0..NODES)]
                .dialable_addrs()
                .await
                .expect("addrs");
            let viewer = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
                .await
                .expect("viewer");
            let start = Instant::now();
            let report = viewer
                .fetch(root, FetchOptions::default())
                .await
                .expect("fetch");
            let first = start.elapsed() - report.elapsed + report.first_block.expect("first");
            firsts.push(first);
            totals.push(start.elapsed());
            viewer.shutdown().await;
        }
        firsts.sort();
        totals.sort();
        println!(
            "{NODES} nodes, {RUNS} runs: first verified shard p50 {:.1} ms, p95 {:.1} ms; whole 1 MiB item p50 {:.1} ms, p95 {:.1} ms",
            percentile(&firsts, 0.5).as_secs_f64() * 1e3,
            percentile(&firsts, 0.95).as_secs_f64() * 1e3,
            percentile(&totals, 0.5).as_secs_f64() * 1e3,
            percentile(&totals, 0.95).as_secs_f64() * 1e3,
        );
        for n in &nodes {
            n.shutdown().await;
        }
    });
}
