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
use futures::TryStreamExt as _;
use mnvault_core::audit::AuditRecord;
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::job::JobTerms;
use mnvault_core::store::PoolUsage;
use mnvault_core::store::{
    AuditFilter, ChainHead, JobRow, NewJob, NewRecord, NewTenant, PageTokens, ReadTx, RecordRow, Store, StoreError,
    StoredTenant, WriteTx,
};
use mnvault_keys::{BlindIndex, WrappedKey};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::rows::{column, position};
use super::OpenMode;

mod checkpoint;
mod collection;
mod offboarding;
mod report;
mod retention;
mod root_rotation;
mod rotation;
mod tenant_policy;

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "vault.db";

/// Rows per statement, largest first: a batch is cut greedily into chunks of
/// these sizes, so each statement kind has at most four shapes and sqlx's
/// statement cache (100 per connection) keeps a few small programs instead
/// of one large program per batch size. 512 rows of the widest statement
/// bind 2,560 parameters, far below SQLite's 32,766.
const CHUNKS: [usize; 4] = [512, 64, 8, 1];

/// Page cache of the writer connection. Tokenizing writes into three indexes
/// keyed by random values (records by token and by blind index, audit
/// entries by token), so a batch touches pages all over them; with SQLite's
/// default 2 MiB the same pages were spilled, read back and written again
/// within one transaction (about 50 KB written and 60 KB read per record at
/// a million records, against 28 KB and 24 KB with this cache). Leaf pages
/// beyond it come from the operating system's cache, which is not the
/// process's memory, so the process stays flat however many records there
/// are: at most this plus [`READERS`] times [`READER_CACHE_KIB`].
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Page cache of each reader connection: readers look up a batch's blind
/// indexes and serve listings, which the operating system's cache serves
/// well enough.
const READER_CACHE_KIB: i64 = 4 * 1024;

/// Reader connections.
const READERS: u32 = 4;

/// Rows a reader connection runs ahead of the task reading them: a long
/// read (a verification, a report) then wakes that task once per batch of
/// rows rather than once per row.
const READER_ROW_BUFFER: usize = 1024;

/// WAL frames after which a commit folds the WAL back into the database
/// (SQLite's default is 1,000). A batch on a large vault writes thousands of
/// pages; checkpointing every few batches instead of after each one writes a
/// page touched by several of them once.
const WAL_AUTOCHECKPOINT: u32 = 8_000;

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
            .foreign_keys(true)
            // Sorts and IN-lists of one statement are bounded by its chunk size.
            .pragma("temp_store", "MEMORY");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(write_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT.to_string())
                    // The WAL file is cut back to this after a checkpoint, so it does not
                    // keep the size of the largest batch ever written.
                    .pragma("journal_size_limit", (64 * 1024 * 1024).to_string()),
            )
            .await
            .map_err(classify)?;
        if mode != OpenMode::Review {
            MIGRATOR.run(&writer).await.map_err(|e| StoreError::Migration(Box::new(e)))?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(write_timeout)
            .connect_with(
                options.clone().pragma("cache_size", format!("-{READER_CACHE_KIB}")).row_buffer_size(READER_ROW_BUFFER),
            )
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

    async fn settle_deletions(&self) -> Result<bool, StoreError> {
        // On the writer, so no write slips in between; the busy timeout lets readers finish.
        let mut writer = self.writer.acquire().await.map_err(classify)?;
        let (busy, _, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *writer).await.map_err(classify)?;
        Ok(busy == 0)
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

/// `items` cut greedily into chunks of the sizes in [`CHUNKS`].
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    chunks_of(items, &CHUNKS)
}

/// `items` in chunks of the first of `sizes` (descending, ending in 1) that fits.
fn chunks_of<'a, T>(mut items: &'a [T], sizes: &'static [usize]) -> impl Iterator<Item = &'a [T]> {
    std::iter::from_fn(move || {
        let size = sizes.iter().copied().find(|&size| size <= items.len())?;
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// `?, ?, ?`: `count` placeholders.
fn list(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// `(?, ?), (?, ?)`: `rows` groups of `width` bare placeholders. Every
/// value is bound in its row, even one all rows share: sqlx asks SQLite the
/// name of every parameter it binds, SQLite finds a numbered one's name by
/// scanning the list of names (thousands of `?NNN` cost a scan each), and
/// sqlx counts bare ones from 1 whatever numbered ones came before.
fn rows_of(rows: usize, width: usize) -> String {
    let row = format!("({})", list(width));
    vec![row; rows].join(", ")
}

fn to_u32(value: i64, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

fn hash_column(bytes: Vec<u8>, what: &'static str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt { what })
}

/// `SELECT <columns> FROM records WHERE tenant = ? AND token IN (...)`, in
/// chunks of fixed sizes.
async fn records_by_token(
    conn: &mut SqliteConnection,
    columns: &str,
    tenant: &TenantId,
    tokens: &[Token],
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let mut rows = Vec::new();
    for chunk in chunks(tokens) {
        let sql = format!("SELECT {columns} FROM records WHERE tenant = ? AND token IN ({})", list(chunk.len()));
        let mut query = sqlx::query(&sql).bind(tenant.as_str());
        for token in chunk {
            query = query.bind(token.as_str());
        }
        rows.extend(query.fetch_all(&mut *conn).await.map_err(classify)?);
    }
    Ok(rows)
}

/// Columns of a [`RecordRow`], in the order [`record_row`] reads them.
const RECORD_COLUMNS: &str = "token, format, blind_index, key_version, created_at, tag";

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
         approved_at, cancelled_by, cancelled_at, approvals_required, earlier_approvals, terms_tag, state_tag, state_seq \
         FROM filing_jobs WHERE job_id = ?",
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
        approvals_required: column(&row, "approvals_required", "filing_jobs.approvals_required")?,
        earlier_approvals: job_column("earlier_approvals", "filing_jobs.earlier_approvals")?,
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
        for chunk in chunks(blind_indexes) {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM records WHERE tenant = ? AND format = ? AND blind_index IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(tenant.as_str()).bind(format.id());
            for index in chunk {
                query = query.bind(&index.0[..]);
            }
            for row in query.fetch_all(self.conn()).await.map_err(classify)? {
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
        let rows = records_by_token(self.conn(), "token", tenant, tokens).await?;
        rows.iter().map(|row| column(row, "token", "records.token")).collect()
    }

    async fn sealed_records(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let rows = records_by_token(self.conn(), &format!("{RECORD_COLUMNS}, sealed"), tenant, tokens).await?;
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
             request_id, prev_hash, hash, mac FROM audit_entries WHERE seq > ",
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
        if let Some(principal) = &filter.principal {
            query.push(" AND principal = ").push_bind(principal.as_str());
        }
        if let Some(outcome) = filter.outcome {
            query.push(" AND outcome = ").push_bind(outcome);
            if outcome != mnvault_core::audit::Outcome::Ok.id() {
                // Word for word the predicate of the index of refused calls (migration 0008), so it serves.
                query.push(" AND outcome <> 'ok'");
            }
        }
        if let Some(token) = &filter.token {
            // The index holds the token's last eight characters (migration 0004).
            query
                .push(" AND seq IN (SELECT seq FROM audit_entry_tokens WHERE substr(token, -8) = substr(")
                .push_bind(token.as_str())
                .push(", -8) AND token = ")
                .push_bind(token.as_str())
                .push(")");
        }
        query.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit.max(1)));
        let conn = self.conn();
        let rows = query.build().fetch_all(&mut *conn).await.map_err(classify)?;
        let mut entries = rows.iter().map(audit_record).collect::<Result<Vec<_>, _>>()?;
        // The tokens of exactly these entries, never of the gaps between them,
        // streamed, up to a page's worth.
        let mut tokens = PageTokens::default();
        // A run of consecutive entries (a page of the whole log, as a
        // verification reads it): one range scan, a row per entry rather
        // than per token, the tokens joined with spaces and split again.
        // Only when SQLite vouches that the joining can be undone: every
        // token text, none holding a space, and as many pieces as rows. A
        // token that is not (the vault never writes one) sends the page
        // the long way, token by token, where it fails to decode.
        let run = entries
            .first()
            .zip(entries.last())
            .filter(|(first, last)| last.seq - first.seq + 1 == entries.len() as u64);
        if let Some((first, last)) = run {
            let mut rows = sqlx::query(
                "SELECT seq, COUNT(*) AS count, \
                 SUM(typeof(token) <> 'text' OR instr(token, ' ') > 0) AS unjoinable, \
                 group_concat(token, ' ' ORDER BY position) AS tokens \
                 FROM audit_entry_tokens WHERE seq >= ? AND seq <= ? GROUP BY seq ORDER BY seq",
            )
            .bind(first.seq as i64)
            .bind(last.seq as i64)
            .fetch(&mut *conn);
            let mut joined_tokens = PageTokens::default();
            let mut split_cleanly = true;
            'rows: while let Some(row) = rows.try_next().await.map_err(classify)? {
                const WHAT: &str = "audit_entry_tokens";
                let joined: Option<String> = match column::<_, i64>(&row, "unjoinable", WHAT)? {
                    0 => column(&row, "tokens", WHAT)?,
                    _ => None,
                };
                let count = position(column(&row, "count", WHAT)?, WHAT)?;
                let Some(joined) = joined.filter(|joined| joined.split(' ').count() as u64 == count) else {
                    split_cleanly = false;
                    break;
                };
                let seq = position(column(&row, "seq", "audit_entry_tokens.seq")?, "audit_entry_tokens.seq")?;
                for token in joined.split(' ') {
                    if !joined_tokens.push(seq, token.to_owned()) {
                        break 'rows;
                    }
                }
            }
            drop(rows);
            if split_cleanly {
                joined_tokens.attach(&mut entries);
                return Ok(entries);
            }
        }
        'entries: for chunk in chunks(&entries) {
            let sql = format!(
                "SELECT seq, token FROM audit_entry_tokens WHERE seq IN ({}) ORDER BY seq, position",
                list(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query.bind(entry.seq as i64);
            }
            let mut rows = query.fetch(&mut *conn);
            while let Some(row) = rows.try_next().await.map_err(classify)? {
                let seq = position(column(&row, "seq", "audit_entry_tokens.seq")?, "audit_entry_tokens.seq")?;
                if !tokens.push(seq, column(&row, "token", "audit_entry_tokens.token")?) {
                    break 'entries;
                }
            }
        }
        tokens.attach(&mut entries);
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
    const WHAT: &str = "audit_entries";
    Ok(AuditRecord {
        seq: position(column(row, "seq", "audit_entries.seq")?, "audit_entries.seq")?,
        time_ms: column(row, "time", WHAT)?,
        principal: column(row, "principal", WHAT)?,
        tenant: column(row, "tenant", WHAT)?,
        operation: column(row, "operation", WHAT)?,
        outcome: column(row, "outcome", WHAT)?,
        reason: column(row, "reason", WHAT)?,
        job_id: column(row, "job_id", WHAT)?,
        purpose: column(row, "purpose", WHAT)?,
        tokens: Vec::new(),
        record_count: position(column(row, "record_count", WHAT)?, "audit_entries.record_count")?,
        request_id: column(row, "request_id", WHAT)?,
        prev_hash: hash_column(column(row, "prev_hash", WHAT)?, "audit_entries.prev_hash")?,
        hash: hash_column(column(row, "hash", WHAT)?, "audit_entries.hash")?,
        mac: column::<_, Option<Vec<u8>>>(row, "mac", WHAT)?
            .map(|mac| hash_column(mac, "audit_entries.mac"))
            .transpose()?,
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
        let conn = self.conn();
        for chunk in chunks(records) {
            let sql = format!(
                "INSERT INTO records (tenant, token, format, blind_index, key_version, sealed, created_at, tag) \
                 VALUES {} ON CONFLICT DO NOTHING",
                rows_of(chunk.len(), 8)
            );
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query
                    .bind(tenant.as_str())
                    .bind(record.token.as_str())
                    .bind(format.id())
                    .bind(&record.blind_index.0[..])
                    .bind(i64::from(record.key_version))
                    .bind(&record.sealed[..])
                    .bind(created_at)
                    .bind(&record.tag[..]);
            }
            query.execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError> {
        let JobTerms {
            job_id,
            tenant,
            purpose,
            note,
            max_releases_per_token,
            approvals_required,
            created_by,
            created_at,
            expires_at,
        } = &job.terms;
        let conn = self.conn();
        sqlx::query(
            "INSERT INTO filing_jobs (job_id, tenant, purpose, note, max_releases_per_token, created_by, created_at, \
             expires_at, terms_tag, state_tag, state_seq, approvals_required) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
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
        .bind(i64::from(*approvals_required))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        let mut position = 0i64;
        for chunk in chunks(&job.tokens) {
            let sql =
                format!("INSERT INTO filing_job_tokens (job_id, position, token) VALUES {}", rows_of(chunk.len(), 3));
            let mut query = sqlx::query(&sql);
            for token in chunk {
                query = query.bind(job_id.as_str()).bind(position).bind(token.as_str());
                position += 1;
            }
            query.execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn lock_job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        job_row(self.conn(), job_id).await
    }

    async fn set_job_earlier_approvals(&mut self, job_id: &JobId, approvals: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET earlier_approvals = ? WHERE job_id = ?")
            .bind(approvals)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
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
        for chunk in chunks(tokens) {
            let sql = format!(
                "UPDATE filing_job_tokens SET releases = releases + 1 WHERE job_id = ? AND releases < ? AND token IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(job_id.as_str()).bind(i64::from(max));
            for token in chunk {
                query = query.bind(token.as_str());
            }
            counted += query.execute(self.conn()).await.map_err(classify)?.rows_affected();
        }
        Ok(counted)
    }

    async fn lock_chain_head(&mut self) -> Result<ChainHead, StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        self.audit_head().await
    }

    async fn insert_audit_entry(&mut self, entry: &AuditRecord) -> Result<(), StoreError> {
        self.insert_audit_entries(std::slice::from_ref(entry)).await
    }

    async fn insert_audit_entries(&mut self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        let conn = self.conn();
        for chunk in chunks(entries) {
            let sql = format!(
                "INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, \
                 record_count, request_id, prev_hash, hash, mac) VALUES {}",
                rows_of(chunk.len(), 14)
            );
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(entry.seq as i64)
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
                    .bind(entry.mac.as_ref().map(|mac| &mac[..]));
            }
            query.execute(&mut *conn).await.map_err(classify)?;
        }
        // Token rows of every entry together: a group commit's many small
        // entries take a few statements, not one each.
        let rows: Vec<(i64, i64, &str)> = entries
            .iter()
            .flat_map(|entry| {
                (0i64..).zip(&entry.tokens).map(move |(position, token)| (entry.seq as i64, position, token.as_str()))
            })
            .collect();
        for chunk in chunks(&rows) {
            let sql =
                format!("INSERT INTO audit_entry_tokens (seq, position, token) VALUES {}", rows_of(chunk.len(), 3));
            let mut query = sqlx::query(&sql);
            for (seq, position, token) in chunk {
                query = query.bind(*seq).bind(*position).bind(*token);
            }
            query.execute(&mut *conn).await.map_err(classify)?;
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

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
