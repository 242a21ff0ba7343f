//! Bitswap against Helia 7.1.15, `@helia/bitswap` 4.0.19 and js-libp2p 3 (pinned in
//! `interop/js/package-lock.json`), on loopback over TCP + noise + yamux: Helia fetches
//! files and a directory from a StreamSpace node and the node fetches the same from Helia,
//! bytes checked; a cancelled want leaves the node's ledger; Helia answers DONT_HAVE; a
//! message of exactly 4 MiB is served and one byte more is refused, as is a malformed one,
//! without harm to what follows.
//!
//! Needs `node` and `npm ci --prefix interop/js` (the README's test command does both). Set
//! `STREAMSPACE_SKIP_JS_INTEROP=1` to skip it on a machine without Node.js.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use libp2p::identity::Keypair;
use rand::{RngCore, SeedableRng};
use streamspace_shard::block::{RAW, cid_of};
use streamspace_shard::dag::resolve;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{ImportOptions, Profile};
use streamspace_shard::store::{BlockStore, MemoryStore, add_path, add_reader};
use streamspace_transport::bitswap::message::{MAX_MESSAGE, WantType};
use streamspace_transport::meter::Free;
use streamspace_transport::{Config, FetchOptions, Multiaddr, Node, PeerId};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js")
}

fn skip() -> bool {
    if std::env::var_os("STREAMSPACE_SKIP_JS_INTEROP").is_some() {
        eprintln!("STREAMSPACE_SKIP_JS_INTEROP set: skipping Helia interop");
        return true;
    }
    assert!(
        js_dir().join("node_modules/helia").exists(),
        "Helia not installed: run `npm ci --prefix interop/js` (the README's test command does)"
    );
    false
}

/// A Helia node in a `node` subprocess (`interop/js/helia-bitswap.mjs`).
struct Helia {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    peer: PeerId,
    addr: Multiaddr,
}

/// The string value of `"key":"..."` in a line of JSON.
fn text(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// The number value of `"key":N` in a line of JSON.
fn number(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find([',', '}']).map(|e| e + start)?;
    line[start..end].parse().ok()
}

impl Helia {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// A Helia node that also runs the public IPFS DHT's protocol (`/ipfs/kad/1.0.0`) as a
    /// server.
    fn start_with_dht() -> Self {
        Self::start_with(true)
    }

    fn start_with(dht: bool) -> Self {
        let mut child = Command::new("node")
            .arg(js_dir().join("helia-bitswap.mjs"))
            .env("HELIA_DHT", if dht { "1" } else { "0" })
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("Helia starts");
        let peer: PeerId = text(&line, "peer")
            .expect("peer id")
            .parse()
            .expect("peer id");
        let addr_start = line.find("\"addrs\":[\"").expect("addrs") + 10;
        let addr_end = line[addr_start..].find('"').expect("addr") + addr_start;
        let addr: Multiaddr = line[addr_start..addr_end].parse().expect("multiaddr");
        Self {
            child,
            stdin,
            out,
            peer,
            addr,
        }
    }

    /// Sends one command and returns its answer line (panicking on an error answer).
    fn call(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("command sent");
        self.stdin.flush().expect("flushed");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("answer");
        assert!(
            !line.starts_with("{\"error\""),
            "Helia failed {cmd}: {line}"
        );
        line
    }

    fn add_file(&mut self, path: &Path) -> Cid {
        let line = self.call(&format!(
            r#"{{"op":"add-file","path":"{}"}}"#,
            path.display()
        ));
        text(&line, "cid").expect("cid").parse().expect("cid")
    }

    /// Adds a file as Helia does, in fixed chunks of `chunk` bytes.
    fn add_file_chunked(&mut self, path: &Path, chunk: usize) -> Cid {
        let line = self.call(&format!(
            r#"{{"op":"add-file","path":"{}","chunkSize":{chunk}}}"#,
            path.display()
        ));
        text(&line, "cid").expect("cid").parse().expect("cid")
    }

    fn add_dir(&mut self, path: &Path) -> Cid {
        let line = self.call(&format!(
            r#"{{"op":"add-dir","path":"{}"}}"#,
            path.display()
        ));
        text(&line, "cid").expect("cid").parse().expect("cid")
    }

    /// Fetches a file over Bitswap: (length, SHA-256 hex, milliseconds).
    fn cat(&mut self, cid: &Cid) -> (u64, String, f64) {
        let line = self.call(&format!(r#"{{"op":"cat","cid":"{cid}"}}"#));
        (
            number(&line, "len").expect("len") as u64,
            text(&line, "sha256").expect("sha256"),
            number(&line, "ms").expect("ms"),
        )
    }
}

impl Drop for Helia {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, r#"{{"op":"quit"}}"#);
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn hex_sha(data: &[u8]) -> String {
    streamspace_shard::block::sha256_multihash(data)
        .digest()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const SIZES: [usize; 4] = [0, 1, 3 << 20, 40 << 20];

/// A directory tree: (relative path, contents).
fn tree_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a.txt", b"alpha\n".to_vec()),
        ("empty", Vec::new()),
        ("sub/b.bin", random(300_000, 7)),
        ("sub/deeper/c.bin", random(1_500_000, 8)),
    ]
}

fn write_tree(dir: &Path) {
    for (path, data) in tree_files() {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

async fn start_node() -> Node<MemoryStore> {
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(10);
    Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .unwrap()
}

async fn read_all<S: BlockStore>(store: &S, root: Cid) -> Vec<u8> {
    let parts: Vec<Bytes> = cat(store, root, ByteRange::default())
        .try_collect()
        .await
        .unwrap();
    parts.concat()
}

/// Waits until identify told the node that `peer` speaks Bitswap only.
async fn await_bitswap_peer(node: &Node<MemoryStore>, peer: &PeerId) {
    for _ in 0..400 {
        if node.bitswap().is_bitswap_only(peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{peer} never identified as a Bitswap peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_fetches_from_our_node() {
    if skip() {
        return;
    }
    let node = start_node().await;
    let mut helia = tokio::task::block_in_place(Helia::start);
    let our_addr = node.dialable_addrs().await.unwrap().remove(0);
    helia.call(&format!(r#"{{"op":"dial","addr":"{our_addr}"}}"#));

    // Files of 0 and 1 bytes, 3 MiB and 40 MiB.
    for (i, size) in SIZES.into_iter().enumerate() {
        let data = random(size, i as u64);
        let cid = add_reader(
            Some(node.store().as_ref()),
            std::io::Cursor::new(data.clone()),
            ImportOptions::default(),
        )
        .await
        .unwrap()
        .cid;
        let (len, sha, ms) = tokio::task::block_in_place(|| helia.cat(&cid));
        assert_eq!(len, size as u64, "{size} bytes");
        assert_eq!(sha, hex_sha(&data), "{size} bytes: content");
        eprintln!("Helia fetched {size} bytes from our node in {ms:.0} ms");
    }
    assert!(node.stats().bytes_served >= (43 << 20) as u64);

    // A directory tree.
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path());
    let root = add_path(
        Some(node.store().as_ref()),
        dir.path().to_owned(),
        ImportOptions::default(),
        false,
        |_, _| {},
    )
    .await
    .unwrap()
    .cid;
    let line =
        tokio::task::block_in_place(|| helia.call(&format!(r#"{{"op":"tree","cid":"{root}"}}"#)));
    for (path, data) in tree_files() {
        let entry = format!(
            r#"{{"path":"/{path}","len":{},"sha256":"{}"}}"#,
            data.len(),
            hex_sha(&data)
        );
        assert!(line.contains(&entry), "{path} missing or wrong in {line}");
    }

    // A want Helia holds when it connects reaches the node's ledger with the full wantlist a
    // new connection starts with (without DONT_HAVE asked, so it is kept), and leaves it when
    // Helia goes. (@helia/bitswap 4.0.19 sends no cancel when a want is aborted: its
    // `sendMessages` skips cancelled entries; cancels are covered by tests/bitswap.rs.)
    let absent = cid_of(cid::Version::V1, RAW, b"no one has this block");
    {
        let mut helia2 = tokio::task::block_in_place(Helia::start);
        let helia2_peer = helia2.peer;
        tokio::task::block_in_place(|| {
            helia2.call(&format!(r#"{{"op":"want","cid":"{absent}"}}"#));
            helia2.call(&format!(r#"{{"op":"dial","addr":"{our_addr}"}}"#));
        });
        let mut seen = false;
        for _ in 0..400 {
            if node.bitswap().ledger(helia2_peer).await.contains(&absent) {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(seen, "Helia's want never reached the ledger");
        tokio::task::block_in_place(|| drop(helia2));
        let mut gone = false;
        for _ in 0..400 {
            if node.bitswap().ledger(helia2_peer).await.is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(gone, "the ledger of a peer that left was not dropped");
    }

    // The 4 MiB bound: a message of exactly 4 MiB is read and its want served; a message of
    // 4 MiB and one byte, and a malformed one, are refused; a want after them is still served.
    let served = |node: &Node<MemoryStore>, peer: PeerId| {
        node.stats().peers.get(&peer).map_or(0, |p| p.shards_sent)
    };
    let blocks: Vec<Cid> = {
        let mut v = Vec::new();
        for i in 0..3u8 {
            let data = Bytes::from(vec![i; 4000]);
            let b = streamspace_shard::block::Block::encode(cid::Version::V1, RAW, data);
            v.push(*b.cid());
            node.store().put(b).await.unwrap();
        }
        v
    };
    let raw = |helia: &mut Helia, cid: &Cid, size: usize| {
        let peer = node.peer_id();
        tokio::task::block_in_place(|| {
            helia.call(&format!(
                r#"{{"op":"raw","peer":"{peer}","cid":"{cid}","size":{size},"type":"block"}}"#
            ))
        });
    };
    let before = served(&node, helia.peer);
    raw(&mut helia, &blocks[0], MAX_MESSAGE);
    let mut n = before;
    for _ in 0..400 {
        n = served(&node, helia.peer);
        if n > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(n, before + 1, "the 4 MiB message's want was served");
    // Over the bound (its want never served), then garbage, then a good message.
    raw(&mut helia, &blocks[1], MAX_MESSAGE + 1);
    tokio::task::block_in_place(|| {
        let peer = node.peer_id();
        helia.call(&format!(
            r#"{{"op":"raw-bytes","peer":"{peer}","hex":"0affff07"}}"#
        ))
    });
    raw(&mut helia, &blocks[2], 200);
    let mut after = n;
    for _ in 0..400 {
        after = served(&node, helia.peer);
        if after > n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(after, n + 1, "only the good message after them was served");
    assert!(
        !node.bitswap().ledger(helia.peer).await.contains(&blocks[1]),
        "the oversized message's want was not taken"
    );
    drop(helia);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_fetches_from_helia() {
    if skip() {
        return;
    }
    let node = start_node().await;
    let mut helia = tokio::task::block_in_place(Helia::start);
    let dir = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    for (i, size) in SIZES.into_iter().enumerate() {
        let data = random(size, 100 + i as u64);
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, &data).unwrap();
        roots.push((tokio::task::block_in_place(|| helia.add_file(&path)), data));
    }
    let tree = dir.path().join("tree");
    write_tree(&tree);
    let tree_root = tokio::task::block_in_place(|| helia.add_dir(&tree));

    node.dial(helia.addr.clone()).await.unwrap();
    await_bitswap_peer(&node, &helia.peer).await;

    let options = || FetchOptions {
        use_dht: false,
        ..FetchOptions::default()
    };
    for (root, data) in &roots {
        let t = std::time::Instant::now();
        let report = node.fetch(*root, options()).await.unwrap();
        assert_eq!(read_all(node.store().as_ref(), *root).await, *data);
        eprintln!(
            "our node fetched {} bytes from Helia in {:?} ({} blocks)",
            data.len(),
            t.elapsed(),
            report.fetched
        );
        if !data.is_empty() {
            assert!(report.bytes_from.contains_key(&helia.peer));
        }
    }
    node.fetch(tree_root, options()).await.unwrap();
    for (path, data) in tree_files() {
        let cid = resolve(node.store().as_ref(), &tree_root, path)
            .await
            .unwrap();
        assert_eq!(read_all(node.store().as_ref(), cid).await, data, "{path}");
    }

    // DONT_HAVE: Helia answers a want of a block it lacks.
    let absent = cid_of(cid::Version::V1, RAW, b"Helia lacks this");
    let reply = node
        .bitswap_want(helia.peer, vec![absent], WantType::Block)
        .await
        .unwrap();
    assert_eq!(reply.dont_have, vec![absent]);
    assert!(reply.blocks.is_empty());
    // HAVE for a block Helia holds, and the block itself for a want-have of a tiny one.
    let mid = random(2000, 200);
    let tiny = b"tiny".to_vec();
    let (mid_path, tiny_path) = (dir.path().join("mid"), dir.path().join("tiny"));
    std::fs::write(&mid_path, &mid).unwrap();
    std::fs::write(&tiny_path, &tiny).unwrap();
    let mid_cid = tokio::task::block_in_place(|| helia.add_file(&mid_path));
    let tiny_cid = tokio::task::block_in_place(|| helia.add_file(&tiny_path));
    let reply = node
        .bitswap_want(helia.peer, vec![mid_cid], WantType::Have)
        .await
        .unwrap();
    assert_eq!(reply.have, vec![mid_cid]);
    assert!(
        reply.blocks.is_empty(),
        "a 2000-byte block is announced, not sent"
    );
    let reply = node
        .bitswap_want(helia.peer, vec![tiny_cid], WantType::Have)
        .await
        .unwrap();
    assert_eq!(reply.blocks, vec![(tiny_cid, Bytes::from(tiny))]);
    drop(helia);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amino_dht_names_our_node_to_helia_and_helia_to_our_node() {
    if skip() {
        return;
    }
    let mut helia = tokio::task::block_in_place(Helia::start_with_dht);
    let mut c = Config::new(Keypair::generate_ed25519()).loopback();
    c.request_timeout = Duration::from_secs(10);
    c.amino_dht = true;
    let node = Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .unwrap();
    node.dial(helia.addr.clone()).await.unwrap();
    await_bitswap_peer(&node, &helia.peer).await;

    // Our node provides a file: Helia's DHT lookup names our node, and Helia fetches it.
    let data = random(700_000, 41);
    let root = add_reader(
        Some(node.store().as_ref()),
        std::io::Cursor::new(data.clone()),
        ImportOptions::default(),
    )
    .await
    .unwrap()
    .cid;
    node.provide(root).await.unwrap();
    let me = node.peer_id().to_string();
    let mut named = false;
    for _ in 0..40 {
        // Helia's routing table learns our node once identify has run on both sides.
        let line = tokio::task::block_in_place(|| {
            helia.call(&format!(
                r#"{{"op":"find-providers","cid":"{root}","first":true}}"#
            ))
        });
        if line.contains(&me) {
            named = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        named,
        "Helia's DHT never named our node as a provider of {root}"
    );
    let (len, sha, _) = tokio::task::block_in_place(|| helia.cat(&root));
    assert_eq!((len, sha), (data.len() as u64, hex_sha(&data)));

    // Helia provides a file on the DHT: our node's lookup names Helia and fetches it from it.
    let dir = tempfile::tempdir().unwrap();
    let theirs = random(900_000, 42);
    let path = dir.path().join("theirs.bin");
    std::fs::write(&path, &theirs).unwrap();
    let hroot = tokio::task::block_in_place(|| helia.add_file(&path));
    tokio::task::block_in_place(|| helia.call(&format!(r#"{{"op":"provide","cid":"{hroot}"}}"#)));
    let mut found = Vec::new();
    for _ in 0..40 {
        found = node.find_providers(hroot).await.unwrap();
        if found.contains(&helia.peer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(found.contains(&helia.peer), "{found:?}");
    let report = node
        .fetch(
            hroot,
            FetchOptions {
                bitswap_peers: false,
                ..FetchOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(report.bytes_from.contains_key(&helia.peer), "{report:?}");
    assert_eq!(read_all(node.store().as_ref(), hroot).await, theirs);
    node.shutdown().await;
}

/// The median of some durations, in milliseconds.
fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A measurement, not a check: a 40 MiB file over Bitswap on loopback, each pair in the same
/// run, five rounds alternating, fresh fetchers each time:
/// Helia from our node against Helia from Helia, and our node from Helia against Helia from
/// Helia. Both holders hold the same DAG, in two shapes: Helia's defaults (the
/// `unixfs-v1-2025` profile: CIDv1, raw 1 MiB leaves, 1024 links) and the same in 256 KiB
/// leaves; the roots imported by Helia and by us must agree, so every fetcher asks for the
/// same blocks.
///
/// `cargo test --release -p streamspace-transport --all-features --test bitswap_helia -- --ignored --exact helia_figures --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn helia_figures() {
    if skip() {
        return;
    }
    let data = random(40 << 20, 61);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forty.bin");
    std::fs::write(&path, &data).unwrap();
    println!("40 MiB over Bitswap on loopback, medians of 5:");
    for chunk in [1 << 20, 256 << 10] {
        figures_of_shape(&data, &path, chunk).await;
    }
}

/// [`helia_figures`] for one leaf size.
async fn figures_of_shape(data: &[u8], path: &Path, chunk: usize) {
    // The holders: a Helia node and ours, each with the file added its own way.
    let mut holder = tokio::task::block_in_place(Helia::start);
    let root = tokio::task::block_in_place(|| holder.add_file_chunked(path, chunk));
    let ours = start_node().await;
    let our_root = add_reader(
        Some(ours.store().as_ref()),
        std::io::Cursor::new(data.to_vec()),
        ImportOptions::profile(Profile::UnixfsV1_2025)
            .with_chunker(&format!("size-{chunk}"))
            .unwrap(),
    )
    .await
    .unwrap()
    .cid;
    assert_eq!(our_root, root, "one DAG, imported by Helia and by us");
    let our_addr = ours.dialable_addrs().await.unwrap()[0].clone();
    let (mut helia_helia, mut helia_ours, mut ours_helia) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        // Helia from Helia.
        let mut f = tokio::task::block_in_place(Helia::start);
        let (len, sha, ms) = tokio::task::block_in_place(|| {
            f.call(&format!(r#"{{"op":"dial","addr":"{}"}}"#, holder.addr));
            f.cat(&root)
        });
        assert_eq!(
            (len, sha.as_str()),
            (data.len() as u64, hex_sha(data).as_str())
        );
        helia_helia.push(ms);
        drop(f);
        // Helia from our node.
        let mut f = tokio::task::block_in_place(Helia::start);
        let (len, sha, ms) = tokio::task::block_in_place(|| {
            f.call(&format!(r#"{{"op":"dial","addr":"{our_addr}"}}"#));
            f.cat(&root)
        });
        assert_eq!(
            (len, sha.as_str()),
            (data.len() as u64, hex_sha(data).as_str())
        );
        helia_ours.push(ms);
        drop(f);
        // Our node from Helia.
        let n = start_node().await;
        n.dial(holder.addr.clone()).await.unwrap();
        await_bitswap_peer(&n, &holder.peer).await;
        let t = std::time::Instant::now();
        n.fetch(
            root,
            FetchOptions {
                use_dht: false,
                ..FetchOptions::default()
            },
        )
        .await
        .unwrap();
        ours_helia.push(t.elapsed().as_secs_f64() * 1000.0);
        n.shutdown().await;
    }
    let (hh, ho, oh) = (
        median_ms(helia_helia),
        median_ms(helia_ours),
        median_ms(ours_helia),
    );
    println!("{} KiB leaves:", chunk >> 10);
    println!("  Helia from Helia     {hh:8.0} ms");
    println!(
        "  Helia from our node  {ho:8.0} ms  ({:.2}x Helia from Helia; goal <= 1)",
        ho / hh
    );
    println!(
        "  our node from Helia  {oh:8.0} ms  ({:.2}x Helia from Helia; goal <= 1)",
        oh / hh
    );
    ours.shutdown().await;
}
