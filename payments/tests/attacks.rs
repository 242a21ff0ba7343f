//! Attacks on payments, each performed through the public API: every test asserts that the
//! attack is refused and what the honest party ends up with.

use ed25519_dalek::SigningKey;
use streamspace_ledger::AccountId;
use streamspace_payments::receipt::{ENCODED_LEN, ReceiptBody, SignedReceipt};
use streamspace_payments::settle::{
    RECEIPTS_TAG, ReceiptsMessageError, parse_receipts_message, receipts_messages,
};

fn key(s: u8) -> SigningKey {
    SigningKey::from_bytes(&[s; 32])
}

fn receipt(
    payer: &SigningKey,
    payer_id: u64,
    payee: u64,
    amount: u64,
    shards: u64,
) -> SignedReceipt {
    ReceiptBody {
        payer: AccountId::new(payer_id),
        payee: AccountId::new(payee),
        period: 1,
        amount,
        shards,
    }
    .sign(payer)
}

/// A relay (or a faulty chunker) drops the tail of a payee's receipts message exactly at a
/// receipt boundary, so that what is left is still whole receipts: the clearing must see the
/// message is short, not settle the payee for fewer receipts than it posted.
#[test]
fn receipts_message_cut_at_a_receipt_boundary_is_refused() {
    let payer = key(1);
    let receipts: Vec<_> = (0..5)
        .map(|i| receipt(&payer, 1001, 2000 + i, 10_000 * (i + 1), i + 1))
        .collect();
    let messages = receipts_messages(&receipts);
    assert_eq!(messages.len(), 1);
    let full = &messages[0];
    for kept in 0..5 {
        let cut = &full[..RECEIPTS_TAG.len() + 1 + kept * ENCODED_LEN];
        assert_eq!(
            parse_receipts_message(cut),
            Err(ReceiptsMessageError::Length {
                declared: 5,
                bytes: kept * ENCODED_LEN
            }),
            "{kept} of 5 receipts kept"
        );
    }
    // Lowering the count to match the cut is refused as well: the count is checked against
    // the bytes both ways, and a message padded with a receipt is refused too.
    let mut relabelled = full[..RECEIPTS_TAG.len() + 1 + 3 * ENCODED_LEN].to_vec();
    relabelled[RECEIPTS_TAG.len()] = 4;
    assert!(matches!(
        parse_receipts_message(&relabelled),
        Err(ReceiptsMessageError::Length { declared: 4, .. })
    ));
    let mut padded = full.to_vec();
    padded.extend_from_slice(&receipts[0].encode());
    assert!(matches!(
        parse_receipts_message(&padded),
        Err(ReceiptsMessageError::Length { declared: 5, .. })
    ));
    for count in [0u8, 6, 255] {
        let mut m = full.to_vec();
        m[RECEIPTS_TAG.len()] = count;
        assert_eq!(
            parse_receipts_message(&m),
            Err(ReceiptsMessageError::Count(count))
        );
    }
    // The payee's message as posted yields every receipt it holds.
    assert_eq!(parse_receipts_message(full).unwrap(), receipts);
}
