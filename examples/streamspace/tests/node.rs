//! A paid test network of three `streamspace node` processes: node 1 keeps the embedded ledger
//! and serves it over Hedera's gRPC API (the others reach it through the official SDK), node 2
//! holds an item, node 3's gateway serves it to an HTTP client, fetching it from node 2 and
//! paying with receipts; the period closes, node 1 settles it on the ledger, and node 2's
//! earnings show the payment. Shut down with SIGTERM, every node exits cleanly.
#![cfg(feature = "hedera")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_streamspace");

fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = all[split + 4..].to_vec();
    // Chunked bodies are not expected from these endpoints' answers here.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Some((status, body))
}

/// A POST to the operator API, answered as JSON.
fn api(port: u16, command: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "POST /api/v0/{command} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read");
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{command}: {head}");
    serde_json::from_slice(&all[split + 4..]).expect("JSON")
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
    }
}

fn start(dir: &Path, i: u16, api_port: u16) -> Child {
    Command::new(BIN)
        .args(["node", "run", "--config"])
        .arg(dir.join(format!("node-{i}.toml")))
        .args(["--api", &format!("127.0.0.1:{api_port}")])
        .env("RUST_LOG", "warn,streamspace=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("node-{i}.log"))).expect("log file"),
        ))
        .spawn()
        .expect("start node")
}

#[test]
fn a_paid_network_serves_pays_settles_and_shuts_down() {
    let tmp = tempfile::tempdir().expect("dir");
    let dir = tmp.path().join("net");
    // Below Linux's ephemeral range, away from the ports other tests bind.
    let base = 10_000 + (std::process::id() % 200) as u16 * 100;
    let out = Command::new(BIN)
        .args(["testnet", "--nodes", "3", "--period-secs", "5", "--dir"])
        .arg(&dir)
        .args(["--base-port", &base.to_string()])
        .output()
        .expect("testnet");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Node 2 holds a 2 MiB item (9 shards).
    let item: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(tmp.path().join("item.bin"), &item).expect("write item");
    let out = Command::new(BIN)
        .arg("--repo")
        .arg(dir.join("node-2"))
        .args(["add", "-Q", "--cid-version", "1"])
        .arg(tmp.path().join("item.bin"))
        .output()
        .expect("add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cid = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut nodes = Nodes(Vec::new());
    for i in 1..=3u16 {
        nodes.0.push(start(&dir, i, base + 50 + i));
        wait_for("the node's metrics", Duration::from_secs(60), || {
            http_get(base + 200 + i, "/metrics").is_some_and(|(s, _)| s == 200)
        });
    }

    // Fetch well inside one 5 s period: the nodes roll their books on their own clocks, and a
    // receipt that lands in the other's next period is refused (the node module docs say so).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let into = secs % 5.0;
    if into > 2.0 {
        std::thread::sleep(Duration::from_secs_f64(5.0 - into + 1.5));
    } else if into < 1.5 {
        std::thread::sleep(Duration::from_secs_f64(1.5 - into));
    }
    // Node 3's gateway serves the item, fetched from node 2 and paid for.
    let mut got = None;
    wait_for(
        "the item through node 3's gateway",
        Duration::from_secs(90),
        || {
            got = http_get(base + 103, &format!("/ipfs/{cid}")).filter(|(s, _)| *s == 200);
            got.is_some()
        },
    );
    let (_, body) = got.expect("answer");
    assert!(body == item, "the gateway served other bytes");

    let m2 =
        String::from_utf8(http_get(base + 202, "/metrics").expect("metrics").1).expect("utf-8");
    let served = metric(&m2, "streamspace_shards_served_total").expect("shards served");
    assert!(served >= 9.0, "{m2}");
    assert!(
        metric(&m2, "streamspace_receipts_accepted_total").unwrap_or(0.0) >= 1.0,
        "{m2}"
    );
    assert!(
        m2.contains("streamspace_peer_bytes_sent_total{peer=\""),
        "{m2}"
    );
    let m3 =
        String::from_utf8(http_get(base + 203, "/metrics").expect("metrics").1).expect("utf-8");
    assert!(
        metric(&m3, "streamspace_cache_misses_total").unwrap_or(0.0) >= 9.0,
        "{m3}"
    );
    assert!(
        metric(&m3, "streamspace_receipts_sent_total").unwrap_or(0.0) >= 1.0,
        "{m3}"
    );

    // The period ends, node 2 posts its receipts, node 1 settles the period on the ledger.
    wait_for("the settlement", Duration::from_secs(60), || {
        std::fs::read_to_string(dir.join("node-1.log")).is_ok_and(|l| {
            l.lines()
                .any(|l| l.contains("period settled") && !l.contains("receipts=0"))
        })
    });

    // Node 2's operator API: the closed network's allowlist, paid service, and what it
    // earned by the receipts it holds.
    let status = api(base + 52, "streamspace/status");
    assert_eq!(status["Allowlist"]["Peers"], 3, "{status}");
    assert_eq!(status["Allowlist"]["Expired"], false, "{status}");
    assert!(
        status["Payments"]["Receipts"]["Accepted"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{status}"
    );
    assert!(
        !status["Settlement"]["CollateralLockedFor"].is_null(),
        "{status}"
    );
    let earned = api(base + 52, "streamspace/earnings");
    assert!(
        earned["Periods"]
            .as_array()
            .expect("periods")
            .iter()
            .any(|p| p["Shards"].as_u64().is_some_and(|s| s >= 9)
                && p["Tinybars"].as_u64().is_some_and(|t| t >= 90_000)),
        "{earned}"
    );

    // SIGTERM: every node exits cleanly. The members stop first, posting what they hold
    // through node 1's ledger; node 1, which keeps the ledger, stops last (stopped first, it
    // would leave the others nowhere to post).
    for i in [2usize, 1, 0] {
        let c = &mut nodes.0[i];
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let status = c.wait().expect("wait");
        let log =
            std::fs::read_to_string(dir.join(format!("node-{}.log", i + 1))).unwrap_or_default();
        assert!(
            status.success(),
            "node {} exited with {status}:\n{log}",
            i + 1
        );
        assert!(log.contains("stopped"), "node {}:\n{log}", i + 1);
    }

    // What node 2 earned, per period: 9 shards at 10,000 tinybars.
    let out = Command::new(BIN)
        .args(["node", "earnings", "--config"])
        .arg(dir.join("node-2.toml"))
        .output()
        .expect("earnings");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let earned: u64 = text
        .lines()
        .skip(1)
        .map(|l| {
            l.rsplit(',')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("tinybars")
        })
        .sum();
    assert!(earned >= 9 * 10_000, "{text}");
}

#[test]
fn a_bad_configuration_is_refused_with_its_place() {
    let tmp = tempfile::tempdir().expect("dir");
    let cfg = tmp.path().join("node.toml");
    std::fs::write(&cfg, "[node]\nrepo = \"r\"\ntier = \"gold\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["node", "run", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.toml") && err.contains("tier"), "{err}");
}
