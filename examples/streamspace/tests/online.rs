//! Content commands while a node holds the repository: `streamspace add|cat|pin|block` find
//! the running node through the repository's `api` file and go through its API, as `ipfs`
//! commands go through a running daemon, instead of failing on the locked block store.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_streamspace");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(repo: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("streamspace runs")
}

fn ok(repo: &Path, args: &[&str]) -> Vec<u8> {
    let out = run(repo, args);
    assert!(
        out.status.success(),
        "streamspace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn content_commands_go_through_a_running_node() {
    let dir = tempfile::tempdir().expect("dir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[node]\nrepo = \"repo\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\napi = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let file = dir.path().join("clip.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(tree.join("sub/b.txt"), b"beta\n").expect("write");

    // What the CIDs must be: computed without a node, storing nothing.
    let expect_file = String::from_utf8(ok(
        &repo,
        &["add", "-Q", "--only-hash", file.to_str().expect("path")],
    ))
    .expect("utf-8");
    let expect_tree = String::from_utf8(ok(
        &repo,
        &[
            "add",
            "-r",
            "-Q",
            "--only-hash",
            tree.to_str().expect("path"),
        ],
    ))
    .expect("utf-8");

    let node = Running(
        Command::new(BIN)
            .args(["node", "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts"),
    );
    let start = Instant::now();
    while !repo.join("api").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the node never wrote its api file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let added =
        String::from_utf8(ok(&repo, &["add", "-Q", file.to_str().expect("path")])).expect("utf-8");
    assert_eq!(added, expect_file, "add through the API gives the same CID");
    let cid = added.trim();
    let listed =
        String::from_utf8(ok(&repo, &["add", "-r", tree.to_str().expect("path")])).expect("utf-8");
    assert!(
        listed.contains("added ") && listed.contains("tree/sub/b.txt"),
        "{listed}"
    );
    assert!(
        listed
            .trim_end()
            .ends_with(&format!("{} tree", expect_tree.trim())),
        "{listed}"
    );

    let part = ok(
        &repo,
        &["cat", "--offset", "100", "--length", "300000", cid],
    );
    assert_eq!(part, &data[100..300_100]);
    let pins = String::from_utf8(ok(&repo, &["pin", "ls"])).expect("utf-8");
    assert!(pins.contains(cid), "{pins}");
    ok(&repo, &["pin", "rm", cid]);
    let pins = String::from_utf8(ok(&repo, &["pin", "ls"])).expect("utf-8");
    assert!(!pins.contains(cid), "{pins}");
    let stat = String::from_utf8(ok(&repo, &["block", "stat", cid])).expect("utf-8");
    assert!(stat.starts_with(&format!("Key: {cid}\nSize: ")), "{stat}");
    // What the API cannot do is refused with the reason, not attempted on the locked store.
    let enc = run(
        &repo,
        &[
            "add",
            "--encrypt",
            "--key-out",
            "k",
            file.to_str().expect("path"),
        ],
    );
    assert!(!enc.status.success());
    assert!(String::from_utf8_lossy(&enc.stderr).contains("a node is running"));
    let bad = run(&repo, &["cat", "not-a-cid"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid CID"));
    drop(node);
}

/// A gateway serving `repo` to the network; returns it with its node's TCP address.
fn serving(repo: &Path) -> (Running, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .arg("--repo")
        .arg(repo)
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    // "gateway on http://127.0.0.1:PORT/ipfs/<cid>, node ID on [/ip4/127.0.0.1/tcp/N/p2p/ID, ...]"
    let addr = line
        .split(['[', ',', ']'])
        .map(str::trim)
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .unwrap_or_else(|| panic!("no node address in {line:?}"))
        .to_owned();
    (Running(child), addr)
}

#[test]
fn content_commands_fetch_from_bootstrap_peers_when_no_node_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let (origin, viewer) = (dir.path().join("origin"), dir.path().join("viewer"));
    let file = dir.path().join("clip.bin");
    let data: Vec<u8> = (0..900_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(tree.join("sub/b.txt"), b"beta\n").expect("write");
    let cid = String::from_utf8(ok(&origin, &["add", "-Q", file.to_str().expect("path")]))
        .expect("utf-8")
        .trim()
        .to_owned();
    let tree_cid = String::from_utf8(ok(
        &origin,
        &["add", "-r", "-Q", tree.to_str().expect("path")],
    ))
    .expect("utf-8")
    .trim()
    .to_owned();
    let (_origin_node, addr) = serving(&origin);

    // Offline, the viewer's repository holds nothing: refused, as `ipfs cat --offline` is.
    assert!(!run(&viewer, &["cat", &cid]).status.success());
    // Online through a node started for the command, a byte range and a tree.
    let part = ok(
        &viewer,
        &[
            "cat",
            "--bootstrap",
            &addr,
            "--offset",
            "100",
            "--length",
            "400000",
            &cid,
        ],
    );
    assert_eq!(part, &data[100..400_100]);
    let out = dir.path().join("got");
    ok(
        &viewer,
        &[
            "get",
            "--bootstrap",
            &addr,
            "-o",
            out.to_str().expect("path"),
            &tree_cid,
        ],
    );
    assert_eq!(std::fs::read(out.join("a.txt")).expect("a"), b"alpha\n");
    assert_eq!(std::fs::read(out.join("sub/b.txt")).expect("b"), b"beta\n");
    // The node started for a command stops with it: the blocks fetched stay, readable offline.
    assert!(!viewer.join("api").exists());
    assert_eq!(
        ok(&viewer, &["cat", "--length", "1000", &cid]),
        &data[..1000]
    );

    // Content nobody serves: the command gives up at its timeout and says why.
    let absent = dir.path().join("absent.bin");
    std::fs::write(&absent, b"held by nobody").expect("write");
    let nobody = String::from_utf8(ok(
        &viewer,
        &["add", "-Q", "--only-hash", absent.to_str().expect("path")],
    ))
    .expect("utf-8")
    .trim()
    .to_owned();
    let late = run(
        &viewer,
        &["cat", "--bootstrap", &addr, "--timeout", "3", &nobody],
    );
    assert!(!late.status.success());
    // Either every peer said it lacks the block before the timeout, or the timeout came.
    let why = String::from_utf8_lossy(&late.stderr);
    assert!(
        why.contains("--timeout") || why.contains("is unavailable"),
        "{why}"
    );

    // `block get|stat` and `car export` online too.
    let first_leaf = String::from_utf8(ok(&viewer, &["block", "stat", &cid])).expect("utf-8");
    assert!(first_leaf.contains(&format!("Key: {cid}")), "{first_leaf}");
    let fresh = dir.path().join("fresh");
    let stat = String::from_utf8(ok(&fresh, &["block", "stat", "--bootstrap", &addr, &cid]))
        .expect("utf-8");
    assert!(stat.contains(&format!("Key: {cid}")), "{stat}");
    let block = ok(&fresh, &["block", "get", "--bootstrap", &addr, &cid]);
    streamspace_shard::Block::new(cid.parse().expect("cid"), block.into())
        .expect("the block matches its CID");
    let car = dir.path().join("tree.car");
    ok(
        &fresh,
        &[
            "car",
            "export",
            "--bootstrap",
            &addr,
            "-o",
            car.to_str().expect("path"),
            &tree_cid,
        ],
    );
    let check = streamspace_shard::store::MemoryStore::new();
    let summary = futures::executor::block_on(streamspace_shard::car::read_car(
        std::io::Cursor::new(std::fs::read(&car).expect("car")),
        &check,
    ))
    .expect("the CAR reads back verified");
    assert_eq!(summary.roots.len(), 1);
    assert_eq!(summary.roots[0].to_string(), tree_cid);
}
