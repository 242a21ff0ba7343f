//! Chunker strings (kubo's `--chunker`, from the CLI and the node's RPC API) and the
//! content-defined chunkers over arbitrary bytes: parsing never panics and what parses prints
//! back to itself; an import with a parsed chunker covers its input in chunks within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_shard::import::{Chunker, ImportOptions, import_file};

fuzz_target!(|data: &[u8]| {
    let (spec, body) = data.split_at(data.len().min(32));
    let Ok(text) = std::str::from_utf8(spec) else {
        return;
    };
    let Ok(chunker) = text.parse::<Chunker>() else {
        return;
    };
    assert_eq!(chunker.to_string().parse::<Chunker>().unwrap(), chunker);
    let mut opts = ImportOptions::default();
    opts.raw_leaves = true;
    opts.chunker = chunker;
    let mut total = 0u64;
    let mut largest = 0usize;
    let root = import_file(body, &opts, |b| {
        if b.cid().codec() == 0x55 {
            total += b.data().len() as u64;
            largest = largest.max(b.data().len());
        }
        Ok(())
    })
    .expect("an in-memory import succeeds");
    assert_eq!(root.size, body.len() as u64);
    assert!(largest <= chunker.max_chunk());
    assert!(total >= body.len() as u64);
});
