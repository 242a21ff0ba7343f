use std::collections::{BTreeMap, HashMap};

use cid::Cid;

/// Decides which blocks a quota-bounded store evicts first.
///
/// The store reports every insertion, access and removal, and asks for candidates in eviction
/// order when it needs space; it skips pinned blocks itself. Implement this to plug in another
/// policy (for instance, an edge cache that keeps what was requested twice).
pub trait EvictionPolicy: Send {
    /// A block entered the store.
    fn inserted(&mut self, cid: &Cid, size: u64);
    /// A block was read.
    fn accessed(&mut self, cid: &Cid);
    /// A block left the store.
    fn removed(&mut self, cid: &Cid);
    /// Candidates for eviction, first to go first.
    fn candidates(&self) -> Box<dyn Iterator<Item = Cid> + '_>;
}

/// Least recently used first.
///
/// # Examples
///
/// ```
/// use streamspace_shard::{block::{cid_of, RAW}, store::{EvictionPolicy, Lru}};
/// let (a, b) = (cid_of(cid::Version::V1, RAW, b"a"), cid_of(cid::Version::V1, RAW, b"b"));
/// let mut lru = Lru::default();
/// lru.inserted(&a, 1);
/// lru.inserted(&b, 1);
/// lru.accessed(&a);
/// assert_eq!(lru.candidates().next(), Some(b));
/// ```
#[derive(Debug, Default)]
pub struct Lru {
    tick: u64,
    by_cid: HashMap<Cid, u64>,
    by_tick: BTreeMap<u64, Cid>,
}

impl Lru {
    fn touch(&mut self, cid: &Cid) {
        self.tick += 1;
        if let Some(old) = self.by_cid.insert(*cid, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, *cid);
    }
}

impl EvictionPolicy for Lru {
    fn inserted(&mut self, cid: &Cid, _size: u64) {
        self.touch(cid);
    }

    fn accessed(&mut self, cid: &Cid) {
        if self.by_cid.contains_key(cid) {
            self.touch(cid);
        }
    }

    fn removed(&mut self, cid: &Cid) {
        if let Some(t) = self.by_cid.remove(cid) {
            self.by_tick.remove(&t);
        }
    }

    fn candidates(&self) -> Box<dyn Iterator<Item = Cid> + '_> {
        Box::new(self.by_tick.values().copied())
    }
}
