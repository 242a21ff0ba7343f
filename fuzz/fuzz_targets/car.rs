//! CAR decoder: never panics, whether bytes arrive at once or in small pieces, and both ways
//! agree.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use streamspace_shard::car::{CarDecoder, CarItem};

fn run(data: &[u8], step: usize) -> (Vec<CarItem>, bool) {
    let mut dec = CarDecoder::new();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in data.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, false),
            }
        }
    }
    let ok = dec.is_done() || dec.finish(&buf).is_ok();
    (items, ok)
}

fuzz_target!(|data: &[u8]| {
    let whole = run(data, data.len());
    let split = run(data, 7);
    assert_eq!(whole, split);
});
