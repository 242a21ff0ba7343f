//! Nodes behind NAT.
//!
//! - In one process, on 127.0.0.1 (always): an edge taken to be private reserves a slot on a
//!   Tier-1 relay and is reached through it; a member fetches over the relayed connection and
//!   every shard goes through the metering hook (which refuses a member it will not serve); an
//!   outsider reaching the member through the relay is refused; the relay refuses a second
//!   reservation beyond its limit and cuts a circuit that carries more than its byte limit.
//! - In network namespaces (as root, with `ip netns` and nftables): a Tier-1 node on the
//!   "public" side and two homes behind two NAT routers (`tests/nat_netns.sh`); the edge in
//!   one home learns from AutoNAT that it is private and becomes reachable through the relay,
//!   the viewer in the other reaches it there, DCUtR gives them a direct connection and the
//!   item is fetched over it. Each node is its own process (this test binary, re-run inside a
//!   namespace as `nat_node`). Where namespaces or NAT are missing, the test says what is
//!   missing in one line and runs the in-process part instead.
//! - `nat_figures` (ignored; run as root): the share of relayed connections upgraded to direct,
//!   fetch throughput direct and relayed under the same `tc tbf` shaping, and the time from
//!   start to a reachable (relayed) address.

#[path = "support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use libp2p::identity::{Keypair, ed25519};
use libp2p::multiaddr::Protocol;
use rand::{RngCore, SeedableRng};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, MemoryStore, add_reader};
use streamspace_transport::allowlist::SignedAllowlist;
use streamspace_transport::message::{Request, Response};
use streamspace_transport::meter::{Decision, Meter};
use streamspace_transport::node::{NatStatus, Reachability, RelayLimits};
use streamspace_transport::{
    Admission, Config, FetchOptions, Multiaddr, Node, NodeEvent, PeerId, RequestError, Tier,
};

const NETWORK: &str = "nat";

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn publish<S: BlockStore + 'static>(node: &Node<S>, data: &[u8]) -> Cid {
    add_reader(
        Some(node.store().as_ref()),
        std::io::Cursor::new(data.to_vec()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid
}

async fn read_back<S: BlockStore>(store: &S, root: Cid) -> Vec<u8> {
    let parts: Vec<Bytes> = cat(store, root, ByteRange::default())
        .try_collect()
        .await
        .unwrap();
    parts.concat()
}

fn from(peer: PeerId) -> FetchOptions {
    FetchOptions {
        peers: vec![peer],
        use_dht: false,
        ..FetchOptions::default()
    }
}

/// Counts the shards served to each peer; refuses one peer.
#[derive(Default)]
struct Counting {
    served: Mutex<Vec<PeerId>>,
    refuse: Option<PeerId>,
}

impl Meter for Counting {
    fn before_send(&self, peer: &PeerId, _: &Cid, _: usize) -> Decision {
        if self.refuse == Some(*peer) {
            return Decision::Refuse;
        }
        self.served.lock().unwrap().push(*peer);
        Decision::Serve
    }
    fn received(&self, _: &PeerId, _: &Cid, _: usize) {}
}

impl Counting {
    fn served_to(&self, peer: &PeerId) -> usize {
        self.served
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == peer)
            .count()
    }
}

/// Polls `f` every 20 ms until it gives a value; panics naming `what` after a minute.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(key: Keypair) -> Config {
    let mut c = Config::new(key).loopback();
    c.network = NETWORK.into();
    c.request_timeout = Duration::from_secs(5);
    c
}

/// An edge that takes itself to be private and reserves on `relay`, without hole punching
/// (on loopback it would always succeed, and the relayed connection is what is tested).
fn private_edge(key: Keypair, relay: &Multiaddr) -> Config {
    let mut c = config(key);
    c.nat.reachability = Some(Reachability::Private);
    c.nat.relays = vec![relay.clone()];
    c.nat.hole_punching = false;
    c
}

async fn start(c: Config, meter: Arc<dyn Meter>) -> Node<MemoryStore> {
    Node::start(c, Arc::new(MemoryStore::new()), meter)
        .await
        .unwrap()
}

fn connections_to(status: &NatStatus, peer: PeerId) -> Vec<bool> {
    status
        .connections
        .iter()
        .filter(|c| c.peer == peer)
        .map(|c| c.relayed)
        .collect()
}

/// The relay part: reservation, a relayed connection, the allowlist and the meter on it,
/// the relay's limits.
async fn relay_scenario() {
    let operator = ed25519::Keypair::generate();
    let keys: Vec<Keypair> = (0..6).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let [
        relay_id,
        edge_id,
        viewer_id,
        unpaid_id,
        outsider_id,
        second_id,
    ] = ids[..]
    else {
        unreachable!()
    };
    let list = SignedAllowlist::sign(
        &operator,
        NETWORK,
        SystemTime::now() + Duration::from_secs(3600),
        [relay_id, edge_id, viewer_id, unpaid_id, second_id],
    );
    let admission = Admission {
        operator: operator.public(),
        list,
    };

    // An open Tier-1 relay: one reservation at most, 128 KiB a circuit.
    let mut rc = config(keys[0].clone());
    rc.tier = Tier::Tier1;
    rc.nat.relay = Some(RelayLimits {
        max_reservations: 1,
        max_circuit_bytes: 128 * 1024,
        ..RelayLimits::default()
    });
    let relay = start(rc, Arc::new(Counting::default())).await;
    let relay_addr = relay.dialable_addrs().await.unwrap()[0].clone();

    // The edge: a closed network's member, metered, reachable only through the relay.
    let meter = Arc::new(Counting {
        refuse: Some(unpaid_id),
        ..Counting::default()
    });
    let mut ec = private_edge(keys[1].clone(), &relay_addr);
    ec.admission = Some(admission.clone());
    let edge = start(ec, meter.clone()).await;
    assert_eq!(
        edge.nat_status().await.unwrap().reachability,
        Reachability::Private
    );
    let relayed = until("the edge's relayed address", || async {
        edge.nat_status()
            .await
            .unwrap()
            .relayed_addrs
            .first()
            .cloned()
    })
    .await;
    assert!(
        relayed.iter().any(|p| p == Protocol::P2pCircuit),
        "{relayed}"
    );
    assert_eq!(relayed.iter().last(), Some(Protocol::P2p(edge_id)));
    let through_relay = relayed;
    let small = random(4096, 1);
    let root = publish(&edge, &small).await;

    // A member reaches it through the relay, over a relayed connection only, and fetches.
    let mut vc = config(keys[2].clone());
    vc.admission = Some(admission.clone());
    vc.nat.hole_punching = false;
    let viewer = start(vc, Arc::new(Counting::default())).await;
    viewer.dial(through_relay.clone()).await.unwrap();
    let links = connections_to(&viewer.nat_status().await.unwrap(), edge_id);
    assert!(!links.is_empty() && links.iter().all(|r| *r), "{links:?}");
    let report = viewer.fetch(root, from(edge_id)).await.unwrap();
    assert_eq!(read_back(viewer.store().as_ref(), root).await, small);
    // Every shard sent over the relay went through the meter.
    assert_eq!(meter.served_to(&viewer_id) as u64, report.blocks);
    assert!(report.blocks >= 1);

    // A member the meter refuses is refused over the relay too.
    let mut uc = config(keys[3].clone());
    uc.admission = Some(admission.clone());
    uc.nat.hole_punching = false;
    let unpaid = start(uc, Arc::new(Counting::default())).await;
    unpaid.dial(through_relay.clone()).await.unwrap();
    let refused = unpaid
        .request(
            edge_id,
            Request::Want {
                cids: vec![root],
                root: Some(root),
            },
        )
        .await
        .unwrap();
    assert!(matches!(refused, Response::Refused { .. }), "{refused:?}");
    assert_eq!(meter.served_to(&unpaid_id), 0);
    assert!(edge.stats().metered_refusals >= 1);

    // An outsider gets through the (open) relay, but the member behind it refuses it.
    let before = edge.stats().refused_connections;
    let mut oc = config(keys[4].clone());
    oc.nat.hole_punching = false;
    let outsider = start(oc, Arc::new(Counting::default())).await;
    let _ = outsider.dial(through_relay.clone()).await;
    until("the edge refusing the outsider", || async {
        (edge.stats().refused_connections > before).then_some(())
    })
    .await;
    let asked = outsider
        .request(
            edge_id,
            Request::Want {
                cids: vec![root],
                root: Some(root),
            },
        )
        .await;
    assert!(asked.is_err(), "the outsider was answered: {asked:?}");
    assert!(!outsider.store().has(&root).await.unwrap());
    assert!(!edge.connected_peers().await.unwrap().contains(&outsider_id));
    // The member is still served.
    assert!(matches!(
        viewer.request(edge_id, Request::Status).await.unwrap(),
        Response::Status { .. }
    ));

    // The relay holds one reservation: a second private edge is refused one.
    {
        let mut sc = private_edge(keys[5].clone(), &relay_addr);
        sc.admission = Some(admission.clone());
        let second = start(sc, Arc::new(Counting::default())).await;
        let mut events = second.events();
        let refused_by = until("the second reservation's refusal", || {
            let got = match events.try_recv() {
                Ok(NodeEvent::ReservationFailed(r)) => Some(r),
                _ => None,
            };
            async move { got }
        })
        .await;
        assert_eq!(refused_by, relay_id);
        assert!(second.nat_status().await.unwrap().relayed_addrs.is_empty());
        second.shutdown().await;
    }
    // The first edge keeps its reservation.
    assert!(!edge.nat_status().await.unwrap().relayed_addrs.is_empty());

    // A response larger than the relay's 128 KiB a circuit never arrives over it.
    let big = random(200 * 1024, 2);
    let big_root = publish(&edge, &big).await;
    let big_block = edge.store().get(&big_root).await.unwrap().unwrap();
    assert!(
        big_block.len() > 128 * 1024,
        "one block of {}",
        big_block.len()
    );
    let cut = viewer
        .request(
            edge_id,
            Request::Want {
                cids: vec![big_root],
                root: None,
            },
        )
        .await;
    assert!(
        matches!(cut, Err(RequestError::Failed { .. })),
        "{} bytes through a 128 KiB circuit: {cut:?}",
        big_block.len()
    );
    assert!(!viewer.store().has(&big_root).await.unwrap());

    for n in [&viewer, &unpaid, &outsider, &edge, &relay] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_connections_are_admitted_metered_and_limited_like_direct_ones() {
    relay_scenario().await;
}

// ---------------------------------------------------------------------------------------
// Network namespaces.

/// The namespaces of one run, torn down when dropped (even when the test fails).
struct Homes {
    prefix: String,
    children: Vec<Child>,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nat_netns.sh");

impl Homes {
    fn up(rate: Option<&str>) -> Self {
        let prefix = format!("ss{}", std::process::id() % 100_000);
        let homes = Self {
            prefix: prefix.clone(),
            children: Vec::new(),
        };
        let mut args = vec!["up".to_owned(), prefix];
        args.extend(rate.map(str::to_owned));
        let out = Command::new("sh").arg(SCRIPT).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "setting up the namespaces: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        homes
    }

    /// Runs this test binary's `nat_node` inside namespace `ns` (`p`, `a` or `b`).
    fn spawn(&mut self, ns: &str, env: &[(&str, String)]) -> NodeProcess {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}{ns}", self.prefix)])
            .arg(exe)
            .args(["nat_node", "--exact", "--ignored", "--nocapture", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("NAT ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        self.children.push(child);
        NodeProcess {
            lines: rx,
            _stdin: stdin,
        }
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("sh")
            .arg(SCRIPT)
            .args(["down", &self.prefix])
            .status();
    }
}

/// A node process; it stops when its stdin closes (when this is dropped) or when killed.
struct NodeProcess {
    lines: mpsc::Receiver<String>,
    _stdin: Option<std::process::ChildStdin>,
}

impl NodeProcess {
    /// The value of the next `NAT <key> <value>` line with this key (others skipped).
    fn wait(&self, key: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{key}` from the node process in {within:?}"));
            if let Some(v) = line.strip_prefix(&format!("{key} ")) {
                return v.to_owned();
            }
        }
    }
}

struct Provider {
    process: NodeProcess,
    root: String,
    relayed: Multiaddr,
    reachable_ms: u64,
}

/// The relay in the public namespace and the provider behind NAT A, reachable through the
/// relay once AutoNAT finds it private.
fn relay_and_provider(
    homes: &mut Homes,
    size: usize,
    circuit_bytes: u64,
) -> (NodeProcess, PeerId, Provider) {
    let relay = homes.spawn(
        "p",
        &[
            ("STREAMSPACE_NAT_ROLE", "relay".into()),
            ("STREAMSPACE_NAT_CIRCUIT_BYTES", circuit_bytes.to_string()),
        ],
    );
    let relay_id: PeerId = relay.wait("peer", Duration::from_secs(30)).parse().unwrap();
    let relays = format!(
        "/ip4/198.18.1.1/udp/4001/quic-v1/p2p/{relay_id} /ip4/198.18.1.1/tcp/4001/p2p/{relay_id}"
    );
    let process = homes.spawn(
        "a",
        &[
            ("STREAMSPACE_NAT_ROLE", "provider".into()),
            ("STREAMSPACE_NAT_RELAYS", relays),
            ("STREAMSPACE_NAT_SIZE", size.to_string()),
        ],
    );
    let peer: PeerId = process
        .wait("peer", Duration::from_secs(30))
        .parse()
        .unwrap();
    let root = process.wait("root", Duration::from_secs(30));
    let reachability = process.wait("reachability", Duration::from_secs(90));
    assert_eq!(reachability, "Private", "AutoNAT behind NAT");
    let relayed: Multiaddr = process
        .wait("relayed", Duration::from_secs(60))
        .parse()
        .unwrap();
    assert!(
        relayed
            .to_string()
            .contains(&format!("/p2p/{relay_id}/p2p-circuit")),
        "provider {peer} advertises {relayed}, not a circuit through {relay_id}"
    );
    let reachable_ms = process
        .wait("reachable_ms", Duration::from_secs(5))
        .parse()
        .unwrap();
    (
        relay,
        relay_id,
        Provider {
            process,
            root,
            relayed,
            reachable_ms,
        },
    )
}

struct Viewed {
    direct: bool,
    bytes: u64,
    secs: f64,
    relayed_at_end: bool,
}

/// A viewer behind NAT B fetches the provider's item through its relayed address.
fn view(homes: &mut Homes, relay_id: PeerId, p: &Provider, hole_punching: bool) -> Viewed {
    let v = homes.spawn(
        "b",
        &[
            ("STREAMSPACE_NAT_ROLE", "viewer".into()),
            (
                "STREAMSPACE_NAT_RELAYS",
                format!(
                    "/ip4/198.18.2.1/udp/4001/quic-v1/p2p/{relay_id} /ip4/198.18.2.1/tcp/4001/p2p/{relay_id}"
                ),
            ),
            (
                "STREAMSPACE_NAT_TARGET",
                p.relayed.to_string(),
            ),
            ("STREAMSPACE_NAT_ROOT", p.root.clone()),
            ("STREAMSPACE_NAT_HOLEPUNCH", u8::from(hole_punching).to_string()),
        ],
    );
    let direct = v.wait("holepunch", Duration::from_secs(60)) == "direct";
    let fetch = v.wait("fetch", Duration::from_secs(120));
    let f: Vec<&str> = fetch.split(' ').collect();
    Viewed {
        direct,
        bytes: f[0].parse().unwrap(),
        secs: f[1].parse().unwrap(),
        relayed_at_end: f[2] == "true",
    }
}

/// Whether `bytes` of blocks fetched are a whole item of `size` bytes: every leaf and the
/// root node linking them (about 60 bytes a link: 500 bytes for 2 MiB).
fn whole(bytes: u64, size: usize) -> bool {
    let size = size as u64;
    (size..=size + size / 4096 + 1024).contains(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_two_nats_an_edge_is_reached_through_a_relay_then_directly() {
    if let Some(missing) = netns::netns_missing() {
        println!("NAT namespace test NOT RUN ({missing}): running the in-process relay part only");
        relay_scenario().await;
        return;
    }
    let size = 2 << 20;
    let mut homes = Homes::up(None);
    let (_relay, relay_id, provider) = relay_and_provider(&mut homes, size, 1 << 20);
    let seen = view(&mut homes, relay_id, &provider, true);
    assert!(seen.direct, "DCUtR gave no direct connection");
    assert!(
        whole(seen.bytes, size),
        "{} bytes fetched for a {size}-byte item",
        seen.bytes
    );
    assert!(
        !seen.relayed_at_end,
        "the fetch ran beside a relayed connection"
    );
    println!(
        "NAT namespaces: reachable through the relay after {} ms; hole punched; {} bytes fetched directly in {:.2} s",
        provider.reachable_ms, seen.bytes, seen.secs
    );
    drop(provider.process);
}

/// The figures: `cargo test -p streamspace-transport --all-features --test nat --
/// --ignored --exact nat_figures --nocapture` (as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures; needs root and network namespaces; run by hand"]
async fn nat_figures() {
    if let Some(missing) = netns::netns_missing() {
        panic!("the figures need network namespaces: {missing}");
    }
    let rate = "40mbit";
    let size = 8 << 20;
    let tries = 5;
    let mut homes = Homes::up(Some(rate));
    let (_relay, relay_id, provider) = relay_and_provider(&mut homes, size, 1 << 30);
    let mut direct = Vec::new();
    let mut upgraded = 0;
    for _ in 0..tries {
        let v = view(&mut homes, relay_id, &provider, true);
        assert!(whole(v.bytes, size), "{} bytes for {size}", v.bytes);
        if v.direct && !v.relayed_at_end {
            upgraded += 1;
            direct.push(v.bytes as f64 / v.secs);
        }
    }
    let r = view(&mut homes, relay_id, &provider, false);
    assert!(r.relayed_at_end && whole(r.bytes, size));
    let relayed = r.bytes as f64 / r.secs;
    let mean = direct.iter().sum::<f64>() / direct.len().max(1) as f64;
    println!("NAT figures (tbf {rate} on every link across the public side, {size} bytes):");
    println!("  connections upgraded to direct: {upgraded}/{tries}");
    println!(
        "  fetch throughput direct:  {:.2} MB/s (mean of {})",
        mean / 1e6,
        direct.len()
    );
    println!("  fetch throughput relayed: {:.2} MB/s", relayed / 1e6);
    println!(
        "  start to reachable (relayed) address: {} ms",
        provider.reachable_ms
    );
}

/// A node process of the namespace tests (`STREAMSPACE_NAT_ROLE`: relay, provider, viewer),
/// run inside a namespace by them. Without a role it runs the in-process relay part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a node process of the namespace tests"]
async fn nat_node() {
    let Ok(role) = std::env::var("STREAMSPACE_NAT_ROLE") else {
        relay_scenario().await;
        return;
    };
    let started = Instant::now();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let say = |k: &str, v: &dyn std::fmt::Display| {
        println!("NAT {k} {v}");
        let _ = std::io::stdout().flush();
    };
    let key = Keypair::generate_ed25519();
    let mut c = Config::new(key);
    c.network = NETWORK.into();
    c.request_timeout = Duration::from_secs(20);
    let relays: Vec<Multiaddr> = env("STREAMSPACE_NAT_RELAYS")
        .split_whitespace()
        .map(|a| a.parse().unwrap())
        .collect();
    match role.as_str() {
        "relay" => {
            c.tier = Tier::Tier1;
            c.listen = ["198.18.1.1", "198.18.2.1"]
                .iter()
                .flat_map(|ip| {
                    [
                        format!("/ip4/{ip}/tcp/4001").parse().unwrap(),
                        format!("/ip4/{ip}/udp/4001/quic-v1").parse().unwrap(),
                    ]
                })
                .collect();
            c.nat.reachability = Some(Reachability::Public);
            c.nat.relay = Some(RelayLimits {
                max_circuit_bytes: env("STREAMSPACE_NAT_CIRCUIT_BYTES").parse().unwrap(),
                max_circuit_duration: Duration::from_secs(600),
                ..RelayLimits::default()
            });
        }
        _ => {
            c.listen = vec![
                "/ip4/0.0.0.0/tcp/4001".parse().unwrap(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap(),
            ];
            c.bootstrap = relays.clone();
            if role == "provider" {
                c.nat.relays = relays;
            } else {
                c.nat.hole_punching = env("STREAMSPACE_NAT_HOLEPUNCH") == "1";
                c.nat.max_reservations = 0;
            }
        }
    }
    let node = Node::start(
        c,
        Arc::new(MemoryStore::new()),
        Arc::new(Counting::default()),
    )
    .await
    .unwrap();
    let mut events = node.events();
    say("peer", &node.peer_id());
    match role.as_str() {
        "provider" => {
            let size: usize = env("STREAMSPACE_NAT_SIZE").parse().unwrap();
            say("root", &publish(&node, &random(size, 7)).await);
            tokio::spawn(async move {
                let mut relayed = false;
                loop {
                    match events.recv().await {
                        Ok(NodeEvent::Reachability(r)) => {
                            say("reachability", &format!("{r:?}"));
                        }
                        Ok(NodeEvent::Relayed { address, .. }) if !relayed => {
                            relayed = true;
                            say("relayed", &address);
                            say("reachable_ms", &started.elapsed().as_millis());
                        }
                        Ok(NodeEvent::HolePunched { peer, direct }) => {
                            say("holepunch", &format!("{peer} {direct}"));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        _ => {}
                    }
                }
            });
        }
        "viewer" => {
            let target: Multiaddr = env("STREAMSPACE_NAT_TARGET").parse().unwrap();
            let root: Cid = env("STREAMSPACE_NAT_ROOT").parse().unwrap();
            let provider = target
                .iter()
                .filter_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                })
                .last()
                .unwrap();
            // The relay first (its observed addresses are the hole punch's candidates).
            until("a connection to the relay", || async {
                (!node.connected_peers().await.unwrap().is_empty()).then_some(())
            })
            .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            node.dial(target).await.unwrap();
            let direct = if env("STREAMSPACE_NAT_HOLEPUNCH") == "1" {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, events.recv()).await {
                        Ok(Ok(NodeEvent::HolePunched { peer, direct })) if peer == provider => {
                            break direct;
                        }
                        Ok(Ok(_)) => {}
                        _ => break false,
                    }
                }
            } else {
                false
            };
            say("holepunch", &if direct { "direct" } else { "relayed" });
            if direct {
                // The relayed connection closes once the direct one is up.
                until("the relayed connection to close", || async {
                    let s = node.nat_status().await.unwrap();
                    let links = connections_to(&s, provider);
                    (!links.is_empty() && links.iter().all(|r| !r)).then_some(())
                })
                .await;
            }
            let t = Instant::now();
            let report = node.fetch(root, from(provider)).await.unwrap();
            let secs = t.elapsed().as_secs_f64();
            let links = connections_to(&node.nat_status().await.unwrap(), provider);
            let relayed_at_end = links.iter().all(|r| *r);
            say(
                "fetch",
                &format!(
                    "{} {secs:.3} {relayed_at_end}",
                    report.bytes_from.values().sum::<u64>()
                ),
            );
            node.shutdown().await;
            return;
        }
        _ => {}
    }
    // Relays (and providers) run until the test closes their stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin().read_line(&mut s).is_ok_and(|n| n > 0) {}
    })
    .await;
    node.shutdown().await;
}
