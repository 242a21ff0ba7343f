//! Between Hedera's protobuf messages and this crate's types.

use bytes::Bytes;
use hedera_proto::services as pb;

use crate::tx::{
    ChunkInfo, NftTransfer, PublicKey, SigPair, SignedTransaction, Transaction, TxKind,
};
use crate::types::{AccountId, EntityId, NftId, Timestamp, TokenId, TopicId, TransactionId};
use crate::{Receipt, Record, Status};

/// Why a transaction from the wire could not be taken apart.
pub(crate) type WireResult<T> = Result<T, Status>;

pub(crate) fn status_code(s: Status) -> i32 {
    pb::ResponseCodeEnum::from_str_name(s.name())
        .map_or(pb::ResponseCodeEnum::Unknown as i32, |c| c as i32)
}

fn entity(shard: i64, realm: i64, num: i64) -> WireResult<EntityId> {
    let u = |v: i64| u64::try_from(v).map_err(|_| Status::InvalidAccountId);
    Ok(EntityId {
        shard: u(shard)?,
        realm: u(realm)?,
        num: u(num)?,
    })
}

pub(crate) fn account_in(a: Option<&pb::AccountId>) -> WireResult<AccountId> {
    let a = a.ok_or(Status::InvalidAccountId)?;
    match a.account {
        Some(pb::account_id::Account::AccountNum(n)) => {
            Ok(AccountId(entity(a.shard_num, a.realm_num, n)?))
        }
        _ => Err(Status::InvalidAccountId),
    }
}

pub(crate) fn account_out(a: AccountId) -> pb::AccountId {
    pb::AccountId {
        shard_num: a.0.shard as i64,
        realm_num: a.0.realm as i64,
        account: Some(pb::account_id::Account::AccountNum(a.0.num as i64)),
    }
}

pub(crate) fn topic_in(t: Option<&pb::TopicId>) -> WireResult<TopicId> {
    let t = t.ok_or(Status::InvalidTopicId)?;
    entity(t.shard_num, t.realm_num, t.topic_num)
        .map(TopicId)
        .map_err(|_| Status::InvalidTopicId)
}

pub(crate) fn topic_out(t: TopicId) -> pb::TopicId {
    pb::TopicId {
        shard_num: t.0.shard as i64,
        realm_num: t.0.realm as i64,
        topic_num: t.0.num as i64,
    }
}

pub(crate) fn token_in(t: Option<&pb::TokenId>) -> WireResult<TokenId> {
    let t = t.ok_or(Status::InvalidTokenId)?;
    entity(t.shard_num, t.realm_num, t.token_num)
        .map(TokenId)
        .map_err(|_| Status::InvalidTokenId)
}

pub(crate) fn token_out(t: TokenId) -> pb::TokenId {
    pb::TokenId {
        shard_num: t.0.shard as i64,
        realm_num: t.0.realm as i64,
        token_num: t.0.num as i64,
    }
}

pub(crate) fn ts_in(t: Option<&pb::Timestamp>) -> WireResult<Timestamp> {
    let t = t.ok_or(Status::InvalidTransactionStart)?;
    let nanos = u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or(Status::InvalidTransactionStart)?;
    Ok(Timestamp {
        secs: t.seconds,
        nanos,
    })
}

pub(crate) fn ts_out(t: Timestamp) -> pb::Timestamp {
    pb::Timestamp {
        seconds: t.secs,
        nanos: t.nanos as i32,
    }
}

pub(crate) fn tx_id_in(id: Option<&pb::TransactionId>) -> WireResult<TransactionId> {
    let id = id.ok_or(Status::InvalidTransaction)?;
    Ok(TransactionId {
        payer: account_in(id.account_id.as_ref()).map_err(|_| Status::PayerAccountNotFound)?,
        valid_start: ts_in(id.transaction_valid_start.as_ref())?,
    })
}

pub(crate) fn tx_id_out(id: TransactionId) -> pb::TransactionId {
    pb::TransactionId {
        transaction_valid_start: Some(ts_out(id.valid_start)),
        account_id: Some(account_out(id.payer)),
        scheduled: false,
        nonce: 0,
    }
}

/// An Ed25519 key. Key kinds this ledger does not model (ECDSA, key lists, threshold keys,
/// contract ids) are refused with `NOT_SUPPORTED`; a missing or malformed key is a bad body.
fn key_in(k: Option<&pb::Key>) -> WireResult<PublicKey> {
    match k.and_then(|k| k.key.as_ref()) {
        Some(pb::key::Key::Ed25519(b)) => <[u8; 32]>::try_from(b.as_slice())
            .map(PublicKey)
            .map_err(|_| Status::InvalidTransactionBody),
        Some(_) => Err(Status::NotSupported),
        None => Err(Status::InvalidTransactionBody),
    }
}

/// An account's key: Ed25519, or a `KeyList` (all of its keys) or `ThresholdKey`, nested.
fn account_key_in(k: Option<&pb::Key>, depth: usize) -> WireResult<crate::tx::Key> {
    use crate::tx::{Key, MAX_KEY_DEPTH};
    let list = |keys: &[pb::Key], threshold: u32| -> WireResult<Key> {
        if depth >= MAX_KEY_DEPTH {
            return Err(Status::InvalidKeyEncoding);
        }
        Ok(Key::Threshold {
            threshold,
            keys: keys
                .iter()
                .map(|k| account_key_in(Some(k), depth + 1))
                .collect::<WireResult<_>>()?,
        })
    };
    match k.and_then(|k| k.key.as_ref()) {
        Some(pb::key::Key::KeyList(l)) => {
            list(&l.keys, u32::try_from(l.keys.len()).unwrap_or(u32::MAX))
        }
        Some(pb::key::Key::ThresholdKey(t)) => list(
            t.keys.as_ref().map_or(&[][..], |l| l.keys.as_slice()),
            t.threshold,
        ),
        _ => key_in(k).map(Key::Ed25519),
    }
}

/// `NOT_SUPPORTED` when a field this ledger does not model is set: it is refused, never
/// ignored.
fn unmodelled(set: bool) -> WireResult<()> {
    if set {
        Err(Status::NotSupported)
    } else {
        Ok(())
    }
}

/// Entities never expire on this ledger, so an auto-renew period only has to be one Hedera
/// accepts.
fn auto_renew(d: Option<&pb::Duration>) -> WireResult<()> {
    match d {
        Some(d) if !crate::fees::AUTO_RENEW_SECS.contains(&d.seconds) => {
            Err(Status::AutorenewDurationNotInRange)
        }
        _ => Ok(()),
    }
}

/// An auto-renew account is accepted only where it changes nothing: absent, or one of the
/// accounts that sign the transaction anyway (the SDKs set the payer).
fn auto_renew_account(a: Option<&pb::AccountId>, signing: &[AccountId]) -> WireResult<()> {
    match a {
        None => Ok(()),
        Some(a) => unmodelled(!signing.contains(&account_in(Some(a))?)),
    }
}

pub(crate) fn key_out(k: PublicKey) -> pb::Key {
    pb::Key {
        key: Some(pb::key::Key::Ed25519(k.0.to_vec())),
    }
}

/// What a transaction body does. Every field is either modelled or, when set, refused with
/// `NOT_SUPPORTED` (deprecated fields Hedera itself ignores are ignored).
fn kind_in(data: Option<&pb::transaction_body::Data>, payer: AccountId) -> WireResult<TxKind> {
    use pb::transaction_body::Data;
    Ok(match data.ok_or(Status::InvalidTransactionBody)? {
        Data::CryptoCreateAccount(b) => {
            #[allow(deprecated)]
            let unmodelled_set = b.proxy_account_id.is_some()
                || b.shard_id.as_ref().is_some_and(|s| s.shard_num != 0)
                || b.realm_id
                    .as_ref()
                    .is_some_and(|r| r.realm_num != 0 || r.shard_num != 0)
                || b.new_realm_admin_key.is_some()
                || !b.memo.is_empty()
                || b.max_automatic_token_associations != 0
                || b.staked_id.is_some()
                || b.decline_reward
                || !b.alias.is_empty()
                || !b.hook_creation_details.is_empty()
                || !b.delegation_address.is_empty();
            unmodelled(unmodelled_set)?;
            auto_renew(b.auto_renew_period.as_ref())?;
            TxKind::CreateAccount {
                key: account_key_in(b.key.as_ref(), 0)?,
                initial_balance: i64::try_from(b.initial_balance)
                    .map_err(|_| Status::InvalidInitialBalance)?,
                receiver_sig_required: b.receiver_sig_required,
            }
        }
        Data::CryptoTransfer(b) => {
            let amounts = b.transfers.iter().flat_map(|l| l.account_amounts.iter());
            let hbar = amounts
                .map(|aa| {
                    unmodelled(aa.is_approval || aa.hook_call.is_some())?;
                    Ok((account_in(aa.account_id.as_ref())?, aa.amount))
                })
                .collect::<WireResult<Vec<_>>>()?;
            let mut nfts = Vec::new();
            for list in &b.token_transfers {
                // Fungible tokens are not part of this ledger.
                unmodelled(!list.transfers.is_empty() || list.expected_decimals.is_some())?;
                let token = token_in(list.token.as_ref())?;
                for n in &list.nft_transfers {
                    unmodelled(
                        n.is_approval
                            || n.sender_allowance_hook_call.is_some()
                            || n.receiver_allowance_hook_call.is_some(),
                    )?;
                    nfts.push(NftTransfer {
                        nft: NftId {
                            token,
                            serial: u64::try_from(n.serial_number)
                                .map_err(|_| Status::InvalidNftId)?,
                        },
                        from: account_in(n.sender_account_id.as_ref())?,
                        to: account_in(n.receiver_account_id.as_ref())?,
                    });
                }
            }
            TxKind::Transfer { hbar, nfts }
        }
        Data::ConsensusCreateTopic(b) => {
            unmodelled(
                b.admin_key.is_some()
                    || b.fee_schedule_key.is_some()
                    || !b.fee_exempt_key_list.is_empty()
                    || !b.custom_fees.is_empty(),
            )?;
            auto_renew(b.auto_renew_period.as_ref())?;
            auto_renew_account(b.auto_renew_account.as_ref(), &[payer])?;
            TxKind::CreateTopic {
                memo: b.memo.clone(),
                submit_key: b.submit_key.as_ref().map(|k| key_in(Some(k))).transpose()?,
            }
        }
        Data::ConsensusSubmitMessage(b) => TxKind::SubmitMessage {
            topic: topic_in(b.topic_id.as_ref())?,
            message: Bytes::from(b.message.clone()),
            chunk: b
                .chunk_info
                .as_ref()
                .map(|c| -> WireResult<ChunkInfo> {
                    Ok(ChunkInfo {
                        initial: tx_id_in(c.initial_transaction_id.as_ref())
                            .map_err(|_| Status::InvalidChunkTransactionId)?,
                        total: u32::try_from(c.total).map_err(|_| Status::InvalidChunkNumber)?,
                        number: u32::try_from(c.number).map_err(|_| Status::InvalidChunkNumber)?,
                    })
                })
                .transpose()?,
        },
        Data::TokenCreation(b) => {
            // Fungible tokens are not part of this ledger.
            unmodelled(b.token_type != pb::TokenType::NonFungibleUnique as i32)?;
            if b.decimals != 0 {
                return Err(Status::InvalidTokenDecimals);
            }
            if b.initial_supply != 0 {
                return Err(Status::InvalidTokenInitialSupply);
            }
            unmodelled(
                b.admin_key.is_some()
                    || b.kyc_key.is_some()
                    || b.freeze_key.is_some()
                    || b.wipe_key.is_some()
                    || b.freeze_default
                    || b.expiry.is_some()
                    || !b.memo.is_empty()
                    || b.supply_type != pb::TokenSupplyType::Infinite as i32
                    || b.max_supply != 0
                    || b.fee_schedule_key.is_some()
                    || !b.custom_fees.is_empty()
                    || b.pause_key.is_some()
                    || !b.metadata.is_empty()
                    || b.metadata_key.is_some(),
            )?;
            let treasury = account_in(b.treasury.as_ref())?;
            auto_renew(b.auto_renew_period.as_ref())?;
            auto_renew_account(b.auto_renew_account.as_ref(), &[payer, treasury])?;
            TxKind::CreateNft {
                name: b.name.clone(),
                symbol: b.symbol.clone(),
                treasury,
                supply_key: key_in(b.supply_key.as_ref())?,
            }
        }
        Data::TokenMint(b) => {
            if b.amount != 0 {
                return Err(Status::InvalidTokenMintAmount);
            }
            TxKind::MintNft {
                token: token_in(b.token.as_ref())?,
                metadata: b.metadata.iter().map(|m| Bytes::from(m.clone())).collect(),
            }
        }
        Data::TokenAssociate(b) => TxKind::Associate {
            account: account_in(b.account.as_ref())?,
            tokens: b
                .tokens
                .iter()
                .map(|t| token_in(Some(t)))
                .collect::<WireResult<_>>()?,
        },
        _ => return Err(Status::NotSupported),
    })
}

/// Takes apart `Transaction{signedTransactionBytes}` as a node does: the body is decoded from
/// the exact signed bytes, which the signatures are later verified over.
pub(crate) fn transaction_in(t: &pb::Transaction) -> WireResult<SignedTransaction> {
    use prost::Message;
    let signed = pb::SignedTransaction::decode(t.signed_transaction_bytes.as_slice())
        .map_err(|_| Status::InvalidTransaction)?;
    let body = pb::TransactionBody::decode(signed.body_bytes.as_slice())
        .map_err(|_| Status::InvalidTransactionBody)?;
    let id = tx_id_in(body.transaction_id.as_ref())?;
    // Scheduled and nonce'd (child) ids, batches, custom-fee limits and high-volume pricing
    // are not modelled.
    unmodelled(
        body.transaction_id
            .as_ref()
            .is_some_and(|i| i.scheduled || i.nonce != 0)
            || body.batch_key.is_some()
            || !body.max_custom_fees.is_empty()
            || body.high_volume,
    )?;
    let tx = Transaction {
        id,
        node: account_in(body.node_account_id.as_ref())?,
        max_fee: i64::try_from(body.transaction_fee).unwrap_or(i64::MAX),
        valid_duration_secs: body.transaction_valid_duration.map_or(0, |d| d.seconds),
        memo: body.memo.clone(),
        kind: kind_in(body.data.as_ref(), id.payer)?,
    };
    let sigs = signed
        .sig_map
        .iter()
        .flat_map(|m| m.sig_pair.iter())
        .filter_map(|p| match &p.signature {
            Some(pb::signature_pair::Signature::Ed25519(sig)) => Some(SigPair {
                public_key: PublicKey(<[u8; 32]>::try_from(p.pub_key_prefix.as_slice()).ok()?),
                signature: <[u8; 64]>::try_from(sig.as_slice()).ok()?,
            }),
            _ => None,
        })
        .collect();
    Ok(SignedTransaction {
        body: tx,
        body_bytes: Bytes::from(signed.body_bytes),
        sigs,
    })
}

pub(crate) fn receipt_out(r: &Receipt) -> pb::TransactionReceipt {
    pb::TransactionReceipt {
        status: status_code(r.status),
        account_id: r.account.map(account_out),
        topic_id: r.topic.map(topic_out),
        topic_sequence_number: r.topic_sequence.unwrap_or(0),
        topic_running_hash: r.topic_running_hash.clone().unwrap_or_default(),
        topic_running_hash_version: if r.topic_running_hash.is_some() { 3 } else { 0 },
        token_id: r.token.map(token_out),
        serial_numbers: r.serials.iter().map(|s| *s as i64).collect(),
        ..Default::default()
    }
}

pub(crate) fn record_out(r: &Record) -> pb::TransactionRecord {
    let mut by_token: std::collections::BTreeMap<TokenId, Vec<pb::NftTransfer>> =
        Default::default();
    for n in &r.nft_transfers {
        by_token
            .entry(n.nft.token)
            .or_default()
            .push(pb::NftTransfer {
                sender_account_id: Some(account_out(n.from)),
                receiver_account_id: Some(account_out(n.to)),
                serial_number: n.nft.serial as i64,
                ..Default::default()
            });
    }
    pb::TransactionRecord {
        receipt: Some(receipt_out(&r.receipt)),
        consensus_timestamp: Some(ts_out(r.receipt.consensus)),
        transaction_id: Some(tx_id_out(r.receipt.id)),
        memo: r.memo.clone(),
        transaction_fee: r.fee as u64,
        transfer_list: Some(pb::TransferList {
            account_amounts: r
                .transfers
                .iter()
                .map(|(a, v)| pb::AccountAmount {
                    account_id: Some(account_out(*a)),
                    amount: *v,
                    ..Default::default()
                })
                .collect(),
        }),
        token_transfer_lists: by_token
            .into_iter()
            .map(|(t, nfts)| pb::TokenTransferList {
                token: Some(token_out(t)),
                nft_transfers: nfts,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
