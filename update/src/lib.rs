//! Signed software updates for IoT fleets, delivered device to device over StreamSpace.
//!
//! A vendor publishes an image once into the network and signs a release for it; devices
//! check the release, fetch the image from each other and from Tier-1 nodes, verify every
//! block and the whole image, write it to the inactive slot of an A/B pair, and keep serving it.
//! Nothing runs that the vendor did not sign.
//!
//! The threat model is that of [The Update Framework]: arbitrary software, rollback, freeze,
//! mix-and-match and key compromise. The metadata rules are TUF's, run by [`tough`] (feature
//! `std`): see [`tuf`]. Each release also travels as a compact [`release::SignedRelease`] (a
//! *ticket*: the release, its rollout stage and an expiry) signed by the targets role, which a
//! microcontroller checks on its own, with [`verify::ImageVerifier`] hashing the image as it
//! streams by; the device-side freshness rule is in [`release`]. There is no director
//! repository choosing images per device: every device of a product and channel is offered the
//! same releases, and staged rollouts pick devices by the hash of their id.
//!
//! The vendor's repository lasts ([`tuf::Vendor::open`]), its keys are held by one
//! [`release::Signer`] each, so the root keys can stay offline; the device boots a new image as
//! a trial and falls back unless its health check confirms it ([`agent::Slots`]); and a device
//! fetches only the blocks of a new image it does not already hold. The crate's README says
//! which decisions were made and why.
//!
//! # `no_std`
//!
//! Without the default `std` feature the crate needs only `alloc`, and offers
//! [`release`] and [`verify`]. Memory on the device:
//!
//! - [`verify::ImageVerifier`]: 160 bytes, no heap; the caller supplies one block buffer at a
//!   time (256 KiB blocks from the network, or whatever its flash pages are).
//! - [`release::SignedRelease::decode`] and [`release::SignedRelease::verify`]: the ticket's
//!   own length plus at most twice the body (its copy and the canonical re-encoding, at most
//!   4 KiB each) and the signed message (body + 29 bytes) during verification. Measured by
//!   `cargo test -p streamspace-update --test heap -- --nocapture`: peak heap 548 bytes for a
//!   release without wrapped keys and three signatures (a 381-byte ticket), and 11,524 bytes
//!   for the largest ticket the bounds allow (16 device groups, eight signatures: 3,546 bytes), under
//!   the 16 KiB budget.
//!
//! [The Update Framework]: https://theupdateframework.io/
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod release;
pub mod verify;

#[cfg(feature = "std")]
pub mod agent;
#[cfg(feature = "std")]
mod durable;
#[cfg(feature = "std")]
pub mod keys;
#[cfg(feature = "std")]
pub mod seed;
#[cfg(feature = "std")]
pub mod tuf;

pub use release::{DeviceView, Release, ReleaseError, SignError, SignedRelease, Signer, Stage};
pub use verify::{ImageError, ImageVerifier};
