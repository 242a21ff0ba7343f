//! The node's TOML configuration and the network's member list.
//!
//! A [`Config`] is read from a TOML file ([`Config::from_file`]) or built in code, then handed
//! to [`NodeBuilder`](crate::NodeBuilder). Unknown keys are refused; errors name the file and
//! the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use streamspace_ledger::{AccountId, PublicKey, TopicId};
use streamspace_transport::{Multiaddr, PeerId, Tier};

/// `node.toml`. Relative paths are taken from the file's directory.
///
/// ```toml
/// [node]
/// repo = "node-1"                       # block store, identity, journal
/// network = "main"
/// listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
/// bootstrap = ["/ip4/192.0.2.1/tcp/4001/p2p/12D3Koo..."]
/// tier = "edge"                         # or "tier1"
/// quota = 10_737_418_240                # bytes of disk offered
/// gateway = "127.0.0.1:8080"            # optional HTTP gateway
/// metrics = "127.0.0.1:9464"            # optional Prometheus endpoint
/// api = "127.0.0.1:5001"                # optional operator API (/api/v0) and dashboard
/// api_token_file = "api.token"          # bearer token, required off loopback
/// amino_dht = false                     # open networks: also join the public IPFS DHT
///
/// [nat]                                 # optional: getting through home routers
/// reachability = "auto"                 # AutoNAT decides; or "public" / "private"
/// relays = ["/ip4/192.0.2.1/tcp/4001/p2p/12D3Koo..."]  # reserved on when private
/// relay = true                          # tier1: run a circuit relay (limits below)
/// relay_max_reservations = 128
/// relay_max_circuits = 64
/// relay_max_circuit_bytes = 1_048_576
/// relay_max_circuit_secs = 120
/// hole_punching = true                  # DCUtR
/// upnp = false                          # ask the router for a port mapping
///
/// [allowlist]                           # optional: a closed network
/// operator = "<hex Ed25519 public key>"
/// file = "allowlist.bin"
///
/// [ledger]
/// backend = "embedded"                  # default; or "hedera"
/// path = "ledger.redb"                  # embedded: the ledger file (default: in the repo)
/// treasury = "<hex public key>"         # embedded: genesis key (default: generated)
/// serve = "127.0.0.1:50211"             # embedded: serve it over Hedera's gRPC API
/// serve_mirror = "127.0.0.1:5600"
/// # backend = "hedera": network = "mainnet" | "testnet" | "previewnet",
/// # or node = "host:port" and mirror = "host:port"
///
/// [payments]                            # optional: paid service
/// account = "0.0.1001"
/// key_file = "account.key"              # hex Ed25519 seed
/// price_per_shard = 10000               # tinybars
/// period_secs = 3600
/// collateral = 2000000000               # tinybars locked per period
/// members = "members.toml"
/// clearing = "0.0.1002"
/// topic = "0.0.1003"                    # settlement topic
/// clearing_key_file = "clearing.key"    # only on the node that settles
/// ledger = "local:<treasury key>"       # the ledger's name, shared by every member
///
/// [market]                              # optional: follow the market's listings topic
/// topic = "0.0.1004"                    # (needs a [ledger] to read it from)
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: the repository, the network and the addresses.
    pub node: NodeSection,
    /// `[nat]`: reachability, relays, hole punching, UPnP.
    #[serde(default)]
    pub nat: NatSection,
    /// `[allowlist]`: a closed network's signed member list.
    pub allowlist: Option<AllowlistSection>,
    /// `[ledger]`: where payments settle.
    #[serde(default)]
    pub ledger: LedgerSection,
    /// `[payments]`: paid service.
    pub payments: Option<PaymentsSection>,
    /// `[market]`: the market topic whose listings the API reports.
    pub market: Option<MarketSection>,
}

/// `[market]`: the market topic the node follows, for `streamspace/listings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSection {
    /// The market's topic (`0.0.N`), read from the ledger in `[ledger]`.
    pub topic: String,
}

impl Config {
    /// Reads a configuration file. Relative paths in it are later taken from `path`'s
    /// directory (see [`NodeBuilder::from_file`](crate::NodeBuilder::from_file)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the file, and the key when the TOML is
    /// invalid or holds an unknown key.
    pub fn from_file(path: &Path) -> Result<Self, crate::Error> {
        read_toml(path).map_err(crate::Error::Config)
    }

    /// Parses a configuration from TOML text.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) naming the key.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = streamspace_node::Config::from_toml("[node]\nrepo = \"r\"\ntier = \"tier1\"")?;
    /// assert_eq!(c.node.tier, streamspace_node::config::TierName::Tier1);
    /// assert!(streamspace_node::Config::from_toml("[node]\nrepo = \"r\"\nlisten_on = []").is_err());
    /// # Ok::<(), streamspace_node::Error>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, crate::Error> {
        toml::from_str(text).map_err(|e| crate::Error::Config(e.into()))
    }
}

/// `[node]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The repository: block store, identity, journal.
    pub repo: PathBuf,
    /// The network's name (peers of other networks are not spoken to).
    #[serde(default = "default_network")]
    pub network: String,
    /// Listen multiaddrs (default: TCP and QUIC on every interface, ports chosen by the OS).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Bootstrap peers' multiaddrs, ending in `/p2p/<peer id>`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// The tier the node announces.
    #[serde(default)]
    pub tier: TierName,
    /// Bytes of disk offered (unpinned blocks are evicted beyond it).
    pub quota: Option<u64>,
    /// The HTTP gateway's address (none by default).
    pub gateway: Option<SocketAddr>,
    /// The Prometheus endpoint's address (none by default).
    pub metrics: Option<SocketAddr>,
    /// The operator API's address (none by default): `/api/v0` and the dashboard.
    pub api: Option<SocketAddr>,
    /// A file holding the bearer token the API requires; needed when the API listens on an
    /// address other than loopback.
    pub api_token_file: Option<PathBuf>,
    /// Whether the node also joins the public IPFS DHT (`/ipfs/kad/1.0.0`) so that IPFS
    /// nodes find what it provides, and it finds theirs. Open networks only: a closed
    /// network's node refuses to start with it.
    #[serde(default)]
    pub amino_dht: bool,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            repo: PathBuf::new(),
            network: default_network(),
            listen: Vec::new(),
            bootstrap: Vec::new(),
            tier: TierName::default(),
            quota: None,
            gateway: None,
            metrics: None,
            api: None,
            api_token_file: None,
            amino_dht: false,
        }
    }
}

fn default_network() -> String {
    "main".into()
}

/// A tier's name in the file: `"edge"` or `"tier1"`.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    /// Near viewers; caches what they ask for.
    #[default]
    Edge,
    /// Fast links; replicates content in demand.
    Tier1,
}

impl From<Tier> for TierName {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Edge => TierName::Edge,
            Tier::Tier1 => TierName::Tier1,
        }
    }
}

impl From<TierName> for Tier {
    fn from(t: TierName) -> Self {
        match t {
            TierName::Edge => Tier::Edge,
            TierName::Tier1 => Tier::Tier1,
        }
    }
}

/// `[nat]`: how the node gets through NAT (the transport's `NatConfig`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSection {
    /// `"auto"` (AutoNAT decides; a node listening on loopback only is taken to be
    /// reachable), `"public"` or `"private"`.
    #[serde(default = "default_reachability")]
    pub reachability: String,
    /// Relays to reserve a slot on when private, ending in `/p2p/<peer id>`.
    #[serde(default)]
    pub relays: Vec<String>,
    /// A Tier-1 node runs a circuit relay.
    #[serde(default = "yes")]
    pub relay: bool,
    /// The relay's reservations at once.
    pub relay_max_reservations: Option<usize>,
    /// The relay's circuits at once.
    pub relay_max_circuits: Option<usize>,
    /// Bytes one relayed circuit may carry.
    pub relay_max_circuit_bytes: Option<u64>,
    /// Seconds one relayed circuit may last.
    pub relay_max_circuit_secs: Option<u64>,
    /// Upgrade relayed connections to direct ones (DCUtR).
    #[serde(default = "yes")]
    pub hole_punching: bool,
    /// Ask the home router for a port mapping (UPnP).
    #[serde(default)]
    pub upnp: bool,
}

impl Default for NatSection {
    fn default() -> Self {
        Self {
            reachability: default_reachability(),
            relays: Vec::new(),
            relay: true,
            relay_max_reservations: None,
            relay_max_circuits: None,
            relay_max_circuit_bytes: None,
            relay_max_circuit_secs: None,
            hole_punching: true,
            upnp: false,
        }
    }
}

fn default_reachability() -> String {
    "auto".into()
}
fn yes() -> bool {
    true
}

impl NatSection {
    /// The transport's NAT settings; `listen` decides `"auto"` for a node on loopback only.
    pub(crate) fn to_transport(
        &self,
        listen: &[Multiaddr],
    ) -> Result<streamspace_transport::node::NatConfig> {
        use streamspace_transport::node::{NatConfig, Reachability, RelayLimits};
        let loopback_only = !listen.is_empty()
            && listen.iter().all(|a| {
                let a = a.to_string();
                a.starts_with("/ip4/127.") || a.starts_with("/ip6/::1/")
            });
        let reachability = match self.reachability.as_str() {
            "auto" if loopback_only => Some(Reachability::Public),
            "auto" => None,
            "public" => Some(Reachability::Public),
            "private" => Some(Reachability::Private),
            other => {
                bail!("nat.reachability: {other:?} is not \"auto\", \"public\" or \"private\"")
            }
        };
        let d = RelayLimits::default();
        let limits = RelayLimits {
            max_reservations: self.relay_max_reservations.unwrap_or(d.max_reservations),
            max_circuits: self.relay_max_circuits.unwrap_or(d.max_circuits),
            max_circuit_bytes: self.relay_max_circuit_bytes.unwrap_or(d.max_circuit_bytes),
            max_circuit_duration: self
                .relay_max_circuit_secs
                .map_or(d.max_circuit_duration, std::time::Duration::from_secs),
            ..d
        };
        Ok(NatConfig {
            reachability,
            relay: self.relay.then_some(limits),
            relays: multiaddrs("nat.relays", &self.relays)?,
            hole_punching: self.hole_punching,
            upnp: self.upnp,
            ..NatConfig::default()
        })
    }
}

/// `[allowlist]`: a closed network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistSection {
    /// The operator's Ed25519 public key, in hex, that signs the list.
    pub operator: String,
    /// The signed list.
    pub file: PathBuf,
}

/// `[ledger]`: the backend payments settle on.
#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum LedgerSection {
    /// The embedded ledger (the default).
    Embedded {
        /// The ledger file (default: `ledger.redb` in the repository).
        path: Option<PathBuf>,
        /// The genesis key, in hex (default: generated into the repository).
        treasury: Option<String>,
        /// Serve the ledger over Hedera's gRPC API on this address (feature `hedera`).
        serve: Option<SocketAddr>,
        /// The mirror node's address when serving.
        serve_mirror: Option<SocketAddr>,
    },
    /// Hedera, through the official SDK (feature `hedera`).
    #[cfg_attr(not(feature = "hedera"), allow(dead_code))]
    Hedera {
        /// `"mainnet"`, `"testnet"` or `"previewnet"`.
        network: Option<String>,
        /// A consensus node's address (with `mirror`, instead of `network`).
        node: Option<SocketAddr>,
        /// A mirror node's address.
        mirror: Option<SocketAddr>,
    },
}

impl Default for LedgerSection {
    fn default() -> Self {
        Self::Embedded {
            path: None,
            treasury: None,
            serve: None,
            serve_mirror: None,
        }
    }
}

/// `[payments]`: paid service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsSection {
    /// The node's ledger account (`0.0.N`).
    pub account: String,
    /// The account's Ed25519 seed, in hex.
    pub key_file: PathBuf,
    /// Tinybars per shard served.
    #[serde(default = "default_price")]
    pub price_per_shard: u64,
    /// The settlement period, seconds.
    #[serde(default = "default_period")]
    pub period_secs: u64,
    /// Tinybars this node locks as collateral each period.
    pub collateral: u64,
    /// The member list (`members.toml`).
    pub members: PathBuf,
    /// The clearing account.
    pub clearing: String,
    /// The settlement topic.
    pub topic: String,
    /// The clearing account's key: only on the node that settles.
    pub clearing_key_file: Option<PathBuf>,
    /// The ledger's name in receipts' domain, the same for every member of the network:
    /// needed when members reach one ledger by different routes (the embedded ledger's
    /// keeper and members on its served gRPC API). Default: `local:<treasury key>` for the
    /// embedded ledger, `hedera:<network>` for Hedera's networks.
    pub ledger: Option<String>,
    /// Shards a payer may be served past its newest receipt (default: the payments crate's
    /// `DEFAULT_MAX_AHEAD`, whose README states the loss it bounds).
    #[serde(default = "default_ahead")]
    pub max_ahead: u64,
}

fn default_price() -> u64 {
    streamspace_payments::book::DEFAULT_PRICE_PER_SHARD
}
fn default_period() -> u64 {
    3600
}
fn default_ahead() -> u64 {
    streamspace_payments::book::DEFAULT_MAX_AHEAD
}

/// `members.toml`: who is in the network, and what they pay with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersFile {
    #[serde(default)]
    member: Vec<MemberEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberEntry {
    peer: String,
    account: String,
    key: String,
    collateral: u64,
}

/// A member: its ledger account, payment key and collateral per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its ledger account.
    pub account: AccountId,
    /// The key its receipts are signed with.
    pub key: PublicKey,
    /// Tinybars it locks each period.
    pub collateral: u64,
}

/// Reads a TOML file into `T`, naming the file in errors.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in {}", path.display()))
}

/// A 32-byte value in hex.
pub(crate) fn hex32(what: &str, s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .with_context(|| format!("{what}: expected 64 hex digits"))?;
    Ok(out)
}

/// An Ed25519 signing key from a file holding its 32-byte seed in hex.
pub(crate) fn read_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&hex32(
        &path.display().to_string(),
        &text,
    )?))
}

pub(crate) fn account(what: &str, s: &str) -> Result<AccountId> {
    s.parse()
        .map_err(|e| anyhow::anyhow!("{what}: {s:?} is not an account id (0.0.N): {e:?}"))
}

pub(crate) fn topic(what: &str, s: &str) -> Result<TopicId> {
    s.parse()
        .map_err(|e| anyhow::anyhow!("{what}: {s:?} is not a topic id (0.0.N): {e:?}"))
}

pub(crate) fn multiaddrs(what: &str, v: &[String]) -> Result<Vec<Multiaddr>> {
    v.iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("{what}: {s:?} is not a multiaddr"))
        })
        .collect()
}

/// Reads the member list, refusing duplicates.
///
/// # Errors
///
/// When the file cannot be read or parsed, or lists a peer or account twice: the message
/// names the file and the member.
pub(crate) fn read_members(path: &Path) -> Result<HashMap<PeerId, Member>> {
    let file: MembersFile = read_toml(path)?;
    let mut out = HashMap::new();
    let mut accounts = std::collections::HashSet::new();
    for (i, m) in file.member.iter().enumerate() {
        let at = format!("{} member {}", path.display(), i + 1);
        let peer: PeerId = m
            .peer
            .parse()
            .with_context(|| format!("{at}: {:?} is not a peer id", m.peer))?;
        let member = Member {
            account: account(&at, &m.account)?,
            key: PublicKey(hex32(&at, &m.key)?),
            collateral: m.collateral,
        };
        ensure!(
            accounts.insert(member.account),
            "{at}: account {} listed twice",
            m.account
        );
        if out.insert(peer, member).is_some() {
            bail!("{at}: peer {peer} listed twice");
        }
    }
    Ok(out)
}

/// Resolves `p` against the configuration file's directory.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Writes a secret (a key file) readable by its owner only, and syncs it to disk.
///
/// # Errors
///
/// When the file cannot be created or written.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config_and_refuses_unknown_keys() {
        let full = r#"
            [node]
            repo = "r"
            listen = ["/ip4/127.0.0.1/tcp/0"]
            tier = "tier1"
            quota = 1000
            metrics = "127.0.0.1:9464"
            [ledger]
            backend = "hedera"
            network = "testnet"
            [payments]
            account = "0.0.1001"
            key_file = "k"
            collateral = 5
            members = "m.toml"
            clearing = "0.0.2"
            topic = "0.0.3"
        "#;
        let c: Config = toml::from_str(full).expect("parses");
        assert_eq!(c.node.tier, TierName::Tier1);
        assert!(matches!(c.ledger, LedgerSection::Hedera { .. }));
        let p = c.payments.expect("payments");
        assert_eq!(
            (p.period_secs, p.price_per_shard, p.max_ahead),
            (3600, 10_000, 64)
        );
        let minimal: Config = toml::from_str("[node]\nrepo = \"r\"").expect("parses");
        assert!(matches!(minimal.ledger, LedgerSection::Embedded { .. }));
        assert!(toml::from_str::<Config>("[node]\nrepo = \"r\"\nlisten_on = []").is_err());
        assert!(toml::from_str::<Config>("[node]\nrepo = \"r\"\ntier = \"gold\"").is_err());
    }

    #[test]
    fn nat_section_defaults_and_loopback() {
        let c: Config = toml::from_str("[node]\nrepo = \"r\"").expect("parses");
        let any: Vec<Multiaddr> = vec!["/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr")];
        let lo: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
        let n = c.nat.to_transport(&any).expect("valid");
        assert_eq!(n.reachability, None);
        assert!(n.hole_punching && !n.upnp && n.relay.is_some());
        assert_eq!(
            c.nat.to_transport(&lo).expect("valid").reachability,
            Some(streamspace_transport::node::Reachability::Public)
        );
        let c: Config = toml::from_str(
            "[node]\nrepo = \"r\"\n[nat]\nreachability = \"private\"\nupnp = true\nrelay_max_circuit_bytes = 4096",
        )
        .expect("parses");
        let n = c.nat.to_transport(&lo).expect("valid");
        assert_eq!(
            n.reachability,
            Some(streamspace_transport::node::Reachability::Private)
        );
        assert!(n.upnp);
        assert_eq!(n.relay.expect("relay").max_circuit_bytes, 4096);
        let bad: Config = toml::from_str("[node]\nrepo = \"r\"\n[nat]\nreachability = \"maybe\"")
            .expect("parses");
        assert!(bad.nat.to_transport(&any).is_err());
        assert!(toml::from_str::<Config>("[node]\nrepo = \"r\"\n[nat]\nrelais = []").is_err());
    }

    #[test]
    fn members_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let peer = streamspace_transport::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let entry = |account: &str| {
            format!(
                "[[member]]\npeer = \"{peer}\"\naccount = \"{account}\"\nkey = \"{}\"\ncollateral = 7\n",
                "ab".repeat(32)
            )
        };
        let path = dir.path().join("m.toml");
        std::fs::write(&path, entry("0.0.1001")).expect("write");
        let m = read_members(&path).expect("reads");
        assert_eq!(m[&peer].collateral, 7);
        std::fs::write(&path, entry("0.0.1001") + &entry("0.0.1002")).expect("write");
        assert!(
            format!("{:#}", read_members(&path).unwrap_err()).contains("listed twice"),
            "duplicate peer"
        );
        std::fs::write(&path, entry("zero")).expect("write");
        assert!(format!("{:#}", read_members(&path).unwrap_err()).contains("member 1"));
    }
}
