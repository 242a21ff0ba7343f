//! Serving peers: status, have lists, wanted blocks (through the metering hook, up to
//! [`MAX_RESPONSE_DATA`] bytes an answer), payments and cancellations. Answers are prepared
//! off the swarm task, at most `max_concurrent_serves` at once and at most
//! [`Limits::serves_per_peer`](super::Limits::serves_per_peer) for one peer, so that one peer
//! cannot take every slot; have-list queries are rate-limited per peer. More are answered
//! "overloaded".

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::PeerId;
use libp2p::request_response::{InboundRequestId, ResponseChannel};
use streamspace_shard::store::BlockStore;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shared;
use super::driver::{Command, Driver};
use crate::message::{
    MAX_RESPONSE_DATA, MAX_STATUS_ROOTS, MAX_WANT, RefusalReason, Request, Response,
};
use crate::meter::Decision;

/// Most cancelled blocks remembered, over all peers.
const MAX_CANCELLED: usize = 4096;

/// How long a cancel holds: a cancel for a want already answered must not drop a later one.
const CANCEL_HOLDS: Duration = Duration::from_secs(2);

/// Cancelled (peer, block) pairs and when, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Cancelled {
    set: HashMap<(PeerId, Cid), Instant>,
    order: VecDeque<(PeerId, Cid)>,
}

impl Cancelled {
    fn insert(&mut self, peer: PeerId, cid: Cid) {
        let now = Instant::now();
        if self.set.insert((peer, cid), now).is_none() {
            self.order.push_back((peer, cid));
        }
        // Forget the expired, and the oldest beyond the bound.
        while let Some(old) = self.order.front() {
            let expired = self
                .set
                .get(old)
                .is_none_or(|at| now.duration_since(*at) > CANCEL_HOLDS);
            if !expired && self.order.len() <= MAX_CANCELLED {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Whether `peer` cancelled `cid` within the last moments (forgetting it: a later want of
    /// it is served).
    fn take(&mut self, peer: &PeerId, cid: &Cid) -> bool {
        match self.set.remove(&(*peer, *cid)) {
            Some(at) => {
                self.order.retain(|e| e != &(*peer, *cid));
                at.elapsed() <= CANCEL_HOLDS
            }
            None => false,
        }
    }
}

/// What an answer holds until it is written: a serving slot and its blocks' bytes.
#[derive(Debug)]
pub(crate) struct Held {
    _slot: OwnedSemaphorePermit,
    _bytes: Vec<OwnedSemaphorePermit>,
}

/// A token bucket: have-list queries a peer may still make, refilled at a steady rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_second: u32) -> Self {
        Self {
            tokens: f64::from(per_second) * 2.0,
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one, after refilling at `per_second` (up to a burst of
    /// twice that).
    fn take(&mut self, per_second: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(per_second);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<S: BlockStore + 'static> Driver<S> {
    /// Answers "overloaded, ask again in `retry_after_ms`".
    fn overloaded(&mut self, channel: ResponseChannel<Response>, retry_after_ms: u64) {
        self.shared.with_stats(|s| s.overloaded += 1);
        let _ = self.swarm.behaviour_mut().exchange.send_response(
            channel,
            Response::Refused {
                reason: RefusalReason::Overloaded,
                retry_after_ms,
            },
        );
    }

    /// Answers a request: cancels and status at once, the rest off the swarm task.
    pub(super) fn serve(
        &mut self,
        peer: PeerId,
        id: InboundRequestId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        if let Request::Want {
            root: Some(root), ..
        }
        | Request::Have {
            root: Some(root), ..
        } = &request
        {
            self.note_demand(peer, *root);
        }
        if let Request::Cancel { cids } = &request {
            let mut c = self
                .shared
                .cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for cid in cids.iter().take(MAX_WANT) {
                c.insert(peer, *cid);
            }
            drop(c);
            let _ = self
                .swarm
                .behaviour_mut()
                .exchange
                .send_response(channel, Response::Accepted);
            return;
        }
        if let Request::Status = request {
            let resp = Response::Status {
                tier: self.shared.tier,
                capacity: self.capacity,
                roots: self
                    .provided
                    .iter()
                    .take(MAX_STATUS_ROOTS)
                    .copied()
                    .collect(),
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .exchange
                .send_response(channel, resp);
            return;
        }
        if matches!(request, Request::Have { .. }) {
            let rate = self.limits.have_queries_per_second;
            let ok = self
                .have_buckets
                .entry(peer)
                .or_insert_with(|| Bucket::full(rate))
                .take(rate);
            if !ok {
                let wait = 1000 / u64::from(rate.max(1));
                return self.overloaded(channel, wait.max(1));
            }
        }
        // One peer's fair share first, then the node's capacity.
        let mine = self.in_service.get(&peer).copied().unwrap_or(0);
        if mine >= self.limits.serves_per_peer.max(1) {
            return self.overloaded(channel, 50);
        }
        let (Ok(permit), Some(me)) = (self.serving.clone().try_acquire_owned(), self.me.upgrade())
        else {
            return self.overloaded(channel, 50);
        };
        *self.in_service.entry(peer).or_default() += 1;
        let per_peer = self.limits.max_answer_bytes_per_peer.max(MAX_RESPONSE_DATA);
        let mine = self
            .answer_bytes
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(per_peer)))
            .clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (resp, bytes) = answer(&shared, &mine, peer, request).await;
            let held = Held {
                _slot: permit,
                _bytes: bytes,
            };
            let _ = me
                .send(Command::Respond(peer, id, channel, resp, held))
                .await;
        });
    }
}

/// The answer to a want, have list or payment, and the bytes its blocks hold.
async fn answer<S: BlockStore>(
    shared: &Shared<S>,
    mine: &Arc<Semaphore>,
    peer: PeerId,
    request: Request,
) -> (Response, Vec<OwnedSemaphorePermit>) {
    let mut held = Vec::new();
    let resp = match request {
        Request::Want { cids, .. } => {
            let mut blocks = Vec::new();
            let mut missing = Vec::new();
            let mut deferred = Vec::new();
            let mut cancelled_cids = Vec::new();
            let mut total = 0usize;
            let mut refusal = None;
            for cid in cids.into_iter().take(MAX_WANT) {
                let cancelled = shared
                    .cancelled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(&peer, &cid);
                if cancelled {
                    shared.with_stats(|s| s.cancelled += 1);
                    cancelled_cids.push(cid);
                    continue;
                }
                if refusal.is_some() || total >= MAX_RESPONSE_DATA {
                    deferred.push(cid);
                    continue;
                }
                match shared.store.get(&cid).await {
                    Ok(Some(data)) => {
                        if total + data.len() > MAX_RESPONSE_DATA && !blocks.is_empty() {
                            deferred.push(cid);
                            continue;
                        }
                        // The node's bytes for answers: none free, the rest waits for a
                        // later request (or, with nothing in this answer, "overloaded").
                        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        let bytes = mine.clone().try_acquire_many_owned(n).and_then(|m| {
                            shared
                                .answer_bytes
                                .clone()
                                .try_acquire_many_owned(n)
                                .map(|all| [m, all])
                        });
                        let Ok(bytes) = bytes else {
                            if refusal.is_none() {
                                refusal = Some((RefusalReason::Overloaded, 50));
                            }
                            deferred.push(cid);
                            continue;
                        };
                        match shared.meter.before_send(&peer, &cid, data.len()) {
                            Decision::Serve => {
                                total += data.len();
                                blocks.push((cid, data));
                                held.extend(bytes);
                            }
                            Decision::Pause { retry_after_ms } => {
                                refusal = Some((RefusalReason::Paused, retry_after_ms));
                                deferred.push(cid);
                            }
                            Decision::Refuse => {
                                refusal = Some((RefusalReason::Refused, 0));
                                deferred.push(cid);
                            }
                        }
                    }
                    Ok(None) => missing.push(cid),
                    Err(e) => {
                        tracing::warn!(%cid, error = %e, "store read failed while serving");
                        missing.push(cid);
                    }
                }
            }
            // A request the meter refused (or paused) any of is counted, whether or not
            // some of it was served first: the count does not depend on how the asker
            // batched its wants.
            if refusal.is_some_and(|(reason, _)| reason != RefusalReason::Overloaded) {
                shared.with_stats(|s| s.metered_refusals += 1);
            }
            if blocks.is_empty()
                && let Some((reason, retry_after_ms)) = refusal
            {
                if reason == RefusalReason::Overloaded {
                    shared.with_stats(|s| s.overloaded += 1);
                }
                return (
                    Response::Refused {
                        reason,
                        retry_after_ms,
                    },
                    held,
                );
            }
            shared.with_stats(|s| {
                let p = s.peers.entry(peer).or_default();
                p.shards_sent += blocks.len() as u64;
                p.bytes_sent += total as u64;
                s.shards_served += blocks.len() as u64;
                s.bytes_served += total as u64;
            });
            Response::Blocks {
                blocks,
                missing,
                deferred,
                cancelled: cancelled_cids,
            }
        }
        Request::Have { cids, .. } => {
            let mut have = Vec::with_capacity(cids.len());
            for cid in cids.iter().take(MAX_WANT) {
                have.push(shared.store.has(cid).await.unwrap_or(false));
            }
            Response::Haves { have }
        }
        Request::Payment { data } => {
            if shared.meter.payment(&peer, &data) {
                Response::Accepted
            } else {
                Response::Refused {
                    reason: RefusalReason::Refused,
                    retry_after_ms: 0,
                }
            }
        }
        Request::Status | Request::Cancel { .. } => Response::Refused {
            reason: RefusalReason::Refused,
            retry_after_ms: 0,
        },
    };
    (resp, held)
}
