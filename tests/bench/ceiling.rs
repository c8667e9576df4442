//! The storage ceiling: how fast the same store takes the same rows when
//! written directly, so that each vault rate can be read as a fraction of
//! what the database allows at all.
//!
//! It writes through the backend's own [`Store`] (the vault's SQL, schema,
//! connection settings and pools, SQLite's `synchronous = FULL` included)
//! into a data directory of its own, initialised like the vault's, so both
//! databases start alike and grow alike (the ceiling is filled as far as the
//! vault before each measured phase).
//!
//! Each transaction is what the vault's store does for one commit:
//! `begin_write`, `insert_records` (random 32-byte blind indexes, tokens in
//! the vault's own format, sealed bytes and tags of the real sizes), then the
//! audit append (`lock_chain_head`, `insert_audit_entries` with one entry per
//! call, each naming its tokens, `set_chain_head`), `commit`. One writer
//! commits after another, each commit as large as the vault's can be at
//! best: a stream's batch (`limits.stream_batch_records` records, one
//! entry), or for unary calls at concurrency c every call in flight sharing
//! one group commit (c records, c entries). Concurrent writers would only
//! queue on the store's write lock (SQLite) or the chain head (PostgreSQL).
//!
//! It leaves out everything else the vault does per batch: gRPC, TLS and
//! protobuf; parsing and authorisation; the keyring; the blind-index HMAC,
//! AES-GCM sealing and the state tags; the audit chain's HMAC (the entry's
//! hash here is random bytes); and the core's two reads of the blind indexes
//! (the look-up before the write transaction, the read-back of the holders
//! inside it).
//!
//! A rewrap's ceiling ([`rewrap`]) walks the store's records as the vault's
//! rewrap does, through the same store steps: the scan of a window outside
//! any transaction (`records_to_rewrap`), then in one transaction the
//! conditional updates (`rewrap_records`, each row written only if its
//! version and tag are still those read), one audit entry naming the count,
//! `commit`. It leaves out the keyring, each record's integrity check,
//! opening and sealing (the new sealed bytes and tag are random bytes of
//! the real sizes), the audit chain's HMAC, and gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mnvault_core::audit::{AuditRecord, Operation, Outcome};
use mnvault_core::id::{TenantId, Token, TokenFormat};
use mnvault_core::mint::{draw_request_id, draw_token};
use mnvault_core::store::{ChainHead, NewRecord, RewrappedRecord, Store, WriteTx};
use mnvault_keys::BlindIndex;
use rand::RngCore as _;

/// Records a rewrap call looks at per record it may seal (the vault's
/// `REWRAP_WINDOW_PER_RECORD`, private to its core).
const REWRAP_WINDOW_PER_RECORD: u32 = 10;

/// A sealed record of a twelve-digit number: format byte, key version (u32),
/// nonce (12), ciphertext (12), GCM tag (16); see `TenantKeys::seal`.
pub const SEALED_LEN: usize = 1 + 4 + 12 + 12 + 16;

/// What one commit holds: `calls` calls of `records_per_call` records, each
/// call with its own audit entry of `operation`.
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    /// The operation the entries name.
    pub operation: Operation,
    /// Calls (audit entries) per commit.
    pub calls: usize,
    /// Records per call.
    pub records_per_call: usize,
}

/// Writes `rows` records in commits shaped as `commit` (the last one
/// smaller); returns how long it took.
pub async fn write(store: &Arc<dyn Store>, commit: Commit, rows: u64) -> anyhow::Result<Duration> {
    let tenant = TenantId::parse("demo").expect("a tenant id");
    let per_commit = (commit.calls.max(1) * commit.records_per_call.max(1)) as u64;
    let started = Instant::now();
    let mut written = 0u64;
    while written < rows {
        let count = (rows - written).min(per_commit) as usize;
        write_commit(store.as_ref(), &tenant, commit, count).await?;
        written += count as u64;
    }
    Ok(started.elapsed())
}

/// `count` records of the vault's shape, and a hash for the audit entry of
/// each call of `records_per_call` of them.
fn draw_commit(count: usize, records_per_call: usize) -> (Vec<NewRecord>, Vec<[u8; 32]>) {
    let mut rng = rand::thread_rng();
    let mut random32 = || {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        bytes
    };
    let records = (0..count)
        .map(|_| {
            let mut sealed = vec![0u8; SEALED_LEN];
            rand::thread_rng().fill_bytes(&mut sealed);
            NewRecord {
                blind_index: BlindIndex(random32()),
                token: draw_token(TokenFormat::Opaque),
                key_version: 1,
                sealed,
                tag: random32(),
            }
        })
        .collect();
    let hashes = (0..count.div_ceil(records_per_call)).map(|_| random32()).collect();
    (records, hashes)
}

/// What a rewrap's ceiling took.
#[derive(Debug, Clone, Copy, Default)]
pub struct RewrapCeiling {
    /// The whole walk.
    pub elapsed: Duration,
    /// Of which the scans, outside the transactions (`records_to_rewrap`).
    pub reading: Duration,
    /// The conditional updates (`begin_write`, `rewrap_records`).
    pub updating: Duration,
    /// The audit entries (`lock_chain_head`, `insert_audit_entries`, `set_chain_head`).
    pub auditing: Duration,
    /// The commits.
    pub committing: Duration,
    /// Transactions (calls) made.
    pub calls: u64,
    /// Rows written.
    pub written: u64,
}

/// Walks the `demo` tenant's records under a version below `version`,
/// `batch` per transaction, and writes each again as if sealed under
/// `version` (see the module's documentation).
pub async fn rewrap(store: &Arc<dyn Store>, batch: u32, version: u32) -> anyhow::Result<RewrapCeiling> {
    let tenant = TenantId::parse("demo").expect("a tenant id");
    let batch = batch.max(1);
    let mut outcome = RewrapCeiling::default();
    let mut after: Option<Token> = None;
    let started = Instant::now();
    loop {
        let scanned = Instant::now();
        let mut read = store.begin_read().await?;
        let scan =
            read.records_to_rewrap(&tenant, after.as_ref(), version, batch * REWRAP_WINDOW_PER_RECORD, batch).await?;
        drop(read);
        outcome.reading += scanned.elapsed();
        let next = if scan.records.len() >= batch as usize {
            scan.records.last().map(|(row, _)| row.token.clone())
        } else {
            scan.window_end.clone()
        };
        let records = scan
            .records
            .iter()
            .map(|(row, _)| {
                let mut sealed = vec![0u8; SEALED_LEN];
                rand::thread_rng().fill_bytes(&mut sealed);
                let mut tag = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut tag);
                Ok(RewrappedRecord {
                    token: Token::parse(&row.token)?,
                    old_version: row.key_version,
                    old_tag: row.tag.clone().unwrap_or_default(),
                    key_version: version,
                    sealed,
                    tag,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let now = mnvault_core::clock::now_ms();
        let step = Instant::now();
        let mut tx = store.begin_write().await?;
        let written = if records.is_empty() { 0 } else { tx.rewrap_records(&tenant, &records).await? };
        let step = lap(&mut outcome.updating, step);
        append_entry(tx.as_mut(), &tenant, Operation::RewrapTenantRecords, Vec::new(), written, now).await?;
        let step = lap(&mut outcome.auditing, step);
        tx.commit().await?;
        lap(&mut outcome.committing, step);
        outcome.calls += 1;
        outcome.written += written;
        match next {
            Some(token) => after = Some(Token::parse(&token)?),
            None => break,
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Adds the time since `since` to `total`; returns now.
fn lap(total: &mut Duration, since: Instant) -> Instant {
    let now = Instant::now();
    *total += now - since;
    now
}

/// One audit entry of the vault's shape, with a random hash.
async fn append_entry(
    tx: &mut dyn WriteTx,
    tenant: &TenantId,
    operation: Operation,
    tokens: Vec<String>,
    record_count: u64,
    now: i64,
) -> anyhow::Result<()> {
    let mut hash = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut hash);
    let head = tx.lock_chain_head().await?;
    let entry = AuditRecord {
        seq: head.seq + 1,
        time_ms: now,
        principal: "admin".into(),
        tenant: tenant.to_string(),
        operation: operation.id().into(),
        outcome: Outcome::Ok.id().into(),
        reason: String::new(),
        job_id: String::new(),
        purpose: String::new(),
        tokens,
        record_count,
        request_id: draw_request_id().to_string(),
        prev_hash: head.hash,
        hash,
        mac: Some(hash),
    };
    tx.insert_audit_entries(std::slice::from_ref(&entry)).await?;
    tx.set_chain_head(&ChainHead { seq: entry.seq, hash }).await?;
    Ok(())
}

async fn write_commit(store: &dyn Store, tenant: &TenantId, commit: Commit, count: usize) -> anyhow::Result<()> {
    let (records, hashes) = draw_commit(count, commit.records_per_call.max(1));
    let now = mnvault_core::clock::now_ms();
    let mut tx = store.begin_write().await?;
    tx.insert_records(tenant, TokenFormat::Opaque, &records, now).await?;
    let mut head = tx.lock_chain_head().await?;
    let mut entries = Vec::with_capacity(hashes.len());
    for (call, hash) in records.chunks(commit.records_per_call.max(1)).zip(hashes) {
        let entry = AuditRecord {
            seq: head.seq + 1,
            time_ms: now,
            principal: "payroll".into(),
            tenant: tenant.to_string(),
            operation: commit.operation.id().into(),
            outcome: Outcome::Ok.id().into(),
            reason: String::new(),
            job_id: String::new(),
            purpose: String::new(),
            tokens: call.iter().map(|r| r.token.to_string()).collect(),
            record_count: call.len() as u64,
            request_id: draw_request_id().to_string(),
            prev_hash: head.hash,
            hash,
            mac: Some(hash),
        };
        head = ChainHead { seq: entry.seq, hash };
        entries.push(entry);
    }
    tx.insert_audit_entries(&entries).await?;
    tx.set_chain_head(&head).await?;
    tx.commit().await?;
    Ok(())
}
