//! Online content commands, as `ipfs cat` is online when its daemon runs: blocks the
//! repository does not hold come from the network, through a node's API — the node running on
//! the repository, or, given `--bootstrap` peers, a node started here on the repository for
//! the one command and stopped after it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::{Cli, repo_dir, running_node};

/// How a content command reaches the network.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct OnlineArgs {
    /// A peer to fetch from (`/ip4/…/tcp/…/p2p/…`, repeatable) when no node runs on the
    /// repository: a node is started on the repository for this command.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<streamspace_transport::Multiaddr>,
    /// Seconds the command may take when it goes through a node.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub(crate) timeout: u64,
}

/// A node's API for one command, and the node if it was started for it.
pub(crate) struct Online {
    pub(crate) api: SocketAddr,
    started: Option<streamspace_node::Node>,
    timeout: Duration,
}

impl Online {
    /// The node running on the repository; else, with `--bootstrap` peers, one started on
    /// it; else `None` (the command reads the local store only).
    ///
    /// # Errors
    ///
    /// The repository cannot be found or the node does not start.
    pub(crate) async fn reach(cli: &Cli, args: &OnlineArgs) -> Result<Option<Self>> {
        let timeout = Duration::from_secs(args.timeout.max(1));
        if let Some(api) = running_node(cli).await {
            return Ok(Some(Self {
                api,
                started: None,
                timeout,
            }));
        }
        if args.bootstrap.is_empty() {
            return Ok(None);
        }
        let mut b = streamspace_node::Node::builder()
            .repo(repo_dir(cli)?)
            .api(SocketAddr::from(([127, 0, 0, 1], 0)));
        for a in &args.bootstrap {
            b = b.bootstrap(a.clone());
        }
        if let Some(q) = cli.quota {
            b = b.quota(q);
        }
        let node = b
            .start()
            .await
            .context("starting a node on the repository for this command")?;
        let api = node
            .api_addr()
            .context("the node started for this command has no API")?;
        Ok(Some(Self {
            api,
            started: Some(node),
            timeout,
        }))
    }

    /// Runs `work` within the timeout, then stops the node if it was started for it.
    ///
    /// # Errors
    ///
    /// `work`'s error, the timeout, or the node failing to stop.
    pub(crate) async fn run<T>(self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let r = tokio::time::timeout(self.timeout, work).await;
        if let Some(n) = self.started {
            n.shutdown()
                .await
                .context("stopping the node started for this command")?;
        }
        r.map_err(|_| {
            anyhow!(
                "no answer within {} s (--timeout): the content may have no provider reachable from here",
                self.timeout.as_secs()
            )
        })?
    }
}
