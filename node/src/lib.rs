#![doc = include_str!("../README.md")]
#![deny(missing_docs, unreachable_pub, rustdoc::broken_intra_doc_links)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod config;
pub mod gateway;
pub mod http;
mod listings;
mod live;
pub mod live_keys;
mod metrics;
mod run;
pub mod tar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::Config;
use streamspace_shard::store::DiskStore;
use streamspace_transport::{Multiaddr, Tier};
use tokio::sync::watch;

/// Starting or running a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be read or parsed (invalid TOML, an unknown key, a missing
    /// setting); the message names the file and the key.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// The node could not start or stop cleanly: a setting's value is invalid (named), or
    /// the repository, the ledger, the transport or an HTTP endpoint failed; the message says
    /// which and why.
    #[error("{0:#}")]
    Run(anyhow::Error),
}

/// A running full node: the transport serving its repository's block store, paid service
/// when configured, the gateway and metrics endpoints, and the loop that journals, posts and
/// settles receipts. Built with [`Node::builder`]; stopped with [`Node::shutdown`].
pub struct Node {
    transport: streamspace_transport::Node<DiskStore>,
    cache: Arc<gateway::CacheStats>,
    gateway_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    api_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.transport.peer_id())
            .field("gateway_addr", &self.gateway_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A builder with the defaults of [`Config`]; at least [`NodeBuilder::repo`] must be set.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The transport node: its peer id, addresses, fetching, providing and counters.
    pub fn transport(&self) -> &streamspace_transport::Node<DiskStore> {
        &self.transport
    }

    /// The gateway's bound address, when one is configured.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// The operator API's bound address, when one is configured.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The Prometheus endpoint's bound address, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Blocks the gateway found in the store, and blocks it fetched.
    pub fn cache_stats(&self) -> &gateway::CacheStats {
        &self.cache
    }

    /// Stops serving (open HTTP answers get 5 s), shuts the transport down, journals and posts
    /// the receipts the node holds and, on the clearing node, settles what ended.
    ///
    /// # Errors
    ///
    /// [`Error::Run`] when closing the books failed (the journal keeps what it holds).
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r.map_err(Error::Run),
            Err(e) => Err(Error::Run(anyhow::anyhow!("the node's task failed: {e}"))),
        }
    }
}

/// What a node earned in one period, by the newest receipts its payers signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Earnings {
    /// The period's number.
    pub period: u64,
    /// Its start, Unix seconds.
    pub start_secs: u64,
    /// Payers with a receipt.
    pub payers: u64,
    /// Shards acknowledged.
    pub shards: u64,
    /// Tinybars owed.
    pub tinybars: u64,
}

/// Builds a [`Node`]: from a [`Config`] (read from a file or made in code), with the common
/// settings overridable one by one.
#[derive(Debug, Default)]
pub struct NodeBuilder {
    config: Config,
    base: PathBuf,
}

impl NodeBuilder {
    /// A builder from the configuration file at `path`; relative paths in it are taken from
    /// the file's directory.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let config = Config::from_file(path)?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self { config, base })
    }

    /// A builder from `config`, relative paths taken from `base`.
    pub fn from_config(config: Config, base: impl Into<PathBuf>) -> Self {
        Self {
            config,
            base: base.into(),
        }
    }

    /// The configuration as it stands, to change what has no method of its own.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The repository directory: block store, identity, journal.
    #[must_use]
    pub fn repo(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.node.repo = dir.into();
        self
    }

    /// The network's name.
    #[must_use]
    pub fn network(mut self, name: impl Into<String>) -> Self {
        self.config.node.network = name.into();
        self
    }

    /// Listen on `addrs`, instead of the configured addresses.
    #[must_use]
    pub fn listen(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.config.node.listen = addrs.into_iter().map(|a| a.to_string()).collect();
        self
    }

    /// Adds a bootstrap peer (a multiaddr ending in `/p2p/<peer id>`).
    #[must_use]
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.config.node.bootstrap.push(addr.to_string());
        self
    }

    /// The tier the node announces.
    #[must_use]
    pub fn tier(mut self, tier: Tier) -> Self {
        self.config.node.tier = tier.into();
        self
    }

    /// Bytes of disk offered.
    #[must_use]
    pub fn quota(mut self, bytes: u64) -> Self {
        self.config.node.quota = Some(bytes);
        self
    }

    /// Serve the HTTP gateway on `addr` (port 0: chosen by the OS, see
    /// [`Node::gateway_addr`]).
    #[must_use]
    pub fn gateway(mut self, addr: SocketAddr) -> Self {
        self.config.node.gateway = Some(addr);
        self
    }

    /// Serve the operator API (`/api/v0`, kubo's subset and StreamSpace's own) and the
    /// dashboard on `addr`. Off loopback, a bearer token must be configured
    /// (`node.api_token_file`).
    #[must_use]
    pub fn api(mut self, addr: SocketAddr) -> Self {
        self.config.node.api = Some(addr);
        self
    }

    /// Serve Prometheus metrics on `addr`.
    #[must_use]
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.config.node.metrics = Some(addr);
        self
    }

    /// What the node configured here earned, period by period, from its journal (the node
    /// need not run; `[payments]` must be configured).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without `[payments]` or with an invalid account; [`Error::Run`] when
    /// the journal cannot be read.
    pub fn earnings(&self) -> Result<Vec<Earnings>, Error> {
        use anyhow::Context;
        let p = self
            .config
            .payments
            .as_ref()
            .context("the configuration has no [payments] section")
            .map_err(Error::Config)?;
        let me = config::account("payments.account", &p.account).map_err(Error::Config)?;
        let repo = config::resolve(&self.base, &self.config.node.repo);
        let read = || -> anyhow::Result<Vec<Earnings>> {
            let ledger = run::ledger_name(&self.config, &repo)?;
            let domain = streamspace_payments::receipt::Domain::new(
                self.config.node.network.clone(),
                ledger,
                config::account("payments.clearing", &p.clearing)?,
                config::topic("payments.topic", &p.topic)?,
            );
            let journal =
                streamspace_payments::Journal::open(repo.join("journal.redb"), domain.id())?;
            run::earnings(&journal, me, p.period_secs)
        };
        read().map_err(Error::Run)
    }

    /// Opens the repository and the ledger, starts the transport, the endpoints and the
    /// settlement loop.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no repository is set; [`Error::Run`] when a setting's value is
    /// invalid (named), or the repository, the ledger, the transport or an endpoint cannot be
    /// opened.
    pub async fn start(self) -> Result<Node, Error> {
        if self.config.node.repo.as_os_str().is_empty() {
            return Err(Error::Config(anyhow::anyhow!(
                "node.repo: the repository directory is not set"
            )));
        }
        run::start(self.config, self.base).await.map_err(Error::Run)
    }
}
