//! Fetching a DAG, or the part of a file a byte range needs, from many peers at once.
//!
//! Blocks are wanted in playback order (depth-first, children in link order). The next
//! `window` blocks are requested first, in order, each from the best-scoring peer with room
//! for another request; every block is verified against its CID before it is stored; a request
//! that fails or times out is asked of another peer; a peer that sends a bad block is reported
//! to the node, which bans it past a threshold, and the fetch goes on with the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use streamspace_shard::block::{Block, DAG_PB, verify};
use streamspace_shard::pb::{PbNode, UnixFsData};
use streamspace_shard::store::{BlockStore, StoreError};

use crate::message::{MAX_WANT, RefusalReason, Request, Response};
use crate::node::{Node, RequestError};

/// How a fetch runs.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Peers to fetch from besides the providers the DHT names.
    pub peers: Vec<PeerId>,
    /// Whether to ask the DHT for providers.
    pub use_dht: bool,
    /// Only the blocks of this byte range of the file (`offset`, `length`); `None` for the
    /// whole DAG.
    pub range: Option<(u64, u64)>,
    /// Blocks ahead of the playback position requested at once.
    pub window: usize,
    /// Blocks per request.
    pub batch: usize,
    /// Requests in flight to one peer.
    pub per_peer: usize,
    /// Failed or late requests after which a peer is no longer asked in this fetch.
    pub max_failures: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            use_dht: true,
            range: None,
            window: 64,
            batch: 4,
            per_peer: 4,
            max_failures: 3,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Blocks the DAG (or range) needed.
    pub blocks: u64,
    /// Of those, fetched from peers (the rest were in the store already).
    pub fetched: u64,
    /// Bytes fetched, per peer.
    pub bytes_from: HashMap<PeerId, u64>,
    /// Bad blocks received (and discarded).
    pub bad_blocks: u64,
    /// Requests that failed or timed out and were asked elsewhere.
    pub retries: u64,
    /// Time until the first verified block arrived.
    pub first_block: Option<Duration>,
    /// Time for the whole fetch.
    pub elapsed: Duration,
}

/// A fetch that could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Nobody to fetch from.
    #[error("no providers of {0}")]
    NoProviders(Cid),
    /// Every peer that could be asked for a block failed or lacked it.
    #[error("block {cid} is unavailable: {tried} peers tried")]
    Unavailable {
        /// The block.
        cid: Cid,
        /// Peers that were asked.
        tried: usize,
    },
    /// A verified block does not decode as the DAG node its CID says it is.
    #[error("block {cid} is not a valid DAG node: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What was wrong.
        reason: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node shut down.
    #[error("node has shut down")]
    Closed,
}

#[derive(Debug, Clone)]
struct Need {
    cid: Cid,
    /// Byte offset of the block's data in the file.
    offset: u64,
    /// Peers that lack the block or failed to deliver it.
    excluded: HashSet<PeerId>,
    /// Whether the local store was already asked for it.
    checked: bool,
}

#[derive(Debug, Default)]
struct PeerScore {
    inflight: usize,
    bytes: u64,
    busy: Duration,
    failures: u32,
    paused_until: Option<Instant>,
}

impl PeerScore {
    /// Estimated bytes per second, optimistic for peers not tried yet, discounted by failures
    /// and by requests already in flight.
    fn score(&self) -> f64 {
        let rate = if self.busy.is_zero() {
            1e12
        } else {
            self.bytes as f64 / self.busy.as_secs_f64()
        };
        rate / f64::from(1 + self.failures) / (1 + self.inflight) as f64
    }
}

type Key = Vec<u32>;
type Outcome = (
    PeerId,
    Vec<(Key, Need)>,
    Result<Response, RequestError>,
    Duration,
);

impl<S: BlockStore + 'static> Node<S> {
    /// Fetches `root` (or the blocks of `options.range`) into this node's store from peers,
    /// verifying every block.
    ///
    /// # Errors
    ///
    /// [`FetchError`]; blocks verified so far stay in the store, so fetching again resumes.
    pub async fn fetch(&self, root: Cid, options: FetchOptions) -> Result<FetchReport, FetchError> {
        let start = Instant::now();
        let mut peers: HashMap<PeerId, PeerScore> = options
            .peers
            .iter()
            .map(|p| (*p, PeerScore::default()))
            .collect();
        let mut report = FetchReport::default();
        let mut pending: BTreeMap<Key, Need> = BTreeMap::new();
        pending.insert(
            vec![0],
            Need {
                cid: root,
                offset: 0,
                excluded: HashSet::new(),
                checked: false,
            },
        );
        let mut asked_dht = false;
        let mut inflight: FuturesUnordered<_> = FuturesUnordered::new();
        let window = options.window.max(1);
        let batch = options.batch.clamp(1, MAX_WANT);

        loop {
            // Blocks already held are expanded locally, without asking anyone (and their
            // children may be held too).
            loop {
                let mut local = Vec::new();
                for (key, need) in pending.iter_mut().take(window) {
                    if need.checked {
                        continue;
                    }
                    need.checked = true;
                    if let Some(data) = self.store().get(&need.cid).await? {
                        local.push((key.clone(), data));
                    }
                }
                if local.is_empty() {
                    break;
                }
                for (key, data) in local {
                    if let Some(need) = pending.remove(&key) {
                        report.blocks += 1;
                        self.expand(&key, &need, data, &options, &mut pending)?;
                    }
                }
            }
            if pending.is_empty() && inflight.is_empty() {
                break;
            }
            if !pending.is_empty() && peers.is_empty() && !asked_dht && options.use_dht {
                asked_dht = true;
                for p in self
                    .find_providers(root)
                    .await
                    .map_err(|_| FetchError::Closed)?
                {
                    peers.entry(p).or_default();
                }
            }
            if peers.is_empty() && inflight.is_empty() {
                return Err(FetchError::NoProviders(root));
            }

            // Hand out the window, in order, to the best peers with room.
            let now = Instant::now();
            let in_window: Vec<Key> = pending.keys().take(window).cloned().collect();
            let mut taken: HashMap<PeerId, Vec<(Key, Need)>> = HashMap::new();
            let mut stuck = None;
            for key in in_window {
                let Some(need) = pending.get(&key) else {
                    continue;
                };
                let best = peers
                    .iter()
                    .filter(|(p, s)| {
                        !need.excluded.contains(p)
                            && s.failures < options.max_failures
                            && s.inflight < options.per_peer
                            && s.paused_until.is_none_or(|t| t <= now)
                            && taken.get(p).is_none_or(|t| t.len() < batch)
                    })
                    .max_by(|a, b| a.1.score().total_cmp(&b.1.score()))
                    .map(|(p, _)| *p);
                match best {
                    Some(p) => {
                        if let Some(need) = pending.remove(&key) {
                            taken.entry(p).or_default().push((key, need));
                        }
                    }
                    None => {
                        let usable = peers.iter().any(|(p, s)| {
                            !need.excluded.contains(p) && s.failures < options.max_failures
                        });
                        if !usable {
                            stuck = Some(need.clone());
                        }
                    }
                }
            }
            for (peer, needs) in taken {
                if let Some(s) = peers.get_mut(&peer) {
                    s.inflight += 1;
                }
                let cids = needs.iter().map(|(_, n)| n.cid).collect();
                let node = self.clone();
                inflight.push(async move {
                    let t = Instant::now();
                    let r = node
                        .request(
                            peer,
                            Request::Want {
                                root: Some(root),
                                cids,
                            },
                        )
                        .await;
                    (peer, needs, r, t.elapsed())
                });
            }
            if inflight.is_empty() {
                if let Some(need) = stuck {
                    return Err(FetchError::Unavailable {
                        cid: need.cid,
                        tried: need.excluded.len(),
                    });
                }
                // Every usable peer paused us: wait for the earliest to resume.
                let wake = peers
                    .values()
                    .filter_map(|s| s.paused_until)
                    .min()
                    .unwrap_or(now + Duration::from_millis(50));
                tokio::time::sleep_until(wake.into()).await;
                continue;
            }
            let Some(outcome) = inflight.next().await else {
                continue;
            };
            self.settle(
                outcome,
                &mut peers,
                &mut pending,
                &mut report,
                &options,
                start,
            )
            .await?;
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    async fn settle(
        &self,
        (peer, needs, result, took): Outcome,
        peers: &mut HashMap<PeerId, PeerScore>,
        pending: &mut BTreeMap<Key, Need>,
        report: &mut FetchReport,
        options: &FetchOptions,
        start: Instant,
    ) -> Result<(), FetchError> {
        let score = peers.entry(peer).or_default();
        score.inflight = score.inflight.saturating_sub(1);
        let mut requeue = |key: Key, mut need: Need, exclude: bool| {
            if exclude {
                need.excluded.insert(peer);
            }
            pending.insert(key, need);
        };
        match result {
            Ok(Response::Blocks {
                blocks,
                missing,
                deferred,
            }) => {
                let mut by_cid: HashMap<Cid, Bytes> = blocks.into_iter().collect();
                let missing: HashSet<Cid> = missing.into_iter().collect();
                let deferred: HashSet<Cid> = deferred.into_iter().collect();
                let mut got = Vec::new();
                let mut bytes = 0u64;
                for (key, need) in needs {
                    if let Some(data) = by_cid.get(&need.cid).cloned() {
                        if verify(&need.cid, &data).is_err() {
                            report.bad_blocks += 1;
                            self.report_bad_block(peer, need.cid).await;
                            requeue(key, need, true);
                            continue;
                        }
                        bytes += data.len() as u64;
                        got.push((key, need, data));
                    } else {
                        let exclude = missing.contains(&need.cid) || !deferred.contains(&need.cid);
                        requeue(key, need, exclude);
                    }
                }
                by_cid.clear();
                let score = peers.entry(peer).or_default();
                score.bytes += bytes;
                score.busy += took;
                if got.is_empty() {
                    return Ok(());
                }
                report.first_block.get_or_insert_with(|| start.elapsed());
                let blocks: Vec<Block> = got
                    .iter()
                    .map(|(_, n, d)| Block::new(n.cid, d.clone()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| FetchError::Malformed {
                        cid: got[0].1.cid,
                        reason: e.to_string(),
                    })?;
                self.store().put_many(blocks).await?;
                self.shared.with_stats(|s| {
                    let p = s.peers.entry(peer).or_default();
                    p.shards_received += got.len() as u64;
                    p.bytes_received += bytes;
                    s.shards_received += got.len() as u64;
                    s.bytes_received += bytes;
                });
                *report.bytes_from.entry(peer).or_default() += bytes;
                for (key, need, data) in got {
                    self.shared.meter.received(&peer, &need.cid, data.len());
                    report.blocks += 1;
                    report.fetched += 1;
                    self.expand(&key, &need, data, options, pending)?;
                }
            }
            Ok(Response::Refused {
                reason,
                retry_after_ms,
            }) => {
                let score = peers.entry(peer).or_default();
                if reason == RefusalReason::Refused {
                    score.failures = options.max_failures;
                } else {
                    score.paused_until = Some(
                        Instant::now() + Duration::from_millis(retry_after_ms.clamp(1, 10_000)),
                    );
                }
                for (key, need) in needs {
                    requeue(key, need, false);
                }
            }
            Ok(_) | Err(_) => {
                report.retries += 1;
                peers.entry(peer).or_default().failures += 1;
                for (key, need) in needs {
                    pending.insert(key, need);
                }
            }
        }
        Ok(())
    }

    /// Queues the children of a verified block that the fetch needs, keyed so that the
    /// queue's order is playback order.
    fn expand(
        &self,
        key: &Key,
        need: &Need,
        data: Bytes,
        options: &FetchOptions,
        pending: &mut BTreeMap<Key, Need>,
    ) -> Result<(), FetchError> {
        if need.cid.codec() != DAG_PB {
            return Ok(());
        }
        let malformed = |e: &dyn std::fmt::Display| FetchError::Malformed {
            cid: need.cid,
            reason: e.to_string(),
        };
        let node = PbNode::decode(data).map_err(|e| malformed(&e))?;
        // With a range, follow only the children of a file node whose bytes overlap it.
        let sizes = match (&options.range, &node.data) {
            (Some(_), Some(d)) => UnixFsData::decode(d).map_err(|e| malformed(&e))?.blocksizes,
            _ => Vec::new(),
        };
        let mut offset = need.offset;
        for (i, link) in node.links.iter().enumerate() {
            let size = sizes.get(i).copied();
            let wanted = match (options.range, size) {
                (Some((start, len)), Some(size)) => {
                    offset < start.saturating_add(len) && offset.saturating_add(size) > start
                }
                _ => true,
            };
            if wanted {
                let mut child = key.clone();
                child.push(u32::try_from(i).unwrap_or(u32::MAX));
                pending.insert(
                    child,
                    Need {
                        cid: link.cid,
                        offset,
                        excluded: HashSet::new(),
                        checked: false,
                    },
                );
            }
            offset = offset.saturating_add(size.unwrap_or(0));
        }
        Ok(())
    }
}
