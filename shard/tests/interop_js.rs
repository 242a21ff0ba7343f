//! Interop with the JS reference implementation (`ipfs-unixfs-importer`, `@ipld/car`), pinned in
//! `interop/js/package-lock.json`.
//!
//! Needs `node` and `npm ci --prefix interop/js` (the README's test command does both). Set
//! `STREAMSPACE_SKIP_JS_INTEROP=1` to skip it on a machine without Node.js.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use futures::TryStreamExt;
use streamspace_shard::car::{read_car, write_car};
use streamspace_shard::dag::{resolve, walk};
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::import::{
    Chunker, ImportOptions, Layout, Profile, Rabin, import_file, import_path,
};
use streamspace_shard::store::{MemoryStore, add_path};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js")
}

fn skip() -> bool {
    if std::env::var_os("STREAMSPACE_SKIP_JS_INTEROP").is_some() {
        eprintln!("STREAMSPACE_SKIP_JS_INTEROP set: skipping JS interop");
        return true;
    }
    assert!(
        js_dir().join("node_modules/ipfs-unixfs-importer").exists(),
        "JS reference not installed: run `npm ci --prefix interop/js` (the README's test command does)"
    );
    false
}

fn js(args: &[&str]) -> Vec<u8> {
    let out = Command::new("node")
        .arg(js_dir().join("unixfs.mjs"))
        .args(args)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "node unixfs.mjs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn js_cid(path: &Path, flags: &[&str]) -> String {
    let mut args = vec!["add", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    String::from_utf8(js(&args)).unwrap().trim().to_owned()
}

fn write_data(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

struct OptionSet {
    name: &'static str,
    opts: ImportOptions,
    flags: &'static [&'static str],
    sizes: Vec<usize>,
}

fn option_sets() -> Vec<OptionSet> {
    const K: usize = 262_144;
    let boundaries = vec![0, 1, K - 1, K, K + 1, 174 * K, 174 * K + 1];
    let small = vec![0, 1, 3 * K + 5];
    let v1 = ImportOptions::default().with_cid_version(1).unwrap();
    let mut raw = ImportOptions::default();
    raw.raw_leaves = true;
    let mut trickle = ImportOptions::default();
    trickle.layout = Layout::Trickle;
    let mut trickle_v1 = v1.clone();
    trickle_v1.layout = Layout::Trickle;
    let tiny = ImportOptions::default().with_chunker("size-256").unwrap();
    let mut tiny_trickle = tiny.clone();
    tiny_trickle.layout = Layout::Trickle;
    let mib = 1 << 20;
    // The JS importer's Rabin chunker is kubo's algorithm over rabin-wasm's polynomial: the
    // same bounds and polynomial must give the same chunks, hence the same CIDs.
    let js_rabin = |mut o: ImportOptions, min, avg, max| {
        let r = Rabin::new(min, avg, max)
            .unwrap()
            .with_polynomial(Rabin::RABIN_WASM_POLYNOMIAL)
            .unwrap();
        o.chunker = Chunker::Rabin(r);
        o
    };
    let mut rabin_trickle = js_rabin(ImportOptions::default(), 512, 1024, 2048);
    rabin_trickle.layout = Layout::Trickle;
    vec![
        OptionSet {
            name: "kubo defaults",
            opts: ImportOptions::default(),
            flags: &[],
            sizes: boundaries.clone(),
        },
        OptionSet {
            name: "--cid-version 1",
            opts: v1.clone(),
            flags: &["--cid-version", "1"],
            sizes: boundaries.clone(),
        },
        OptionSet {
            name: "--raw-leaves",
            opts: raw,
            flags: &["--raw-leaves"],
            sizes: small.clone(),
        },
        OptionSet {
            name: "--trickle",
            opts: trickle,
            flags: &["--trickle"],
            sizes: boundaries,
        },
        OptionSet {
            name: "--trickle --cid-version 1",
            opts: trickle_v1,
            flags: &["--trickle", "--cid-version", "1"],
            sizes: small,
        },
        // Small chunks reach the second and third tree levels with small files.
        OptionSet {
            name: "--chunker size-256",
            opts: tiny,
            flags: &["--chunk-size", "256"],
            sizes: vec![
                174 * 256,
                174 * 256 + 1,
                174 * 174 * 256,
                174 * 174 * 256 + 1,
            ],
        },
        OptionSet {
            name: "--chunker size-256 --trickle",
            opts: tiny_trickle,
            flags: &["--chunk-size", "256", "--trickle"],
            sizes: vec![4 * 256 * 174 + 7, 40 * 174 * 256],
        },
        OptionSet {
            name: "--chunker rabin-512-1024-2048 (rabin-wasm's polynomial)",
            opts: js_rabin(ImportOptions::default(), 512, 1024, 2048),
            flags: &["--rabin", "512-1024-2048"],
            // Not 0: the JS Rabin chunker yields no chunk at all for an empty file, and the
            // JS importer then no entry (fixed-size chunking yields one empty chunk).
            sizes: vec![1, 511, 512, 2048, 2049, 300_001, 174 * 2048 + 9, 4 * mib],
        },
        OptionSet {
            name: "--chunker rabin-512-1024-2048 --trickle (rabin-wasm's polynomial)",
            opts: rabin_trickle,
            flags: &["--rabin", "512-1024-2048", "--trickle"],
            sizes: vec![3 * mib + 1],
        },
        OptionSet {
            name: "--chunker rabin-87381-262144-393216 --cid-version 1 (rabin-wasm's polynomial)",
            opts: js_rabin(v1.clone(), 87_381, 262_144, 393_216),
            flags: &["--rabin", "87381-262144-393216", "--cid-version", "1"],
            sizes: vec![87_380, 87_381, 393_217, 24 * mib + 5],
        },
        OptionSet {
            name: "--profile unixfs-v1-2025",
            opts: ImportOptions::profile(Profile::UnixfsV1_2025),
            flags: &["--profile", "unixfs-v1-2025"],
            sizes: vec![0, 1, mib - 1, mib, mib + 1, 40 * mib + 3],
        },
    ]
}

#[test]
fn file_cids_match_the_js_importer() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for set in option_sets() {
        for &size in &set.sizes {
            let path = dir.path().join(format!("f{size}"));
            if !path.exists() {
                write_data(&path, size, size as u64);
            }
            let file = std::fs::File::open(&path).unwrap();
            let ours = import_file(file, &set.opts, |_| Ok(()))
                .unwrap()
                .cid
                .to_string();
            let theirs = js_cid(&path, set.flags);
            checked += 1;
            if ours != theirs {
                failures.push(format!(
                    "{} size {size}: ours {ours}, js {theirs}",
                    set.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The polynomial is what sets the two apart: kubo's cuts elsewhere than rabin-wasm's.
    let path = dir.path().join(format!("f{}", 4 << 20));
    let mut kubo = ImportOptions::default();
    kubo.chunker = "rabin-512-1024-2048".parse().unwrap();
    let ours = import_file(std::fs::File::open(&path).unwrap(), &kubo, |_| Ok(()))
        .unwrap()
        .cid
        .to_string();
    assert_ne!(ours, js_cid(&path, &["--rabin", "512-1024-2048"]));
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/deep/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    write_data(&root.join("video.bin"), 700_000, 1);
    write_data(&root.join("docs/readme.txt"), 1000, 2);
    write_data(&root.join("docs/deep/deeper/x"), 262_145, 3);
    std::fs::write(root.join("docs/héllo wörld.txt"), "unicode name").unwrap();
}

#[test]
fn directory_cids_match_the_js_importer() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    // A directory large enough to be HAMT-sharded (over 256 KiB of names and CIDs).
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..6000 {
        std::fs::write(big.join(format!("entry-{i:05}.txt")), format!("{i}")).unwrap();
    }
    // Between the two size rules: over 256 KiB as an encoded block, under it as kubo's estimate
    // of names plus CIDs, so the 2025 profile shards it and the 2015 rules do not.
    let between = dir.path().join("between");
    std::fs::create_dir_all(&between).unwrap();
    for i in 0..4400 {
        std::fs::write(
            between.join(format!("name-of-twenty-{i:05}")),
            format!("{i}"),
        )
        .unwrap();
    }
    let mut failures = Vec::new();
    for (name, opts, flags) in [
        ("kubo defaults", ImportOptions::default(), &[][..]),
        (
            "--cid-version 1",
            ImportOptions::default().with_cid_version(1).unwrap(),
            &["--cid-version", "1"][..],
        ),
        (
            "--profile unixfs-v1-2025",
            ImportOptions::profile(Profile::UnixfsV1_2025),
            &["--profile", "unixfs-v1-2025"][..],
        ),
    ] {
        for d in [&tree, &big, &between] {
            let ours = import_path(d, &opts, true, |_| Ok(()), |_, _| {})
                .unwrap()
                .cid
                .to_string();
            let theirs = js_cid(d, flags);
            if ours != theirs {
                failures.push(format!("{name} {}: ours {ours}, js {theirs}", d.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cars_cross_read() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let file = dir.path().join("file");
    write_data(&file, 3 * 262_144 + 11, 9);
    let original = std::fs::read(&file).unwrap();

    // Our CAR, read by @ipld/car: same roots and blocks, same bytes out.
    let store = MemoryStore::new();
    let opts = ImportOptions::default().with_cid_version(1).unwrap();
    let root = add_path(Some(&store), file.clone(), opts.clone(), true, |_, _| {})
        .await
        .unwrap();
    let ours_car = dir.path().join("ours.car");
    write_car(
        &store,
        root.cid,
        tokio::fs::File::create(&ours_car).await.unwrap(),
    )
    .await
    .unwrap();
    let report: serde_json_like::Report =
        serde_json_like::parse(&js(&["car-check", ours_car.to_str().unwrap()]));
    let mut our_cids: Vec<String> = walk(&store, root.cid)
        .map_ok(|(c, _)| c.to_string())
        .try_collect()
        .await
        .unwrap();
    our_cids.sort();
    assert_eq!(report.roots, vec![root.cid.to_string()]);
    assert_eq!(report.cids, our_cids);
    assert_eq!(js(&["car-cat", ours_car.to_str().unwrap()]), original);

    // Their CAR (a directory tree), imported into our store: same bytes out by path.
    let theirs_car = dir.path().join("theirs.car");
    let js_root = js_cid(
        &tree,
        &["--cid-version", "1", "--car", theirs_car.to_str().unwrap()],
    );
    let fresh = MemoryStore::new();
    let summary = read_car(tokio::fs::File::open(&theirs_car).await.unwrap(), &fresh)
        .await
        .unwrap();
    assert_eq!(
        summary
            .roots
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        vec![js_root]
    );
    let cid = resolve(&fresh, &summary.roots[0], "docs/deep/deeper/x")
        .await
        .unwrap();
    let parts: Vec<Bytes> = cat(&fresh, cid, ByteRange::ALL)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        parts.concat(),
        std::fs::read(tree.join("docs/deep/deeper/x")).unwrap()
    );
    // And our export of it is byte-identical to theirs (same block order).
    let mut again = Vec::new();
    write_car(&fresh, summary.roots[0], &mut again)
        .await
        .unwrap();
    assert_eq!(again, std::fs::read(&theirs_car).unwrap());
}

/// The two fields of `car-check`'s JSON report, without a JSON dependency.
mod serde_json_like {
    pub(crate) struct Report {
        pub(crate) roots: Vec<String>,
        pub(crate) cids: Vec<String>,
    }

    fn list(s: &str, key: &str) -> Vec<String> {
        let start = s.find(&format!("\"{key}\":[")).expect("key present") + key.len() + 4;
        let end = start + s[start..].find(']').expect("list ends");
        s[start..end]
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    }

    pub(crate) fn parse(out: &[u8]) -> Report {
        let s = String::from_utf8_lossy(out);
        Report {
            roots: list(&s, "roots"),
            cids: list(&s, "cids"),
        }
    }
}
