//! The publisher: each segment sealed (for an encrypted stream), added to the node's store,
//! provided on the DHT, and announced by a signed manifest on the stream's topic.

use std::collections::VecDeque;

use bytes::Bytes;
use cid::Cid;
use ed25519_dalek::SigningKey;
use streamspace_shard::store::{BlockStore, Holding};
use streamspace_transport::{Node, NodeError};

use crate::keys::StreamKey;
use crate::manifest::{MAX_WINDOW, Manifest, Segment, SignedManifest, StreamId};
use crate::{ManifestError, add_segment};

/// How a publisher announces.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PublisherConfig {
    /// Segments each manifest lists (the sliding window; at most 64).
    pub window: usize,
    /// Segments per key epoch.
    pub epoch_len: u32,
    /// Segments kept behind the window (the DVR window): the window's segments and these are
    /// held in the node's store against eviction ([`BlockStore::hold`]); older ones are
    /// released, for the store to evict when it needs room.
    pub dvr: usize,
}

impl Default for PublisherConfig {
    /// A window of 6 segments; epochs of 30 segments (a minute of 2 s segments); 32 segments
    /// of DVR behind the window.
    fn default() -> Self {
        Self {
            window: 6,
            epoch_len: 30,
            dvr: 32,
        }
    }
}

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The segment could not be added to the store.
    #[error("adding segment {seq}: {source}")]
    Add {
        /// Its media sequence number.
        seq: u64,
        /// Why.
        source: streamspace_shard::import::ImportError,
    },
    /// The manifest could not be made.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The stream has ended.
    #[error("the stream has ended")]
    Ended,
}

/// What one publication did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Published {
    /// The segment's media sequence number (`None` for the end-of-stream manifest).
    pub seq: Option<u64>,
    /// Its root.
    pub cid: Option<Cid>,
    /// The manifest announced.
    pub manifest: SignedManifest,
    /// Whether gossipsub took it (it refuses while no peer follows the topic: the next
    /// manifest carries the window again).
    pub announced: bool,
}

/// A live stream's publisher on a node (see the module's documentation).
pub struct Publisher<S: BlockStore> {
    node: Node<S>,
    signing: SigningKey,
    stream: StreamId,
    key: Option<StreamKey>,
    config: PublisherConfig,
    window: VecDeque<Segment>,
    /// The segments held (the window and the DVR behind it), oldest first.
    held: VecDeque<Holding<S>>,
    next: u64,
    seq: u64,
    ended: bool,
}

impl<S: BlockStore> std::fmt::Debug for Publisher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream)
            .field("encrypted", &self.key.is_some())
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<S: BlockStore + 'static> Publisher<S> {
    /// A publisher of stream `name` signed by `signing`, sealing segments when `key` is given.
    ///
    /// # Errors
    ///
    /// [`ManifestError::Malformed`] for an invalid name.
    pub fn new(
        node: Node<S>,
        signing: SigningKey,
        name: &str,
        key: Option<StreamKey>,
        config: PublisherConfig,
    ) -> Result<Self, ManifestError> {
        let stream = StreamId::new(name, &signing.verifying_key())?;
        Ok(Self {
            node,
            signing,
            stream,
            key,
            config: PublisherConfig {
                window: config.window.clamp(1, MAX_WINDOW),
                epoch_len: config.epoch_len.max(1),
                dvr: config.dvr,
            },
            window: VecDeque::new(),
            held: VecDeque::new(),
            next: 0,
            seq: 0,
            ended: false,
        })
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// Subscribes the node to the stream's topic (so that the mesh forms before the first
    /// segment).
    ///
    /// # Errors
    ///
    /// The node's error.
    pub async fn join(&self) -> Result<(), NodeError> {
        self.node.subscribe(&self.stream.topic()).await
    }

    fn manifest(&self, ended: bool) -> Manifest {
        let first = self.next - self.window.len() as u64;
        let epoch_len = self.config.epoch_len;
        Manifest {
            stream: self.stream.clone(),
            seq: self.seq,
            first,
            segments: self.window.iter().copied().collect(),
            epoch_len,
            key_epoch: self
                .next
                .checked_sub(1)
                .map_or(0, |n| n / u64::from(epoch_len)),
            encrypted: self.key.is_some(),
            ended,
        }
    }

    async fn announce(&mut self, m: &Manifest) -> Result<(SignedManifest, bool), PublishError> {
        let signed = m.sign(&self.signing)?;
        self.seq += 1;
        let announced = match self
            .node
            .publish(
                &self.stream.topic(),
                Bytes::copy_from_slice(signed.encode()),
            )
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(stream = %self.stream, error = %e, "manifest not announced");
                false
            }
        };
        Ok((signed, announced))
    }

    /// Publishes one segment (`bytes`, as the segmenter cut it, `duration_ms` long).
    ///
    /// # Errors
    ///
    /// [`PublishError::Add`] when the store refuses it; [`PublishError::Ended`] after
    /// [`Publisher::finish`].
    pub async fn push(
        &mut self,
        bytes: Vec<u8>,
        duration_ms: u32,
    ) -> Result<Published, PublishError> {
        if self.ended {
            return Err(PublishError::Ended);
        }
        let seq = self.next;
        let key = self
            .key
            .as_ref()
            .map(|k| k.segment_key(&self.stream, self.config.epoch_len, seq));
        // Held from the moment each block is stored, until the segment leaves the DVR window.
        let holding = Holding::new(self.node.store().clone());
        let cid = add_segment(Some(&holding), bytes, key)
            .await
            .map_err(|source| PublishError::Add { seq, source })?;
        self.held.push_back(holding);
        while self.held.len() > self.config.window + self.config.dvr {
            self.held.pop_front();
        }
        if let Err(e) = self.node.provide(cid).await {
            tracing::debug!(%cid, error = %e, "segment not provided on the DHT");
        }
        self.window.push_back(Segment {
            cid,
            duration_ms: duration_ms.clamp(1, crate::manifest::MAX_SEGMENT_MS),
        });
        while self.window.len() > self.config.window {
            self.window.pop_front();
        }
        self.next += 1;
        let m = self.manifest(false);
        let (manifest, announced) = self.announce(&m).await?;
        Ok(Published {
            seq: Some(seq),
            cid: Some(cid),
            manifest,
            announced,
        })
    }

    /// Re-announces the current window (for viewers that joined since; the sequence number
    /// grows, the window does not change).
    ///
    /// # Errors
    ///
    /// As [`Publisher::push`].
    pub async fn repeat(&mut self) -> Result<Published, PublishError> {
        if self.ended {
            return Err(PublishError::Ended);
        }
        if self.window.is_empty() {
            return Err(PublishError::Manifest(ManifestError::Malformed(
                "only an end-of-stream manifest may list no segment",
            )));
        }
        let m = self.manifest(false);
        let (manifest, announced) = self.announce(&m).await?;
        Ok(Published {
            seq: None,
            cid: None,
            manifest,
            announced,
        })
    }

    /// Announces the end of the stream: viewers' playlists end (`#EXT-X-ENDLIST`).
    ///
    /// # Errors
    ///
    /// [`PublishError::Ended`] when already ended.
    pub async fn finish(&mut self) -> Result<Published, PublishError> {
        if self.ended {
            return Err(PublishError::Ended);
        }
        let m = self.manifest(true);
        let (manifest, announced) = self.announce(&m).await?;
        self.ended = true;
        Ok(Published {
            seq: None,
            cid: None,
            manifest,
            announced,
        })
    }
}
