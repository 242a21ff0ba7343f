//! Keys of encrypted live streams, released epoch by epoch as a viewer watches.
//!
//! A viewer's gateway holds no stream key. When its player reaches a segment of an epoch
//! whose key the gateway does not hold, the gateway asks its [`LiveKeys`] for that epoch's
//! key, keeps it (the last [`KEPT`] epoch keys), and decrypts with it; a key refused is a
//! `403` naming the reason, and the next request asks again (a rental that has not begun, an
//! epoch not yet live). [`MarketLiveKeys`] asks a market key service for the viewer's license
//! ([`KeyService::release_epoch`]); [`StreamEpochs`] is what the service derives them from
//! at the publisher.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use ed25519_dalek::SigningKey;
//! use streamspace_live::{StreamId, StreamKey};
//! use streamspace_market::service::{EpochKeys, KeyService};
//! use streamspace_node::live_keys::StreamEpochs;
//!
//! let publisher = SigningKey::from_bytes(&[1; 32]);
//! let stream = StreamId::new("final", &publisher.verifying_key())?;
//! let key = StreamKey::generate();
//! let epochs = StreamEpochs::new(key.clone(), stream.clone(), 30);
//! // What the service releases for epoch 3 is the stream's key of epoch 3, nothing more.
//! assert_eq!(
//!     epochs.epoch_key(3).key_bytes(),
//!     key.epoch_key(&stream, 30, 3).to_content_key().key_bytes()
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use futures::future::BoxFuture;
use streamspace_ledger::TransactionId;
use streamspace_ledger::local::Clock;
use streamspace_live::{StreamId, StreamKey};
use streamspace_market::service::{DeviceKey, EpochKeys, KeyRequest, KeyService};
use streamspace_shard::crypto::ContentKey;

/// Epoch keys a gateway keeps (the oldest are dropped first).
pub const KEPT: usize = 256;

/// Where a viewer's gateway gets the key of an epoch of an encrypted live stream.
pub trait LiveKeys: Send + Sync + 'static {
    /// The key of `epoch` of `stream`, as [`streamspace_live::EpochKey::to_content_key`]
    /// writes it, or why it is not released.
    fn epoch_key(
        &self,
        stream: &StreamId,
        epoch: u64,
    ) -> BoxFuture<'static, Result<ContentKey, String>>;
}

/// A live stream's epoch keys, derived from its stream key: what a key service sells a live
/// listing with ([`KeyService::add_live`]).
#[derive(Debug)]
pub struct StreamEpochs {
    key: StreamKey,
    stream: StreamId,
    epoch_len: u32,
}

impl StreamEpochs {
    /// The epochs of `stream`, of `epoch_len` segments, under `key`.
    pub fn new(key: StreamKey, stream: StreamId, epoch_len: u32) -> Self {
        Self {
            key,
            stream,
            epoch_len,
        }
    }
}

impl EpochKeys for StreamEpochs {
    fn epoch_key(&self, epoch: u64) -> ContentKey {
        self.key
            .epoch_key(&self.stream, self.epoch_len, epoch)
            .to_content_key()
    }
}

/// A viewer's license for a live listing, asking the listing's key service (in this process)
/// for each epoch's key, wrapped to the viewer's device, and unwrapping it.
pub struct MarketLiveKeys {
    service: Arc<Mutex<KeyService>>,
    stream: StreamId,
    buyer: SigningKey,
    payment: TransactionId,
    device: DeviceKey,
    label: [u8; 16],
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MarketLiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketLiveKeys")
            .field("stream", &self.stream)
            .field("payment", &self.payment)
            .finish_non_exhaustive()
    }
}

impl MarketLiveKeys {
    /// The license bought with `payment` (by `buyer`, whose key it is bound to) for
    /// `stream`, its keys asked of `service` at the time `clock` gives and wrapped to
    /// `device` (labelled `label` in the buyer's records).
    pub fn new(
        service: Arc<Mutex<KeyService>>,
        stream: StreamId,
        buyer: SigningKey,
        payment: TransactionId,
        device: DeviceKey,
        label: [u8; 16],
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            service,
            stream,
            buyer,
            payment,
            device,
            label,
            clock,
        }
    }
}

impl LiveKeys for MarketLiveKeys {
    fn epoch_key(
        &self,
        stream: &StreamId,
        epoch: u64,
    ) -> BoxFuture<'static, Result<ContentKey, String>> {
        let result = if *stream != self.stream {
            Err(format!("this viewer's license is for {}", self.stream))
        } else {
            let request = KeyRequest::sign(
                &self.buyer,
                self.payment,
                self.label,
                self.device.public_bytes(),
            );
            let released = self
                .service
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .release_epoch(&request, epoch, self.clock.now());
            released
                .and_then(|w| self.device.unwrap_epoch(&w, &self.payment, epoch))
                .map_err(|e| e.to_string())
        };
        Box::pin(std::future::ready(result))
    }
}
