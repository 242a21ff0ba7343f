//! `streamspace testnet`: writes everything a closed, paid network of `streamspace node`s on
//! this machine needs: an embedded ledger with an account for each node, a clearing account and
//! a settlement topic; node identities; the member list; an allowlist signed by an operator
//! key; one configuration file per node. Node 1 is a Tier-1 node that keeps the ledger, serves
//! it over Hedera's gRPC API to the others and settles each period.
// A build without Hedera support refuses the command (see `NEEDS_HEDERA`), leaving the rest
// of this module unused there.
#![cfg_attr(not(feature = "hedera"), allow(dead_code, unused_imports))]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use ed25519_dalek::SigningKey;
use streamspace_ledger::local::TREASURY;
use streamspace_ledger::{
    Ledger, LedgerExt, LocalLedger, Operator, PublicKey, SystemClock, Transaction, TransactionId,
    TxKind,
};
use streamspace_transport::allowlist::SignedAllowlist;

/// Options of `streamspace testnet`.
#[derive(clap::Args)]
pub(crate) struct TestnetArgs {
    /// Directory to write (created; must be empty if it exists).
    #[arg(long)]
    dir: PathBuf,
    /// Nodes in the network.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Node i listens on port base + i, its gateway on base + 100 + i, its metrics on
    /// base + 200 + i; node 1 serves the ledger on base + 300 and base + 301.
    #[arg(long, default_value_t = 40000)]
    base_port: u16,
    /// Settlement period, seconds.
    #[arg(long, default_value_t = 3600)]
    period_secs: u64,
    /// Price of a shard, tinybars.
    #[arg(long, default_value_t = 10_000)]
    price_per_shard: u64,
}

const BALANCE: i64 = 100_000_000_000;
const COLLATERAL: u64 = 2_000_000_000;

fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    crate::write_secret(path, hex::encode(key.to_bytes()).as_bytes())
}

/// Why a build without Hedera support writes no test network: node 1 would serve the embedded
/// ledger to the others over Hedera's gRPC API, which such a build lacks, so the configurations
/// it wrote could not run.
#[cfg(not(feature = "hedera"))]
const NEEDS_HEDERA: &str = "streamspace testnet writes a network whose nodes share node 1's \
     ledger over Hedera's gRPC API, which this build lacks: build with `--features hedera` \
     (cargo run --release -p streamspace-cli --features hedera -- testnet ...)";

pub(crate) async fn run(args: &TestnetArgs) -> Result<()> {
    #[cfg(not(feature = "hedera"))]
    anyhow::bail!("{NEEDS_HEDERA} (asked for {} nodes)", args.nodes);
    #[cfg(feature = "hedera")]
    run_hedera(args).await
}

#[cfg(feature = "hedera")]
async fn run_hedera(args: &TestnetArgs) -> Result<()> {
    ensure!(
        (1..=99).contains(&args.nodes),
        "--nodes: from 1 to 99 nodes"
    );
    ensure!(
        u32::from(args.base_port) + 301 <= u32::from(u16::MAX),
        "--base-port too high for the ports it needs"
    );
    ensure!(args.period_secs > 0, "--period-secs must be positive");
    let dir = &args.dir;
    if dir.exists() {
        ensure!(
            std::fs::read_dir(dir)?.next().is_none(),
            "{} is not empty",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    // The ledger, its treasury, the clearing account and the settlement topic.
    let treasury_key = SigningKey::generate(&mut rand::rngs::OsRng);
    write_key(&dir.join("treasury.key"), &treasury_key)?;
    let ledger = LocalLedger::open(
        dir.join("ledger.redb"),
        PublicKey::from(&treasury_key),
        Arc::new(SystemClock),
    )?;
    let treasury = Operator {
        account: TREASURY,
        key: treasury_key.clone(),
    };
    let clearing_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let clearing = ledger
        .create_account(&treasury, PublicKey::from(&clearing_key), BALANCE)
        .await?;
    write_key(&dir.join("clearing.key"), &clearing_key)?;
    let tx = Transaction::new(
        TransactionId::generate(clearing, ledger.now()),
        TxKind::CreateTopic {
            memo: "streamspace settlement".into(),
            submit_key: None,
        },
    );
    let topic = ledger
        .execute(tx, &[&clearing_key])
        .await?
        .topic
        .context("topic receipt without a topic")?;

    // The nodes: identity, account, membership.
    let mut members = String::new();
    let mut peers = Vec::new();
    let mut accounts = Vec::new();
    for i in 1..=args.nodes {
        let repo = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&repo)?;
        let identity = streamspace_transport::identity::load_or_create(&repo.join("identity"))?;
        let peer = identity.public().to_peer_id();
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        write_key(&repo.join("account.key"), &key)?;
        let account = ledger
            .create_account(&treasury, PublicKey::from(&key), BALANCE)
            .await?;
        writeln!(
            members,
            "[[member]]\npeer = \"{peer}\"\naccount = \"{account}\"\nkey = \"{}\"\ncollateral = {COLLATERAL}\n",
            hex::encode(key.verifying_key().to_bytes())
        )?;
        peers.push(peer);
        accounts.push(account);
    }
    std::fs::write(dir.join("members.toml"), members)?;
    let operator = streamspace_transport::ed25519::Keypair::generate();
    let list = SignedAllowlist::sign(
        &operator,
        "testnet",
        SystemTime::now() + Duration::from_secs(365 * 86_400),
        peers.iter().copied(),
    );
    std::fs::write(dir.join("allowlist.bin"), list.encode())?;
    crate::write_secret(
        &dir.join("operator.key"),
        hex::encode(operator.secret().as_ref()).as_bytes(),
    )?;
    drop(ledger);

    let port = |offset: u16| args.base_port + offset;
    let ledger_node = format!("127.0.0.1:{}", port(300));
    let ledger_mirror = format!("127.0.0.1:{}", port(301));
    for i in 1..=args.nodes {
        let idx = usize::from(i - 1);
        let bootstrap = if i == 1 {
            String::new()
        } else {
            format!("\"/ip4/127.0.0.1/tcp/{}/p2p/{}\"", port(1), peers[0])
        };
        let ledger_section = if i == 1 {
            format!(
                "backend = \"embedded\"\npath = \"ledger.redb\"\ntreasury = \"{}\"\nserve = \"{ledger_node}\"\nserve_mirror = \"{ledger_mirror}\"",
                hex::encode(treasury_key.verifying_key().to_bytes())
            )
        } else {
            format!("backend = \"hedera\"\nnode = \"{ledger_node}\"\nmirror = \"{ledger_mirror}\"")
        };
        let clearing_line = if i == 1 {
            "clearing_key_file = \"clearing.key\"\n"
        } else {
            ""
        };
        let text = format!(
            "# Node {i} of a StreamSpace test network (written by `streamspace testnet`).\n\
             [node]\nrepo = \"node-{i}\"\nnetwork = \"testnet\"\n\
             listen = [\"/ip4/127.0.0.1/tcp/{}\"]\nbootstrap = [{bootstrap}]\n\
             tier = \"{}\"\nquota = 1_073_741_824\n\
             gateway = \"127.0.0.1:{}\"\nmetrics = \"127.0.0.1:{}\"\n\n\
             [allowlist]\noperator = \"{}\"\nfile = \"allowlist.bin\"\n\n\
             [ledger]\n{ledger_section}\n\n\
             [payments]\naccount = \"{}\"\nkey_file = \"node-{i}/account.key\"\n\
             price_per_shard = {}\nperiod_secs = {}\ncollateral = {COLLATERAL}\n\
             members = \"members.toml\"\nclearing = \"{clearing}\"\ntopic = \"{topic}\"\n\
             ledger = \"local:{}\"\n{clearing_line}",
            port(i),
            if i == 1 { "tier1" } else { "edge" },
            port(100 + i),
            port(200 + i),
            hex::encode(operator.public().to_bytes()),
            accounts[idx],
            args.price_per_shard,
            args.period_secs,
            hex::encode(treasury_key.verifying_key().to_bytes()),
        );
        std::fs::write(dir.join(format!("node-{i}.toml")), text)?;
    }
    println!(
        "wrote a {}-node network to {}: start node 1 first (it keeps the ledger), then the others:",
        args.nodes,
        dir.display()
    );
    for i in 1..=args.nodes {
        println!(
            "  streamspace node run --config {}   # gateway http://127.0.0.1:{}/ipfs/<cid>, metrics http://127.0.0.1:{}/metrics",
            dir.join(format!("node-{i}.toml")).display(),
            port(100 + i),
            port(200 + i)
        );
    }
    Ok(())
}

#[cfg(all(test, not(feature = "hedera")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_build_without_hedera_writes_no_network_it_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let args = TestnetArgs {
            dir: dir.path().join("net"),
            nodes: 3,
            base_port: 40000,
            period_secs: 3600,
            price_per_shard: 1,
        };
        let e = run(&args).await.unwrap_err();
        assert!(e.to_string().contains("--features hedera"), "{e}");
        assert!(!args.dir.exists());
    }
}
