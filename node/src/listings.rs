//! The market's listings as the node sees them: the market topic read from the ledger into a
//! [`Catalog`], for the API's `streamspace/listings`.
//!
//! The catalog applies the market's own rules (a listing counts only when its seller's
//! account published it, a content root belongs to its first signed claim), so what the API
//! reports is what every other reader of the topic concludes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamspace_ledger::{Ledger, TopicId};
use streamspace_market::Catalog;
use tokio::sync::watch;

/// Messages asked of the ledger at once.
const PAGE: usize = 256;
/// How often the topic is read once the node has caught up.
const POLL: Duration = Duration::from_secs(2);

/// The catalog built from the market topic, and how far it has read.
#[derive(Debug, Default)]
pub(crate) struct Listings {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    catalog: Catalog,
    /// Messages read (the next sequence number is one more).
    read: u64,
    /// The last error reading the topic, cleared by the next successful read.
    error: Option<String>,
}

/// What `streamspace/listings` reports.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// One page of the listings.
    pub(crate) listings: Vec<streamspace_market::Listing>,
    /// Listings matching, over all pages.
    pub(crate) total: usize,
    pub(crate) read: u64,
    pub(crate) rejected: u64,
    pub(crate) error: Option<String>,
}

impl Listings {
    /// Whether `root` is listed on the market now (a listing for it on offer).
    pub(crate) fn lists(&self, root: &cid::Cid) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.catalog.on_offer().any(|l| l.content == *root)
    }

    /// The listings on offer (not withdrawn) whose seller `seller` admits, in id order: `limit`
    /// of them from the `offset`-th on (the answer is bounded whatever the topic holds).
    pub(crate) fn snapshot(
        &self,
        seller: impl Fn(streamspace_ledger::AccountId) -> bool,
        offset: usize,
        limit: usize,
    ) -> Snapshot {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let matching = || s.catalog.on_offer().filter(|l| seller(l.id.seller));
        Snapshot {
            listings: matching().skip(offset).take(limit).cloned().collect(),
            total: matching().count(),
            read: s.read,
            rejected: s.catalog.rejected(),
            error: s.error.clone(),
        }
    }
}

/// Reads `topic` from `ledger` into `listings` until `stop` turns true: every page there is,
/// then every [`POLL`]. A message the catalog refuses is counted, never fatal; a ledger that
/// cannot be reached is retried at the next poll.
pub(crate) async fn follow<L: Ledger>(
    ledger: L,
    topic: TopicId,
    listings: Arc<Listings>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let from = listings
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read
            + 1;
        let page = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            page = ledger.topic_messages(topic, from, PAGE) => page,
        };
        let full = match page {
            Ok(messages) => {
                let mut s = listings.state.lock().unwrap_or_else(|p| p.into_inner());
                // Sequence numbers count from 1 without gaps; anything else is not the next
                // page and is read again.
                let next: Vec<_> = messages
                    .iter()
                    .take_while({
                        let mut want = from;
                        move |m| {
                            let ok = m.sequence == want;
                            want += 1;
                            ok
                        }
                    })
                    .collect();
                for r in s.catalog.replay(next.iter().copied()) {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "the market topic holds a message the catalog refuses");
                    }
                }
                s.read += next.len() as u64;
                s.error = None;
                next.len() == PAGE
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "reading the market topic");
                listings
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .error = Some(e.to_string());
                false
            }
        };
        if !full {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
