//! dag-pb and UnixFS decoders: never panic; what decodes re-encodes to something that decodes
//! to the same value.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use streamspace_shard::pb::{PbNode, UnixFsData};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = PbNode::decode(Bytes::copy_from_slice(data)) {
        let again = PbNode::decode(node.encode()).expect("re-encoded node decodes");
        assert_eq!(again, node);
        if let Some(d) = &node.data {
            let _ = UnixFsData::decode(d);
        }
    }
    if let Ok(fs) = UnixFsData::decode(&Bytes::copy_from_slice(data)) {
        let again = UnixFsData::decode(&fs.encode()).expect("re-encoded UnixFS decodes");
        assert_eq!(again, fs);
    }
});
