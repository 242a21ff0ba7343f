//! A serving node under attack, in its own process: 50 hostile peers flood it with wants
//! (each for 64 of its blocks, up to 4 MiB an answer) and have-list queries while 5 honest
//! peers fetch a 64 MiB item from it. Prints the server's peak RSS (`VmHWM` of its process),
//! the honest fetches' times, and how many hostile requests were answered, refused as
//! overloaded, or failed.
//!
//! `cargo bench -p streamspace-benches --bench hostile`
//!
//! The server is this program run again with `STREAMSPACE_HOSTILE_SERVE=1`: it imports the
//! item, prints its address and root, and serves until its standard input closes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streamspace_shard::Cid;
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, MemoryStore, add_reader};
use streamspace_transport::message::{RefusalReason, Request, Response};
use streamspace_transport::meter::Free;
use streamspace_transport::{Config, FetchOptions, Keypair, Multiaddr, Node, PeerId};

const ITEM: usize = 64 << 20;
const HOSTILE: usize = 50;
const HONEST: usize = 5;
/// How long the attack runs before the honest fetches start, and goes on during them.
const WARMUP: Duration = Duration::from_secs(3);

fn loopback() -> Config {
    Config::new(Keypair::generate_ed25519()).loopback()
}

async fn serve() {
    let node = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("server");
    let data: Vec<u8> = (0..ITEM).map(|i| (i * 31 + i / 1013) as u8).collect();
    let root = add_reader(
        Some(node.store().as_ref()),
        std::io::Cursor::new(data),
        ImportOptions::default(),
    )
    .await
    .expect("import")
    .cid;
    let addr = node.dialable_addrs().await.expect("addrs")[0].clone();
    println!("{addr} {root}");
    std::io::stdout().flush().expect("stdout");
    // Serve until the parent closes standard input.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    })
    .await
    .expect("stdin");
    node.shutdown().await;
}

/// The peak resident set of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    overloaded: AtomicU64,
    failed: AtomicU64,
}

async fn attack(
    node: Node<MemoryStore>,
    server: PeerId,
    cids: Arc<Vec<Cid>>,
    tally: Arc<Tally>,
    until: Instant,
) {
    let mut i = 0usize;
    while Instant::now() < until {
        // 16 requests at once: wants of 64 blocks and have lists of 64.
        let asks = (0..16).map(|k| {
            let start = (i + k * 64) % cids.len().max(1);
            let some: Vec<Cid> = cids.iter().cycle().skip(start).take(64).copied().collect();
            let req = if k % 2 == 0 {
                Request::Want {
                    root: None,
                    cids: some,
                }
            } else {
                Request::Have {
                    root: None,
                    cids: some,
                }
            };
            let n = node.clone();
            async move { n.request(server, req).await }
        });
        for r in futures::future::join_all(asks).await {
            let slot = match r {
                Ok(Response::Refused {
                    reason: RefusalReason::Overloaded,
                    ..
                }) => &tally.overloaded,
                Ok(Response::Blocks { .. } | Response::Haves { .. }) => &tally.answered,
                _ => &tally.failed,
            };
            slot.fetch_add(1, Ordering::Relaxed);
        }
        i += 16 * 64;
    }
}

async fn run() {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env("STREAMSPACE_HOSTILE_SERVE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server address");
    let mut parts = line.split_whitespace();
    let addr: Multiaddr = parts.next().expect("address").parse().expect("multiaddr");
    let root: Cid = parts.next().expect("root").parse().expect("cid");
    let server: PeerId = addr
        .to_string()
        .rsplit('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no peer id in {addr}"));
    let idle_rss = peak_rss_kib(pid);

    // The item's blocks, learnt the honest way by one fetch, for the hostile peers to ask for.
    let scout = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .expect("scout");
    scout.dial(addr.clone()).await.expect("dial");
    let options = FetchOptions {
        peers: vec![server],
        use_dht: false,
        ..FetchOptions::default()
    };
    scout
        .fetch(root, options.clone())
        .await
        .expect("scout fetch");
    let mut cids = Vec::new();
    let mut stack = vec![root];
    while let Some(c) = stack.pop() {
        cids.push(c);
        if c.codec() == streamspace_shard::block::DAG_PB {
            let b = scout.store().get(&c).await.expect("get").expect("held");
            for l in streamspace_shard::pb::PbNode::decode(b)
                .expect("node")
                .links
            {
                stack.push(l.cid);
            }
        }
    }
    let cids = Arc::new(cids);
    scout.shutdown().await;

    let tally = Arc::new(Tally::default());
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        let n = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
            .await
            .expect("hostile");
        n.dial(addr.clone()).await.expect("dial");
        hostile.push(n);
    }
    let fetch_window = Duration::from_secs(600);
    let until = Instant::now() + fetch_window;
    let attacks: Vec<_> = hostile
        .iter()
        .map(|n| {
            tokio::spawn(attack(
                n.clone(),
                server,
                cids.clone(),
                tally.clone(),
                until,
            ))
        })
        .collect();
    tokio::time::sleep(WARMUP).await;

    let started = Instant::now();
    let honest: Vec<_> = (0..HONEST)
        .map(|_| {
            let (addr, options) = (addr.clone(), options.clone());
            tokio::spawn(async move {
                let n = Node::start(loopback(), Arc::new(MemoryStore::new()), Arc::new(Free))
                    .await
                    .expect("honest");
                n.dial(addr).await.expect("dial");
                let t = Instant::now();
                let r = n.fetch(root, options).await;
                let took = t.elapsed();
                n.shutdown().await;
                (r.map(|r| r.blocks), took)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut ok = 0;
    for h in honest {
        let (r, took) = h.await.expect("honest task");
        match r {
            Ok(_) => ok += 1,
            Err(e) => eprintln!("honest fetch failed: {e}"),
        }
        times.push(took);
    }
    let all_done = started.elapsed();
    for a in attacks {
        a.abort();
    }
    let peak = peak_rss_kib(pid);
    drop(child.stdin.take());
    let _ = child.wait();
    for n in &hostile {
        n.shutdown().await;
    }
    times.sort();
    println!(
        "hostile: {HOSTILE} peers flooding wants (64 blocks) and have lists, {HONEST} honest peers fetching {} MiB",
        ITEM >> 20
    );
    println!(
        "server peak RSS: {} MiB (idle with the item imported: {} MiB; goal <= 256 MiB)",
        peak / 1024,
        idle_rss / 1024
    );
    println!(
        "honest fetches complete: {ok}/{HONEST}; times {:?} (all within {:.1} s)",
        times
            .iter()
            .map(|t| format!("{:.1} s", t.as_secs_f64()))
            .collect::<Vec<_>>(),
        all_done.as_secs_f64()
    );
    println!(
        "hostile requests: answered {}, overloaded {}, failed {}",
        tally.answered.load(Ordering::Relaxed),
        tally.overloaded.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os("STREAMSPACE_HOSTILE_SERVE").is_some() {
        rt.block_on(serve());
        return;
    }
    // `cargo test --benches` runs bench targets with `--bench`; only a real bench run attacks.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    rt.block_on(run());
}
