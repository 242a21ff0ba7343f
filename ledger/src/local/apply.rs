//! Checking and applying one transaction inside the committer's database transaction.

use std::collections::{BTreeMap, HashSet};

use redb::{ReadableTable, Table, WriteTransaction};

use super::{
    ACCOUNT_KEYS, ACCOUNTS, AccountRec, MESSAGES, META, Meta, NFTS, NftRec, RECEIVER_SIG, RECORDS,
    TOKENS, TOPICS, TokenRec, TopicRec, dec, enc, storage,
};
use crate::fees::{self, FEE_COLLECTOR};
use crate::running_hash;
use crate::tx::{Key, PublicKey, Transaction, TxKind};
use crate::types::{AccountId, Timestamp, TokenId, TopicId};
use crate::{LedgerError, NftTransfer, Receipt, Record, Status, TopicMessage};

pub(super) struct Tables<'t> {
    accounts: Table<'t, u64, &'static [u8]>,
    topics: Table<'t, u64, &'static [u8]>,
    messages: Table<'t, (u64, u64), &'static [u8]>,
    tokens: Table<'t, u64, &'static [u8]>,
    nfts: Table<'t, (u64, u64), &'static [u8]>,
    records: Table<'t, &'static [u8], &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    receiver_sig: Table<'t, u64, ()>,
    account_keys: Table<'t, u64, &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, LedgerError> {
        Ok(Self {
            accounts: txn.open_table(ACCOUNTS).map_err(storage)?,
            topics: txn.open_table(TOPICS).map_err(storage)?,
            messages: txn.open_table(MESSAGES).map_err(storage)?,
            tokens: txn.open_table(TOKENS).map_err(storage)?,
            nfts: txn.open_table(NFTS).map_err(storage)?,
            records: txn.open_table(RECORDS).map_err(storage)?,
            meta: txn.open_table(META).map_err(storage)?,
            receiver_sig: txn.open_table(RECEIVER_SIG).map_err(storage)?,
            account_keys: txn.open_table(ACCOUNT_KEYS).map_err(storage)?,
        })
    }

    pub(super) fn save_meta(&mut self, meta: &Meta) -> Result<(), LedgerError> {
        self.meta
            .insert("meta", enc(meta).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn account(&self, id: AccountId) -> Result<Option<AccountRec>, LedgerError> {
        if id.0.shard != 0 || id.0.realm != 0 {
            return Ok(None);
        }
        self.accounts
            .get(id.num())
            .map_err(storage)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    /// Whether `signers` satisfy the key of account `id` (record `rec`): its threshold key if
    /// it has one, else its Ed25519 key.
    fn signed(
        &self,
        id: AccountId,
        rec: &AccountRec,
        signers: &HashSet<PublicKey>,
    ) -> Result<bool, LedgerError> {
        match self.account_keys.get(id.num()).map_err(storage)? {
            Some(v) => Ok(dec::<Key>(v.value())?.is_satisfied(signers)),
            None => Ok(signers.contains(&rec.key)),
        }
    }

    /// Whether transfers crediting `id` must carry its signature.
    fn receiver_sig_required(&self, id: AccountId) -> Result<bool, LedgerError> {
        Ok(self.receiver_sig.get(id.num()).map_err(storage)?.is_some())
    }

    fn put_account(&mut self, id: AccountId, rec: &AccountRec) -> Result<(), LedgerError> {
        self.accounts
            .insert(id.num(), enc(rec).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn topic(&self, id: TopicId) -> Result<Option<TopicRec>, LedgerError> {
        if id.0.shard != 0 || id.0.realm != 0 {
            return Ok(None);
        }
        self.topics
            .get(id.num())
            .map_err(storage)?
            .map(|v| dec(v.value()))
            .transpose()
    }

    fn token(&self, id: TokenId) -> Result<Option<TokenRec>, LedgerError> {
        if id.0.shard != 0 || id.0.realm != 0 {
            return Ok(None);
        }
        self.tokens
            .get(id.num())
            .map_err(storage)?
            .map(|v| dec(v.value()))
            .transpose()
    }
}

/// The effects of a successful transaction, before they are written.
#[derive(Default)]
struct Effects {
    receipt_account: Option<AccountId>,
    receipt_topic: Option<TopicId>,
    receipt_token: Option<TokenId>,
    serials: Vec<u64>,
    topic_sequence: Option<u64>,
    topic_running_hash: Option<Vec<u8>>,
    transfers: Vec<(AccountId, i64)>,
    nft_transfers: Vec<NftTransfer>,
}

/// Checks and applies `tx`. The outer `Result` is a storage failure (the whole batch aborts);
/// the inner one is the transaction's own outcome.
pub(super) fn apply(
    t: &mut Tables<'_>,
    meta: &mut Meta,
    tx: &Transaction,
    signers: &HashSet<PublicKey>,
    now: Timestamp,
) -> Result<Result<Receipt, LedgerError>, LedgerError> {
    let id = tx.id;
    let precheck = |status| Ok(Err(LedgerError::Precheck { status, id }));
    let key = id.to_bytes();

    // Precheck: refused without a fee, nothing written.
    if t.records.get(key.as_slice()).map_err(storage)?.is_some() {
        return precheck(Status::DuplicateTransaction);
    }
    if !fees::VALID_DURATION_SECS.contains(&tx.valid_duration_secs) {
        return precheck(Status::InvalidTransactionDuration);
    }
    // Hedera's time box: the start must be in the past, and the transaction must still have
    // 10 s of its valid duration left.
    if id.valid_start >= now {
        return precheck(Status::InvalidTransactionStart);
    }
    if id
        .valid_start
        .plus_secs(tx.valid_duration_secs - fees::EXPIRY_MARGIN_SECS)
        < now
    {
        return precheck(Status::TransactionExpired);
    }
    if tx.memo.len() > fees::MAX_MEMO_BYTES {
        return precheck(Status::MemoTooLong);
    }
    let Some(mut payer) = t.account(id.payer)? else {
        return precheck(Status::PayerAccountNotFound);
    };
    if !t.signed(id.payer, &payer, signers)? {
        return precheck(Status::InvalidSignature);
    }
    let fee = fees::fee(&tx.kind);
    if tx.max_fee < fee {
        return precheck(Status::InsufficientTxFee);
    }
    if payer.balance < fee {
        return precheck(Status::InsufficientPayerBalance);
    }
    if let Some(status) = syntax(&tx.kind) {
        return precheck(status);
    }

    // Consensus: the fee is charged whatever happens next.
    let consensus = if now > meta.last_consensus {
        now
    } else {
        Timestamp::from_nanos(meta.last_consensus.as_nanos() + 1)
    };
    meta.last_consensus = consensus;
    payer.balance -= fee;
    t.put_account(id.payer, &payer)?;
    let mut collector = t
        .account(FEE_COLLECTOR)?
        .ok_or_else(|| LedgerError::Storage("fee collection account missing".into()))?;
    collector.balance += fee;
    t.put_account(FEE_COLLECTOR, &collector)?;

    let outcome = handle(t, meta, tx, signers, consensus)?;
    let (status, effects) = match outcome {
        Ok(e) => (Status::Success, e),
        Err(s) => (s, Effects::default()),
    };
    let mut changes: BTreeMap<AccountId, i64> = BTreeMap::new();
    *changes.entry(id.payer).or_default() -= fee;
    *changes.entry(FEE_COLLECTOR).or_default() += fee;
    for (a, v) in &effects.transfers {
        *changes.entry(*a).or_default() += v;
    }
    let receipt = Receipt {
        id,
        status,
        consensus,
        account: effects.receipt_account,
        topic: effects.receipt_topic,
        token: effects.receipt_token,
        serials: effects.serials,
        topic_sequence: effects.topic_sequence,
        topic_running_hash: effects.topic_running_hash,
    };
    let record = Record {
        receipt: receipt.clone(),
        fee,
        transfers: changes.into_iter().filter(|(_, v)| *v != 0).collect(),
        nft_transfers: effects.nft_transfers,
        memo: tx.memo.clone(),
    };
    t.records
        .insert(key.as_slice(), enc(&record).as_slice())
        .map_err(storage)?;
    Ok(if status == Status::Success {
        Ok(receipt)
    } else {
        Err(LedgerError::Failed { status, id })
    })
}

/// Checks that need no state (Hedera runs them at precheck).
fn syntax(kind: &TxKind) -> Option<Status> {
    match kind {
        TxKind::Transfer { hbar, nfts } => {
            if hbar.len() > fees::MAX_TRANSFER_ACCOUNTS {
                return Some(Status::TransferListSizeLimitExceeded);
            }
            if nfts.len() > fees::MAX_NFT_TRANSFERS {
                return Some(Status::BatchSizeLimitExceeded);
            }
            let mut seen = HashSet::new();
            if hbar.iter().any(|(a, _)| !seen.insert(*a)) {
                return Some(Status::AccountRepeatedInAccountAmounts);
            }
            let sum = hbar.iter().try_fold(0i64, |s, (_, v)| s.checked_add(*v));
            if sum != Some(0) {
                return Some(Status::InvalidAccountAmounts);
            }
            None
        }
        TxKind::SubmitMessage { message, .. } => {
            if message.is_empty() {
                Some(Status::InvalidTopicMessage)
            } else if message.len() > fees::MAX_MESSAGE_BYTES {
                Some(Status::MessageSizeTooLarge)
            } else {
                None
            }
        }
        TxKind::CreateAccount { key, .. } if !key.check() => Some(Status::InvalidKeyEncoding),
        TxKind::CreateAccount {
            initial_balance, ..
        } if *initial_balance < 0 => Some(Status::InvalidInitialBalance),
        TxKind::MintNft { metadata, .. } => {
            if metadata.is_empty() || metadata.len() > fees::MAX_MINT_BATCH {
                Some(Status::BatchSizeLimitExceeded)
            } else if metadata.iter().any(|m| m.len() > fees::MAX_METADATA_BYTES) {
                Some(Status::MetadataTooLong)
            } else {
                None
            }
        }
        TxKind::CreateNft { name, symbol, .. }
            if name.is_empty() || symbol.is_empty() || name.len() > 100 || symbol.len() > 100 =>
        {
            Some(Status::MissingTokenName)
        }
        _ => None,
    }
}

fn next_entity(meta: &mut Meta) -> u64 {
    let n = meta.next_entity;
    meta.next_entity += 1;
    n
}

/// Runs the transaction's own logic after the fee. Checks everything before writing anything.
fn handle(
    t: &mut Tables<'_>,
    meta: &mut Meta,
    tx: &Transaction,
    signers: &HashSet<PublicKey>,
    consensus: Timestamp,
) -> Result<Result<Effects, Status>, LedgerError> {
    let mut fx = Effects::default();
    match &tx.kind {
        TxKind::CreateAccount {
            key,
            initial_balance,
            receiver_sig_required,
        } => {
            let Some(mut payer) = t.account(tx.id.payer)? else {
                return Ok(Err(Status::PayerAccountNotFound));
            };
            if payer.balance < *initial_balance {
                return Ok(Err(Status::InsufficientPayerBalance));
            }
            // Hedera requires the new account's key to sign a creation that sets
            // `receiverSigRequired`.
            if *receiver_sig_required && !key.is_satisfied(signers) {
                return Ok(Err(Status::InvalidSignature));
            }
            payer.balance -= initial_balance;
            t.put_account(tx.id.payer, &payer)?;
            let new = AccountId::new(next_entity(meta));
            // The record holds one Ed25519 key; a threshold key is kept beside it and is
            // the only one that signs for the account.
            let Some(first) = key.first() else {
                return Ok(Err(Status::InvalidKeyEncoding));
            };
            t.put_account(
                new,
                &AccountRec {
                    key: first,
                    balance: *initial_balance,
                    tokens: Vec::new(),
                },
            )?;
            if let Key::Threshold { .. } = key {
                t.account_keys
                    .insert(new.num(), enc(key).as_slice())
                    .map_err(storage)?;
            }
            if *receiver_sig_required {
                t.receiver_sig.insert(new.num(), ()).map_err(storage)?;
            }
            fx.receipt_account = Some(new);
            fx.transfers = vec![(tx.id.payer, -initial_balance), (new, *initial_balance)];
        }
        TxKind::Transfer { hbar, nfts } => {
            let mut accounts = Vec::with_capacity(hbar.len());
            for (a, v) in hbar {
                let Some(rec) = t.account(*a)? else {
                    return Ok(Err(Status::InvalidAccountId));
                };
                let must_sign = *v < 0 || (*v > 0 && t.receiver_sig_required(*a)?);
                if must_sign && !t.signed(*a, &rec, signers)? {
                    return Ok(Err(Status::InvalidSignature));
                }
                if rec.balance.checked_add(*v).is_none_or(|b| b < 0) {
                    return Ok(Err(Status::InsufficientAccountBalance));
                }
                accounts.push((*a, rec, *v));
            }
            let mut moves = Vec::with_capacity(nfts.len());
            for n in nfts {
                let Some(_token) = t.token(n.nft.token)? else {
                    return Ok(Err(Status::InvalidTokenId));
                };
                let Some(rec) = t
                    .nfts
                    .get((n.nft.token.num(), n.nft.serial))
                    .map_err(storage)?
                    .map(|v| dec::<NftRec>(v.value()))
                    .transpose()?
                else {
                    return Ok(Err(Status::InvalidNftId));
                };
                if rec.owner != n.from.num() || n.from.0.shard != 0 || n.from.0.realm != 0 {
                    return Ok(Err(Status::SenderDoesNotOwnNftSerialNo));
                }
                let Some(from) = t.account(n.from)? else {
                    return Ok(Err(Status::InvalidAccountId));
                };
                if !t.signed(n.from, &from, signers)? {
                    return Ok(Err(Status::InvalidSignature));
                }
                let Some(to) = t.account(n.to)? else {
                    return Ok(Err(Status::InvalidAccountId));
                };
                if t.receiver_sig_required(n.to)? && !t.signed(n.to, &to, signers)? {
                    return Ok(Err(Status::InvalidSignature));
                }
                if !to.tokens.contains(&n.nft.token.num()) {
                    return Ok(Err(Status::TokenNotAssociatedToAccount));
                }
                moves.push((*n, rec));
            }
            for (a, mut rec, v) in accounts {
                rec.balance += v;
                t.put_account(a, &rec)?;
            }
            for (n, mut rec) in moves {
                rec.owner = n.to.num();
                t.nfts
                    .insert((n.nft.token.num(), n.nft.serial), enc(&rec).as_slice())
                    .map_err(storage)?;
            }
            fx.transfers = hbar.clone();
            fx.nft_transfers = nfts.clone();
        }
        TxKind::CreateTopic { memo, submit_key } => {
            if memo.len() > fees::MAX_MEMO_BYTES {
                return Ok(Err(Status::MemoTooLong));
            }
            let topic = TopicId::new(next_entity(meta));
            let rec = TopicRec {
                memo: memo.clone(),
                submit_key: *submit_key,
                sequence: 0,
                running_hash: vec![0; running_hash::RUNNING_HASH_LEN],
            };
            t.topics
                .insert(topic.num(), enc(&rec).as_slice())
                .map_err(storage)?;
            fx.receipt_topic = Some(topic);
        }
        TxKind::SubmitMessage {
            topic,
            message,
            chunk,
        } => {
            let Some(mut rec) = t.topic(*topic)? else {
                return Ok(Err(Status::InvalidTopicId));
            };
            if rec.submit_key.is_some_and(|k| !signers.contains(&k)) {
                return Ok(Err(Status::InvalidSignature));
            }
            if let Some(c) = chunk {
                if c.number == 0 || c.number > c.total {
                    return Ok(Err(Status::InvalidChunkNumber));
                }
                let first_ok = c.number != 1 || c.initial == tx.id;
                if !first_ok || c.initial.payer != tx.id.payer {
                    return Ok(Err(Status::InvalidChunkTransactionId));
                }
            }
            rec.sequence += 1;
            let hash = running_hash::next(
                &rec.running_hash,
                tx.id.payer,
                *topic,
                consensus,
                rec.sequence,
                message,
            );
            rec.running_hash = hash.to_vec();
            let msg = TopicMessage {
                sequence: rec.sequence,
                consensus,
                message: message.clone(),
                running_hash: hash.to_vec(),
                id: Some(tx.id),
                chunk: *chunk,
            };
            t.messages
                .insert((topic.num(), rec.sequence), enc(&msg).as_slice())
                .map_err(storage)?;
            t.topics
                .insert(topic.num(), enc(&rec).as_slice())
                .map_err(storage)?;
            fx.topic_sequence = Some(rec.sequence);
            fx.topic_running_hash = Some(hash.to_vec());
        }
        TxKind::CreateNft {
            name,
            symbol,
            treasury,
            supply_key,
        } => {
            let Some(mut tre) = t.account(*treasury)? else {
                return Ok(Err(Status::InvalidAccountId));
            };
            if !t.signed(*treasury, &tre, signers)? {
                return Ok(Err(Status::InvalidSignature));
            }
            let token = TokenId::new(next_entity(meta));
            t.tokens
                .insert(
                    token.num(),
                    enc(&TokenRec {
                        name: name.clone(),
                        symbol: symbol.clone(),
                        treasury: treasury.num(),
                        supply_key: *supply_key,
                        minted: 0,
                    })
                    .as_slice(),
                )
                .map_err(storage)?;
            tre.tokens.push(token.num());
            t.put_account(*treasury, &tre)?;
            fx.receipt_token = Some(token);
        }
        TxKind::MintNft { token, metadata } => {
            let Some(mut rec) = t.token(*token)? else {
                return Ok(Err(Status::InvalidTokenId));
            };
            if !signers.contains(&rec.supply_key) {
                return Ok(Err(Status::InvalidSignature));
            }
            for m in metadata {
                rec.minted += 1;
                t.nfts
                    .insert(
                        (token.num(), rec.minted),
                        enc(&NftRec {
                            owner: rec.treasury,
                            metadata: m.to_vec(),
                        })
                        .as_slice(),
                    )
                    .map_err(storage)?;
                fx.serials.push(rec.minted);
            }
            t.tokens
                .insert(token.num(), enc(&rec).as_slice())
                .map_err(storage)?;
        }
        TxKind::Associate { account, tokens } => {
            let Some(mut rec) = t.account(*account)? else {
                return Ok(Err(Status::InvalidAccountId));
            };
            if !t.signed(*account, &rec, signers)? {
                return Ok(Err(Status::InvalidSignature));
            }
            for tok in tokens {
                if t.token(*tok)?.is_none() {
                    return Ok(Err(Status::InvalidTokenId));
                }
                if rec.tokens.contains(&tok.num()) {
                    return Ok(Err(Status::TokenAlreadyAssociatedToAccount));
                }
                rec.tokens.push(tok.num());
            }
            t.put_account(*account, &rec)?;
        }
    }
    Ok(Ok(fx))
}
