//! `streamspace node`: a long-running node from a TOML file (see
//! [`streamspace_node::Config`]) and flags, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use streamspace_node::NodeBuilder;
use streamspace_transport::Tier;

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

/// A tier on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum TierArg {
    Edge,
    Tier1,
}

/// Flags override the file.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The node's configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// Listen addresses (replacing the file's).
    #[arg(long)]
    listen: Vec<streamspace_transport::Multiaddr>,
    /// Bootstrap peers (added to the file's).
    #[arg(long)]
    bootstrap: Vec<streamspace_transport::Multiaddr>,
    /// Tier.
    #[arg(long)]
    tier: Option<TierArg>,
    /// Bytes of disk offered.
    #[arg(long)]
    quota: Option<u64>,
    /// HTTP gateway address.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Prometheus metrics address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Operator API (`/api/v0`) and dashboard (`/dashboard`) address.
    #[arg(long)]
    api: Option<SocketAddr>,
}

pub(crate) async fn run(cmd: &NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Run(args) => run_node(args).await,
        NodeCommand::Earnings { config } => {
            println!("period,start_utc_s,payers,shards,tinybars");
            for e in NodeBuilder::from_file(config)?.earnings()? {
                println!(
                    "{},{},{},{},{}",
                    e.period, e.start_secs, e.payers, e.shards, e.tinybars
                );
            }
            Ok(())
        }
    }
}

async fn run_node(args: &RunArgs) -> Result<()> {
    let mut b = NodeBuilder::from_file(&args.config)?;
    if !args.listen.is_empty() {
        b = b.listen(args.listen.iter().cloned());
    }
    for a in &args.bootstrap {
        b = b.bootstrap(a.clone());
    }
    if let Some(t) = args.tier {
        b = b.tier(match t {
            TierArg::Edge => Tier::Edge,
            TierArg::Tier1 => Tier::Tier1,
        });
    }
    if let Some(q) = args.quota {
        b = b.quota(q);
    }
    if let Some(g) = args.gateway {
        b = b.gateway(g);
    }
    if let Some(m) = args.metrics {
        b = b.metrics(m);
    }
    if let Some(a) = args.api {
        b = b.api(a);
    }
    let node = b.start().await?;
    shutdown_signal().await;
    node.shutdown().await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn shutdown_signal() {
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
