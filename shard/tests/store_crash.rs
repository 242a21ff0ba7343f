//! The on-disk store killed with SIGKILL at random points while it adds, evicts and compacts:
//! after reopening, every acknowledged block reads back verified, nothing deleted comes back,
//! and the accounting equals what is on disk.
//!
//! The child is this test binary run again with an environment variable; it performs a seeded
//! sequence of operations on a store with small packs and a quota that moves, so that packs
//! roll, empty and are compacted all the time. Before each operation it prints what it is about
//! to do, after it what came of it. The parent kills it after a seeded number of operations and
//! checks properties that hold wherever the kill fell, so the test cannot fail at random.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use cid::Cid;
use futures::TryStreamExt;
use streamspace_shard::block::{Block, RAW};
use streamspace_shard::dag::walk;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::ImportOptions;
use streamspace_shard::store::{BlockStore, DiskStore, MemoryStore, StoreError, add_reader};

const CHILD_STORE: &str = "STREAMSPACE_STORE_CRASH_CHILD";
const CHILD_SEED: &str = "STREAMSPACE_STORE_CRASH_SEED";
const ROUNDS: u64 = 16;
const PACK_SIZE: u64 = 32 << 10;
const SMALL_QUOTA: u64 = 256 << 10;
const LARGE_QUOTA: u64 = 1 << 20;

/// splitmix64: the same numbers on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed ^ 0x5eed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Raw block `id`: 1 to 24 KiB of bytes that differ for every id.
fn raw(id: u64) -> Block {
    let len = 1024 + (Rng(id).below(23 * 1024)) as usize;
    Block::encode(cid::Version::V1, RAW, Bytes::from(bytes_of(id, len)))
}

fn dag_opts() -> ImportOptions {
    let mut o = ImportOptions::default().with_cid_version(1).unwrap();
    o.chunker = streamspace_shard::import::Chunker::Size(4096);
    o
}

/// The content of file `seed`: 8 to 40 KiB.
fn file(seed: u64) -> Vec<u8> {
    let len = 8192 + Rng(seed).below(32 * 1024) as usize;
    bytes_of(seed | 1 << 63, len)
}

fn say(line: String) {
    println!("@@ {line}");
}

/// Child side: operations until killed.
#[tokio::test]
async fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_STORE) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut rng = Rng(seed);
    let store = DiskStore::open(&path, Some(SMALL_QUOTA)).unwrap();
    store.set_pack_size(PACK_SIZE);
    let mut next_id = seed << 32;
    let mut pinned: Vec<Cid> = Vec::new();
    let mut loose: Vec<u64> = Vec::new();
    loop {
        match rng.below(10) {
            0..=3 => {
                let n = 1 + rng.below(6);
                let (a, b) = (next_id, next_id + n);
                next_id = b;
                say(format!("putting {a} {b}"));
                match store.put_many((a..b).map(raw).collect()).await {
                    Ok(()) => loose.extend(a..b),
                    Err(StoreError::QuotaExceeded { .. }) => {}
                    Err(e) => panic!("put: {e}"),
                }
                say("done".into());
            }
            4 => {
                let id = next_id;
                next_id += 1;
                say(format!("putting {id} {}", id + 1));
                let block = raw(id);
                let ok = match store.put(block.clone()).await {
                    Ok(()) => match store.pin(block.cid()).await {
                        Ok(_) => true,
                        // Evicted between the put and the pin by nothing: no other writer.
                        Err(e) => panic!("pin: {e}"),
                    },
                    Err(StoreError::QuotaExceeded { .. }) => false,
                    Err(e) => panic!("put: {e}"),
                };
                if ok {
                    pinned.push(*block.cid());
                    say(format!("pinned {}", block.cid()));
                }
                say("done".into());
            }
            5 => {
                let seed = next_id;
                next_id += 1;
                say(format!("adding {seed}"));
                let data = file(seed);
                match add_reader(Some(&store), std::io::Cursor::new(data), dag_opts()).await {
                    Ok(root) => {
                        store.pin(&root.cid).await.unwrap();
                        pinned.push(root.cid);
                        say(format!("pinned {}", root.cid));
                    }
                    Err(e) => assert!(e.to_string().contains("quota"), "add: {e}"),
                }
                say("done".into());
            }
            6 => {
                if pinned.len() > 3 {
                    let root = pinned.remove(0);
                    // Said before: killed after the unpin commits and before "unpinned" is
                    // printed, the root is rightly no longer pinned.
                    say(format!("unpinning {root}"));
                    store.unpin(&root).await.unwrap();
                    say(format!("unpinned {root}"));
                }
                say("done".into());
            }
            7 => {
                if !loose.is_empty() {
                    let id = loose.swap_remove(rng.below(loose.len() as u64) as usize);
                    let block = raw(id);
                    store.delete(block.cid()).await.unwrap();
                    say(format!("deleted {id}"));
                }
                say("done".into());
            }
            _ => {
                let q = if rng.below(2) == 0 {
                    SMALL_QUOTA
                } else {
                    LARGE_QUOTA
                };
                match store.set_quota(Some(q)).await {
                    Ok(_) | Err(StoreError::QuotaExceeded { .. }) => {}
                    Err(e) => panic!("quota: {e}"),
                }
                say("done".into());
            }
        }
    }
}

/// What the parent learnt from the child's lines.
#[derive(Default)]
struct Seen {
    /// Every raw block id the child put or was putting.
    raw: BTreeSet<u64>,
    /// Every file seed the child added or was adding.
    files: BTreeSet<u64>,
    /// Roots pinned, as acknowledged, and not (being) unpinned.
    pinned: BTreeSet<Cid>,
    /// Raw blocks whose deletion was acknowledged (never put again: ids are fresh).
    deleted: BTreeSet<u64>,
    done: u64,
}

impl Seen {
    fn read(&mut self, line: &str) {
        // The harness may print its own words before ours on the first line.
        let Some(rest) = line.find("@@ ").map(|i| &line[i + 3..]) else {
            return;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            ["putting", a, b] => self
                .raw
                .extend(a.parse::<u64>().unwrap()..b.parse().unwrap()),
            ["adding", s] => {
                self.files.insert(s.parse().unwrap());
            }
            ["pinned", c] => {
                self.pinned.insert(Cid::try_from(*c).unwrap());
            }
            // From the moment the unpin may commit, the root need not be pinned.
            ["unpinning", c] | ["unpinned", c] => {
                self.pinned.remove(&Cid::try_from(*c).unwrap());
            }
            ["deleted", id] => {
                self.deleted.insert(id.parse().unwrap());
            }
            ["done"] => self.done += 1,
            _ => panic!("unexpected line {line:?}"),
        }
    }
}

fn pack_files_bytes(path: &Path) -> (u64, usize) {
    let mut dir = path.as_os_str().to_owned();
    dir.push(".packs");
    let mut total = 0;
    let mut n = 0;
    for e in std::fs::read_dir(Path::new(&dir)).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".pack") {
            total += e.metadata().unwrap().len();
            n += 1;
        }
    }
    (total, n)
}

async fn check(path: &Path, seen: &Seen, round: u64) {
    let store = DiskStore::open(path, None).unwrap();
    // Every block the child may have written, with its bytes: raw blocks and the files' DAGs.
    let mut universe: HashMap<Cid, Bytes> = HashMap::new();
    for &id in &seen.raw {
        let b = raw(id);
        universe.insert(*b.cid(), b.data().clone());
    }
    let mut roots = HashMap::new();
    for &seed in &seen.files {
        let mem = MemoryStore::new();
        let data = file(seed);
        let root = add_reader(Some(&mem), std::io::Cursor::new(data.clone()), dag_opts())
            .await
            .unwrap()
            .cid;
        let blocks: Vec<(Cid, Bytes)> = walk(&mem, root).try_collect().await.unwrap();
        universe.extend(blocks);
        roots.insert(root, data);
    }

    // Acknowledged pins hold: raw roots read back, files read back whole.
    for root in &seen.pinned {
        assert!(
            store.is_pinned(root).await.unwrap(),
            "round {round}: pin {root} lost"
        );
        match roots.get(root) {
            Some(data) => {
                let out: Vec<Bytes> = cat(&store, *root, ByteRange::ALL)
                    .try_collect()
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: pinned file {root}: {e}"));
                assert_eq!(&out.concat(), data, "round {round}: pinned file {root}");
            }
            None => assert_eq!(
                store.get(root).await.unwrap().as_ref(),
                universe.get(root),
                "round {round}: pinned block {root}"
            ),
        }
    }
    // Every pinned root (an acknowledged pin, or one under way) is whole.
    for root in store.pinned_roots().await.unwrap() {
        assert!(universe.contains_key(&root), "round {round}: unknown root");
        assert!(
            store.has(&root).await.unwrap(),
            "round {round}: pinned root absent"
        );
    }
    // Nothing deleted comes back.
    for &id in &seen.deleted {
        assert!(
            !store.has(raw(id).cid()).await.unwrap(),
            "round {round}: deleted block {id} is back"
        );
    }
    // Whatever is present is intact, and the counters are the sum of it.
    let (mut used, mut count) = (0, 0);
    for (cid, data) in &universe {
        if store.has(cid).await.unwrap() {
            assert_eq!(
                store.get(cid).await.unwrap().as_ref(),
                Some(data),
                "round {round}: block {cid} present but not intact"
            );
            used += data.len() as u64;
            count += 1;
        }
    }
    assert_eq!(store.corrupt_blocks(), 0, "round {round}");
    assert_eq!(store.used_bytes(), used, "round {round}: used bytes");
    assert_eq!(store.len(), count, "round {round}: block count");
    let (on_disk, _) = pack_files_bytes(path);
    assert_eq!(store.disk_bytes(), on_disk, "round {round}: disk bytes");
    assert!(store.disk_bytes() >= used, "round {round}");

    // Unpinned and emptied, the store gives every byte back.
    for root in store.pinned_roots().await.unwrap() {
        while store.is_pinned(&root).await.unwrap() {
            store.unpin(&root).await.unwrap();
        }
    }
    store.set_quota(Some(0)).await.unwrap();
    assert_eq!((store.used_bytes(), store.len()), (0, 0), "round {round}");
    assert_eq!(store.disk_bytes(), 0, "round {round}");
    assert_eq!(pack_files_bytes(path), (0, 0), "round {round}: packs left");
}

#[tokio::test]
async fn killed_store_keeps_every_acknowledged_block_and_its_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x00c0_ffee);
    for round in 0..ROUNDS {
        let path = dir.path().join(format!("crash{round}.redb"));
        // Two lives per store: killed, reopened and written again, killed again.
        let mut seen = Seen::default();
        for life in 0..2 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_STORE, &path)
                .env(CHILD_SEED, (round * 2 + life + 1).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let target = seen.done + 5 + rng.below(40);
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            while seen.done < target {
                let line = lines
                    .next()
                    .unwrap_or_else(|| panic!("round {round}: child stopped"))
                    .unwrap();
                seen.read(&line);
            }
            // A little later, somewhere inside the next operation.
            std::thread::sleep(std::time::Duration::from_micros(rng.below(3000)));
            child.kill().unwrap(); // SIGKILL: no destructor, no flush
            child.wait().unwrap();
            // Lines written before the kill still count (intents above all).
            for line in lines {
                seen.read(&line.unwrap());
            }
            check_without_emptying(&path, &seen, round).await;
        }
        check(&path, &seen, round).await;
    }
}

/// The checks of [`check`] that leave the store as it is, between two lives.
async fn check_without_emptying(path: &Path, seen: &Seen, round: u64) {
    let store = DiskStore::open(path, None).unwrap();
    for root in &seen.pinned {
        assert!(
            store.has(root).await.unwrap(),
            "round {round}: pinned {root} absent"
        );
    }
    for &id in &seen.deleted {
        assert!(!store.has(raw(id).cid()).await.unwrap(), "round {round}");
    }
    assert_eq!(
        store.disk_bytes(),
        pack_files_bytes(path).0,
        "round {round}"
    );
}
