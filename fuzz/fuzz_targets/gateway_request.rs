//! The gateway's request parsing (`Range`, `Accept`, `If-None-Match`, paths inside an item):
//! never panics, and what it accepts is within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_node::gateway::{etag_matches, normalise_path, parse_accept, parse_range};

fuzz_target!(|data: &[u8]| {
    let Some((&len_byte, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // A range is inside the file and never empty.
    for len in [0u64, 1, u64::from(len_byte), u64::MAX] {
        if let Some((offset, count)) = parse_range(&text, len) {
            assert!(
                count > 0 && offset < len && offset.checked_add(count).is_some_and(|e| e <= len)
            );
        }
    }
    let _ = parse_accept(&text);
    let _ = etag_matches(&text, "\"bafkqaaa\"");
    // One spelling: no empty, `.` or `..` segment, and normalising again changes nothing.
    if let Some(p) = normalise_path(&text) {
        assert!(p.is_empty() || p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        assert_eq!(normalise_path(&p).as_deref(), Some(p.as_str()));
    }
});
