//! A peer's wants of this node, kept across messages: a full wantlist replaces them, a delta
//! adds and cancels; a want stays until it is answered, cancelled or replaced.
//!
//! Bounded as kubo bounds it: at most [`MAX_QUEUED_WANTS`] wants a peer, further ones
//! ignored; identity CIDs ignored (their data is in the CID). A want-block is not downgraded
//! by a later want-have of the same block.

use std::collections::HashMap;

use cid::Cid;

use super::message::{Entry, WantType, Wantlist, is_identity};

/// Wants kept per peer (kubo's `MaxQueuedWantlistEntriesPerPeer`).
pub const MAX_QUEUED_WANTS: usize = 1024;

/// One kept want.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Higher first.
    pub priority: i32,
    /// Block or have.
    pub want_type: WantType,
    /// Whether DONT_HAVE is to be answered.
    pub send_dont_have: bool,
    /// Order of arrival (ties in priority are served oldest first), and the identity of this
    /// version of the want: an answer prepared for an older version does not remove it.
    pub seq: u64,
    /// Looked up and not held: not looked up again until the store gains blocks or the
    /// peer asks again.
    pub parked: bool,
}

/// What applying a wantlist did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Wants added or changed.
    pub added: usize,
    /// Wants cancelled.
    pub cancelled: usize,
    /// Wants ignored for the bound.
    pub over_limit: usize,
    /// Identity CIDs ignored.
    pub identity: usize,
}

/// A peer's wants.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    wants: HashMap<Cid, Want>,
    seq: u64,
    limit: usize,
}

impl Ledger {
    /// An empty ledger keeping at most `limit` wants.
    pub fn new(limit: usize) -> Self {
        Self {
            wants: HashMap::new(),
            seq: 0,
            limit,
        }
    }

    /// Applies a wantlist from the peer.
    pub fn apply(&mut self, wl: &Wantlist) -> Applied {
        let mut a = Applied::default();
        if wl.full {
            a.cancelled += self.wants.len();
            self.wants.clear();
        }
        for e in &wl.entries {
            self.apply_entry(e, &mut a);
        }
        a
    }

    fn apply_entry(&mut self, e: &Entry, a: &mut Applied) {
        if is_identity(&e.cid) {
            a.identity += 1;
            return;
        }
        if e.cancel {
            if self.wants.remove(&e.cid).is_some() {
                a.cancelled += 1;
            }
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let full = self.wants.len() >= self.limit;
        match self.wants.get_mut(&e.cid) {
            Some(w) => {
                // A want-block stays a want-block.
                if w.want_type == WantType::Have {
                    w.want_type = e.want_type;
                }
                w.priority = e.priority;
                w.send_dont_have |= e.send_dont_have;
                w.seq = seq;
                w.parked = false;
                a.added += 1;
            }
            None if full => a.over_limit += 1,
            None => {
                self.wants.insert(
                    e.cid,
                    Want {
                        priority: e.priority,
                        want_type: e.want_type,
                        send_dont_have: e.send_dont_have,
                        seq,
                        parked: false,
                    },
                );
                a.added += 1;
            }
        }
    }

    /// The wants to look up next: not parked, highest priority first, then oldest; at most
    /// `n`.
    pub fn next(&self, n: usize) -> Vec<(Cid, Want)> {
        let mut v: Vec<(Cid, Want)> = self
            .wants
            .iter()
            .filter(|(_, w)| !w.parked)
            .map(|(c, w)| (*c, *w))
            .collect();
        v.sort_unstable_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.1.seq.cmp(&b.1.seq)));
        v.truncate(n);
        v
    }

    /// Removes the want of `cid` if it is still the version `seq` (answered).
    pub fn answered(&mut self, cid: &Cid, seq: u64) -> bool {
        if self.wants.get(cid).is_some_and(|w| w.seq == seq) {
            self.wants.remove(cid);
            true
        } else {
            false
        }
    }

    /// Parks the want of `cid` if it is still the version `seq` (looked up, not held).
    pub fn park(&mut self, cid: &Cid, seq: u64) {
        if let Some(w) = self.wants.get_mut(cid)
            && w.seq == seq
        {
            w.parked = true;
        }
    }

    /// Unparks the wants of `cids` (the store gained them); whether any was wanted.
    pub fn unpark(&mut self, cids: &[Cid]) -> bool {
        let mut any = false;
        for c in cids {
            if let Some(w) = self.wants.get_mut(c) {
                w.parked = false;
                any = true;
            }
        }
        any
    }

    /// The CIDs wanted.
    pub fn cids(&self) -> Vec<Cid> {
        self.wants.keys().copied().collect()
    }

    /// The want of `cid`, if any.
    pub fn get(&self, cid: &Cid) -> Option<&Want> {
        self.wants.get(cid)
    }

    /// Wants kept.
    pub fn len(&self) -> usize {
        self.wants.len()
    }

    /// Whether no want is kept.
    pub fn is_empty(&self) -> bool {
        self.wants.is_empty()
    }

    /// Whether some want is waiting to be looked up.
    pub fn has_work(&self) -> bool {
        self.wants.values().any(|w| !w.parked)
    }
}
