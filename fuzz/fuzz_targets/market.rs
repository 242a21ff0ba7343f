//! Market messages (listings, licenses, revocations), the catalog and listing ids fed
//! untrusted bytes: never panic; what decodes re-encodes to the same bytes; a refused message
//! leaves the catalog as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamspace_ledger::{
    AccountId, ChunkInfo, PublicKey, Timestamp, TopicMessage, TransactionId,
};
use streamspace_market::catalog::Catalog;
use streamspace_market::message::{ListingId, Signed};
use streamspace_market::service::check_license;

fuzz_target!(|data: &[u8]| {
    // Listing ids as memos name them: what parses prints back the same.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<ListingId>() {
            assert_eq!(id.to_string().parse::<ListingId>(), Ok(id));
        }
    }
    if let Ok(m) = Signed::decode(data) {
        assert_eq!(m.encode(), data);
        let _ = m.verify();
    }
    let _ = check_license(data, &PublicKey([7; 32]), Timestamp::default());
    // As the ledger serves it, published by the account of the seeds' seller.
    let published = TopicMessage {
        sequence: 1,
        consensus: Timestamp::default(),
        message: data.to_vec().into(),
        running_hash: vec![0; 48],
        id: Some(TransactionId { payer: AccountId::new(1001), valid_start: Timestamp::default() }),
        chunk: None,
    };
    let mut c = Catalog::default();
    if c.apply(&published).is_err() {
        assert_eq!(c.on_offer().count(), 0);
        assert_eq!(c.sales().count(), 0);
    }
    // The same bytes split in chunks (the first byte choosing their count and order): applied
    // once whole, as the whole message would be, never a panic.
    let Some((&n, rest)) = data.split_first() else { return };
    let total = u32::from(n % 4) + 1;
    let size = rest.len().div_ceil(total as usize).max(1);
    let initial = TransactionId { payer: AccountId::new(1001), valid_start: Timestamp::default() };
    let chunks: Vec<TopicMessage> = rest
        .chunks(size)
        .enumerate()
        .map(|(i, part)| TopicMessage {
            sequence: i as u64 + 2,
            consensus: Timestamp::default(),
            message: part.to_vec().into(),
            running_hash: vec![0; 48],
            id: Some(initial),
            chunk: Some(ChunkInfo { initial, total, number: i as u32 + 1 }),
        })
        .collect();
    let mut split = Catalog::default();
    let one_by_one: Vec<_> = chunks.iter().rev().map(|m| split.apply(m)).collect();
    let mut batched = Catalog::default();
    let again: Vec<_> = batched.replay(chunks.iter().rev());
    assert_eq!(one_by_one, again);
});
