//! What a node keeps of what its local viewers watch.
//!
//! Edge nodes cache content on its second request: the first time a root is viewed its blocks
//! pass through a scratch store and are dropped with it (content watched once does not push
//! out content watched often); from the second time on they go into the node's store, whose
//! byte quota evicts the least recently used unpinned blocks and never pinned ones, and the
//! node announces the content so that its neighbours can fetch it from there. Tier-1 nodes
//! cache on the first request.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use cid::Cid;
use futures::TryStreamExt;
use streamspace_shard::block::Block;
use streamspace_shard::export::{ByteRange, cat};
use streamspace_shard::store::{BlockStore, MemoryStore, StoreError};

use crate::fetch::{FetchError, FetchOptions, FetchReport};
use crate::message::Tier;
use crate::node::Node;

/// Roots remembered as viewed once.
const REMEMBERED: usize = 4096;

/// Reads from a node's store and then from a scratch store; writes go to the scratch store.
struct Overlay<'a, S> {
    main: &'a S,
    scratch: MemoryStore,
}

impl<S: BlockStore> BlockStore for Overlay<'_, S> {
    async fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        match self.main.get(cid).await? {
            Some(b) => Ok(Some(b)),
            None => self.scratch.get(cid).await,
        }
    }

    async fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.main.has(cid).await? || self.scratch.has(cid).await?)
    }

    async fn put_many(&self, blocks: Vec<Block>) -> Result<(), StoreError> {
        self.scratch.put_many(blocks).await
    }

    async fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.scratch.delete(cid).await
    }
}

/// Roots viewed once, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Viewed(VecDeque<Cid>);

impl Viewed {
    /// Records a view; whether the root had been viewed before.
    fn again(&mut self, root: Cid) -> bool {
        if self.0.contains(&root) {
            return true;
        }
        if self.0.len() == REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back(root);
        false
    }
}

/// What a viewer got.
#[derive(Debug, Clone)]
pub struct View {
    /// The bytes of the range asked for.
    pub data: Bytes,
    /// Whether the content went into the node's store (a second view on an edge node, any view
    /// on a Tier-1 node).
    pub cached: bool,
    /// The fetch behind it.
    pub report: FetchReport,
}

impl<S: BlockStore + 'static> Node<S> {
    /// Fetches and reads `range` of the file at `root` for a local viewer, caching it as the
    /// module docs say. The range is read into memory: view long files a range at a time.
    ///
    /// # Errors
    ///
    /// [`FetchError`], including [`FetchError::Export`] for content that is not a readable
    /// file.
    pub async fn view(
        &self,
        root: Cid,
        range: ByteRange,
        options: FetchOptions,
    ) -> Result<View, FetchError> {
        let again = self
            .shared
            .viewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .again(root);
        let cached = again || self.shared.tier == Tier::Tier1;
        let whole = range == ByteRange::ALL;
        let options = FetchOptions {
            range: (!whole).then(|| {
                (
                    range.offset,
                    range.length.unwrap_or(u64::MAX - range.offset),
                )
            }),
            ..options
        };
        if cached {
            let report = self.fetch(root, options).await?;
            if whole {
                // Neighbours may fetch it from here now; a failed announcement only means
                // they will not learn of this copy.
                let _ = self.provide(root).await;
            }
            let data = read(self.store().as_ref(), root, range).await?;
            Ok(View {
                data,
                cached,
                report,
            })
        } else {
            let overlay = Overlay {
                main: self.store().as_ref(),
                scratch: MemoryStore::new(),
            };
            let report = self.fetch_into(&overlay, root, options).await?;
            let data = read(&overlay, root, range).await?;
            Ok(View {
                data,
                cached,
                report,
            })
        }
    }
}

async fn read<S: BlockStore>(store: &S, root: Cid, range: ByteRange) -> Result<Bytes, FetchError> {
    let mut out = BytesMut::new();
    let mut parts = std::pin::pin!(cat(store, root, range));
    while let Some(part) = parts.try_next().await? {
        out.extend_from_slice(&part);
    }
    Ok(out.freeze())
}
