//! `streamspace node`: a long-running node from a TOML file (see [`config::FileConfig`]) and
//! flags.
//!
//! It serves its repository's block store to the network, optionally through an HTTP gateway;
//! with `[payments]`, it is paid for every shard it serves and pays for every shard it
//! receives, through signed cumulative receipts carried over the exchange protocol and checked
//! by the metering hook (a payer gets at most a few shards ahead of its newest receipt). At the
//! end of each period the node journals its newest receipts, posts them to the network's
//! settlement topic and logs what it earned; the node holding the clearing key reads the topic
//! and settles each period that ended on the ledger. On Ctrl-C or SIGTERM the node stops
//! serving, journals and posts what it holds, and exits.
//!
//! Books are per period and each node rolls its own on its clock, once a second: a receipt
//! that reaches its payee in the payee's next period is refused, so shards served in the
//! second around a boundary may go unpaid (a grace for the previous period is not built).

pub(crate) mod config;
mod metrics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
#[cfg(feature = "hedera")]
use streamspace_ledger::hedera::server::LoopbackNode;
#[cfg(feature = "hedera")]
use streamspace_ledger::hedera::{HederaLedger, Network};
use streamspace_ledger::{
    AccountId, Ledger, LocalLedger, Operator, PublicKey, SystemClock, TopicId,
};
use streamspace_payments::book::{Allowlist, CreditTier, PayerTab, Price, ReceiptBook};
use streamspace_payments::receipt::SignedReceipt;
use streamspace_payments::settle::{
    Journal, RECEIPTS_TAG, Settler, parse_receipts_message, receipts_messages,
};
use streamspace_shard::store::DiskStore;
use streamspace_transport::allowlist::SignedAllowlist;
use streamspace_transport::meter::{Decision, Free, Meter};
use streamspace_transport::{Admission, Node, PeerId};
use tokio::sync::watch;

use config::{FileConfig, LedgerSection, Member, TierName};

/// How often the node journals its newest receipts: a crash loses at most the receipts of that
/// long (the next cumulative receipt from the same payer covers them); journaled periods that
/// were never posted are posted at the next start.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// `streamspace node`.
#[derive(clap::Subcommand)]
pub(crate) enum NodeCommand {
    /// Run a node until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// What the node earned, period by period (from its journal).
    Earnings {
        /// The node's configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Flags override the file.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The node's configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// Listen addresses (replacing the file's).
    #[arg(long)]
    listen: Vec<String>,
    /// Bootstrap peers (added to the file's).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// Tier.
    #[arg(long)]
    tier: Option<TierName>,
    /// Bytes of disk offered.
    #[arg(long)]
    quota: Option<u64>,
    /// HTTP gateway address.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Prometheus metrics address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

pub(crate) async fn run(cmd: &NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Run(args) => run_node(args).await,
        NodeCommand::Earnings { config } => earnings(config),
    }
}

fn load(path: &Path) -> Result<(FileConfig, PathBuf)> {
    let cfg: FileConfig = config::read_toml(path)?;
    let base = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok((cfg, base))
}

/// The current settlement period.
fn period_now(period_secs: u64) -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs / period_secs.max(1)
}

fn earnings(path: &Path) -> Result<()> {
    let (cfg, base) = load(path)?;
    let p = cfg
        .payments
        .context("the configuration has no [payments] section")?;
    let me = config::account("payments.account", &p.account)?;
    let repo = config::resolve(&base, &cfg.node.repo);
    let journal = Journal::open(repo.join("journal.redb"))?;
    println!("period,start_utc_s,payers,shards,tinybars");
    for period in journal.periods()? {
        let receipts: Vec<SignedReceipt> = journal
            .receipts(period)?
            .into_iter()
            .filter(|r| r.body.payee == me)
            .collect();
        let shards: u64 = receipts.iter().map(|r| r.body.shards).sum();
        let earned: u64 = receipts.iter().map(|r| r.body.amount).sum();
        println!(
            "{period},{},{},{shards},{earned}",
            period * p.period_secs,
            receipts.len()
        );
    }
    Ok(())
}

/// Books of the current period: what peers owe this node, and what it owes them.
struct Books {
    period: u64,
    book: ReceiptBook,
    tab: PayerTab,
}

/// The metering hook of a paid node.
pub(crate) struct Paid {
    me: Operator,
    price: Price,
    max_ahead: u64,
    members: HashMap<PeerId, Member>,
    books: Mutex<Books>,
    outbox: tokio::sync::mpsc::Sender<(PeerId, Bytes)>,
    pub(crate) receipts_accepted: AtomicU64,
    pub(crate) receipts_refused: AtomicU64,
    pub(crate) receipts_sent: AtomicU64,
}

impl Paid {
    fn books(&self, period: u64) -> Result<Books> {
        let terms = streamspace_payments::book::Terms {
            price: self.price,
            ..Default::default()
        };
        let allowlist = Allowlist::closed(self.members.values().map(|m| {
            (
                m.account,
                CreditTier {
                    max_credit: m.collateral,
                    max_ahead: self.max_ahead,
                },
            )
        }));
        let mut book = ReceiptBook::with_allowlist(self.me.account, period, terms, allowlist);
        let mut tab = PayerTab::new(self.me.account, self.me.key.clone(), period);
        for m in self
            .members
            .values()
            .filter(|m| m.account != self.me.account)
        {
            book.admit(m.account, m.key, m.collateral)?;
            tab.agree(m.account, self.price);
        }
        Ok(Books { period, book, tab })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What peers owe this node in the current period, by the newest receipts.
    pub(crate) fn earned_now(&self) -> (u64, u64) {
        let b = self.lock();
        b.book
            .newest()
            .fold((0, 0), |(t, s), r| (t + r.body.amount, s + r.body.shards))
    }
}

impl Meter for Paid {
    fn before_send(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) -> Decision {
        let Some(m) = self.members.get(peer) else {
            return Decision::Refuse;
        };
        match self.lock().book.serve(m.account, bytes as u64) {
            Ok(()) => Decision::Serve,
            // A receipt is due (or the credit is spent): the peer asks again shortly.
            Err(_) => Decision::Pause { retry_after_ms: 20 },
        }
    }

    fn received(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) {
        let Some(m) = self.members.get(peer) else {
            return;
        };
        let receipt = {
            let mut b = self.lock();
            b.tab.received(m.account, bytes as u64);
            b.tab.sign(m.account)
        };
        // A full queue drops a receipt harmlessly: the next one is cumulative.
        if self
            .outbox
            .try_send((*peer, Bytes::copy_from_slice(&receipt.encode())))
            .is_ok()
        {
            self.receipts_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn payment(&self, peer: &PeerId, data: &[u8]) -> bool {
        let Some(m) = self.members.get(peer) else {
            return false;
        };
        let mut b = self.lock();
        let ok = match b.book.accept(data) {
            Ok(r) => r.body.payer == m.account,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "receipt refused");
                false
            }
        };
        drop(b);
        if ok {
            self.receipts_accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            self.receipts_refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// The embedded ledger served over Hedera's gRPC API.
#[cfg(feature = "hedera")]
type Served = LoopbackNode;
#[cfg(not(feature = "hedera"))]
type Served = std::convert::Infallible;

/// The ledger backends a node runs on.
enum Backend {
    Embedded(LocalLedger, Option<Served>),
    #[cfg(feature = "hedera")]
    Hedera(HederaLedger),
}

#[cfg(not(feature = "hedera"))]
const NO_HEDERA: &str =
    "this program was built without Hedera support: build it with `--features hedera`";

async fn open_ledger(
    section: &LedgerSection,
    base: &Path,
    repo: &Path,
    operator: Option<&Operator>,
) -> Result<Backend> {
    match section {
        LedgerSection::Embedded {
            path,
            treasury,
            serve,
            serve_mirror,
        } => {
            let path = path
                .as_ref()
                .map_or_else(|| repo.join("ledger.redb"), |p| config::resolve(base, p));
            let treasury = match treasury {
                Some(t) => PublicKey(config::hex32("ledger.treasury", t)?),
                None => {
                    // A new embedded ledger: its genesis key lives in the repository.
                    let file = repo.join("treasury.key");
                    if !file.exists() {
                        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
                        crate::write_secret(&file, hex::encode(key.to_bytes()).as_bytes())?;
                    }
                    PublicKey::from(&config::read_key(&file)?)
                }
            };
            let ledger = LocalLedger::open(&path, treasury, Arc::new(SystemClock))
                .with_context(|| format!("opening the embedded ledger {}", path.display()))?;
            let served = match serve {
                #[cfg(feature = "hedera")]
                Some(addr) => {
                    let mirror = serve_mirror.context(
                        "ledger.serve needs ledger.serve_mirror (the mirror node's address)",
                    )?;
                    let n = LoopbackNode::bind(ledger.clone(), *addr, mirror).await?;
                    tracing::info!(node = %n.node, mirror = %n.mirror, "serving the embedded ledger over Hedera's gRPC API");
                    Some(n)
                }
                #[cfg(not(feature = "hedera"))]
                Some(_) => {
                    let _ = serve_mirror;
                    bail!("ledger.serve: {NO_HEDERA}")
                }
                None => None,
            };
            Ok(Backend::Embedded(ledger, served))
        }
        #[cfg(not(feature = "hedera"))]
        LedgerSection::Hedera { .. } => {
            let _ = operator;
            bail!("ledger.backend = \"hedera\": {NO_HEDERA}")
        }
        #[cfg(feature = "hedera")]
        LedgerSection::Hedera {
            network,
            node,
            mirror,
        } => {
            let operator = operator.context(
                "the Hedera backend needs [payments] account and key_file (the operator)",
            )?;
            let ledger = match (network.as_deref(), node, mirror) {
                (_, Some(n), Some(m)) => HederaLedger::loopback(*n, *m, operator)?,
                (Some("mainnet"), None, None) => HederaLedger::new(Network::Mainnet, operator)?,
                (Some("testnet"), None, None) => HederaLedger::new(Network::Testnet, operator)?,
                (Some("previewnet"), None, None) => {
                    HederaLedger::new(Network::Previewnet, operator)?
                }
                _ => bail!(
                    "ledger: give network = \"mainnet\" | \"testnet\" | \"previewnet\", or node and mirror addresses"
                ),
            };
            Ok(Backend::Hedera(ledger))
        }
    }
}

async fn run_node(args: &RunArgs) -> Result<()> {
    let (mut cfg, base) = load(&args.config)?;
    if !args.listen.is_empty() {
        cfg.node.listen = args.listen.clone();
    }
    cfg.node.bootstrap.extend(args.bootstrap.iter().cloned());
    if let Some(t) = args.tier {
        cfg.node.tier = t;
    }
    cfg.node.quota = args.quota.or(cfg.node.quota);
    cfg.node.gateway = args.gateway.or(cfg.node.gateway);
    cfg.node.metrics = args.metrics.or(cfg.node.metrics);

    let repo = config::resolve(&base, &cfg.node.repo);
    std::fs::create_dir_all(&repo).with_context(|| format!("creating {}", repo.display()))?;
    let operator = match &cfg.payments {
        Some(p) => Some(Operator {
            account: config::account("payments.account", &p.account)?,
            key: config::read_key(&config::resolve(&base, &p.key_file))?,
        }),
        None => None,
    };
    let backend = if cfg.payments.is_some()
        || matches!(cfg.ledger, LedgerSection::Embedded { serve: Some(_), .. })
    {
        Some(open_ledger(&cfg.ledger, &base, &repo, operator.as_ref()).await?)
    } else {
        None
    };
    match backend {
        Some(Backend::Embedded(l, served)) => {
            let r = serve_node(&cfg, &base, &repo, operator, Some(l)).await;
            #[cfg(feature = "hedera")]
            if let Some(s) = served {
                s.stop().await;
            }
            #[cfg(not(feature = "hedera"))]
            let _ = served;
            r
        }
        #[cfg(feature = "hedera")]
        Some(Backend::Hedera(l)) => serve_node(&cfg, &base, &repo, operator, Some(l)).await,
        None => serve_node::<LocalLedger>(&cfg, &base, &repo, None, None).await,
    }
}

/// Settlement state of a paid node.
struct Settlement<L> {
    ledger: L,
    me: Operator,
    topic: TopicId,
    clearing: AccountId,
    collateral: u64,
    period_secs: u64,
    journal: Journal,
    repo: PathBuf,
    /// What the last closed period earned (for the metrics).
    earned_last: Arc<AtomicU64>,
    /// The clearing role: its settler, the members' collateral and the periods closed.
    clearing_role: Option<Clearing<L>>,
}

struct Clearing<L> {
    settler: Settler<L>,
    journal: Journal,
    collateral: BTreeMap<AccountId, u64>,
    keys: HashMap<AccountId, PublicKey>,
    next_sequence: u64,
    closed: BTreeSet<u64>,
}

async fn serve_node<L: Ledger + Clone + Send + Sync + 'static>(
    cfg: &FileConfig,
    base: &Path,
    repo: &Path,
    operator: Option<Operator>,
    ledger: Option<L>,
) -> Result<()> {
    let store = DiskStore::open(repo.join("blocks.redb"), cfg.node.quota)
        .with_context(|| format!("opening the block store in {}", repo.display()))?;
    let keypair = streamspace_transport::identity::load_or_create(&repo.join("identity"))
        .context("loading the node's identity")?;
    let mut tc = streamspace_transport::Config::new(keypair);
    tc.network = cfg.node.network.clone();
    tc.tier = cfg.node.tier.into();
    if !cfg.node.listen.is_empty() {
        tc.listen = config::multiaddrs("node.listen", &cfg.node.listen)?;
    }
    tc.bootstrap = config::multiaddrs("node.bootstrap", &cfg.node.bootstrap)?;
    tc.capacity = cfg
        .node
        .quota
        .map_or(0, |q| q.saturating_sub(store.used_bytes()));
    if let Some(a) = &cfg.allowlist {
        let operator = libp2p_ed25519(&config::hex32("allowlist.operator", &a.operator)?)?;
        let file = config::resolve(base, &a.file);
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let list = SignedAllowlist::decode(&bytes)
            .with_context(|| format!("allowlist {}", file.display()))?;
        list.verify(&operator, &cfg.node.network, SystemTime::now())
            .with_context(|| format!("allowlist {}", file.display()))?;
        tc.admission = Some(Admission { operator, list });
    }

    // Payments: the metering hook, and the courier taking receipts to their payees.
    let (outbox, mut receipts_out) = tokio::sync::mpsc::channel::<(PeerId, Bytes)>(1024);
    let mut settlement = None;
    let earned_last = Arc::new(AtomicU64::new(0));
    let paid = match (&cfg.payments, &operator, &ledger) {
        (Some(p), Some(me), Some(ledger)) => {
            let members = config::read_members(&config::resolve(base, &p.members))?;
            let paid = Arc::new(Paid {
                me: me.clone(),
                price: Price::per_shard(p.price_per_shard),
                max_ahead: p.max_ahead,
                members: members.clone(),
                books: Mutex::new(Books {
                    period: 0,
                    book: ReceiptBook::new(me.account, 0, Default::default()),
                    tab: PayerTab::new(me.account, me.key.clone(), 0),
                }),
                outbox,
                receipts_accepted: AtomicU64::new(0),
                receipts_refused: AtomicU64::new(0),
                receipts_sent: AtomicU64::new(0),
            });
            *paid.lock() = paid.books(period_now(p.period_secs))?;
            let topic = config::topic("payments.topic", &p.topic)?;
            let clearing_account = config::account("payments.clearing", &p.clearing)?;
            let clearing_role = match &p.clearing_key_file {
                Some(k) => {
                    let clearing = Operator {
                        account: clearing_account,
                        key: config::read_key(&config::resolve(base, k))?,
                    };
                    let journal = Journal::open(repo.join("clearing.redb"))?;
                    Some(Clearing {
                        settler: Settler::new(ledger.clone(), journal.clone(), clearing, topic),
                        journal,
                        collateral: members
                            .values()
                            .map(|m| (m.account, m.collateral))
                            .collect(),
                        keys: members.values().map(|m| (m.account, m.key)).collect(),
                        next_sequence: 1,
                        closed: BTreeSet::new(),
                    })
                }
                None => None,
            };
            settlement = Some(Settlement {
                ledger: ledger.clone(),
                me: me.clone(),
                topic,
                clearing: clearing_account,
                collateral: p.collateral,
                period_secs: p.period_secs.max(1),
                journal: Journal::open(repo.join("journal.redb"))?,
                repo: repo.to_owned(),
                earned_last: earned_last.clone(),
                clearing_role,
            });
            Some(paid)
        }
        _ => None,
    };
    let meter: Arc<dyn Meter> = match &paid {
        Some(p) => p.clone(),
        None => Arc::new(Free),
    };
    let roots = store.pinned_roots().await?;
    let node = Node::start(tc, Arc::new(store), meter).await?;
    // The DHT learns what this node holds: one provider record per pinned root.
    for root in &roots {
        if let Err(e) = node.provide(*root).await {
            tracing::warn!(%root, error = %e, "announcing a pinned root");
        }
    }
    let courier = node.clone();
    tokio::spawn(async move {
        // Up to 16 receipts on their way at once, so that one slow payee delays no other. A
        // receipt lost (or overtaken) is superseded by the next, which is cumulative.
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        while let Some((peer, receipt)) = receipts_out.recv().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let courier = courier.clone();
            tokio::spawn(async move {
                let _ = courier.pay(peer, receipt).await;
                drop(permit);
            });
        }
    });
    tracing::info!(
        peer = %node.peer_id(),
        addrs = ?node.dialable_addrs().await.unwrap_or_default(),
        tier = ?cfg.node.tier,
        network = %cfg.node.network,
        "node started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let cache = Arc::new(crate::gateway::CacheStats::default());
    let mut servers = Vec::new();
    if let Some(addr) = cfg.node.gateway {
        let app = crate::gateway::router(node.clone(), cache.clone());
        servers.push(serve_http(addr, "gateway", app, stop_rx.clone()).await?);
    }
    if let Some(addr) = cfg.node.metrics {
        let app = metrics::router(metrics::Sources {
            node: node.clone(),
            paid: paid.clone(),
            cache: cache.clone(),
            earned_last: earned_last.clone(),
        });
        servers.push(serve_http(addr, "metrics (/metrics)", app, stop_rx.clone()).await?);
    }

    if let (Some(s), Some(_)) = (&settlement, &paid) {
        let now = period_now(s.period_secs);
        post_unposted(s, now).await;
        lock_collateral_once(s, now).await;
    }
    let mut tick = tokio::time::interval(FLUSH_EVERY.min(Duration::from_secs(1)));
    let mut last_flush = tokio::time::Instant::now();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let (Some(s), Some(paid)) = (&mut settlement, &paid) else {
            continue;
        };
        if last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = tokio::time::Instant::now();
            if let Err(e) = flush(s, paid) {
                tracing::error!(error = %e, "journaling receipts");
            }
        }
        let now = period_now(s.period_secs);
        let rolled = {
            let mut b = paid.lock();
            if b.period == now {
                None
            } else {
                match paid.books(now) {
                    Ok(fresh) => Some(std::mem::replace(&mut *b, fresh)),
                    Err(e) => {
                        tracing::error!(error = %e, "opening the new period's books");
                        None
                    }
                }
            }
        };
        if let Some(old) = rolled {
            close_books(s, old).await;
            lock_collateral_once(s, now).await;
        }
        if let Some(c) = &mut s.clearing_role {
            clear(c, &s.ledger, s.topic, s.period_secs).await;
        }
    }

    // Shut down: stop serving, then journal and post what this node holds.
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Open HTTP answers (a long CAR, a video) get a few seconds to finish.
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    node.shutdown().await;
    if let (Some(s), Some(paid)) = (&mut settlement, &paid) {
        let period = paid.lock().period;
        let books = std::mem::replace(&mut *paid.lock(), paid.books(period)?);
        close_books(s, books).await;
        if let Some(c) = &mut s.clearing_role {
            clear(c, &s.ledger, s.topic, s.period_secs).await;
        }
    }
    let stats = node.stats();
    tracing::info!(
        shards_served = stats.shards_served,
        bytes_served = stats.bytes_served,
        shards_received = stats.shards_received,
        "stopped"
    );
    Ok(())
}

/// Serves `app` on `addr` until `stop` turns true.
async fn serve_http(
    addr: SocketAddr,
    what: &str,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} endpoint to {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "{what} listening");
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    }))
}

fn libp2p_ed25519(bytes: &[u8; 32]) -> Result<streamspace_transport::ed25519::PublicKey> {
    streamspace_transport::ed25519::PublicKey::try_from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("allowlist.operator: not an Ed25519 public key: {e}"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn flush<L>(s: &Settlement<L>, paid: &Paid) -> Result<()> {
    let newest: Vec<SignedReceipt> = paid.lock().book.newest().copied().collect();
    if !newest.is_empty() {
        s.journal.record(&newest)?;
    }
    Ok(())
}

/// Journals a period's newest receipts, posts them to the settlement topic and logs what the
/// node earned.
async fn close_books<L: Ledger>(s: &Settlement<L>, books: Books) {
    let receipts: Vec<SignedReceipt> = books.book.newest().copied().collect();
    if let Err(e) = s.journal.record(&receipts) {
        tracing::error!(error = %e, period = books.period, "journaling receipts");
    }
    let earned: u64 = receipts.iter().map(|r| r.body.amount).sum();
    let shards: u64 = receipts.iter().map(|r| r.body.shards).sum();
    s.earned_last.store(earned, Ordering::Relaxed);
    tracing::info!(
        period = books.period,
        payers = receipts.len(),
        shards,
        earned_tinybars = earned,
        "period closed"
    );
    post(s, books.period, &receipts).await;
}

/// Posts a period's receipts to the settlement topic, and notes the period as posted.
async fn post<L: Ledger>(s: &Settlement<L>, period: u64, receipts: &[SignedReceipt]) {
    for m in receipts_messages(receipts) {
        if let Err(e) = s.ledger.submit_message(&s.me, s.topic, m, None).await {
            tracing::error!(error = %e, period, "posting receipts for settlement");
            return;
        }
    }
    let mark = s.repo.join("receipts-posted");
    let last = read_mark(&mark);
    if last.is_none_or(|l| l < period)
        && let Err(e) = std::fs::write(&mark, period.to_string())
    {
        tracing::error!(error = %e, "recording the receipts posted");
    }
}

fn read_mark(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Posts the journaled receipts of ended periods that were never posted (the node stopped
/// without closing them).
async fn post_unposted<L: Ledger>(s: &Settlement<L>, now: u64) {
    let posted = read_mark(&s.repo.join("receipts-posted"));
    let periods = match s.journal.periods() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the journal");
            return;
        }
    };
    for period in periods
        .into_iter()
        .filter(|p| *p < now && posted.is_none_or(|l| *p > l))
    {
        match s.journal.receipts(period) {
            Ok(all) => {
                let mine: Vec<SignedReceipt> = all
                    .into_iter()
                    .filter(|r| r.body.payee == s.me.account)
                    .collect();
                tracing::info!(period, receipts = mine.len(), "posting an unposted period");
                post(s, period, &mine).await;
            }
            Err(e) => tracing::error!(error = %e, period, "reading the journal"),
        }
    }
}

/// Locks this node's collateral for `period` once (remembered in the repository).
async fn lock_collateral_once<L: Ledger>(s: &Settlement<L>, period: u64) {
    let mark = s.repo.join("collateral-locked");
    let last = read_mark(&mark);
    if last.is_some_and(|l| l >= period) || s.collateral == 0 {
        return;
    }
    match streamspace_payments::settle::lock_collateral(
        &s.ledger,
        &s.me,
        s.clearing,
        period,
        s.collateral,
    )
    .await
    {
        Ok(_) => {
            if let Err(e) = std::fs::write(&mark, period.to_string()) {
                tracing::error!(error = %e, "recording the collateral lock");
            }
            tracing::info!(period, tinybars = s.collateral, "collateral locked");
        }
        Err(e) => tracing::error!(error = %e, period, "locking collateral"),
    }
}

/// The clearing role: reads receipts from the settlement topic and settles ended periods.
async fn clear<L: Ledger>(c: &mut Clearing<L>, ledger: &L, topic: TopicId, period_secs: u64) {
    match ledger.topic_messages(topic, c.next_sequence, 1000).await {
        Ok(messages) => {
            for m in messages {
                c.next_sequence = c.next_sequence.max(m.sequence + 1);
                if !m.message.starts_with(RECEIPTS_TAG) {
                    continue;
                }
                match parse_receipts_message(&m.message) {
                    Ok(rs) => {
                        let known: Vec<SignedReceipt> = rs
                            .into_iter()
                            .filter(|r| {
                                c.keys.get(&r.body.payer) == Some(&r.payer_key)
                                    && r.body.period <= period_now(period_secs)
                                    && !c.closed.contains(&r.body.period)
                            })
                            .collect();
                        if let Err(e) = c.journal.record(&known) {
                            tracing::error!(error = %e, "journaling receipts for settlement");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sequence = m.sequence, error = %e, "bad receipts message")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the settlement topic"),
    }
    // A period is settled once its members had time to post their receipts.
    let grace = (period_secs / 4).clamp(3, 300);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let periods = match c.journal.periods() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the clearing journal");
            return;
        }
    };
    for period in periods.into_iter().filter(|p| {
        p.checked_add(1)
            .and_then(|n| n.checked_mul(period_secs))
            .and_then(|end| end.checked_add(grace))
            .is_some_and(|ready| ready <= now)
    }) {
        if c.closed.contains(&period) {
            continue;
        }
        match c.settler.close(period, &c.collateral).await {
            Ok(r) => {
                c.closed.insert(period);
                tracing::info!(
                    period,
                    receipts = r.receipts,
                    transfers = r.transfers,
                    paid_out = r.paid_out,
                    fees = r.fees,
                    "period settled"
                );
            }
            Err(e) => tracing::error!(error = %e, period, "settling"),
        }
    }
}
