//! The operator API driven by kubo's own RPC client (`kubo-rpc-client`, pinned in
//! `interop/js/package-lock.json`), CIDs checked against the JS importer run with kubo's
//! defaults (`interop/js/unixfs.mjs`).
//!
//! Needs `node` and `npm ci --prefix interop/js` (the README's test command does both).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use streamspace_shard::car::read_car;
use streamspace_shard::store::MemoryStore;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/js")
}

fn node_js(script: &str, args: &[&str]) -> String {
    let out = Command::new("node")
        .arg(js_dir().join(script))
        .args(args)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "node {script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubo_rpc_client_speaks_to_the_node() {
    assert!(
        js_dir().join("node_modules/kubo-rpc-client").exists(),
        "kubo-rpc-client not installed: run `npm ci --prefix interop/js` (the README's test command does)"
    );
    let repo = tempfile::tempdir().expect("dir");
    let work = tempfile::tempdir().expect("dir");
    let node = common::node(repo.path()).await;
    let api = node.api_addr().expect("api");

    // 1 MiB, a file of 4 full chunks and one byte more, and a directory tree.
    let file = work.path().join("one-mib");
    let content = common::data((1 << 20) + 1, 7);
    std::fs::write(&file, &content).expect("write");
    let dir = work.path().join("tree");
    std::fs::create_dir_all(dir.join("sub/deeper")).expect("mkdir");
    std::fs::write(dir.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(dir.join("sub/b.bin"), common::data(300_000, 9)).expect("write");
    std::fs::write(dir.join("sub/deeper/c"), b"").expect("write");
    let car = work.path().join("export.car");
    let tar = work.path().join("get.tar");

    let expect_file = node_js("unixfs.mjs", &["add", file.to_str().expect("path")]);
    let expect_dir = node_js("unixfs.mjs", &["add", dir.to_str().expect("path")]);
    let out = node_js(
        "kubo-api.mjs",
        &[
            &format!("http://{api}"),
            file.to_str().expect("path"),
            dir.to_str().expect("path"),
            car.to_str().expect("path"),
            tar.to_str().expect("path"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");

    assert_eq!(v["id"], node.transport().peer_id().to_string());
    assert!(
        v["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .any(|a| a
                .as_str()
                .is_some_and(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))),
        "{v}"
    );
    assert_eq!(v["file"]["cid"], expect_file.trim(), "add: kubo's CID");
    let dir_root = v["dir"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["path"] == "tree")
        .expect("the root directory is listed");
    assert_eq!(dir_root["cid"], expect_dir.trim(), "addAll: kubo's CID");
    assert!(
        v["dir"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["path"] == "tree/sub/b.bin"),
        "every file is listed: {v}"
    );
    assert_eq!(
        hex::decode(v["cat"].as_str().expect("cat")).expect("hex"),
        &content[1000..301_000],
        "cat with offset and length"
    );
    let cid = expect_file.trim();
    assert_eq!(v["pinAdd"], serde_json::json!([cid]));
    assert!(
        v["pinLs"]
            .as_array()
            .expect("pins")
            .iter()
            .any(|p| p["cid"] == cid && p["type"] == "recursive"),
        "{v}"
    );
    assert_eq!(v["pinRm"], serde_json::json!([cid]));
    assert!(
        !v["pinLsAfter"]
            .as_array()
            .expect("pins")
            .iter()
            .any(|p| p == cid),
        "{v}"
    );
    assert_eq!(v["blockStat"]["cid"], cid);
    assert!(v["blockStat"]["size"].as_u64().expect("size") > 0);
    assert!(
        v["badCid"].as_str().expect("error").contains("invalid CID"),
        "a kubo-shaped error reaches the client's message: {v}"
    );

    // `get` gave a tar that GNU tar (code we did not write) unpacks into the same tree,
    // under the root's CID; gzip is refused, not ignored.
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir(&unpacked).expect("mkdir");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar runs");
    assert!(status.success(), "GNU tar unpacks the archive");
    let top = unpacked.join(expect_dir.trim());
    for rel in ["a.txt", "sub/b.bin", "sub/deeper/c"] {
        assert_eq!(
            std::fs::read(top.join(rel)).expect("unpacked file"),
            std::fs::read(dir.join(rel)).expect("original"),
            "{rel}"
        );
    }
    assert!(
        v["getCompressed"]
            .as_str()
            .expect("error")
            .contains("not supported"),
        "{v}"
    );

    // The exported CAR holds the whole file, every block verified on reading.
    let store = MemoryStore::new();
    let bytes = std::fs::read(&car).expect("car");
    let summary = read_car(&bytes[..], &store).await.expect("a valid CAR");
    assert_eq!(summary.roots[0].to_string(), cid);
    let back: Vec<bytes::Bytes> =
        futures::TryStreamExt::try_collect(streamspace_shard::export::cat(
            &store,
            summary.roots[0],
            streamspace_shard::export::ByteRange::ALL,
        ))
        .await
        .expect("cat from the CAR");
    assert_eq!(back.concat(), content);
    node.shutdown().await.expect("clean shutdown");
}
