//! The core's store contract on SQLite: one file in the data directory, WAL
//! journal.
//!
//! SQLite allows one writer at a time, so all writes go through a pool of one
//! connection and start with `BEGIN IMMEDIATE`: the write lock is taken up
//! front, so [`WriteTx::lock_job`] and [`WriteTx::lock_chain_head`] are plain
//! reads under it, a transaction never fails halfway on a lock upgrade, and a
//! write that cannot get the lock within the write timeout fails promptly
//! instead of hanging. Reads use their own pool and never wait for writers
//! (WAL).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use mnvault_core::audit::AuditRecord;
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::job::JobTerms;
use mnvault_core::store::PoolUsage;
use mnvault_core::store::{
    AuditFilter, ChainHead, JobRow, NewJob, NewRecord, NewTenant, ReadTx, RecordRow, Store, StoreError, StoredTenant,
    WriteTx,
};
use mnvault_keys::{BlindIndex, WrappedKey};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::OpenMode;

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "vault.db";

/// SQLite's limit on bound parameters per statement is 32766; stay well below.
const MAX_PARAMS: usize = 30_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    probe: Probe,
}

/// What [`Store::ping`] checks: that the file at the configured path is still
/// the one the pools have open (device and inode), and that a connection of
/// its own can open it and read, within the write timeout. An embedded
/// database is "unreachable" when its file was deleted, moved or replaced
/// under the running vault, or its file system fails: the pools may still
/// work on the old file then, but what they write would be lost at restart.
#[derive(Clone)]
struct Probe {
    path: PathBuf,
    file: (u64, u64),
    options: SqliteConnectOptions,
    timeout: Duration,
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
            MIGRATOR.run(&writer).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(write_timeout)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        let opened = std::fs::metadata(path).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let probe = Probe {
            path: path.to_owned(),
            file: (opened.dev(), opened.ino()),
            options: options.create_if_missing(false),
            timeout: write_timeout,
        };
        Ok(Self { writer, reader, probe })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin_write(&self) -> Result<Box<dyn WriteTx>, StoreError> {
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?;
        Ok(Box::new(SqliteTx::Write(tx)))
    }

    async fn begin_read(&self) -> Result<Box<dyn ReadTx>, StoreError> {
        // A deferred transaction: in WAL mode every read in it sees the same
        // snapshot, so a job and its tokens are never read half-updated.
        Ok(Box::new(SqliteTx::Read(self.reader.begin().await.map_err(classify)?)))
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    fn pools(&self) -> Vec<PoolUsage> {
        vec![pool_usage("sqlite-writer", &self.writer), pool_usage("sqlite-reader", &self.reader)]
    }

    async fn ping(&self) -> Result<(), StoreError> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let probe = &self.probe;
        let unavailable = |error: std::io::Error| StoreError::Unavailable(Box::new(error));
        let now = tokio::fs::metadata(&probe.path).await.map_err(unavailable)?;
        if (now.dev(), now.ino()) != probe.file {
            return Err(unavailable(std::io::Error::other(
                "the database file was replaced since the vault opened it; restart the vault on the right file",
            )));
        }
        // A connection of its own, so that busy pools do not look like a failing database.
        let read = async {
            let mut connection = probe.options.connect().await.map_err(classify)?;
            sqlx::query("SELECT seq FROM audit_chain_head").fetch_one(&mut connection).await.map_err(classify)?;
            connection.close().await.map_err(classify)
        };
        tokio::time::timeout(probe.timeout, read).await.map_err(|elapsed| StoreError::Unavailable(Box::new(elapsed)))?
    }
}

fn pool_usage(pool: &'static str, connections: &SqlitePool) -> PoolUsage {
    let idle = u32::try_from(connections.num_idle()).unwrap_or(u32::MAX);
    PoolUsage { pool, open: connections.size(), idle, max: connections.options().get_max_connections() }
}

/// A write transaction, or a read-only snapshot (only ever handed out as a
/// `ReadTx`).
enum SqliteTx {
    Read(Transaction<'static, Sqlite>),
    Write(Transaction<'static, Sqlite>),
}

impl SqliteTx {
    fn conn(&mut self) -> &mut SqliteConnection {
        match self {
            SqliteTx::Read(conn) => conn,
            SqliteTx::Write(tx) => tx,
        }
    }
}

/// Sorts sqlx errors into what the caller can act on.
fn classify(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
        sqlx::Error::Database(db) => {
            db.code().and_then(|code| code.parse::<i64>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6))
        }
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Database(Box::new(error))
    }
}

fn to_u32(value: i64, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

fn hash_column(bytes: Vec<u8>, what: &'static str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt { what })
}

/// `SELECT <columns> FROM <table> WHERE tenant = ? AND <column> IN (...)`,
/// in chunks that fit SQLite's parameter limit.
async fn select_in<'a, T: 'a>(
    conn: &mut SqliteConnection,
    head: &str,
    tenant: &'a TenantId,
    column: &str,
    values: &'a [T],
    bind: impl Fn(&mut sqlx::query_builder::Separated<'_, 'a, Sqlite, &'static str>, &'a T),
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in values.chunks(MAX_PARAMS - 2) {
        let mut query = QueryBuilder::<Sqlite>::new(head);
        query.push(" WHERE tenant = ").push_bind(tenant.as_str()).push(format!(" AND {column} IN ("));
        let mut list = query.separated(", ");
        for value in chunk {
            bind(&mut list, value);
        }
        query.push(")");
        rows.extend(query.build().fetch_all(&mut *conn).await.map_err(classify)?);
    }
    Ok(rows)
}

/// Columns of a [`RecordRow`], in the order [`record_row`] reads them.
const RECORD_COLUMNS: &str = "token, format, blind_index, key_version, created_at, tag";

/// A column's value; a value of the wrong type (a file edited outside the
/// vault) is corrupt, never a panic.
fn column<'r, T>(row: &'r sqlx::sqlite::SqliteRow, name: &str, what: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(|_| StoreError::Corrupt { what })
}

fn record_row(row: &sqlx::sqlite::SqliteRow) -> Result<RecordRow, StoreError> {
    Ok(RecordRow {
        token: column(row, "token", "records.token")?,
        format: column(row, "format", "records.format")?,
        blind_index: column(row, "blind_index", "records.blind_index")?,
        key_version: to_u32(column(row, "key_version", "records.key_version")?, "records.key_version")?,
        created_at: column(row, "created_at", "records.created_at")?,
        tag: column(row, "tag", "records.tag")?,
    })
}

async fn job_row(conn: &mut SqliteConnection, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT tenant, purpose, note, max_releases_per_token, created_by, created_at, expires_at, approved_by, \
         approved_at, cancelled_by, cancelled_at, terms_tag, state_tag, state_seq FROM filing_jobs WHERE job_id = ?",
    )
    .bind(job_id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?
    else {
        return Ok(None);
    };
    let tokens = sqlx::query("SELECT token, releases FROM filing_job_tokens WHERE job_id = ? ORDER BY position")
        .bind(job_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?
        .iter()
        .map(|t| {
            Ok((column(t, "token", "filing_job_tokens.token")?, column(t, "releases", "filing_job_tokens.releases")?))
        })
        .collect::<Result<_, StoreError>>()?;
    let job_column = |name, what| column(&row, name, what);
    Ok(Some(JobRow {
        job_id: job_id.to_string(),
        tenant: job_column("tenant", "filing_jobs.tenant")?,
        purpose: job_column("purpose", "filing_jobs.purpose")?,
        note: job_column("note", "filing_jobs.note")?,
        max_releases_per_token: column(&row, "max_releases_per_token", "filing_jobs.max_releases_per_token")?,
        created_by: job_column("created_by", "filing_jobs.created_by")?,
        created_at: column(&row, "created_at", "filing_jobs.created_at")?,
        expires_at: column(&row, "expires_at", "filing_jobs.expires_at")?,
        approved_by: column(&row, "approved_by", "filing_jobs.approved_by")?,
        approved_at: column(&row, "approved_at", "filing_jobs.approved_at")?,
        cancelled_by: column(&row, "cancelled_by", "filing_jobs.cancelled_by")?,
        cancelled_at: column(&row, "cancelled_at", "filing_jobs.cancelled_at")?,
        tokens,
        terms_tag: column(&row, "terms_tag", "filing_jobs.terms_tag")?,
        state_tag: column(&row, "state_tag", "filing_jobs.state_tag")?,
        state_seq: column(&row, "state_seq", "filing_jobs.state_seq")?,
    }))
}

#[async_trait]
impl ReadTx for SqliteTx {
    async fn system_key(&mut self, name: &str) -> Result<Option<WrappedKey>, StoreError> {
        let row = sqlx::query("SELECT wrapped_key FROM system_keys WHERE name = ?")
            .bind(name)
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        Ok(row.map(|row| WrappedKey::from_bytes(row.get("wrapped_key"))))
    }

    async fn tenant(&mut self, tenant: &TenantId) -> Result<Option<StoredTenant>, StoreError> {
        let conn = self.conn();
        let Some(row) = sqlx::query("SELECT display_name, created_at, index_key_wrapped FROM tenants WHERE tenant = ?")
            .bind(tenant.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?
        else {
            return Ok(None);
        };
        let keys = sqlx::query("SELECT version, wrapped_key FROM tenant_record_keys WHERE tenant = ? ORDER BY version")
            .bind(tenant.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        let record_keys = keys
            .into_iter()
            .map(|k| {
                let version = to_u32(k.get("version"), "tenant_record_keys.version")?;
                Ok((version, WrappedKey::from_bytes(k.get("wrapped_key"))))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(StoredTenant {
            display_name: row.get("display_name"),
            created_at: row.get("created_at"),
            index_key: WrappedKey::from_bytes(row.get("index_key_wrapped")),
            record_keys,
        }))
    }

    async fn records_by_blind_index(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<RecordRow>>, StoreError> {
        let mut found = HashMap::with_capacity(blind_indexes.len());
        for chunk in blind_indexes.chunks(MAX_PARAMS - 2) {
            let mut query =
                QueryBuilder::<Sqlite>::new(format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant = "));
            query
                .push_bind(tenant.as_str())
                .push(" AND format = ")
                .push_bind(format.id())
                .push(" AND blind_index IN (");
            let mut list = query.separated(", ");
            for index in chunk {
                list.push_bind(&index.0[..]);
            }
            query.push(")");
            for row in query.build().fetch_all(self.conn()).await.map_err(classify)? {
                let row = record_row(&row)?;
                found.insert(row.blind_index.clone(), row);
            }
        }
        Ok(blind_indexes.iter().map(|index| found.remove(&index.0[..])).collect())
    }

    async fn record(&mut self, tenant: &TenantId, token: &Token) -> Result<Option<RecordRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant = ? AND token = ?"))
            .bind(tenant.as_str())
            .bind(token.as_str())
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.as_ref().map(record_row).transpose()
    }

    async fn existing_tokens(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<HashSet<String>, StoreError> {
        let rows = select_in(self.conn(), "SELECT token FROM records", tenant, "token", tokens, |list, token| {
            list.push_bind(token.as_str());
        })
        .await?;
        Ok(rows.into_iter().map(|row| row.get("token")).collect())
    }

    async fn sealed_records(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let select = format!("SELECT {RECORD_COLUMNS}, sealed FROM records");
        let rows = select_in(self.conn(), &select, tenant, "token", tokens, |list, t| {
            list.push_bind(t.as_str());
        })
        .await?;
        rows.iter().map(|row| Ok((record_row(row)?, column(row, "sealed", "records.sealed")?))).collect()
    }

    async fn job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        job_row(self.conn(), job_id).await
    }

    async fn job_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT job_id FROM filing_jobs WHERE job_id > ? ORDER BY job_id LIMIT ?")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(|row| column(row, "job_id", "filing_jobs.job_id")).collect()
    }

    async fn record_rows(
        &mut self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, RecordRow)>, StoreError> {
        let (tenant, token) = after.unwrap_or(("", ""));
        let rows = sqlx::query(&format!(
            "SELECT tenant, {RECORD_COLUMNS} FROM records WHERE (tenant, token) > (?, ?) ORDER BY tenant, token LIMIT ?"
        ))
        .bind(tenant)
        .bind(token)
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(|row| Ok((column(row, "tenant", "records.tenant")?, record_row(row)?))).collect()
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
            .fetch_one(self.conn())
            .await
            .map_err(classify)?;
        chain_head(&row)
    }

    async fn audit_entries(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, record_count, \
             request_id, prev_hash, hash FROM audit_entries WHERE seq > ",
        );
        query.push_bind(filter.after_seq as i64);
        if let Some(tenant) = &filter.tenant {
            query.push(" AND tenant = ").push_bind(tenant.as_str());
        }
        if let Some(since) = filter.since_ms {
            query.push(" AND time >= ").push_bind(since);
        }
        if let Some(until) = filter.until_ms {
            query.push(" AND time < ").push_bind(until);
        }
        if let Some(job_id) = &filter.job_id {
            query.push(" AND job_id = ").push_bind(job_id.as_str());
        }
        if let Some(operation) = filter.operation {
            query.push(" AND operation = ").push_bind(operation);
        }
        if let Some(request_id) = &filter.request_id {
            query.push(" AND request_id = ").push_bind(request_id.as_str());
        }
        if let Some(token) = &filter.token {
            query
                .push(" AND seq IN (SELECT seq FROM audit_entry_tokens WHERE token = ")
                .push_bind(token.as_str())
                .push(")");
        }
        query.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit.max(1)));
        let conn = self.conn();
        let rows = query.build().fetch_all(&mut *conn).await.map_err(classify)?;
        let mut entries = rows.iter().map(audit_record).collect::<Result<Vec<_>, _>>()?;
        // The tokens of exactly these entries, never of the gaps between them.
        let mut by_seq: HashMap<u64, Vec<String>> = HashMap::new();
        for chunk in entries.chunks(MAX_PARAMS) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT seq, token FROM audit_entry_tokens WHERE seq IN (");
            let mut list = query.separated(", ");
            for entry in chunk {
                list.push_bind(entry.seq as i64);
            }
            query.push(") ORDER BY seq, position");
            for row in query.build().fetch_all(&mut *conn).await.map_err(classify)? {
                by_seq.entry(row.get::<i64, _>("seq") as u64).or_default().push(row.get("token"));
            }
        }
        for entry in &mut entries {
            entry.tokens = by_seq.remove(&entry.seq).unwrap_or_default();
        }
        Ok(entries)
    }
}

fn chain_head(row: &sqlx::sqlite::SqliteRow) -> Result<ChainHead, StoreError> {
    Ok(ChainHead {
        seq: u64::try_from(row.get::<i64, _>("seq"))
            .map_err(|_| StoreError::Corrupt { what: "audit_chain_head.seq" })?,
        hash: hash_column(row.get("hash"), "audit_chain_head.hash")?,
    })
}

fn audit_record(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
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
        request_id: row.get("request_id"),
        prev_hash: hash_column(row.get("prev_hash"), "audit_entries.prev_hash")?,
        hash: hash_column(row.get("hash"), "audit_entries.hash")?,
    })
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn insert_system_key(&mut self, name: &str, key: &WrappedKey, created_at: i64) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO system_keys (name, wrapped_key, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(key.as_bytes())
        .bind(created_at)
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn insert_tenant(&mut self, tenant: &NewTenant) -> Result<bool, StoreError> {
        let conn = self.conn();
        let inserted = sqlx::query(
            "INSERT INTO tenants (tenant, display_name, created_at, index_key_wrapped) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.tenant.as_str())
        .bind(&tenant.display_name)
        .bind(tenant.created_at)
        .bind(tenant.index_key.as_bytes())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        if inserted.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) VALUES (?, 1, ?, ?)")
            .bind(tenant.tenant.as_str())
            .bind(tenant.first_record_key.as_bytes())
            .bind(tenant.created_at)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        Ok(true)
    }

    async fn insert_records(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        records: &[NewRecord],
        created_at: i64,
    ) -> Result<(), StoreError> {
        for chunk in records.chunks(MAX_PARAMS / 8) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO records (tenant, token, format, blind_index, key_version, sealed, created_at, tag) ",
            );
            insert.push_values(chunk, |mut row, record| {
                row.push_bind(tenant.as_str())
                    .push_bind(record.token.as_str())
                    .push_bind(format.id())
                    .push_bind(&record.blind_index.0[..])
                    .push_bind(i64::from(record.key_version))
                    .push_bind(&record.sealed)
                    .push_bind(created_at)
                    .push_bind(&record.tag[..]);
            });
            insert.push(" ON CONFLICT DO NOTHING");
            insert.build().execute(self.conn()).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError> {
        let JobTerms { job_id, tenant, purpose, note, max_releases_per_token, created_by, created_at, expires_at } =
            &job.terms;
        let conn = self.conn();
        sqlx::query(
            "INSERT INTO filing_jobs (job_id, tenant, purpose, note, max_releases_per_token, created_by, created_at, \
             expires_at, terms_tag, state_tag, state_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(job_id.as_str())
        .bind(tenant.as_str())
        .bind(purpose.id())
        .bind(note.as_str())
        .bind(i64::from(*max_releases_per_token))
        .bind(created_by.as_str())
        .bind(created_at)
        .bind(expires_at)
        .bind(&job.terms_tag[..])
        .bind(&job.state_tag[..])
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        for (chunk_index, chunk) in job.tokens.chunks(MAX_PARAMS / 3).enumerate() {
            let offset = chunk_index * (MAX_PARAMS / 3);
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO filing_job_tokens (job_id, position, token) ");
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, token)| {
                row.push_bind(job_id.as_str()).push_bind((offset + i) as i64).push_bind(token.as_str());
            });
            insert.build().execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn lock_job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        job_row(self.conn(), job_id).await
    }

    async fn set_job_approved(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET approved_by = ?, approved_at = ? WHERE job_id = ?")
            .bind(by.as_str())
            .bind(at)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn set_job_cancelled(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET cancelled_by = ?, cancelled_at = ? WHERE job_id = ?")
            .bind(by.as_str())
            .bind(at)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn set_job_state(&mut self, job_id: &JobId, state_seq: u64, state_tag: &[u8; 32]) -> Result<(), StoreError> {
        let state_seq = i64::try_from(state_seq).map_err(|_| StoreError::Corrupt { what: "filing_jobs.state_seq" })?;
        sqlx::query("UPDATE filing_jobs SET state_seq = ?, state_tag = ? WHERE job_id = ?")
            .bind(state_seq)
            .bind(&state_tag[..])
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn count_releases(&mut self, job_id: &JobId, tokens: &[Token], max: u32) -> Result<u64, StoreError> {
        let mut counted = 0;
        for chunk in tokens.chunks(MAX_PARAMS - 2) {
            let mut query =
                QueryBuilder::<Sqlite>::new("UPDATE filing_job_tokens SET releases = releases + 1 WHERE job_id = ");
            query.push_bind(job_id.as_str()).push(" AND releases < ").push_bind(i64::from(max)).push(" AND token IN (");
            let mut list = query.separated(", ");
            for token in chunk {
                list.push_bind(token.as_str());
            }
            query.push(")");
            counted += query.build().execute(self.conn()).await.map_err(classify)?.rows_affected();
        }
        Ok(counted)
    }

    async fn lock_chain_head(&mut self) -> Result<ChainHead, StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        self.audit_head().await
    }

    async fn insert_audit_entry(&mut self, entry: &AuditRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        let seq = entry.seq as i64;
        sqlx::query(
            "INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, \
             record_count, request_id, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(entry.time_ms)
        .bind(&entry.principal)
        .bind(&entry.tenant)
        .bind(&entry.operation)
        .bind(&entry.outcome)
        .bind(&entry.reason)
        .bind(&entry.job_id)
        .bind(&entry.purpose)
        .bind(entry.record_count as i64)
        .bind(&entry.request_id)
        .bind(&entry.prev_hash[..])
        .bind(&entry.hash[..])
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        for (chunk_index, chunk) in entry.tokens.chunks(MAX_PARAMS / 3).enumerate() {
            let offset = chunk_index * (MAX_PARAMS / 3);
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO audit_entry_tokens (seq, position, token) ");
            insert.push_values(chunk.iter().enumerate(), |mut row, (i, token)| {
                row.push_bind(seq).push_bind((offset + i) as i64).push_bind(token);
            });
            insert.build().execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn set_chain_head(&mut self, head: &ChainHead) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1")
            .bind(head.seq as i64)
            .bind(&head.hash[..])
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match *self {
            SqliteTx::Write(tx) => tx.commit().await.map_err(classify),
            SqliteTx::Read(_) => Ok(()),
        }
    }
}
