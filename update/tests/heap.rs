//! The heap the device-side check needs, counted by a global allocator (alone in this test
//! binary, so no other test's allocations are counted).

use ed25519_dalek::SigningKey;
use peak_alloc::PeakAlloc;
use streamspace_update::release::{MAX_GROUPS, SignedRelease, WrappedKey};
use streamspace_update::verify::ImageVerifier;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

mod common;
use common::{key, release, stage};

#[test]
fn the_device_side_check_fits_in_16_kib_of_heap() {
    // Three signatures on an ordinary release; the most the bounds allow on the largest.
    let keys: Vec<SigningKey> = (1..=8).map(key).collect();
    let trusted: Vec<[u8; 32]> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let plain = release("1.2.0").sign(stage(), &refs[..3]).unwrap().encode();
    let mut big = release("1.2.0");
    big.product = "p".repeat(64);
    big.channel = "c".repeat(32);
    big.keys = (0..MAX_GROUPS)
        .map(|i| WrappedKey {
            group: format!("{i:0>64}"),
            encapped: vec![1; 32],
            sealed: vec![2; 64],
        })
        .collect();
    let big = big.sign(stage(), &refs).unwrap().encode();
    for (name, wire, bound) in [("plain", &plain, 2 * 1024), ("largest", &big, 16 * 1024)] {
        let before = ALLOC.current_usage();
        ALLOC.reset_peak_usage();
        let s = SignedRelease::decode(wire).unwrap();
        let r = s.verify(&trusted, 2).unwrap();
        let mut v = ImageVerifier::for_release(r);
        v.update(&[0; 64]).unwrap();
        drop(s);
        let peak = ALLOC.peak_usage() - before;
        println!(
            "{name}: ticket {} bytes, peak heap {peak} bytes",
            wire.len()
        );
        assert!(peak < bound, "{name}: peak heap {peak} bytes");
    }
}
