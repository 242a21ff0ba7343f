//! Shielding the vendor's uplink: the origin serves each block a few times, then leaves the
//! rest to the devices.
//!
//! [`SeedMeter`] is a metering hook ([`streamspace_transport::meter::Meter`]) for the vendor's
//! node, in the manner of BitTorrent's super-seeding: each block is sent at most `copies` times
//! per `refill` period; beyond that, requesters are paused (told to ask again later) and take
//! the block from the devices that already hold it. The period lets a block be served again if
//! every device that had it went away. The vendor's upload is then about `copies` times the
//! image per period of the rollout, whatever the size of the fleet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cid::Cid;
use streamspace_transport::PeerId;
use streamspace_transport::meter::{Decision, Meter};

/// Blocks tracked at once; beyond, the oldest entries are forgotten (and may be served again).
const MAX_TRACKED: usize = 1 << 20;

/// Serves each block at most `copies` times per `refill` period.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use streamspace_transport::meter::{Decision, Meter};
/// use streamspace_update::seed::SeedMeter;
/// let m = SeedMeter::new(1, Duration::from_secs(5));
/// let (peer, cid) = (libp2p::PeerId::random(), cid::Cid::default());
/// assert_eq!(m.before_send(&peer, &cid, 10), Decision::Serve);
/// assert!(matches!(m.before_send(&peer, &cid, 10), Decision::Pause { .. }));
/// ```
#[derive(Debug)]
pub struct SeedMeter {
    copies: u32,
    refill: Duration,
    served: Mutex<HashMap<Cid, (u32, Instant)>>,
}

impl SeedMeter {
    /// At most `copies` sends of each block per `refill`.
    pub fn new(copies: u32, refill: Duration) -> Self {
        Self {
            copies: copies.max(1),
            refill,
            served: Mutex::new(HashMap::new()),
        }
    }
}

impl Meter for SeedMeter {
    fn before_send(&self, _: &PeerId, cid: &Cid, _: usize) -> Decision {
        let now = Instant::now();
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if served.len() >= MAX_TRACKED && !served.contains_key(cid) {
            let refill = self.refill;
            served.retain(|_, (_, since)| now.duration_since(*since) < refill);
            if served.len() >= MAX_TRACKED {
                served.clear();
            }
        }
        let entry = served.entry(*cid).or_insert((0, now));
        if now.duration_since(entry.1) >= self.refill {
            *entry = (0, now);
        }
        if entry.0 < self.copies {
            entry.0 += 1;
            Decision::Serve
        } else {
            let left = self.refill.saturating_sub(now.duration_since(entry.1));
            Decision::Pause {
                retry_after_ms: (left.as_millis() as u64).clamp(100, 2_000),
            }
        }
    }

    fn received(&self, _: &PeerId, _: &Cid, _: usize) {}
}
