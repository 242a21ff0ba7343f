//! The running node: the metering hook wired to payments, the ledger backends, the loop that
//! journals, posts and settles receipts, and the HTTP endpoints.
//!
//! Books are per period and each node rolls its own on its clock, once a second. Clocks and
//! ticks differ between payer and payee, so a payee's book opens the next period
//! [`receipt_grace`] seconds before it starts and keeps the previous one open as long after
//! its end: a receipt signed on either side of a boundary by a payer up to that far ahead or
//! behind is accepted, and one further off is refused as one for the wrong period.

use std::collections::{HashMap, HashSet};
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
use streamspace_payments::clearing::{Clearing, Member as ClearingMember};
use streamspace_payments::fraud::{FRAUD_TAG, FraudProof};
use streamspace_payments::receipt::{Domain, DomainId, SignedReceipt};
use streamspace_payments::settle::{Journal, receipts_messages};
use streamspace_shard::store::DiskStore;
use streamspace_transport::allowlist::SignedAllowlist;
use streamspace_transport::meter::{Decision, Free, Meter};
use streamspace_transport::{Admission, PeerId};
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, LedgerSection, Member};
use crate::{Node, metrics};

/// How often the node journals its newest receipts: a crash loses at most the receipts of that
/// long (the next cumulative receipt from the same payer covers them); journaled periods that
/// were never posted are posted at the next start.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// What `me` earned, period by period, by the newest receipts in `journal`.
pub(crate) fn earnings(
    journal: &Journal,
    me: AccountId,
    period_secs: u64,
) -> Result<Vec<crate::Earnings>> {
    let mut out = Vec::new();
    for period in journal.periods()? {
        let mut e = crate::Earnings {
            period,
            start_secs: period.saturating_mul(period_secs),
            payers: 0,
            shards: 0,
            tinybars: 0,
        };
        for r in journal
            .receipts(period)?
            .iter()
            .filter(|r| r.body.payee == me)
        {
            e.payers += 1;
            e.shards = e.shards.saturating_add(r.body.shards);
            e.tinybars = e.tinybars.saturating_add(r.body.amount);
        }
        out.push(e);
    }
    Ok(out)
}

/// The settlement marks the node keeps in its repository: the last period whose receipts it
/// posted, and the last period it locked collateral for.
pub(crate) fn settlement_marks(repo: &Path) -> (Option<u64>, Option<u64>) {
    (
        read_mark(&repo.join("receipts-posted")),
        read_mark(&repo.join("collateral-locked")),
    )
}

/// The current settlement period.
pub(crate) fn period_now(period_secs: u64) -> u64 {
    unix_secs() / period_secs.max(1)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How far around a period boundary a payee's book takes receipts of either period (see
/// [`ReceiptBook::tick`]): an eighth of the period, between 1 s and 60 s. It stays well inside
/// the clearing's own grace ([`Clearing::grace_secs`], a quarter of the period, at least 3 s),
/// so the receipts a book takes late are posted before the period is settled.
pub(crate) fn receipt_grace(period_secs: u64) -> u64 {
    (period_secs / 8).clamp(1, 60)
}

/// The books: what peers owe this node (one book across periods, rolled by the clock with
/// [`receipt_grace`]), and what it owes them in the period its own clock says (`tab_period`).
struct Books {
    book: ReceiptBook,
    tab_period: u64,
    tab: PayerTab,
}

/// A period whose receipts a book no longer takes, with the newest receipt of each payer.
type Ended = (u64, Vec<SignedReceipt>);

/// The metering hook of a paid node.
pub(crate) struct Paid {
    domain: DomainId,
    /// Payers struck off by a verified fraud proof: never served again (kept in the
    /// repository's `struck-off` file across restarts).
    struck: Mutex<HashSet<AccountId>>,
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
    /// The meter of `me` in `domain`, its books open for `period`, with the payers struck
    /// off that the repository remembers.
    #[allow(clippy::too_many_arguments)]
    fn new(
        domain: DomainId,
        me: Operator,
        price: Price,
        max_ahead: u64,
        members: HashMap<PeerId, Member>,
        outbox: tokio::sync::mpsc::Sender<(PeerId, Bytes)>,
        repo: &Path,
        period: u64,
    ) -> Result<Self> {
        let paid = Self {
            domain,
            struck: Mutex::new(read_struck_off(&repo.join("struck-off"))),
            books: Mutex::new(Books {
                book: ReceiptBook::new(domain, me.account, 0, Default::default()),
                tab_period: 0,
                tab: PayerTab::new(domain, me.account, me.key.clone(), 0),
            }),
            me,
            price,
            max_ahead,
            members,
            outbox,
            receipts_accepted: AtomicU64::new(0),
            receipts_refused: AtomicU64::new(0),
            receipts_sent: AtomicU64::new(0),
        };
        *paid.lock() = paid.books(period)?;
        Ok(paid)
    }

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
        let mut book =
            ReceiptBook::with_allowlist(self.domain, self.me.account, period, terms, allowlist);
        for m in self
            .members
            .values()
            .filter(|m| m.account != self.me.account)
        {
            book.admit(m.account, m.key, m.collateral)?;
        }
        for payer in self.struck.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            book.expel(*payer);
        }
        Ok(Books {
            book,
            tab_period: period,
            tab: self.tab(period),
        })
    }

    /// What this node owes its peers in `period`, nothing yet.
    fn tab(&self, period: u64) -> PayerTab {
        let mut tab = PayerTab::new(self.domain, self.me.account, self.me.key.clone(), period);
        for m in self
            .members
            .values()
            .filter(|m| m.account != self.me.account)
        {
            tab.agree(m.account, self.price);
        }
        tab
    }

    /// Rolls the books by the clock (`now_secs`, Unix seconds): the tab moves to the period
    /// `now_secs` is in, the book as [`ReceiptBook::tick`] with [`receipt_grace`]. Returns the
    /// period whose grace ended, if one did.
    fn tick(&self, now_secs: u64, period_secs: u64) -> Option<Ended> {
        let period_secs = period_secs.max(1);
        let mut b = self.lock();
        let period = now_secs / period_secs;
        if period > b.tab_period {
            b.tab = self.tab(period);
            b.tab_period = period;
        }
        b.book
            .tick(now_secs, period_secs, receipt_grace(period_secs))
            .closed
    }

    /// Ends the books at shutdown: the period in its grace, then the current one.
    fn close_all(&self) -> Vec<Ended> {
        let mut b = self.lock();
        let mut out: Vec<Ended> = b.book.end_grace().into_iter().collect();
        let (current, _) = b.book.periods();
        b.book.roll(current.saturating_add(1));
        out.extend(b.book.end_grace());
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Strikes `payer` off: it is expelled from the current book and every later one, and
    /// never served again. Returns whether it was news.
    fn strike_off(&self, payer: AccountId) -> bool {
        let fresh = self
            .struck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(payer);
        if fresh {
            self.lock().book.expel(payer);
        }
        fresh
    }

    fn is_struck(&self, payer: AccountId) -> bool {
        self.struck
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&payer)
    }

    /// What peers owe this node in the current period, by the newest receipts.
    pub(crate) fn earned_now(&self) -> (u64, u64) {
        let b = self.lock();
        b.book
            .newest()
            .fold((0, 0), |(t, s), r| (t + r.body.amount, s + r.body.shards))
    }
}

/// The node's replication policy (see [`streamspace_transport::ReplicationPolicy`]).
#[derive(Debug)]
struct Replicate {
    /// In a paid network, the members: only their demand counts, and it admits any root.
    members: Option<std::collections::HashSet<PeerId>>,
    /// The market's listings: a listed root is admitted.
    listings: Arc<crate::listings::Listings>,
}

impl streamspace_transport::ReplicationPolicy for Replicate {
    fn counts(&self, peer: &PeerId) -> bool {
        self.members.as_ref().is_none_or(|m| m.contains(peer))
    }
    fn admits(&self, root: &cid::Cid) -> bool {
        self.members.is_some() || self.listings.lists(root)
    }
}

/// Content roots a node with `quota` bytes may provide on the DHT: one per 64 KiB of quota,
/// at least 65,536, at most 4 Mi.
fn provided_roots_for(quota: Option<u64>) -> usize {
    let per_quota = quota.map_or(0, |q| q / (64 << 10));
    usize::try_from(per_quota)
        .unwrap_or(usize::MAX)
        .clamp(65_536, 4 << 20)
}

impl Meter for Paid {
    fn before_send(&self, peer: &PeerId, _: &cid::Cid, bytes: usize) -> Decision {
        let Some(m) = self.members.get(peer) else {
            return Decision::Refuse;
        };
        let mut b = self.lock();
        if b.book.should_disconnect(m.account) {
            return Decision::Refuse;
        }
        match b.book.serve(m.account, bytes as u64) {
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
        if self.is_struck(m.account) {
            return false;
        }
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

/// The name receipts give the ledger configured in `section` (see
/// [`Domain::ledger`](streamspace_payments::receipt::Domain)): `local:<treasury key>` for the
/// embedded ledger, `hedera:<network or node address>` for Hedera.
pub(crate) fn ledger_name(cfg: &Config, repo: &Path) -> Result<String> {
    if let Some(name) = cfg.payments.as_ref().and_then(|p| p.ledger.clone()) {
        anyhow::ensure!(
            !name.is_empty(),
            "payments.ledger: the ledger's name is empty"
        );
        return Ok(name);
    }
    match &cfg.ledger {
        LedgerSection::Embedded { treasury, .. } => {
            let key = match treasury {
                Some(t) => PublicKey(config::hex32("ledger.treasury", t)?),
                None => PublicKey::from(&config::read_key(&repo.join("treasury.key"))?),
            };
            Ok(format!("local:{}", hex::encode(key.0)))
        }
        LedgerSection::Hedera {
            network: Some(net),
            node: None,
            ..
        } => Ok(format!("hedera:{net}")),
        LedgerSection::Hedera { .. } => bail!(
            "payments.ledger: name the ledger this node reaches at ledger.node (every member of \
             the network must give the same name, e.g. \"local:<treasury key>\")"
        ),
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
                        config::write_secret(&file, hex::encode(key.to_bytes()).as_bytes())
                            .with_context(|| format!("writing key file {}", file.display()))?;
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

/// Starts the node `cfg` describes (relative paths taken from `base`).
pub(crate) async fn start(cfg: Config, base: PathBuf) -> Result<Node> {
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
        || cfg.market.is_some()
        || matches!(cfg.ledger, LedgerSection::Embedded { serve: Some(_), .. })
    {
        Some(open_ledger(&cfg.ledger, &base, &repo, operator.as_ref()).await?)
    } else {
        None
    };
    match backend {
        Some(Backend::Embedded(l, served)) => {
            let name = ledger_name(&cfg, &repo)?;
            start_with(cfg, base, repo, operator, Some((l, name)), served).await
        }
        #[cfg(feature = "hedera")]
        Some(Backend::Hedera(l)) => {
            let name = ledger_name(&cfg, &repo)?;
            start_with(cfg, base, repo, operator, Some((l, name)), None).await
        }
        None => start_with::<LocalLedger>(cfg, base, repo, None, None, None).await,
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
    /// The clearing role, on the node that holds the clearing key.
    clearing_role: Option<Clearing<L>>,
    /// Fraud proofs read from the topic: the next sequence number, and the parts gathered
    /// per (payer, period).
    proofs: ProofWatch,
}

/// Unfinished fraud proofs a node gathers at most (each costs its publisher a topic
/// message; a complete proof is dropped once acted on).
const MAX_PROOFS_GATHERED: usize = 1024;

/// What a node gathers of the fraud proofs published on the settlement topic.
struct ProofWatch {
    next_sequence: u64,
    parts: HashMap<(AccountId, u64), FraudProof>,
}

async fn start_with<L: Ledger + Clone + Send + Sync + 'static>(
    cfg: Config,
    base: PathBuf,
    repo: PathBuf,
    operator: Option<Operator>,
    ledger: Option<(L, String)>,
    served: Option<Served>,
) -> Result<Node> {
    let base = base.as_path();
    let store = DiskStore::open(repo.join("blocks.redb"), cfg.node.quota)
        .with_context(|| format!("opening the block store in {}", repo.display()))?;
    let keypair = streamspace_transport::identity::load_or_create(&repo.join("identity"))
        .context("loading the node's identity")?;
    let public_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(keypair.public().encode_protobuf())
    };
    let api_token = match (&cfg.node.api, &cfg.node.api_token_file) {
        (Some(_), Some(f)) => {
            let f = config::resolve(base, f);
            let t = std::fs::read_to_string(&f)
                .with_context(|| format!("node.api_token_file: reading {}", f.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(
                t.len() >= 16,
                "node.api_token_file: {}: a token of at least 16 characters is needed",
                f.display()
            );
            Some(Arc::from(t))
        }
        (Some(addr), None) if !addr.ip().is_loopback() => bail!(
            "node.api = {addr}: off loopback the API needs a bearer token (node.api_token_file)"
        ),
        _ => None,
    };
    let mut tc = streamspace_transport::Config::new(keypair);
    tc.network = cfg.node.network.clone();
    tc.tier = cfg.node.tier.into();
    if !cfg.node.listen.is_empty() {
        tc.listen = config::multiaddrs("node.listen", &cfg.node.listen)?;
    }
    tc.bootstrap = config::multiaddrs("node.bootstrap", &cfg.node.bootstrap)?;
    tc.nat = cfg.nat.to_transport(&tc.listen)?;
    anyhow::ensure!(
        !(cfg.node.amino_dht && cfg.allowlist.is_some()),
        "node.amino_dht: a closed network ([allowlist]) does not announce its content on the public IPFS DHT"
    );
    tc.amino_dht = cfg.node.amino_dht;
    tc.capacity = cfg
        .node
        .quota
        .map_or(0, |q| q.saturating_sub(store.used_bytes()));
    let mut allowlist_state = None;
    if let Some(a) = &cfg.allowlist {
        let operator = libp2p_ed25519(&config::hex32("allowlist.operator", &a.operator)?)?;
        let file = config::resolve(base, &a.file);
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let list = SignedAllowlist::decode(&bytes)
            .with_context(|| format!("allowlist {}", file.display()))?;
        list.verify(&operator, &cfg.node.network, SystemTime::now())
            .with_context(|| format!("allowlist {}", file.display()))?;
        allowlist_state = Some(crate::api::AllowlistState {
            operator: hex::encode(operator.to_bytes()),
            expires: list.expires,
            peers: list.peers.len(),
        });
        tc.admission = Some(Admission { operator, list });
    }

    // Payments: the metering hook, and the courier taking receipts to their payees.
    let (outbox, mut receipts_out) = tokio::sync::mpsc::channel::<(PeerId, Bytes)>(1024);
    let mut settlement = None;
    let earned_last = Arc::new(AtomicU64::new(0));
    let paid = match (&cfg.payments, &operator, &ledger) {
        (Some(p), Some(me), Some((ledger, ledger_name))) => {
            let members = config::read_members(&config::resolve(base, &p.members))?;
            let topic = config::topic("payments.topic", &p.topic)?;
            let clearing_account = config::account("payments.clearing", &p.clearing)?;
            // Receipts name this deployment: another network, ledger, clearing account or
            // topic refuses them.
            let domain = Domain::new(
                cfg.node.network.clone(),
                ledger_name.clone(),
                clearing_account,
                topic,
            );
            let paid = Arc::new(Paid::new(
                domain.id(),
                me.clone(),
                Price::per_shard(p.price_per_shard),
                p.max_ahead,
                members.clone(),
                outbox,
                &repo,
                period_now(p.period_secs),
            )?);
            let clearing_role = match &p.clearing_key_file {
                Some(k) => {
                    let clearing = Operator {
                        account: clearing_account,
                        key: config::read_key(&config::resolve(base, k))?,
                    };
                    let journal = Journal::open(repo.join("clearing.redb"), domain.id())?;
                    Some(Clearing::new(
                        ledger.clone(),
                        clearing,
                        &domain,
                        journal,
                        members.values().map(|m| ClearingMember {
                            account: m.account,
                            key: m.key,
                            collateral: m.collateral,
                        }),
                        p.period_secs,
                    )?)
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
                journal: Journal::open(repo.join("journal.redb"), domain.id())?,
                repo: repo.clone(),
                earned_last: earned_last.clone(),
                clearing_role,
                proofs: ProofWatch {
                    next_sequence: 1,
                    parts: HashMap::new(),
                },
            });
            Some(paid)
        }
        _ => None,
    };
    // A Tier-1 node replicates on demand what is listed on the market; in a paid network, also
    // what paying members ask for (their demand alone counts there).
    let listings = Arc::new(crate::listings::Listings::default());
    tc.replication.policy = Arc::new(Replicate {
        members: paid.as_ref().map(|p| p.members.keys().copied().collect()),
        listings: listings.clone(),
    });
    tc.limits.max_provided_roots = provided_roots_for(cfg.node.quota);
    let meter: Arc<dyn Meter> = match &paid {
        Some(p) => p.clone(),
        None => Arc::new(Free),
    };
    let roots = store.pinned_roots().await?;
    let node = streamspace_transport::Node::start(tc, Arc::new(store), meter).await?;
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
    let listings = match (&cfg.market, &ledger) {
        (Some(m), Some((ledger, _))) => {
            let topic = config::topic("market.topic", &m.topic)?;
            tokio::spawn(crate::listings::follow(
                ledger.clone(),
                topic,
                listings.clone(),
                stop_rx.clone(),
            ));
            Some(listings)
        }
        _ => None,
    };
    let cache = Arc::new(crate::gateway::CacheStats::default());
    let mut servers = Vec::new();
    let mut gateway_addr = None;
    let mut metrics_addr = None;
    if let Some(addr) = cfg.node.gateway {
        let app = crate::gateway::router(node.clone(), cache.clone());
        let (bound, task) = serve_http(
            addr,
            "gateway",
            app,
            crate::http::HttpLimits::default(),
            stop_rx.clone(),
        )
        .await?;
        gateway_addr = Some(bound);
        servers.push(task);
    }
    let mut api_addr = None;
    if let Some(addr) = cfg.node.api {
        let bandwidth = Arc::new(crate::api::Bandwidth::default());
        tokio::spawn(crate::api::sample_bandwidth(
            node.clone(),
            bandwidth.clone(),
            stop_rx.clone(),
        ));
        let app = crate::api::router(crate::api::Api {
            node: node.clone(),
            public_key,
            repo: repo.clone(),
            token: api_token,
            cache: cache.clone(),
            paid: paid.clone(),
            earned_last: earned_last.clone(),
            tier: cfg.node.tier.into(),
            period_secs: cfg.payments.as_ref().map(|p| p.period_secs),
            journal: settlement
                .as_ref()
                .map(|s| (s.journal.clone(), s.me.account)),
            allowlist: allowlist_state,
            listings,
            account: operator.as_ref().map(|o| o.account),
            bandwidth,
            protocols: [
                streamspace_transport::codec::PROTOCOL.to_string(),
                format!("/streamspace/{}/kad/1.0.0", cfg.node.network),
                "/streamspace/id/1.0.0".to_owned(),
                "/ipfs/ping/1.0.0".to_owned(),
                "/meshsub/1.1.0".to_owned(),
            ]
            .into(),
        });
        let (bound, task) = serve_http(
            addr,
            "API (/api/v0)",
            app,
            crate::http::HttpLimits::default(),
            stop_rx.clone(),
        )
        .await?;
        // As kubo's `$IPFS_PATH/api`: where a client finds the running node.
        let ip = match bound.ip() {
            std::net::IpAddr::V4(a) => format!("/ip4/{a}"),
            std::net::IpAddr::V6(a) => format!("/ip6/{a}"),
        };
        std::fs::write(repo.join("api"), format!("{ip}/tcp/{}\n", bound.port()))
            .with_context(|| format!("writing {}", repo.join("api").display()))?;
        api_addr = Some(bound);
        servers.push(task);
    }
    if let Some(addr) = cfg.node.metrics {
        let app = metrics::router(metrics::Sources {
            node: node.clone(),
            paid: paid.clone(),
            cache: cache.clone(),
            earned_last: earned_last.clone(),
        });
        let (bound, task) = serve_http(
            addr,
            "metrics (/metrics)",
            app,
            crate::http::HttpLimits::default(),
            stop_rx.clone(),
        )
        .await?;
        metrics_addr = Some(bound);
        servers.push(task);
    }

    if let (Some(s), Some(_)) = (&settlement, &paid) {
        let now = period_now(s.period_secs);
        post_unposted(s, now).await;
        lock_collateral_once(s, now).await;
    }
    let task = tokio::spawn(run_loop(
        node.clone(),
        settlement,
        paid,
        servers,
        stop_rx,
        served,
        api_addr.map(|_| repo.join("api")),
    ));
    Ok(Node {
        transport: node,
        cache,
        gateway_addr,
        metrics_addr,
        api_addr,
        stop: stop_tx,
        task,
    })
}

/// Journals and rolls the books, until `stop` turns true; then stops the HTTP endpoints and
/// the transport, and journals what the node holds. What goes to the ledger (posting a closed
/// period, locking collateral, settling, reading fraud proofs) runs in a task of its own
/// ([`ledger_work`]): a slow or unreachable ledger must not keep the books from rolling, or
/// every receipt of the new period would be refused as one for a period not yet open.
async fn run_loop<L: Ledger + Clone + Send + Sync + 'static>(
    node: streamspace_transport::Node<DiskStore>,
    settlement: Option<Settlement<L>>,
    paid: Option<Arc<Paid>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    mut stop: watch::Receiver<bool>,
    served: Option<Served>,
    api_file: Option<PathBuf>,
) -> Result<()> {
    let mut tick = tokio::time::interval(FLUSH_EVERY.min(Duration::from_secs(1)));
    let mut last_flush = tokio::time::Instant::now();
    // The books closed, to the ledger task; one a period, so a ledger down for long only
    // makes the queue longer by one a period (each is journaled before it is queued).
    let mut ledger = settlement.map(|s| {
        let (tx, rx) = mpsc::unbounded_channel();
        let journal = s.journal.clone();
        let period_secs = s.period_secs;
        let earned_last = s.earned_last.clone();
        let paid = paid.clone();
        let task = tokio::spawn(ledger_work(s, paid, rx));
        (tx, task, journal, period_secs, earned_last)
    });
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let (Some((tx, _, journal, period_secs, earned_last)), Some(paid)) = (&ledger, &paid)
        else {
            continue;
        };
        if last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = tokio::time::Instant::now();
            if let Err(e) = flush(journal, paid) {
                tracing::error!(error = %e, "journaling receipts");
            }
        }
        let now_secs = unix_secs();
        if let Some(ended) = paid.tick(now_secs, *period_secs) {
            let closed = journal_books(journal, earned_last, ended);
            let _ = tx.send(LedgerWork::Closed {
                closed,
                now: now_secs / (*period_secs).max(1),
            });
        }
    }

    // Shut down: stop serving, then journal what this node holds and let the ledger task
    // post it.
    tracing::info!("shutting down");
    // Open HTTP answers (a long CAR, a video) get a few seconds to finish.
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    if let Some(f) = api_file {
        let _ = std::fs::remove_file(f);
    }
    node.shutdown().await;
    if let Some((tx, task, journal, _, earned_last)) = ledger.take() {
        if let Some(paid) = &paid {
            for ended in paid.close_all() {
                let now = ended.0;
                let closed = journal_books(&journal, &earned_last, ended);
                let _ = tx.send(LedgerWork::Closed { closed, now });
            }
        }
        drop(tx);
        // Every step it takes is bounded (the backends' deadlines); what it could not post
        // is journaled and posted at the next start.
        if tokio::time::timeout(LEDGER_AT_SHUTDOWN, task)
            .await
            .is_err()
        {
            tracing::warn!(
                "the ledger did not take the last receipts in time: they are journaled and posted at the next start"
            );
        }
    }
    #[cfg(feature = "hedera")]
    if let Some(s) = served {
        s.stop().await;
    }
    #[cfg(not(feature = "hedera"))]
    let _ = served;
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
    limits: crate::http::HttpLimits,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (bound, task) = crate::http::bind(addr, app, limits, stop)
        .await
        .with_context(|| format!("binding the {what} endpoint to {addr}"))?;
    tracing::info!(addr = %bound, "{what} listening");
    Ok((bound, task))
}

fn libp2p_ed25519(bytes: &[u8; 32]) -> Result<streamspace_transport::ed25519::PublicKey> {
    streamspace_transport::ed25519::PublicKey::try_from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("allowlist.operator: not an Ed25519 public key: {e}"))
}

fn flush(journal: &Journal, paid: &Paid) -> Result<()> {
    let newest: Vec<SignedReceipt> = {
        let b = paid.lock();
        b.book.closing().chain(b.book.newest()).copied().collect()
    };
    if !newest.is_empty() {
        journal.record(&newest)?;
    }
    Ok(())
}

/// How long a stopping node waits for the ledger task to post the last period.
const LEDGER_AT_SHUTDOWN: Duration = Duration::from_secs(60);

/// A closed period's newest receipts, journaled.
struct Closed {
    period: u64,
    receipts: Vec<SignedReceipt>,
}

/// What the ledger task is handed.
enum LedgerWork {
    /// A period closed: post its receipts, lock collateral for `now`.
    Closed { closed: Closed, now: u64 },
}

/// Journals a closed period's newest receipts and logs what the node earned in it.
fn journal_books(journal: &Journal, earned_last: &AtomicU64, (period, receipts): Ended) -> Closed {
    if let Err(e) = journal.record(&receipts) {
        tracing::error!(error = %e, period, "journaling receipts");
    }
    let earned: u64 = receipts.iter().map(|r| r.body.amount).sum();
    let shards: u64 = receipts.iter().map(|r| r.body.shards).sum();
    earned_last.store(earned, Ordering::Relaxed);
    tracing::info!(
        period,
        payers = receipts.len(),
        shards,
        earned_tinybars = earned,
        "period closed"
    );
    Closed { period, receipts }
}

/// The node's dealings with the ledger, in order: closed periods posted and collateral
/// locked as they come, settling (on the clearing node) and fraud proofs read every second.
/// Ends when the sender is dropped, after the work queued and a last settlement.
async fn ledger_work<L: Ledger + Clone>(
    mut s: Settlement<L>,
    paid: Option<Arc<Paid>>,
    mut work: mpsc::UnboundedReceiver<LedgerWork>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            w = work.recv() => match w {
                Some(LedgerWork::Closed { closed, now }) => {
                    post(&s, closed.period, &closed.receipts).await;
                    lock_collateral_once(&s, now).await;
                }
                None => break,
            },
            _ = tick.tick() => {
                if let Some(c) = &mut s.clearing_role {
                    clear(c).await;
                }
                if let Some(paid) = &paid {
                    watch_proofs(&mut s, paid).await;
                }
            }
        }
    }
    if let Some(c) = &mut s.clearing_role {
        clear(c).await;
    }
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

/// Reads the fraud proofs published on the settlement topic and strikes off every payer a
/// complete, verified proof convicts (against the member list's key and collateral).
async fn watch_proofs<L: Ledger>(s: &mut Settlement<L>, paid: &Paid) {
    let messages = match s
        .ledger
        .topic_messages(s.topic, s.proofs.next_sequence, 1000)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "reading the settlement topic for fraud proofs");
            return;
        }
    };
    let members: HashMap<AccountId, &Member> =
        paid.members.values().map(|m| (m.account, m)).collect();
    for m in messages {
        s.proofs.next_sequence = s.proofs.next_sequence.max(m.sequence.saturating_add(1));
        if !m.message.starts_with(FRAUD_TAG) {
            continue;
        }
        let Ok(mut part) = FraudProof::parse_message(&m.message) else {
            tracing::warn!(sequence = m.sequence, "malformed fraud-proof message");
            continue;
        };
        // Only receipts the payer really signed, in this deployment, are gathered: a forged
        // part must not spoil the parts of a real proof.
        part.receipts.retain(|r| {
            members
                .get(&r.body.payer)
                .is_some_and(|m| m.key == r.payer_key)
                && r.verify_in(&paid.domain).is_ok()
        });
        // A part names one payer and period; receipts of others in it are parts of their own.
        let mut groups: HashMap<(AccountId, u64), Vec<SignedReceipt>> = HashMap::new();
        for r in part.receipts {
            groups
                .entry((r.body.payer, r.body.period))
                .or_default()
                .push(r);
        }
        for (key, receipts) in groups {
            let Some(member) = members.get(&key.0) else {
                continue;
            };
            if !s.proofs.parts.contains_key(&key) && s.proofs.parts.len() >= MAX_PROOFS_GATHERED {
                tracing::warn!(payer = %key.0, "too many unfinished fraud proofs: part dropped");
                continue;
            }
            let whole = s.proofs.parts.entry(key).or_insert_with(|| FraudProof {
                receipts: Vec::new(),
            });
            whole.merge(FraudProof { receipts });
            if whole
                .verify(&paid.domain, &member.key, member.collateral)
                .is_ok()
            {
                s.proofs.parts.remove(&key);
                if paid.strike_off(key.0) {
                    tracing::warn!(payer = %key.0, period = key.1, "payer struck off by a fraud proof");
                    if let Err(e) = write_struck_off(&s.repo.join("struck-off"), paid) {
                        tracing::error!(error = %e, "recording a strike-off");
                    }
                }
            }
        }
    }
}

fn read_struck_off(path: &Path) -> HashSet<AccountId> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn write_struck_off(path: &Path, paid: &Paid) -> std::io::Result<()> {
    let text: String = paid
        .struck
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|a| format!("{a}\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// The clearing role's turn: read the settlement topic, settle what ended.
async fn clear<L: Ledger + Clone>(c: &mut Clearing<L>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let poll = c.poll(now).await;
    for sequence in poll.refused {
        tracing::warn!(sequence, "bad receipts message");
    }
    if let Some(e) = poll.topic_error {
        tracing::warn!(error = %e, "reading the settlement topic");
    }
    for (period, r) in poll.settled {
        tracing::info!(
            period,
            receipts = r.receipts,
            transfers = r.transfers,
            paid_out = r.paid_out,
            fees = r.fees,
            "period settled"
        );
    }
    for (period, e) in poll.failed {
        tracing::error!(error = %e, period, "settling");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamspace_ledger::local::TREASURY;
    use streamspace_ledger::{LedgerExt, Transaction, TransactionId, TxKind};

    /// A member over-promises its collateral to two payees; the proof published on the
    /// settlement topic (in parts) strikes it off at every node that reads it: it is refused
    /// service, its receipts are refused, and a restarted node still refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_published_fraud_proof_strikes_the_payer_off_for_good() {
        let dir = tempfile::tempdir().expect("dir");
        let tk = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let ledger = LocalLedger::open(
            dir.path().join("l.redb"),
            PublicKey::from(&tk),
            Arc::new(SystemClock),
        )
        .expect("ledger");
        let treasury = Operator {
            account: TREASURY,
            key: tk,
        };
        let tx = Transaction::new(
            TransactionId::generate(TREASURY, ledger.now()),
            TxKind::CreateTopic {
                memo: "settlement".into(),
                submit_key: None,
            },
        );
        let topic = ledger
            .execute(tx, &[&treasury.key])
            .await
            .expect("topic")
            .topic
            .expect("topic id");
        let domain = Domain::new("t", "local:test", TREASURY, topic);
        let key = |b: u8| ed25519_dalek::SigningKey::from_bytes(&[b; 32]);
        let mut ops = Vec::new();
        for b in 1..=4u8 {
            let k = key(b);
            let account = ledger
                .create_account(&treasury, PublicKey::from(&k), 1_000_000)
                .await
                .expect("account");
            ops.push(Operator { account, key: k });
        }
        let (me, cheat, payee_a, payee_b) = (&ops[0], &ops[1], &ops[2], &ops[3]);
        let collateral = 25_000;
        let cheat_peer = streamspace_transport::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let members: HashMap<PeerId, Member> = ops
            .iter()
            .map(|o| {
                let peer = if o.account == cheat.account {
                    cheat_peer
                } else {
                    streamspace_transport::Keypair::generate_ed25519()
                        .public()
                        .to_peer_id()
                };
                (
                    peer,
                    Member {
                        account: o.account,
                        key: PublicKey::from(&o.key),
                        collateral,
                    },
                )
            })
            .collect();
        let new_paid = |repo: &Path| {
            let (outbox, _rx) = tokio::sync::mpsc::channel(8);
            Paid::new(
                domain.id(),
                me.clone(),
                Price::per_shard(10_000),
                4,
                members.clone(),
                outbox,
                repo,
                5,
            )
            .expect("meter")
        };
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("repo");
        let paid = new_paid(&repo);
        let block = cid::Cid::default();
        assert_eq!(
            paid.before_send(&cheat_peer, &block, 1000),
            Decision::Serve,
            "an honest-looking member is served"
        );

        // Two receipts for period 5 of 2 × 20,000 against 25,000 of collateral.
        let mut tab = PayerTab::new(domain.id(), cheat.account, cheat.key.clone(), 5);
        let mut receipts = Vec::new();
        for payee in [payee_a, payee_b] {
            tab.agree(payee.account, Price::per_shard(10_000));
            tab.received(payee.account, 1000);
            tab.received(payee.account, 1000);
            receipts.push(tab.sign(payee.account));
        }
        let proof = FraudProof { receipts };
        assert!(
            proof
                .verify(&domain.id(), &PublicKey::from(&cheat.key), collateral)
                .is_ok()
        );
        // A forged part (the payee's own key, not the payer's) convicts nobody.
        let mut forged_tab = PayerTab::new(domain.id(), cheat.account, payee_a.key.clone(), 5);
        forged_tab.agree(me.account, Price::per_shard(10_000));
        for _ in 0..5 {
            forged_tab.received(me.account, 1000);
        }
        let forged = FraudProof {
            receipts: vec![forged_tab.sign(me.account)],
        };
        let mut settlement = Settlement {
            ledger: ledger.clone(),
            me: me.clone(),
            topic,
            clearing: TREASURY,
            collateral: 0,
            period_secs: 3600,
            journal: Journal::open(repo.join("journal.redb"), domain.id()).expect("journal"),
            repo: repo.clone(),
            earned_last: Arc::new(AtomicU64::new(0)),
            clearing_role: None,
            proofs: ProofWatch {
                next_sequence: 1,
                parts: HashMap::new(),
            },
        };
        for m in forged.messages() {
            ledger
                .submit_message(&treasury, topic, m, None)
                .await
                .expect("post");
        }
        watch_proofs(&mut settlement, &paid).await;
        assert!(
            !paid.is_struck(cheat.account),
            "a forged proof strikes nobody off"
        );

        // The real proof, one receipt per message: the parts are gathered, then it convicts.
        let parts: Vec<Bytes> = proof
            .receipts
            .iter()
            .flat_map(|r| FraudProof { receipts: vec![*r] }.messages())
            .collect();
        ledger
            .submit_message(&treasury, topic, parts[0].clone(), None)
            .await
            .expect("post");
        watch_proofs(&mut settlement, &paid).await;
        assert!(
            !paid.is_struck(cheat.account),
            "half a proof proves nothing"
        );
        ledger
            .submit_message(&treasury, topic, parts[1].clone(), None)
            .await
            .expect("post");
        watch_proofs(&mut settlement, &paid).await;
        assert!(paid.is_struck(cheat.account));
        assert_eq!(
            paid.before_send(&cheat_peer, &block, 1000),
            Decision::Refuse
        );
        let r = {
            let mut t = PayerTab::new(domain.id(), cheat.account, cheat.key.clone(), 5);
            t.agree(me.account, Price::per_shard(10_000));
            t.received(me.account, 1000);
            t.sign(me.account)
        };
        assert!(
            !paid.payment(&cheat_peer, &r.encode()),
            "its receipts are refused"
        );

        // The next period's books, and a restarted node, keep it off.
        *paid.lock() = paid.books(6).expect("books");
        assert_eq!(
            paid.before_send(&cheat_peer, &block, 1000),
            Decision::Refuse
        );
        let restarted = new_paid(&repo);
        assert_eq!(
            restarted.before_send(&cheat_peer, &block, 1000),
            Decision::Refuse
        );
        // Honest members are still served.
        let honest = members
            .iter()
            .find(|(_, m)| m.account == payee_a.account)
            .map(|(p, _)| *p)
            .expect("member");
        assert_eq!(
            restarted.before_send(&honest, &block, 1000),
            Decision::Serve
        );
    }

    /// A payer whose clock is a few seconds off the payee's signs receipts of the period its
    /// own clock says: the payee takes those of the next period from `receipt_grace` before
    /// the boundary, and those of the previous one until as long after it; one further off is
    /// refused, and the period ends with the newest receipt the payee took in it.
    #[test]
    fn receipts_either_side_of_a_period_boundary_are_taken_within_the_grace() {
        let dir = tempfile::tempdir().expect("dir");
        let domain = DomainId([7; 32]);
        let me = Operator {
            account: AccountId::new(1001),
            key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        };
        let payer = Operator {
            account: AccountId::new(1002),
            key: ed25519_dalek::SigningKey::from_bytes(&[2; 32]),
        };
        let peer = streamspace_transport::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let members: HashMap<PeerId, Member> = [
            (
                streamspace_transport::Keypair::generate_ed25519()
                    .public()
                    .to_peer_id(),
                Member {
                    account: me.account,
                    key: PublicKey::from(&me.key),
                    collateral: 1_000_000,
                },
            ),
            (
                peer,
                Member {
                    account: payer.account,
                    key: PublicKey::from(&payer.key),
                    collateral: 1_000_000,
                },
            ),
        ]
        .into();
        let period_secs = 80;
        let grace = receipt_grace(period_secs);
        assert_eq!(grace, 10);
        let p = 20_000_000;
        let (outbox, _rx) = tokio::sync::mpsc::channel(8);
        let paid = Paid::new(
            domain,
            me.clone(),
            Price::per_shard(10_000),
            4,
            members,
            outbox,
            dir.path(),
            p,
        )
        .expect("meter");
        let block = cid::Cid::default();
        let start = p * period_secs;
        let receipt = |period: u64, shards: u64| {
            let mut t = PayerTab::new(domain, payer.account, payer.key.clone(), period);
            t.agree(me.account, Price::per_shard(10_000));
            for _ in 0..shards {
                t.received(me.account, 1000);
            }
            t.sign(me.account).encode()
        };

        assert!(paid.tick(start + 40, period_secs).is_none());
        assert_eq!(paid.before_send(&peer, &block, 1000), Decision::Serve);
        assert!(
            paid.payment(&peer, &receipt(p, 1)),
            "a receipt of the period"
        );
        // A receipt of the next period, from a payer whose clock is 5 s ahead: refused
        // until the book is within the grace of the boundary, taken from then on.
        assert_eq!(paid.before_send(&peer, &block, 1000), Decision::Serve);
        assert!(
            !paid.payment(&peer, &receipt(p + 1, 1)),
            "half a period early is refused"
        );
        assert!(
            paid.tick(start + period_secs - grace - 1, period_secs)
                .is_none()
        );
        assert!(!paid.payment(&peer, &receipt(p + 1, 1)));
        assert!(
            paid.tick(start + period_secs - grace, period_secs)
                .is_none()
        );
        assert!(
            paid.payment(&peer, &receipt(p + 1, 1)),
            "a receipt of the next period, signed just before the boundary by this clock"
        );
        // The payer moved on: its receipts of the previous period are final.
        assert!(!paid.payment(&peer, &receipt(p, 2)));

        // A second payer-like case on the other side: the book is past the boundary and a
        // payer whose clock is behind still signs for the period that ended.
        assert_eq!(paid.before_send(&peer, &block, 1000), Decision::Serve);
        assert!(
            paid.tick(start + period_secs + grace - 1, period_secs)
                .is_none()
        );
        assert!(paid.payment(&peer, &receipt(p + 1, 2)));
        let ended = paid
            .tick(start + period_secs + grace, period_secs)
            .expect("the grace of the period ended");
        assert_eq!(ended.0, p);
        assert_eq!(ended.1.len(), 1);
        assert_eq!(
            ended.1[0].body.shards, 1,
            "the newest receipt of the period"
        );
        // Two periods ahead, or the period before the current one after its grace: refused.
        assert_eq!(paid.before_send(&peer, &block, 1000), Decision::Serve);
        assert!(!paid.payment(&peer, &receipt(p + 2, 3)));
        assert!(!paid.payment(&peer, &receipt(p, 3)));
        assert!(paid.payment(&peer, &receipt(p + 1, 3)));

        // The node's own tab follows its clock exactly.
        assert_eq!(paid.lock().tab_period, p + 1);
        let closed = paid.close_all();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, p + 1);
        assert_eq!(closed[0].1[0].body.shards, 3);
    }
}
