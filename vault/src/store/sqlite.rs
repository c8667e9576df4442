//! [`Store`] on SQLite: one file in the data directory, WAL journal.
//!
//! SQLite allows one writer at a time, so all writes go through a pool of one
//! connection and start with `BEGIN IMMEDIATE`: the write lock is taken up
//! front, a transaction never fails halfway on a lock upgrade, and a write
//! that cannot get the lock within the write timeout fails promptly instead
//! of hanging. Reads use their own pool and never wait for writers (WAL).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use mnvault_keys::{AuditChainKey, BlindIndex, WrappedKey};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use zeroize::Zeroizing;

use super::{
    AuditFilter, BatchItem, JobTerms, NewJob, NewTenant, OpenRecord, RecordInfo, Store, StoreError, StoredFormat,
    StoredJob, StoredTenant,
};
use crate::audit::{AuditDraft, AuditRecord};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "vault.db";

/// SQLite's limit on bound parameters per statement is 32766; stay well below.
const MAX_PARAMS: usize = 30_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How a process opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file and the schema (`mnvault init`).
    Initialise,
    /// Open an existing file and bring its schema up to date (`mnvault serve`).
    Serve,
    /// Open an existing file to read it, changing nothing, while a vault may
    /// be running on it (`mnvault audit verify`).
    Review,
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    audit_key: Arc<OnceLock<Arc<AuditChainKey>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database file as `mode` says. `write_timeout` bounds how long
    /// a write waits for the lock.
    pub async fn open(path: &Path, mode: OpenMode, write_timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(mode == OpenMode::Initialise)
            .journal_mode(SqliteJournalMode::Wal)
            // The audit entry of a release must survive a power cut once the number has left.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(write_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(write_timeout)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        if mode != OpenMode::Review {
            MIGRATOR.run(&writer).await?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(write_timeout)
            .connect_with(options)
            .await
            .map_err(classify)?;
        Ok(Self { writer, reader, audit_key: Arc::new(OnceLock::new()) })
    }

    /// Sets the key that seals audit entries; appends fail until it is set.
    pub fn set_audit_key(&self, key: Arc<AuditChainKey>) {
        // A second call keeps the first key: the key never changes while running.
        let _ = self.audit_key.set(key);
    }

    /// Closes both pools, waiting for running queries.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(classify)
    }

    fn audit_key(&self) -> Result<&AuditChainKey, StoreError> {
        self.audit_key
            .get()
            .map(|key| key.as_ref())
            .ok_or_else(|| StoreError::Corrupt("the audit key is not loaded".into()))
    }

    /// Appends `draft` to the chain inside the caller's transaction.
    async fn append(&self, conn: &mut SqliteConnection, draft: AuditDraft, now: i64) -> Result<u64, StoreError> {
        let key = self.audit_key()?;
        append_entry(conn, key, draft, now).await.map_err(audit_failure)
    }
}

async fn append_entry(
    conn: &mut SqliteConnection,
    key: &AuditChainKey,
    draft: AuditDraft,
    now: i64,
) -> Result<u64, StoreError> {
    // Updating the single head row first serialises appends on any database.
    let head = sqlx::query("UPDATE audit_chain_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    let seq: i64 = head.get("seq");
    let prev_hash = hash_column(head.get("hash"))?;
    let record = AuditRecord::seal(draft, seq as u64, now, prev_hash, key);
    sqlx::query(
        "INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, \
         record_count, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(record.time_ms)
    .bind(&record.principal)
    .bind(&record.tenant)
    .bind(&record.operation)
    .bind(&record.outcome)
    .bind(&record.reason)
    .bind(&record.job_id)
    .bind(&record.purpose)
    .bind(record.record_count as i64)
    .bind(&record.prev_hash[..])
    .bind(&record.hash[..])
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    for (chunk_index, chunk) in record.tokens.chunks(MAX_PARAMS / 3).enumerate() {
        let offset = chunk_index * (MAX_PARAMS / 3);
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO audit_entry_tokens (seq, position, token) ");
        insert.push_values(chunk.iter().enumerate(), |mut row, (i, token)| {
            row.push_bind(seq).push_bind((offset + i) as i64).push_bind(token);
        });
        insert.build().execute(&mut *conn).await.map_err(classify)?;
    }
    sqlx::query("UPDATE audit_chain_head SET hash = ? WHERE id = 1")
        .bind(&record.hash[..])
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(seq as u64)
}

/// Commits a transaction that holds an audit entry. A failed commit (disk
/// full, I/O error) means the entry was not written, so it is reported as
/// such: the call fails with UNAVAILABLE and nothing it did took effect.
async fn commit_audited(tx: sqlx::Transaction<'static, Sqlite>) -> Result<(), StoreError> {
    tx.commit().await.map_err(|error| audit_failure(classify(error)))
}

/// A database error while the audit entry was being written or committed is
/// an unwritable audit log; busy and unavailable stay what they are.
fn audit_failure(error: StoreError) -> StoreError {
    match error {
        StoreError::Database(error) => StoreError::AuditUnwritable(error),
        other => other,
    }
}

fn hash_column(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("an audit hash is not 32 bytes".into()))
}

/// Sorts sqlx errors into what the caller can act on.
fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => StoreError::Unavailable(error),
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            let busy =
                db.code().and_then(|code| code.parse::<i64>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6));
            if busy {
                StoreError::Unavailable(error)
            } else {
                StoreError::Database(error)
            }
        }
        _ => StoreError::Database(error),
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

#[async_trait]
impl Store for SqliteStore {
    async fn system_key(&self, name: &str) -> Result<Option<WrappedKey>, StoreError> {
        let row = sqlx::query("SELECT wrapped_key FROM system_keys WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        Ok(row.map(|row| WrappedKey::from_bytes(row.get("wrapped_key"))))
    }

    async fn put_system_key(&self, name: &str, key: &WrappedKey, created_at: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO system_keys (name, wrapped_key, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(key.as_bytes())
            .bind(created_at)
            .execute(&self.writer)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::AlreadyExists(format!("system key {name}"))
                } else {
                    classify(e)
                }
            })?;
        Ok(())
    }

    async fn create_tenant(&self, tenant: &NewTenant, audit: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (tenant, display_name, created_at, index_key_wrapped) VALUES (?, ?, ?, ?)",
        )
        .bind(&tenant.tenant)
        .bind(&tenant.display_name)
        .bind(tenant.created_at)
        .bind(tenant.index_key.as_bytes())
        .execute(&mut *tx)
        .await;
        if let Err(error) = inserted {
            return Err(if is_unique_violation(&error) {
                StoreError::AlreadyExists(format!("tenant {:?}", tenant.tenant))
            } else {
                classify(error)
            });
        }
        sqlx::query("INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) VALUES (?, 1, ?, ?)")
            .bind(&tenant.tenant)
            .bind(tenant.first_record_key.as_bytes())
            .bind(tenant.created_at)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        self.append(&mut tx, audit, tenant.created_at).await?;
        commit_audited(tx).await
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<StoredTenant>, StoreError> {
        let Some(row) = sqlx::query("SELECT display_name, created_at, index_key_wrapped FROM tenants WHERE tenant = ?")
            .bind(tenant)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let keys = sqlx::query("SELECT version, wrapped_key FROM tenant_record_keys WHERE tenant = ? ORDER BY version")
            .bind(tenant)
            .fetch_all(&self.reader)
            .await
            .map_err(classify)?;
        Ok(Some(StoredTenant {
            tenant: tenant.to_owned(),
            display_name: row.get("display_name"),
            created_at: row.get("created_at"),
            index_key: WrappedKey::from_bytes(row.get("index_key_wrapped")),
            record_keys: keys
                .into_iter()
                .map(|k| (k.get::<i64, _>("version") as u32, WrappedKey::from_bytes(k.get("wrapped_key"))))
                .collect(),
        }))
    }

    async fn find_tokens(
        &self,
        tenant: &str,
        format: StoredFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        find_tokens_in(&mut conn, tenant, format, blind_indexes).await
    }

    async fn tokenize(
        &self,
        tenant: &str,
        format: StoredFormat,
        items: Vec<BatchItem>,
        mut audit: AuditDraft,
    ) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let new_records: Vec<_> = items
            .iter()
            .filter_map(|item| match item {
                BatchItem::New(record) => Some(record),
                BatchItem::Existing(_) => None,
            })
            .collect();
        for chunk in new_records.chunks(MAX_PARAMS / 7) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO records (tenant, token, format, blind_index, key_version, sealed, created_at) ",
            );
            insert.push_values(chunk, |mut row, record| {
                row.push_bind(tenant)
                    .push_bind(&record.token)
                    .push_bind(format.id())
                    .push_bind(&record.blind_index.0[..])
                    .push_bind(i64::from(record.key_version))
                    .push_bind(&record.sealed)
                    .push_bind(now);
            });
            // A concurrent writer may have inserted the same number first: keep its token.
            insert.push(" ON CONFLICT DO NOTHING");
            insert.build().execute(&mut *tx).await.map_err(classify)?;
        }
        // Read back the token that holds each new blind index: ours, or a concurrent writer's.
        let indexes: Vec<BlindIndex> = new_records.iter().map(|r| r.blind_index).collect();
        let holders = find_tokens_in(&mut tx, tenant, format, &indexes).await?;
        let mut holders = holders.into_iter();
        let mut tokens = Vec::with_capacity(items.len());
        for item in items {
            match item {
                BatchItem::Existing(token) => tokens.push(token),
                BatchItem::New(_) => match holders.next().flatten() {
                    Some(token) => tokens.push(token),
                    // Nobody holds the index, so our row lost on the token itself.
                    None => return Err(StoreError::TokenCollision),
                },
            }
        }
        audit.record_count = tokens.len() as u64;
        audit.tokens = tokens.clone();
        self.append(&mut tx, audit, now).await?;
        commit_audited(tx).await?;
        Ok(tokens)
    }

    async fn record_info(&self, tenant: &str, token: &str) -> Result<Option<RecordInfo>, StoreError> {
        let row = sqlx::query("SELECT format, key_version, created_at FROM records WHERE tenant = ? AND token = ?")
            .bind(tenant)
            .bind(token)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        row.map(|row| {
            let format: String = row.get("format");
            Ok(RecordInfo {
                token: token.to_owned(),
                format: StoredFormat::from_id(&format)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown token format {format:?}")))?,
                key_version: row.get::<i64, _>("key_version") as u32,
                created_at: row.get("created_at"),
            })
        })
        .transpose()
    }

    async fn missing_tokens(&self, tenant: &str, tokens: &[String]) -> Result<Vec<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in tokens.chunks(MAX_PARAMS - 1) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT token FROM records WHERE tenant = ");
            query.push_bind(tenant).push(" AND token IN (");
            let mut list = query.separated(", ");
            for token in chunk {
                list.push_bind(token);
            }
            query.push(")");
            for row in query.build().fetch_all(&self.reader).await.map_err(classify)? {
                found.insert(row.get::<String, _>("token"));
            }
        }
        Ok(tokens.iter().filter(|t| !found.contains(*t)).cloned().collect())
    }

    async fn create_job(&self, job: &NewJob, audit: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO filing_jobs (job_id, tenant, purpose, note, max_releases_per_token, created_by, created_at, \
             expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&job.terms.job_id)
        .bind(&job.terms.tenant)
        .bind(&job.terms.purpose)
        .bind(&job.terms.note)
        .bind(i64::from(job.terms.max_releases_per_token))
        .bind(&job.terms.created_by)
        .bind(job.terms.created_at)
        .bind(job.terms.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        for (chunk_index, chunk) in job.tokens.chunks(MAX_PARAMS / 3).enumerate() {
            let offset = chunk_index * (MAX_PARAMS / 3);
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO filing_job_tokens (job_id, position, token) ");
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, token)| {
                row.push_bind(&job.terms.job_id).push_bind((offset + i) as i64).push_bind(token);
            });
            insert.build().execute(&mut *tx).await.map_err(classify)?;
        }
        self.append(&mut tx, audit, job.terms.created_at).await?;
        commit_audited(tx).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<StoredJob>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        job_in(&mut conn, job_id).await
    }

    async fn approve_job(&self, job_id: &str, approver: &str, audit: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Time is read under the write lock, so no earlier decision can go stale.
        let now = now_ms();
        // The conditions again, under the write lock: the job may have changed since it was read.
        let updated = sqlx::query(
            "UPDATE filing_jobs SET approved_by = ?, approved_at = ? WHERE job_id = ? AND approved_at IS NULL \
             AND cancelled_at IS NULL AND expires_at > ? AND created_by <> ?",
        )
        .bind(approver)
        .bind(now)
        .bind(job_id)
        .bind(now)
        .bind(approver)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "job {job_id} changed while it was being approved; look at it again"
            )));
        }
        self.append(&mut tx, audit, now).await?;
        commit_audited(tx).await
    }

    async fn cancel_job(&self, job_id: &str, by: &str, audit: AuditDraft) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Time is read under the write lock, so no earlier decision can go stale.
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE filing_jobs SET cancelled_by = ?, cancelled_at = ? WHERE job_id = ? AND cancelled_at IS NULL",
        )
        .bind(by)
        .bind(now)
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("job {job_id} is already cancelled")));
        }
        self.append(&mut tx, audit, now).await?;
        commit_audited(tx).await
    }

    async fn release(
        &self,
        job_id: &str,
        tokens: &[String],
        open: &OpenRecord<'_>,
        audit: AuditDraft,
    ) -> Result<Vec<(String, Zeroizing<String>)>, StoreError> {
        let mut tx = self.begin_write().await?;
        // Time is read under the write lock, so no earlier decision can go stale.
        let now = now_ms();
        // Re-check the job under the write lock: a cancel or expiry since the
        // caller's checks must win.
        let job = job_in(&mut tx, job_id)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("job {job_id} no longer exists")))?;
        if job.cancelled_at.is_some() || job.approved_at.is_none() || job.terms.expires_at <= now {
            return Err(StoreError::Conflict(format!("job {job_id} changed while releasing; look at it again")));
        }
        for token in tokens {
            let counted = sqlx::query(
                "UPDATE filing_job_tokens SET releases = releases + 1 WHERE job_id = ? AND token = ? AND releases < ?",
            )
            .bind(job_id)
            .bind(token)
            .bind(i64::from(job.terms.max_releases_per_token))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            if counted.rows_affected() != 1 {
                return Err(StoreError::ReleaseRefused(format!(
                    "token {token} has already been released {} time(s), the most job {job_id} allows",
                    job.terms.max_releases_per_token
                )));
            }
        }
        let mut sealed = std::collections::HashMap::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_PARAMS - 1) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT token, sealed FROM records WHERE tenant = ");
            query.push_bind(&job.terms.tenant).push(" AND token IN (");
            let mut list = query.separated(", ");
            for token in chunk {
                list.push_bind(token);
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *tx).await.map_err(classify)? {
                sealed.insert(row.get::<String, _>("token"), row.get::<Vec<u8>, _>("sealed"));
            }
        }
        let mut released = Vec::with_capacity(tokens.len());
        for token in tokens {
            let record = sealed.get(token).ok_or_else(|| {
                StoreError::Corrupt(format!("token {token} is listed in job {job_id} but has no record"))
            })?;
            let number = open(token, record).ok_or_else(|| StoreError::Integrity { token: token.clone() })?;
            released.push((token.clone(), number));
        }
        self.append(&mut tx, audit, now).await?;
        commit_audited(tx).await?;
        Ok(released)
    }

    async fn append_audit(&self, audit: AuditDraft) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let seq = self.append(&mut tx, audit, now).await?;
        commit_audited(tx).await?;
        Ok(seq)
    }

    async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, record_count, \
             prev_hash, hash FROM audit_entries WHERE seq > ",
        );
        query.push_bind(filter.after_seq as i64);
        if let Some(tenant) = &filter.tenant {
            query.push(" AND tenant = ").push_bind(tenant);
        }
        if let Some(since) = filter.since_ms {
            query.push(" AND time >= ").push_bind(since);
        }
        if let Some(until) = filter.until_ms {
            query.push(" AND time < ").push_bind(until);
        }
        if let Some(job_id) = &filter.job_id {
            query.push(" AND job_id = ").push_bind(job_id);
        }
        if let Some(operation) = &filter.operation {
            query.push(" AND operation = ").push_bind(operation);
        }
        if let Some(token) = &filter.token {
            query.push(" AND seq IN (SELECT seq FROM audit_entry_tokens WHERE token = ").push_bind(token).push(")");
        }
        query.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit.max(1)));
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        let rows = query.build().fetch_all(&mut *conn).await.map_err(classify)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            entries.push(AuditRecord {
                seq: row.get::<i64, _>("seq") as u64,
                time_ms: row.get("time"),
                principal: row.get("principal"),
                tenant: row.get("tenant"),
                operation: row.get("operation"),
                outcome: row.get("outcome"),
                reason: row.get("reason"),
                job_id: row.get("job_id"),
                purpose: row.get("purpose"),
                tokens: Vec::new(),
                record_count: row.get::<i64, _>("record_count") as u64,
                prev_hash: hash_column(row.get("prev_hash"))?,
                hash: hash_column(row.get("hash"))?,
            });
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let (first, last) = (first.seq as i64, last.seq as i64);
            let tokens = sqlx::query(
                "SELECT seq, token FROM audit_entry_tokens WHERE seq BETWEEN ? AND ? ORDER BY seq, position",
            )
            .bind(first)
            .bind(last)
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
            let mut by_seq: std::collections::HashMap<u64, Vec<String>> = std::collections::HashMap::new();
            for row in tokens {
                by_seq.entry(row.get::<i64, _>("seq") as u64).or_default().push(row.get("token"));
            }
            for entry in &mut entries {
                entry.tokens = by_seq.remove(&entry.seq).unwrap_or_default();
            }
        }
        Ok(entries)
    }

    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
            .fetch_one(&self.reader)
            .await
            .map_err(classify)?;
        Ok((row.get::<i64, _>("seq") as u64, hash_column(row.get("hash"))?))
    }
}

async fn find_tokens_in(
    conn: &mut SqliteConnection,
    tenant: &str,
    format: StoredFormat,
    blind_indexes: &[BlindIndex],
) -> Result<Vec<Option<String>>, StoreError> {
    let mut found = std::collections::HashMap::with_capacity(blind_indexes.len());
    for chunk in blind_indexes.chunks(MAX_PARAMS - 2) {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT blind_index, token FROM records WHERE tenant = ");
        query.push_bind(tenant).push(" AND format = ").push_bind(format.id()).push(" AND blind_index IN (");
        let mut list = query.separated(", ");
        for index in chunk {
            list.push_bind(&index.0[..]);
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await.map_err(classify)? {
            let index: Vec<u8> = row.get("blind_index");
            found.insert(index, row.get::<String, _>("token"));
        }
    }
    Ok(blind_indexes.iter().map(|index| found.get(&index.0[..]).cloned()).collect())
}

async fn job_in(conn: &mut SqliteConnection, job_id: &str) -> Result<Option<StoredJob>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT tenant, purpose, note, max_releases_per_token, created_by, created_at, expires_at, approved_by, \
         approved_at, cancelled_by, cancelled_at FROM filing_jobs WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?
    else {
        return Ok(None);
    };
    let tokens = sqlx::query("SELECT token, releases FROM filing_job_tokens WHERE job_id = ? ORDER BY position")
        .bind(job_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?
        .into_iter()
        .map(|t| (t.get::<String, _>("token"), t.get::<i64, _>("releases") as u32))
        .collect();
    Ok(Some(StoredJob {
        terms: JobTerms {
            job_id: job_id.to_owned(),
            tenant: row.get("tenant"),
            purpose: row.get("purpose"),
            note: row.get("note"),
            max_releases_per_token: row.get::<i64, _>("max_releases_per_token") as u32,
            created_by: row.get("created_by"),
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
        },
        approved_by: row.get("approved_by"),
        approved_at: row.get("approved_at"),
        cancelled_by: row.get("cancelled_by"),
        cancelled_at: row.get("cancelled_at"),
        tokens,
    }))
}
