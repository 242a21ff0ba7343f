//! Encrypted shards and key files from untrusted input: opening never panics and never
//! succeeds for a forged shard; key-file parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_shard::crypto::{plaintext_len, ContentKey};

fuzz_target!(|data: &[u8]| {
    let key = ContentKey::from_parts([7; 32], [3; 16]);
    if data.len() > 9 {
        let index = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let last = data[8] & 1 == 1;
        let sealed = &data[9..];
        assert!(key.open_chunk(index, last, sealed).is_err(), "forged shard opened");
        // A shard we sealed opens only at its own index and position.
        let mine = key.seal_chunk(index, last, &sealed[..sealed.len().min(1024)]);
        assert!(key.open_chunk(index, last, &mine).is_ok());
        assert!(key.open_chunk(index.wrapping_add(1), last, &mine).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ContentKey::from_key_file(text);
    }
    let _ = plaintext_len(u64::from_le_bytes(data.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default()));
});
