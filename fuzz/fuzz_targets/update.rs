//! Update messages fed untrusted bytes: release tickets (what a microcontroller decodes),
//! metadata bundles and topic announcements never panic, and what decodes re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_update::agent::Announcement;
use streamspace_update::release::SignedRelease;
use streamspace_update::tuf::Bundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SignedRelease::decode(data) {
        assert_eq!(s.encode(), data);
        let _ = s.verify(&[[7; 32]], 1);
        let _ = s.check_stage(u64::MAX, s.stage().issued);
        let _ = s.release().upgrades_from("1.0.0");
        let _ = s.release().rollout_bucket(b"device");
    }
    if let Ok(b) = Bundle::decode(data) {
        assert_eq!(b.encode(), data);
        let _ = b.claimed_version();
    }
    if let Ok(a) = Announcement::decode(data) {
        assert_eq!(a.encode(), data);
    }
});
