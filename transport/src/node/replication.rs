//! Tier-1 replication: a Tier-1 node that several distinct peers ask for content it lacks
//! fetches the content and provides it too, when its operator's policy admits it (see
//! [`ReplicationConfig`]).
//!
//! What a stranger can make of it is bounded: only demand from peers the policy counts is
//! tracked, each peer's demand for at most [`MAX_DEMAND_PER_PEER`] roots at once, at most
//! [`MAX_DEMAND_TRACKED`] roots in all (the oldest forgotten first, never all at once), at most
//! [`MAX_REPLICATIONS`] replications at a time, each within
//! [`ReplicationConfig::max_bytes`].

use std::collections::{HashMap, HashSet, VecDeque};

use cid::Cid;
use libp2p::PeerId;
use streamspace_shard::store::BlockStore;

use super::driver::{Command, Driver};
use super::{Node, ReplicationConfig};
use crate::fetch::{Budget, FetchOptions};
use crate::message::Tier;

/// Roots whose demand a Tier-1 node tracks at once.
pub(crate) const MAX_DEMAND_TRACKED: usize = 4096;
/// Roots one peer's demand is tracked for at once.
pub(crate) const MAX_DEMAND_PER_PEER: usize = 16;
/// Replications a Tier-1 node runs at once.
pub(crate) const MAX_REPLICATIONS: usize = 4;

/// Who asked for which roots this node lacks, and the replications under way.
#[derive(Debug)]
pub(super) struct Replication {
    config: ReplicationConfig,
    demand: HashMap<Cid, HashSet<PeerId>>,
    /// Roots in `demand`, oldest first.
    order: VecDeque<Cid>,
    /// Roots each peer's demand is counted for.
    by_peer: HashMap<PeerId, usize>,
    running: HashSet<Cid>,
}

impl Replication {
    pub(super) fn new(config: ReplicationConfig) -> Self {
        Self {
            config,
            demand: HashMap::new(),
            order: VecDeque::new(),
            by_peer: HashMap::new(),
            running: HashSet::new(),
        }
    }

    /// Forgets the demand for `root`.
    fn forget(&mut self, root: &Cid) {
        if let Some(askers) = self.demand.remove(root) {
            for p in askers {
                if let Some(n) = self.by_peer.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        self.by_peer.remove(&p);
                    }
                }
            }
            self.order.retain(|r| r != root);
        }
    }

    /// Counts `peer` among those asking for `root`; whether `root` is now in demand enough to
    /// replicate, admitted by the policy, with room for another replication.
    fn ask(&mut self, peer: PeerId, root: Cid) -> bool {
        if self.running.contains(&root) || !self.config.policy.counts(&peer) {
            return false;
        }
        let known = self.demand.get(&root).is_some_and(|a| a.contains(&peer));
        if !known {
            if self.by_peer.get(&peer).copied().unwrap_or(0) >= MAX_DEMAND_PER_PEER {
                return false;
            }
            if !self.demand.contains_key(&root) {
                if self.demand.len() >= MAX_DEMAND_TRACKED
                    && let Some(oldest) = self.order.front().copied()
                {
                    self.forget(&oldest);
                }
                self.order.push_back(root);
            }
            self.demand.entry(root).or_default().insert(peer);
            *self.by_peer.entry(peer).or_default() += 1;
        }
        let askers = self.demand.get(&root).map_or(0, HashSet::len);
        askers >= self.config.after.max(1)
            && self.running.len() < MAX_REPLICATIONS
            && self.config.policy.admits(&root)
    }

    /// `root`'s replication begins: its demand is forgotten.
    fn begin(&mut self, root: Cid) {
        self.forget(&root);
        self.running.insert(root);
    }

    /// `root`'s replication ended (well or not).
    pub(super) fn finished(&mut self, root: &Cid) {
        self.running.remove(root);
    }

    /// Roots whose demand is tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.demand.len()
    }
}

impl<S: BlockStore + 'static> Driver<S> {
    /// Tier-1 nodes replicate content that several peers ask them for and they lack.
    pub(super) fn note_demand(&mut self, peer: PeerId, root: Cid) {
        if self.shared.tier != Tier::Tier1 || self.provided_set.contains(&root) {
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
        let max = self.replication.config.max_bytes;
        let options = FetchOptions {
            budget: Some(Budget {
                bytes: max,
                blocks: Budget::for_size(max).blocks,
            }),
            ..FetchOptions::default()
        };
        tokio::spawn(async move {
            let ok = match node.fetch(root, options).await {
                Ok(_) => node.provide(root).await.is_ok(),
                Err(e) => {
                    tracing::info!(%root, error = %e, "replication stopped");
                    false
                }
            };
            let _ = node.commands.send(Command::Replicated(root, ok)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cid::{Cid, Version};
    use libp2p::PeerId;
    use streamspace_shard::block::{RAW, cid_of};

    use super::*;
    use crate::node::{ReplicateAnything, ReplicateNothing};

    fn root(i: u32) -> Cid {
        cid_of(Version::V1, RAW, &i.to_le_bytes())
    }

    fn replication(after: usize) -> Replication {
        Replication::new(ReplicationConfig {
            after,
            max_bytes: 1 << 20,
            policy: Arc::new(ReplicateAnything),
        })
    }

    #[test]
    fn the_default_policy_counts_nobody() {
        let mut r = Replication::new(ReplicationConfig {
            policy: Arc::new(ReplicateNothing),
            ..ReplicationConfig::default()
        });
        for _ in 0..10 {
            assert!(!r.ask(PeerId::random(), root(1)));
        }
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn one_peer_cannot_flush_the_demand_of_others() {
        let mut r = replication(2);
        let honest = PeerId::random();
        assert!(!r.ask(honest, root(0)));
        // A stranger names thousands of roots: only its first few are tracked.
        let stranger = PeerId::random();
        for i in 1..10_000 {
            r.ask(stranger, root(i));
        }
        assert_eq!(r.tracked(), 1 + MAX_DEMAND_PER_PEER);
        // The honest demand is still there: a second peer asking makes two.
        assert!(r.ask(PeerId::random(), root(0)));
    }

    #[test]
    fn many_strangers_forget_the_oldest_demand_not_all_of_it() {
        let mut r = replication(2);
        for i in 0..(MAX_DEMAND_TRACKED as u32 + 100) {
            r.ask(PeerId::random(), root(i));
        }
        assert_eq!(r.tracked(), MAX_DEMAND_TRACKED);
        assert!(!r.demand.contains_key(&root(0)));
        assert!(r.demand.contains_key(&root(MAX_DEMAND_TRACKED as u32 + 99)));
    }

    #[test]
    fn the_same_peer_asking_twice_is_one_asker() {
        let mut r = replication(2);
        let p = PeerId::random();
        assert!(!r.ask(p, root(7)));
        assert!(!r.ask(p, root(7)));
        assert!(r.ask(PeerId::random(), root(7)));
    }
}
