//! A discrete-event model of the fetching protocol, for swarms beyond what one machine runs as
//! real nodes.
//!
//! It follows the rules of `streamspace_transport::fetch`, at the granularity of shards:
//!
//! - a viewer wants the item's shards in playback order; the next `window` missing shards are
//!   asked first, in order, from any holder; beyond the window, up to `lookahead` more are
//!   asked rarest first (fewest holders among the viewer's neighbours, ties broken by a hash of
//!   shard and viewer);
//! - the origin (which holds everything) is asked for a shard beyond the window only by the
//!   neighbour in charge of it (highest rendezvous hash of shard and viewer among the
//!   neighbours still fetching), or once the shard waited `origin_patience`, and with at most
//!   `origin_requests` such requests in flight; a window shard may always be asked of it;
//! - at most `per_peer` requests are in flight to one neighbour; among holders, the neighbour
//!   whose link frees up first is asked (the transport's score by throughput);
//! - holdings are learnt one link latency after a shard arrives (have lists);
//! - a viewer that leaves (churn) fails its in-flight uploads, which are asked elsewhere.
//!
//! Links: every node has an upload and a download rate; a shard occupies the sender's upload
//! and the receiver's download for `size / min(up, down)`, after a request's one-way latency,
//! and arrives one latency later. Transfers through one link are served one after another,
//! which gives each node its full rate in aggregate. Neighbours: the origin, and `neighbours`
//! viewers already present on arrival (found through the DHT), who learn of the newcomer too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Nanoseconds.
type Ns = u64;

const SEC: f64 = 1e9;

/// What is simulated.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Viewers of the item.
    pub viewers: usize,
    /// Shards in the item.
    pub shards: usize,
    /// Bytes per shard.
    pub shard_bytes: u64,
    /// Playback bit rate, bits per second.
    pub bitrate: f64,
    /// Viewers' upload rate, bits per second.
    pub up: f64,
    /// Viewers' download rate, bits per second.
    pub down: f64,
    /// The origin's upload rate, bits per second.
    pub origin_up: f64,
    /// One-way latency of every link, seconds.
    pub latency: f64,
    /// Viewers arrive uniformly at random over this many seconds.
    pub arrivals: f64,
    /// Share of viewers who leave before the end (at a uniformly random time of their stay).
    pub churn: f64,
    /// Seconds a viewer stays after it holds the whole item and finished watching.
    pub linger: f64,
    /// Viewers each newcomer is introduced to.
    pub neighbours: usize,
    /// Shards buffered before playback starts.
    pub startup_shards: usize,
    /// Requests a viewer has in flight in all.
    pub inflight: usize,
    /// Fetching rules (as `FetchOptions`).
    pub window: usize,
    /// Shards beyond the window asked rarest first.
    pub lookahead: usize,
    /// Requests in flight to one neighbour.
    pub per_peer: usize,
    /// Requests in flight to the origin for shards beyond the window.
    pub origin_requests: usize,
    /// Seconds a shard beyond the window waits before anyone may ask the origin for it.
    pub origin_patience: f64,
    /// Seconds after which a window shard whose holders are all busy is asked of the origin.
    pub deadline: f64,
    /// Seconds of booked uploads past which a node refuses requests (overloaded).
    pub queue_limit: f64,
    /// Random seed.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            viewers: 100,
            shards: 64,
            shard_bytes: 262_144,
            bitrate: 4e6,
            up: 50e6,
            down: 50e6,
            origin_up: 1e9,
            latency: 0.05,
            arrivals: 10.0,
            churn: 0.0,
            linger: 0.0,
            neighbours: 32,
            startup_shards: 1,
            inflight: 8,
            window: 8,
            lookahead: 256,
            per_peer: 4,
            origin_requests: 1,
            origin_patience: 3.0,
            deadline: 2.0,
            queue_limit: 0.25,
            seed: 1,
        }
    }
}

/// What one viewer saw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ViewerResult {
    /// Seconds from arrival until playback could start.
    pub startup: Option<f64>,
    /// Seconds of stalls after playback started.
    pub stalled: f64,
    /// Whether it left before the end.
    pub left_early: bool,
    /// Bytes it received from the origin.
    pub from_origin: u64,
    /// Bytes it received from other viewers.
    pub from_peers: u64,
    /// Bytes it sent to other viewers.
    pub uploaded: u64,
}

/// What a run gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// Per viewer.
    pub viewers: Vec<ViewerResult>,
    /// Bytes the origin sent.
    pub origin_bytes: u64,
    /// Bytes viewers sent each other.
    pub peer_bytes: u64,
    /// Simulated seconds until the last event.
    pub duration: f64,
    /// Events processed.
    pub events: u64,
}

impl Outcome {
    /// Share of the bytes served by viewers rather than the origin.
    pub(crate) fn offload(&self) -> f64 {
        let total = self.origin_bytes + self.peer_bytes;
        if total == 0 {
            0.0
        } else {
            self.peer_bytes as f64 / total as f64
        }
    }

    /// Start-up times of the viewers that started, sorted.
    pub(crate) fn startups(&self) -> Vec<f64> {
        let mut s: Vec<f64> = self.viewers.iter().filter_map(|v| v.startup).collect();
        s.sort_by(f64::total_cmp);
        s
    }

    /// Stall time over watched time, over the viewers who stayed to the end.
    pub(crate) fn rebuffering(&self, content_secs: f64) -> f64 {
        let stayed: Vec<&ViewerResult> = self
            .viewers
            .iter()
            .filter(|v| !v.left_early && v.startup.is_some())
            .collect();
        let stalled: f64 = stayed.iter().map(|v| v.stalled).sum();
        let watched = stayed.len() as f64 * content_secs + stalled;
        if watched == 0.0 {
            0.0
        } else {
            stalled / watched
        }
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    /// `shard` from `from` reaches `to`.
    Deliver {
        to: usize,
        from: usize,
        shard: usize,
    },
    /// Somebody learnt something: `node` schedules again.
    Wake(usize),
    Leave(usize),
}

const ORIGIN: usize = 0;
const NEVER: Ns = Ns::MAX;

struct Node {
    up_free: Ns,
    down_free: Ns,
    arrived: Ns,
    present: bool,
    /// When each shard arrived (`NEVER` if not held).
    got: Vec<Ns>,
    /// Shard requested and not yet delivered: from whom, and whether it counts against the
    /// origin's beyond-window budget.
    asked: Vec<Option<(usize, bool)>>,
    /// Requests in flight in all.
    inflight: usize,
    /// Waiting for news from its neighbours (with room for more requests).
    idle: bool,
    /// The time of its pending wake-up, if any (`NEVER`).
    next_wake: Ns,
    /// Per shard, the neighbours still fetching that hold it (rarity).
    rare: Vec<u32>,
    /// Whether its holdings count in its neighbours' `rare` (present, still fetching).
    counted: bool,
    /// When each missing shard was first wanted.
    wanted_since: Vec<Ns>,
    held: usize,
    /// Requests in flight to each neighbour (by position in `neighbours`).
    neighbours: Vec<usize>,
    inflight_to: Vec<usize>,
    origin_beyond: usize,
    done_at: Ns,
    leave_at: Ns,
    from_origin: u64,
    from_peers: u64,
    uploaded: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A hash of shard and node (rendezvous weights, rarity ties).
fn weight(shard: usize, node: usize, seed: u64) -> u64 {
    let mut z = seed ^ ((shard as u64) << 32 | node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Sim<'a> {
    p: &'a Params,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Ns, u64, Event)>>,
    seq: u64,
    now: Ns,
    latency: Ns,
    shard_secs: f64,
    events: u64,
    origin_bytes: u64,
    peer_bytes: u64,
}

/// Runs the model.
pub(crate) fn run(p: &Params) -> Outcome {
    let mut rng = Rng(p.seed);
    let n = p.viewers + 1;
    let shard_secs = p.shard_bytes as f64 * 8.0 / p.bitrate;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let origin = i == ORIGIN;
        nodes.push(Node {
            up_free: 0,
            down_free: 0,
            arrived: 0,
            present: origin,
            got: vec![if origin { 0 } else { NEVER }; p.shards],
            asked: vec![None; p.shards],
            inflight: 0,
            idle: false,
            next_wake: NEVER,
            rare: vec![0; if origin { 0 } else { p.shards }],
            counted: false,
            wanted_since: vec![NEVER; p.shards],
            held: if origin { p.shards } else { 0 },
            neighbours: Vec::new(),
            inflight_to: Vec::new(),
            origin_beyond: 0,
            done_at: NEVER,
            leave_at: NEVER,
            from_origin: 0,
            from_peers: 0,
            uploaded: 0,
        });
    }
    let mut sim = Sim {
        p,
        nodes,
        queue: BinaryHeap::new(),
        seq: 0,
        now: 0,
        latency: (p.latency * SEC) as Ns,
        shard_secs,
        events: 0,
        origin_bytes: 0,
        peer_bytes: 0,
    };
    let watch = (p.shards as f64 * shard_secs * SEC) as Ns;
    for v in 1..n {
        let at = (rng.unit() * p.arrivals * SEC) as Ns;
        sim.push(at, Event::Arrive(v));
        if rng.unit() < p.churn {
            // Leaves somewhere within the item's playing time after arriving.
            let stay = (rng.unit() * watch as f64) as Ns;
            sim.nodes[v].leave_at = at + stay.max(1);
        }
    }
    while let Some(Reverse((t, _, e))) = sim.queue.pop() {
        sim.now = t;
        sim.events += 1;
        match e {
            Event::Arrive(v) => sim.arrive(v, &mut rng),
            Event::Deliver { to, from, shard } => sim.deliver(to, from, shard),
            Event::Wake(v) => {
                // Only the newest wake-up of a node counts.
                if sim.nodes[v].next_wake == t {
                    sim.nodes[v].next_wake = NEVER;
                    sim.schedule(v);
                }
            }
            Event::Leave(v) => sim.leave(v),
        }
    }
    let viewers = sim.nodes[1..].iter().map(|node| sim.result(node)).collect();
    Outcome {
        viewers,
        origin_bytes: sim.origin_bytes,
        peer_bytes: sim.peer_bytes,
        duration: sim.now as f64 / SEC,
        events: sim.events,
    }
}

impl Sim<'_> {
    fn push(&mut self, at: Ns, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    /// Wakes `v` at `at` (or earlier, if a wake-up is already due before).
    fn wake(&mut self, v: usize, at: Ns) {
        let at = at.max(self.now + 1);
        if at < self.nodes[v].next_wake {
            self.nodes[v].next_wake = at;
            self.push(at, Event::Wake(v));
        }
    }

    fn arrive(&mut self, v: usize, rng: &mut Rng) {
        let present: Vec<usize> = (1..self.nodes.len())
            .filter(|&i| i != v && self.nodes[i].present)
            .collect();
        // A random sample of the viewers present, as the DHT's providers would give.
        let mut chosen = Vec::new();
        if present.len() <= self.p.neighbours {
            chosen = present;
        } else {
            let mut pool = present;
            for _ in 0..self.p.neighbours {
                let i = (rng.next() % pool.len() as u64) as usize;
                chosen.push(pool.swap_remove(i));
            }
        }
        let node = &mut self.nodes[v];
        node.present = true;
        node.arrived = self.now;
        node.neighbours = std::iter::once(ORIGIN)
            .chain(chosen.iter().copied())
            .collect();
        node.inflight_to = vec![0; node.neighbours.len()];
        node.wanted_since = vec![self.now; self.p.shards];
        node.counted = true;
        if node.leave_at != NEVER {
            let at = node.leave_at;
            self.push(at, Event::Leave(v));
        }
        for &c in &chosen {
            self.nodes[c].neighbours.push(v);
            self.nodes[c].inflight_to.push(0);
            if self.nodes[c].counted {
                for s in 0..self.p.shards {
                    if self.nodes[c].got[s] != NEVER {
                        self.nodes[v].rare[s] += 1;
                    }
                }
            }
        }
        self.schedule(v);
    }

    fn leave(&mut self, v: usize) {
        if !self.nodes[v].present {
            return;
        }
        self.nodes[v].present = false;
        self.uncount(v);
        // Requests in flight from v are dropped; requesters of v ask elsewhere once they notice
        // (a latency later), which happens when the delivery event finds v gone.
    }

    /// `v` stops counting in its neighbours' rarity (it left, or holds everything).
    fn uncount(&mut self, v: usize) {
        if !std::mem::take(&mut self.nodes[v].counted) {
            return;
        }
        for k in 0..self.nodes[v].neighbours.len() {
            let h = self.nodes[v].neighbours[k];
            if h == ORIGIN {
                continue;
            }
            for s in 0..self.p.shards {
                if self.nodes[v].got[s] != NEVER {
                    self.nodes[h].rare[s] -= 1;
                }
            }
        }
    }

    /// Whether `holder` is known by `v` to hold `shard` now.
    fn known_holder(&self, holder: usize, shard: usize) -> bool {
        let h = &self.nodes[holder];
        h.present && h.got[shard] != NEVER && h.got[shard].saturating_add(self.latency) <= self.now
    }

    fn schedule(&mut self, v: usize) {
        if !self.nodes[v].present || self.nodes[v].held == self.p.shards {
            return;
        }
        let p = self.p;
        // Candidates: the window in order, then rarest first.
        let missing: Vec<usize> = (0..p.shards)
            .filter(|&s| self.nodes[v].got[s] == NEVER)
            .collect();
        let window: Vec<usize> = missing.iter().copied().take(p.window).collect();
        let mut beyond: Vec<(u32, u64, usize)> = missing
            .iter()
            .copied()
            .skip(p.window)
            .take(p.lookahead)
            .map(|s| (self.nodes[v].rare[s], weight(s, v, p.seed), s))
            .collect();
        beyond.sort_unstable();
        let candidates = window
            .into_iter()
            .map(|s| (s, true))
            .chain(beyond.into_iter().map(|(_, _, s)| (s, false)));
        let mut retry_at = NEVER;
        let mut blocked = false;
        // Candidates that could not be asked now; past a few, the rest wait for the next round.
        let mut waiting = 0;
        for (shard, in_window) in candidates {
            if self.nodes[v].inflight >= p.inflight || waiting >= 2 * p.window {
                break;
            }
            if self.nodes[v].asked[shard].is_some() {
                continue;
            }
            match self.choose(v, shard, in_window) {
                Ok(j) => self.request(v, j, shard, in_window),
                Err(Some(at)) => {
                    retry_at = retry_at.min(at);
                    waiting += 1;
                }
                Err(None) => {
                    blocked = true;
                    waiting += 1;
                }
            }
        }
        self.nodes[v].idle = blocked || retry_at != NEVER;
        if retry_at != NEVER {
            self.wake(v, retry_at);
        }
    }

    /// The neighbour (index into `neighbours`) to ask for `shard`, or when to look again.
    fn choose(&self, v: usize, shard: usize, in_window: bool) -> Result<usize, Option<Ns>> {
        let p = self.p;
        let node = &self.nodes[v];
        let busy_limit = self.now + (p.queue_limit * SEC) as Ns;
        let mut best: Option<(Ns, usize)> = None;
        let mut busy_until = NEVER;
        for (j, &h) in node.neighbours.iter().enumerate() {
            if h == ORIGIN || node.inflight_to[j] >= p.per_peer || !self.known_holder(h, shard) {
                continue;
            }
            let free = self.nodes[h].up_free;
            if free > busy_limit {
                // Overloaded: it would refuse; look again when its queue has room.
                busy_until = busy_until.min(free - (p.queue_limit * SEC) as Ns);
                continue;
            }
            if best.is_none_or(|(f, _)| free < f) {
                best = Some((free, j));
            }
        }
        if let Some((_, j)) = best {
            return Ok(j);
        }
        // No neighbour holding it can take the request now: the origin, under the rules.
        let waited = self.now.saturating_sub(node.wanted_since[shard]);
        let deadline = (p.deadline * SEC) as Ns;
        let patience = (p.origin_patience * SEC) as Ns;
        let origin_busy = self.nodes[ORIGIN].up_free > busy_limit;
        let origin_full = node.inflight_to[0] >= p.per_peer || origin_busy;
        let later = |t: Ns| Err(Some(t.min(busy_until)));
        if in_window {
            // A window shard goes to the origin when no neighbour holds it, or when the
            // holders stayed busy past the deadline.
            if busy_until != NEVER && waited < deadline {
                return later(node.wanted_since[shard] + deadline);
            }
            if origin_busy {
                return later(self.nodes[ORIGIN].up_free - (p.queue_limit * SEC) as Ns);
            }
            if origin_full {
                // Woken by its own deliveries.
                return Err(None);
            }
            return Ok(0);
        }
        if busy_until != NEVER {
            return Err(Some(busy_until));
        }
        let in_charge = || {
            let mine = weight(shard, v, p.seed);
            !node.neighbours.iter().any(|&h| {
                h != ORIGIN
                    && self.nodes[h].present
                    && self.nodes[h].held < p.shards
                    && self.nodes[h].arrived + self.latency <= self.now
                    && weight(shard, h, p.seed) > mine
            })
        };
        if waited >= patience || in_charge() {
            if origin_full || node.origin_beyond >= p.origin_requests {
                return Err(None);
            }
            return Ok(0);
        }
        Err(Some(node.wanted_since[shard] + patience))
    }

    fn request(&mut self, v: usize, j: usize, shard: usize, in_window: bool) {
        let h = self.nodes[v].neighbours[j];
        let rate = if h == ORIGIN {
            self.p.origin_up
        } else {
            self.p.up
        }
        .min(self.p.down);
        let took = (self.p.shard_bytes as f64 * 8.0 / rate * SEC) as Ns;
        let start = (self.now + self.latency)
            .max(self.nodes[h].up_free)
            .max(self.nodes[v].down_free);
        self.nodes[h].up_free = start + took;
        self.nodes[v].down_free = start + took;
        let node = &mut self.nodes[v];
        let beyond = h == ORIGIN && !in_window;
        node.asked[shard] = Some((h, beyond));
        node.inflight_to[j] += 1;
        node.inflight += 1;
        if beyond {
            node.origin_beyond += 1;
        }
        self.push(
            start + took + self.latency,
            Event::Deliver {
                to: v,
                from: h,
                shard,
            },
        );
    }

    fn deliver(&mut self, v: usize, from: usize, shard: usize) {
        let bytes = self.p.shard_bytes;
        let sender_ok = self.nodes[from].present;
        let node = &mut self.nodes[v];
        if let Some(j) = node.neighbours.iter().position(|&h| h == from) {
            node.inflight_to[j] = node.inflight_to[j].saturating_sub(1);
        }
        if let Some((_, true)) = node.asked[shard] {
            node.origin_beyond -= 1;
        }
        node.asked[shard] = None;
        node.inflight -= 1;
        if !node.present {
            return;
        }
        if sender_ok && node.got[shard] == NEVER {
            node.got[shard] = self.now;
            node.held += 1;
            if from == ORIGIN {
                node.from_origin += bytes;
                self.origin_bytes += bytes;
            } else {
                node.from_peers += bytes;
                self.peer_bytes += bytes;
            }
            if node.counted {
                for k in 0..self.nodes[v].neighbours.len() {
                    let h = self.nodes[v].neighbours[k];
                    if h != ORIGIN {
                        self.nodes[h].rare[shard] += 1;
                    }
                }
            }
            if self.nodes[v].held == self.p.shards {
                self.uncount(v);
                self.nodes[v].done_at = self.now;
                let watch_end = self.playback_end(v);
                let stay = (self.p.linger * SEC) as Ns;
                if self.nodes[v].leave_at == NEVER {
                    let at = watch_end.max(self.now) + stay;
                    self.nodes[v].leave_at = at;
                    self.push(at, Event::Leave(v));
                }
            }
            if from != ORIGIN {
                self.nodes[from].uploaded += bytes;
            }
            // Neighbours learn of it a latency later and may ask for it then.
            let wake = self.now + self.latency;
            for k in 0..self.nodes[v].neighbours.len() {
                let h = self.nodes[v].neighbours[k];
                let n = &mut self.nodes[h];
                if h != ORIGIN && n.present && n.idle && n.got[shard] == NEVER {
                    n.idle = false;
                    self.wake(h, wake);
                }
            }
        }
        self.schedule(v);
    }

    /// When `v` finishes watching, given the arrival times of its shards.
    fn playback_end(&self, v: usize) -> Ns {
        let (start, stalled) = self.playback(&self.nodes[v]);
        match start {
            Some(s) => s + ((self.p.shards as f64 * self.shard_secs + stalled) * SEC) as Ns,
            None => self.now,
        }
    }

    /// Playback start and stall seconds from the shards' arrival times (missing ones end it).
    fn playback(&self, node: &Node) -> (Option<Ns>, f64) {
        let k = self.p.startup_shards.clamp(1, self.p.shards.max(1));
        if node.got.iter().take(k).any(|&g| g == NEVER) || node.got.is_empty() {
            return (None, 0.0);
        }
        let start = node
            .got
            .iter()
            .take(k)
            .copied()
            .max()
            .unwrap_or(node.arrived);
        let step = (self.shard_secs * SEC) as Ns;
        let mut clock = start;
        let mut stalled: Ns = 0;
        for &g in &node.got {
            if g == NEVER {
                break;
            }
            if g > clock {
                stalled += g - clock;
                clock = g;
            }
            clock += step;
        }
        (Some(start), stalled as f64 / SEC)
    }

    fn result(&self, node: &Node) -> ViewerResult {
        let (start, stalled) = self.playback(node);
        ViewerResult {
            startup: start.map(|s| (s - node.arrived) as f64 / SEC),
            stalled,
            left_early: node.held < self.p.shards,
            from_origin: node.from_origin,
            from_peers: node.from_peers,
            uploaded: node.uploaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(viewers: usize) -> Params {
        Params {
            viewers,
            shards: 32,
            ..Params::default()
        }
    }

    #[test]
    fn everyone_gets_everything_and_the_origin_sends_each_shard_at_least_once() {
        for viewers in [1, 5, 50] {
            let p = small(viewers);
            let o = run(&p);
            assert_eq!(o.viewers.len(), viewers);
            let total = viewers as u64 * p.shards as u64 * p.shard_bytes;
            assert_eq!(o.origin_bytes + o.peer_bytes, total, "{viewers} viewers");
            assert!(o.origin_bytes >= p.shards as u64 * p.shard_bytes);
            // The ideal offload is an upper bound.
            let ideal = 1.0 - 1.0 / viewers as f64;
            assert!(o.offload() <= ideal + 1e-12, "{} > {ideal}", o.offload());
            for v in &o.viewers {
                assert!(!v.left_early);
                assert!(v.startup.is_some_and(|s| s > 0.0));
                assert_eq!(
                    v.from_origin + v.from_peers,
                    p.shards as u64 * p.shard_bytes
                );
            }
            let uploaded: u64 = o.viewers.iter().map(|v| v.uploaded).sum();
            assert_eq!(uploaded, o.peer_bytes);
        }
    }

    #[test]
    fn a_lone_viewer_takes_everything_from_the_origin_within_link_time() {
        let p = small(1);
        let o = run(&p);
        assert_eq!(o.peer_bytes, 0);
        // First shard: request latency + transfer at the slower link + delivery latency.
        let first = 2.0 * p.latency + p.shard_bytes as f64 * 8.0 / p.down;
        let got = o.viewers[0].startup.unwrap_or_default();
        assert!((got - first).abs() < 1e-6, "{got} vs {first}");
    }

    #[test]
    fn deterministic_for_a_seed() {
        let p = small(40);
        assert_eq!(run(&p), run(&p));
        let other = run(&Params {
            seed: 2,
            ..p.clone()
        });
        assert_ne!(run(&p).viewers, other.viewers);
    }

    #[test]
    fn churn_leaves_some_viewers_without_the_end_and_the_rest_complete() {
        let p = Params {
            churn: 0.3,
            ..small(60)
        };
        let o = run(&p);
        let early = o.viewers.iter().filter(|v| v.left_early).count();
        assert!(early > 0 && early < 60, "{early}");
        for v in o.viewers.iter().filter(|v| !v.left_early) {
            assert_eq!(
                v.from_origin + v.from_peers,
                p.shards as u64 * p.shard_bytes
            );
        }
    }

    #[test]
    fn slow_links_stall_playback() {
        // Download slower than the bit rate: playback must stall.
        let p = Params {
            down: 2e6,
            up: 2e6,
            ..small(3)
        };
        let o = run(&p);
        assert!(o.rebuffering(p.shards as f64 * 262_144.0 * 8.0 / p.bitrate) > 0.1);
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 1.0), Some(3.0));
    }
}
