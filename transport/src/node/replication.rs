//! Tier-1 replication: a Tier-1 node that several distinct peers ask for content it lacks
//! fetches the content and provides it too.

use std::collections::{HashMap, HashSet};

use cid::Cid;
use libp2p::PeerId;
use streamspace_shard::store::BlockStore;

use super::Node;
use super::driver::{Command, Driver};
use crate::fetch::FetchOptions;
use crate::message::Tier;

/// Roots whose demand a Tier-1 node tracks at once.
const MAX_DEMAND_TRACKED: usize = 4096;
/// Replications a Tier-1 node runs at once.
const MAX_REPLICATIONS: usize = 4;

/// Who asked for which roots this node lacks, and the replications under way.
#[derive(Debug)]
pub(super) struct Replication {
    /// Distinct peers asking before a root is replicated.
    after: usize,
    demand: HashMap<Cid, HashSet<PeerId>>,
    running: HashSet<Cid>,
}

impl Replication {
    /// Replicates a root once `after` distinct peers asked for it (at least one).
    pub(super) fn new(after: usize) -> Self {
        Self {
            after: after.max(1),
            demand: HashMap::new(),
            running: HashSet::new(),
        }
    }

    /// Counts `peer` among those asking for `root`; whether `root` is now in demand enough to
    /// replicate, with room for another replication.
    fn ask(&mut self, peer: PeerId, root: Cid) -> bool {
        if self.running.contains(&root) {
            return false;
        }
        if self.demand.len() >= MAX_DEMAND_TRACKED && !self.demand.contains_key(&root) {
            self.demand.clear();
        }
        let askers = self.demand.entry(root).or_default();
        askers.insert(peer);
        askers.len() >= self.after && self.running.len() < MAX_REPLICATIONS
    }

    /// `root`'s replication begins: its demand is forgotten.
    fn begin(&mut self, root: Cid) {
        self.demand.remove(&root);
        self.running.insert(root);
    }

    /// `root`'s replication ended (well or not).
    pub(super) fn finished(&mut self, root: &Cid) {
        self.running.remove(root);
    }
}

impl<S: BlockStore + 'static> Driver<S> {
    /// Tier-1 nodes replicate content that several peers ask them for and they lack.
    pub(super) fn note_demand(&mut self, peer: PeerId, root: Cid) {
        if self.shared.tier != Tier::Tier1 || self.provided.contains(&root) {
            return;
        }
        if !self.replication.ask(peer, root) {
            return;
        }
        let Some(commands) = self.me.upgrade() else {
            return;
        };
        self.replication.begin(root);
        tracing::info!(%root, "replicating content in demand");
        let node = Node {
            peer_id: *self.swarm.local_peer_id(),
            commands,
            shared: self.shared.clone(),
        };
        tokio::spawn(async move {
            let ok = node.fetch(root, FetchOptions::default()).await.is_ok()
                && node.provide(root).await.is_ok();
            let _ = node.commands.send(Command::Replicated(root, ok)).await;
        });
    }
}
