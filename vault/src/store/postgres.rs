//! The core's store contract on PostgreSQL: for production, and for several
//! replicas of the vault on one database.
//!
//! Write transactions run at READ COMMITTED, stated explicitly so a server
//! default cannot change it. Correctness comes from row locks and
//! constraints, not from the isolation level: at SERIALIZABLE every contended
//! call would fail with a serialisation error and have to be retried, while
//! the locks make contended calls wait their turn, with a deterministic
//! outcome:
//! - the single `audit_chain_head` row, locked by [`WriteTx::lock_chain_head`]
//!   until commit, serialises appends: two writers can never link an entry to
//!   the same head, so the chain cannot fork;
//! - the job row, locked by [`WriteTx::lock_job`], serialises approve, cancel
//!   and release of one job, so each decides on the job as it now stands;
//! - the unique index on `records (tenant, format, blind_index)` gives one
//!   token per number: `INSERT ... ON CONFLICT DO NOTHING` waits for a
//!   concurrent inserter of the same index to finish, then skips, and the
//!   next statement (a fresh snapshot at READ COMMITTED) reads the winner's
//!   token. At REPEATABLE READ that insert would fail instead.
//!
//! Every pooled connection sets `lock_timeout` and `statement_timeout` to the
//! write timeout, so a write blocked by a lock fails promptly, as
//! [`StoreError::Unavailable`], instead of hanging. Lists travel as arrays
//! (`= ANY($n)`, `UNNEST`): one statement whatever the length, and no limit
//! on bound parameters.
//!
//! Built for millions of tokens (issue 11):
//! - a look-up of records by a list of keys probes the index once per key
//!   (`UNNEST($n)` joined `LATERAL` to a `LIMIT 1` look-up, which the
//!   planner cannot flatten), never `key = ANY($n)` nor a plain join: with
//!   stale or missing statistics (autovacuum late or off) the planner takes
//!   the tenant's rows for a handful and reads them all through the index
//!   prefix, one full pass per call, which made writes slow down with every
//!   token stored;
//! - a step is one statement wherever it can be (an audit entry and its
//!   tokens, a tenant and its first key, a job and its tokens), and a
//!   transaction remembers the records it inserted, so reading them back
//!   costs nothing;
//! - what the indexes are for is in migration 0004.

use std::collections::{HashMap, HashSet};
use std::ops::DerefMut;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use mnvault_core::audit::AuditRecord;
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::job::JobTerms;
use mnvault_core::store::PoolUsage;
use mnvault_core::store::{
    AuditFilter, ChainHead, JobRow, NewJob, NewRecord, NewTenant, PageTokens, ReadTx, RecordRow, Store, StoreError,
    StoredTenant, WriteTx, AUDIT_PAGE_TOKENS,
};
use mnvault_keys::{BlindIndex, WrappedKey};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder, Row, Transaction};

use super::OpenMode;

mod checkpoint;
mod collection;
mod offboarding;
mod report;
mod retention;
mod root_rotation;
mod rotation;
mod tenant_policy;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per process: writes serialise on the chain head anyway, so
/// more would only queue inside the database.
const MAX_CONNECTIONS: u32 = 16;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    probe: Arc<Probe>,
}

/// What [`Store::ping`] checks: that the server answers `SELECT 1` on a
/// connection of the probe's own, kept between pings (so pinging neither
/// competes with busy pools nor logs a new connection each time) and opened
/// again once it broke, within the write timeout.
struct Probe {
    options: PgConnectOptions,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<PgConnection>>,
}

impl std::fmt::Debug for PostgresStore {
    // The pool's own Debug shows the connect options, password included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` as `mode` says. `write_timeout`
    /// bounds how long a statement, or a wait for a lock or a connection,
    /// may take.
    pub async fn connect(url: &str, mode: OpenMode, write_timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(classify)?;
        if mode != OpenMode::Review {
            migrate(&options, write_timeout).await?;
        }
        // PostgreSQL reads 0 as "no timeout", so never round down to it.
        let ms = u64::try_from(write_timeout.as_millis()).unwrap_or(u64::MAX).clamp(1, i32::MAX as u64);
        let mut settings = vec![("lock_timeout", format!("{ms}ms")), ("statement_timeout", format!("{ms}ms"))];
        if mode == OpenMode::Review {
            // Review reads a database a vault may be serving: let the server refuse any write.
            settings.push(("default_transaction_read_only", "on".to_owned()));
        }
        let options = options.options(settings);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(write_timeout)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        let probe = Arc::new(Probe { options, timeout: write_timeout, connection: tokio::sync::Mutex::new(None) });
        Ok(Self { pool, probe })
    }
}

/// Brings the schema up to date on a connection of its own, without the
/// pool's timeouts: a migration must not be cut short, and replicas starting
/// together wait for each other on sqlx's advisory lock rather than fail.
/// Only reaching the server is bounded by `connect_timeout`.
async fn migrate(options: &PgConnectOptions, connect_timeout: Duration) -> Result<(), StoreError> {
    let mut conn = tokio::time::timeout(connect_timeout, PgConnection::connect_with(options))
        .await
        .map_err(|elapsed| StoreError::Unavailable(Box::new(elapsed)))?
        .map_err(classify)?;
    let migrated = MIGRATOR.run(&mut conn).await.map_err(|e| StoreError::Migration(Box::new(e)));
    // The schema is in place or not whatever closing says.
    let _ = conn.close().await;
    migrated
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin_write(&self) -> Result<Box<dyn WriteTx>, StoreError> {
        let tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await.map_err(classify)?;
        Ok(Box::new(PgTx::new(tx)))
    }

    async fn begin_read(&self) -> Result<Box<dyn ReadTx>, StoreError> {
        // One snapshot for every read in it, so a job and its tokens are
        // never read half-updated.
        let tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(classify)?;
        Ok(Box::new(PgTx::new(tx)))
    }

    async fn close(&self) {
        if let Some(connection) = self.probe.connection.lock().await.take() {
            let _ = connection.close().await;
        }
        self.pool.close().await;
    }

    fn pools(&self) -> Vec<PoolUsage> {
        let (open, max) = (self.pool.size(), self.pool.options().get_max_connections());
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        vec![PoolUsage { pool: "postgres", open, idle, max }]
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let probe = &self.probe;
        let mut kept = probe.connection.lock().await;
        let answered = tokio::time::timeout(probe.timeout, async {
            let connection = match kept.as_mut() {
                Some(connection) => connection,
                None => kept.insert(PgConnection::connect_with(&probe.options).await.map_err(classify)?),
            };
            sqlx::query("SELECT 1").execute(connection).await.map(|_| ()).map_err(classify)
        })
        .await
        .unwrap_or_else(|elapsed| Err(StoreError::Unavailable(Box::new(elapsed))));
        if answered.is_err() {
            // Broken or stuck: the next ping connects afresh.
            *kept = None;
        }
        answered
    }
}

/// Steps over a connection: a pooled connection for reads, a transaction for
/// writes. The read steps are written once for both; only the transaction
/// offers [`WriteTx`].
struct PgTx<C> {
    conn: C,
    /// The rows this transaction inserted, by tenant, format and blind index:
    /// nobody else can see, let alone change, them before it commits, so
    /// reading them back ([`ReadTx::records_by_blind_index`] right after
    /// [`WriteTx::insert_records`], as tokenize does) needs no statement.
    inserted: HashMap<(String, &'static str, [u8; 32]), RecordRow>,
}

impl<C: DerefMut<Target = PgConnection>> PgTx<C> {
    fn new(conn: C) -> Self {
        Self { conn, inserted: HashMap::new() }
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Sorts sqlx errors into what the caller can act on.
fn classify(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient(&code)),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Database(Box::new(error))
    }
}

/// SQLSTATEs that mean "busy or unreachable now", not "wrong": nothing was
/// done, and the same call may succeed later.
fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "55P03" // lock_not_available: lock_timeout expired
            | "57014" // query_canceled: statement_timeout expired
            | "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "53300" // too_many_connections
            | "57P01" // admin_shutdown: the server is stopping (failover)
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now: the server is starting
    ) || code.starts_with("08") // connection_exception
}

/// Reads column `what` ("table.column") of `row`; a value of the wrong type,
/// or NULL where none may be, is corrupt, never a panic.
fn get<'r, T>(row: &'r PgRow, what: &'static str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    let column = what.split_once('.').map_or(what, |(_, column)| column);
    row.try_get(column).map_err(|_| StoreError::Corrupt { what })
}

fn get_u32(row: &PgRow, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(get::<i64>(row, what)?).map_err(|_| StoreError::Corrupt { what })
}

fn get_u64(row: &PgRow, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(get::<i64>(row, what)?).map_err(|_| StoreError::Corrupt { what })
}

fn get_hash(row: &PgRow, what: &'static str) -> Result<[u8; 32], StoreError> {
    get::<Vec<u8>>(row, what)?.try_into().map_err(|_| StoreError::Corrupt { what })
}

/// A count or sequence number as a BIGINT; one beyond it cannot be stored.
fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|error| StoreError::Database(Box::new(error)))
}

/// Columns of a [`RecordRow`], as [`record_row`] reads them.
const RECORD_COLUMNS: &str = "token, format, blind_index, key_version, created_at, tag";

fn record_row(row: &PgRow) -> Result<RecordRow, StoreError> {
    Ok(RecordRow {
        token: get(row, "records.token")?,
        format: get(row, "records.format")?,
        blind_index: get(row, "records.blind_index")?,
        key_version: get_u32(row, "records.key_version")?,
        created_at: get(row, "records.created_at")?,
        tag: get(row, "records.tag")?,
    })
}

fn token_strs(tokens: &[Token]) -> Vec<&str> {
    tokens.iter().map(Token::as_str).collect()
}

// Each statement that is also run with FOR UPDATE is written once, here.
macro_rules! select_job {
    () => {
        "SELECT tenant, purpose, note, max_releases_per_token, created_by, created_at, expires_at, approved_by, \
         approved_at, cancelled_by, cancelled_at, approvals_required, earlier_approvals, terms_tag, state_tag, \
         state_seq FROM filing_jobs WHERE job_id = $1"
    };
}
macro_rules! select_chain_head {
    () => {
        "SELECT seq, hash FROM audit_chain_head WHERE id = 1"
    };
}

async fn job_row(conn: &mut PgConnection, job_id: &JobId, lock: bool) -> Result<Option<JobRow>, StoreError> {
    let sql = if lock { concat!(select_job!(), " FOR UPDATE") } else { select_job!() };
    let Some(row) = sqlx::query(sql).bind(job_id.as_str()).fetch_optional(&mut *conn).await.map_err(classify)? else {
        return Ok(None);
    };
    // The job row lock covers its tokens: every writer of them locks the job first.
    let tokens = sqlx::query("SELECT token, releases FROM filing_job_tokens WHERE job_id = $1 ORDER BY position")
        .bind(job_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?
        .iter()
        .map(|t| Ok((get(t, "filing_job_tokens.token")?, get(t, "filing_job_tokens.releases")?)))
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(JobRow {
        job_id: job_id.to_string(),
        tenant: get(&row, "filing_jobs.tenant")?,
        purpose: get(&row, "filing_jobs.purpose")?,
        note: get(&row, "filing_jobs.note")?,
        max_releases_per_token: get(&row, "filing_jobs.max_releases_per_token")?,
        created_by: get(&row, "filing_jobs.created_by")?,
        created_at: get(&row, "filing_jobs.created_at")?,
        expires_at: get(&row, "filing_jobs.expires_at")?,
        approved_by: get(&row, "filing_jobs.approved_by")?,
        approved_at: get(&row, "filing_jobs.approved_at")?,
        cancelled_by: get(&row, "filing_jobs.cancelled_by")?,
        cancelled_at: get(&row, "filing_jobs.cancelled_at")?,
        approvals_required: get(&row, "filing_jobs.approvals_required")?,
        earlier_approvals: get(&row, "filing_jobs.earlier_approvals")?,
        tokens,
        terms_tag: get(&row, "filing_jobs.terms_tag")?,
        state_tag: get(&row, "filing_jobs.state_tag")?,
        state_seq: get(&row, "filing_jobs.state_seq")?,
    }))
}

async fn chain_head(conn: &mut PgConnection, lock: bool) -> Result<ChainHead, StoreError> {
    let sql = if lock { concat!(select_chain_head!(), " FOR UPDATE") } else { select_chain_head!() };
    let row = sqlx::query(sql)
        .fetch_optional(conn)
        .await
        .map_err(classify)?
        // The migration inserts the one row; without it there is no chain to append to.
        .ok_or(StoreError::Corrupt { what: "audit_chain_head.id" })?;
    Ok(ChainHead { seq: get_u64(&row, "audit_chain_head.seq")?, hash: get_hash(&row, "audit_chain_head.hash")? })
}

fn audit_record(row: &PgRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: get_u64(row, "audit_entries.seq")?,
        time_ms: get(row, "audit_entries.time")?,
        principal: get(row, "audit_entries.principal")?,
        tenant: get(row, "audit_entries.tenant")?,
        operation: get(row, "audit_entries.operation")?,
        outcome: get(row, "audit_entries.outcome")?,
        reason: get(row, "audit_entries.reason")?,
        job_id: get(row, "audit_entries.job_id")?,
        purpose: get(row, "audit_entries.purpose")?,
        tokens: Vec::new(),
        record_count: get_u64(row, "audit_entries.record_count")?,
        request_id: get(row, "audit_entries.request_id")?,
        prev_hash: get_hash(row, "audit_entries.prev_hash")?,
        hash: get_hash(row, "audit_entries.hash")?,
        mac: get::<Option<Vec<u8>>>(row, "audit_entries.mac")?
            .map(|mac| <[u8; 32]>::try_from(mac).map_err(|_| StoreError::Corrupt { what: "audit_entries.mac" }))
            .transpose()?,
    })
}

#[async_trait]
impl<C> ReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn system_key(&mut self, name: &str) -> Result<Option<WrappedKey>, StoreError> {
        let row = sqlx::query("SELECT wrapped_key FROM system_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.map(|row| Ok(WrappedKey::from_bytes(get(&row, "system_keys.wrapped_key")?))).transpose()
    }

    async fn tenant(&mut self, tenant: &TenantId) -> Result<Option<StoredTenant>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT display_name, created_at, index_key_wrapped, \
             ARRAY(SELECT version FROM tenant_record_keys k WHERE k.tenant = t.tenant ORDER BY version) AS versions, \
             ARRAY(SELECT wrapped_key FROM tenant_record_keys k WHERE k.tenant = t.tenant ORDER BY version) AS keys \
             FROM tenants t WHERE tenant = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.conn())
        .await
        .map_err(classify)?
        else {
            return Ok(None);
        };
        let versions: Vec<i64> = get(&row, "tenant_record_keys.versions")?;
        let keys: Vec<Vec<u8>> = get(&row, "tenant_record_keys.keys")?;
        let record_keys = versions
            .into_iter()
            .zip(keys)
            .map(|(version, key)| {
                let version =
                    u32::try_from(version).map_err(|_| StoreError::Corrupt { what: "tenant_record_keys.version" })?;
                Ok((version, WrappedKey::from_bytes(key)))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(StoredTenant {
            display_name: get(&row, "tenants.display_name")?,
            created_at: get(&row, "tenants.created_at")?,
            index_key: WrappedKey::from_bytes(get(&row, "tenants.index_key_wrapped")?),
            record_keys,
        }))
    }

    async fn records_by_blind_index(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<RecordRow>>, StoreError> {
        if blind_indexes.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = HashMap::with_capacity(blind_indexes.len());
        let mut unseen: Vec<&[u8]> = Vec::new();
        for index in blind_indexes {
            match self.inserted.get(&(tenant.as_str().to_owned(), format.id(), index.0)) {
                Some(row) => drop(found.insert(index.0.to_vec(), row.clone())),
                None => unseen.push(&index.0[..]),
            }
        }
        if !unseen.is_empty() {
            let rows = sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM UNNEST($3::bytea[]) AS k (key) CROSS JOIN LATERAL \
                 (SELECT {RECORD_COLUMNS} FROM records WHERE tenant = $1 AND format = $2 AND blind_index = k.key \
                 LIMIT 1) r"
            ))
            .bind(tenant.as_str())
            .bind(format.id())
            .bind(&unseen)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let row = record_row(row)?;
                found.insert(row.blind_index.clone(), row);
            }
        }
        // Rows come back in any order: answer in the order asked.
        Ok(blind_indexes.iter().map(|index| found.remove(&index.0[..])).collect())
    }

    async fn record(&mut self, tenant: &TenantId, token: &Token) -> Result<Option<RecordRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant = $1 AND token = $2"))
            .bind(tenant.as_str())
            .bind(token.as_str())
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.as_ref().map(record_row).transpose()
    }

    async fn existing_tokens(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<HashSet<String>, StoreError> {
        if tokens.is_empty() {
            return Ok(HashSet::new());
        }
        sqlx::query(
            "SELECT r.token FROM UNNEST($2::text[]) AS k (key) CROSS JOIN LATERAL \
             (SELECT token FROM records WHERE tenant = $1 AND token = k.key LIMIT 1) r",
        )
        .bind(tenant.as_str())
        .bind(token_strs(tokens))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?
        .iter()
        .map(|row| get(row, "records.token"))
        .collect()
    }

    async fn sealed_records(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS}, sealed FROM UNNEST($2::text[]) AS k (key) CROSS JOIN LATERAL \
             (SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = $1 AND token = k.key LIMIT 1) r"
        ))
        .bind(tenant.as_str())
        .bind(token_strs(tokens))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = record_row(row)?;
            found.insert(record.token.clone(), (record, get::<Vec<u8>>(row, "records.sealed")?));
        }
        // In the order asked, skipping tokens without a record.
        Ok(tokens.iter().filter_map(|token| found.remove(token.as_str())).collect())
    }

    async fn job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        job_row(self.conn(), job_id, false).await
    }

    async fn job_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT job_id FROM filing_jobs WHERE job_id > $1 ORDER BY job_id LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(|row| get(row, "filing_jobs.job_id")).collect()
    }

    async fn record_rows(
        &mut self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, RecordRow)>, StoreError> {
        let (tenant, token) = after.unwrap_or(("", ""));
        let rows = sqlx::query(&format!(
            "SELECT tenant, {RECORD_COLUMNS} FROM records WHERE (tenant, token) > ($1, $2) \
             ORDER BY tenant, token LIMIT $3"
        ))
        .bind(tenant)
        .bind(token)
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(|row| Ok((get(row, "records.tenant")?, record_row(row)?))).collect()
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        chain_head(self.conn(), false).await
    }

    async fn audit_entries(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT seq, time, principal, tenant, operation, outcome, reason, job_id, purpose, record_count, \
             request_id, prev_hash, hash, mac FROM audit_entries WHERE seq > ",
        );
        // No stored seq exceeds i64::MAX, so a larger cursor means "nothing after".
        query.push_bind(i64::try_from(filter.after_seq).unwrap_or(i64::MAX));
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
            query
                .push(" AND seq IN (SELECT seq FROM audit_entry_tokens WHERE token = ")
                .push_bind(token.as_str())
                .push(")");
        }
        query.push(" ORDER BY seq LIMIT ").push_bind(i64::from(filter.limit.max(1)));
        let conn = self.conn();
        let rows = query.build().fetch_all(&mut *conn).await.map_err(classify)?;
        let mut entries = rows.iter().map(audit_record).collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Ok(entries);
        }
        // The tokens of exactly these entries, never of the gaps between them.
        let seqs = entries.iter().map(|entry| to_i64(entry.seq)).collect::<Result<Vec<_>, _>>()?;
        // A page's worth of rows at most, so the server never sorts or sends
        // more than that for a page; then the rest of the last entry alone,
        // which comes back whole however many tokens it names.
        let limit = AUDIT_PAGE_TOKENS as i64;
        let mut tokens = PageTokens::default();
        let mut read = 0i64;
        let mut rows = sqlx::query(
            "SELECT seq, token FROM audit_entry_tokens WHERE seq = ANY($1) ORDER BY seq, position LIMIT $2",
        )
        .bind(&seqs)
        .bind(limit)
        .fetch(&mut *conn);
        while let Some(row) = rows.try_next().await.map_err(classify)? {
            read += 1;
            if !tokens.push(get_u64(&row, "audit_entry_tokens.seq")?, get(&row, "audit_entry_tokens.token")?) {
                break;
            }
        }
        drop(rows);
        if read == limit {
            if let Some((seq, have)) = tokens.last_entry() {
                let rest =
                    sqlx::query("SELECT token FROM audit_entry_tokens WHERE seq = $1 ORDER BY position OFFSET $2")
                        .bind(to_i64(seq)?)
                        .bind(have as i64)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(classify)?;
                for row in &rest {
                    tokens.push(seq, get(row, "audit_entry_tokens.token")?);
                }
                tokens.end_after(seq);
            }
        }
        tokens.attach(&mut entries);
        Ok(entries)
    }
}

#[async_trait]
impl WriteTx for PgTx<Transaction<'static, Postgres>> {
    async fn insert_system_key(&mut self, name: &str, key: &WrappedKey, created_at: i64) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO system_keys (name, wrapped_key, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
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
        // A concurrent creator of the same tenant makes this wait, then skip;
        // the key is inserted only with the tenant row it belongs to.
        let inserted = sqlx::query(
            "WITH t AS (INSERT INTO tenants (tenant, display_name, created_at, index_key_wrapped) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING tenant) \
             INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) SELECT tenant, 1, $5, $3 FROM t",
        )
        .bind(tenant.tenant.as_str())
        .bind(&tenant.display_name)
        .bind(tenant.created_at)
        .bind(tenant.index_key.as_bytes())
        .bind(tenant.first_record_key.as_bytes())
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn insert_records(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        records: &[NewRecord],
        created_at: i64,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        // Inserting in blind-index order makes concurrent batches wait for one
        // another in the same order, so overlapping batches queue instead of
        // deadlocking.
        let mut sorted: Vec<&NewRecord> = records.iter().collect();
        sorted.sort_unstable_by_key(|r| r.blind_index.0);
        let tokens: Vec<&str> = sorted.iter().map(|r| r.token.as_str()).collect();
        let indexes: Vec<&[u8]> = sorted.iter().map(|r| &r.blind_index.0[..]).collect();
        let versions: Vec<i64> = sorted.iter().map(|r| i64::from(r.key_version)).collect();
        let sealed: Vec<&[u8]> = sorted.iter().map(|r| &r.sealed[..]).collect();
        let tags: Vec<&[u8]> = sorted.iter().map(|r| &r.tag[..]).collect();
        // No conflict target: a taken blind index and a taken token are both
        // skipped. The rows returned are exactly the ones this call wrote.
        let written = sqlx::query(
            "INSERT INTO records (tenant, token, format, blind_index, key_version, sealed, created_at, tag) \
             SELECT $1, r.token, $2, r.blind_index, r.key_version, r.sealed, $3, r.tag \
             FROM UNNEST($4::text[], $5::bytea[], $6::bigint[], $7::bytea[], $8::bytea[]) \
             AS r (token, blind_index, key_version, sealed, tag) \
             ON CONFLICT DO NOTHING RETURNING token, blind_index",
        )
        .bind(tenant.as_str())
        .bind(format.id())
        .bind(created_at)
        .bind(&tokens)
        .bind(&indexes)
        .bind(&versions)
        .bind(&sealed)
        .bind(&tags)
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        // By token and blind index together: two records of one batch may
        // draw the same token for different numbers, and only the first is
        // written; the other must not be remembered as written.
        let written = written
            .iter()
            .map(|row| Ok((get::<String>(row, "records.token")?, get::<Vec<u8>>(row, "records.blind_index")?)))
            .collect::<Result<HashSet<(String, Vec<u8>)>, StoreError>>()?;
        for record in sorted
            .into_iter()
            .filter(|record| written.contains(&(record.token.to_string(), record.blind_index.0.to_vec())))
        {
            let row = RecordRow {
                token: record.token.to_string(),
                format: format.id().to_owned(),
                blind_index: record.blind_index.0.to_vec(),
                key_version: record.key_version,
                created_at,
                tag: Some(record.tag.to_vec()),
            };
            self.inserted.insert((tenant.as_str().to_owned(), format.id(), record.blind_index.0), row);
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
        // Positions count from 0, as in the SQLite store.
        sqlx::query(
            "WITH job AS (INSERT INTO filing_jobs (job_id, tenant, purpose, note, max_releases_per_token, created_by, \
             created_at, expires_at, terms_tag, state_tag, state_seq, approvals_required) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $12)) \
             INSERT INTO filing_job_tokens (job_id, position, token) \
             SELECT $1, t.ordinality - 1, t.token FROM UNNEST($11::text[]) WITH ORDINALITY AS t (token, ordinality)",
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
        .bind(token_strs(&job.tokens))
        .bind(i64::from(*approvals_required))
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn lock_job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        job_row(self.conn(), job_id, true).await
    }

    async fn set_job_earlier_approvals(&mut self, job_id: &JobId, approvals: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET earlier_approvals = $1 WHERE job_id = $2")
            .bind(approvals)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn set_job_approved(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET approved_by = $1, approved_at = $2 WHERE job_id = $3")
            .bind(by.as_str())
            .bind(at)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn set_job_cancelled(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET cancelled_by = $1, cancelled_at = $2 WHERE job_id = $3")
            .bind(by.as_str())
            .bind(at)
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn set_job_state(&mut self, job_id: &JobId, state_seq: u64, state_tag: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("UPDATE filing_jobs SET state_seq = $1, state_tag = $2 WHERE job_id = $3")
            .bind(to_i64(state_seq)?)
            .bind(&state_tag[..])
            .bind(job_id.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn count_releases(&mut self, job_id: &JobId, tokens: &[Token], max: u32) -> Result<u64, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        // The limit is checked in the UPDATE itself, on the row it locks, so
        // even a writer that skipped lock_job cannot count past it.
        let counted = sqlx::query(
            "UPDATE filing_job_tokens t SET releases = t.releases + 1 FROM UNNEST($2::text[]) AS k (token) \
             WHERE t.job_id = $1 AND t.token = k.token AND t.releases < $3",
        )
        .bind(job_id.as_str())
        .bind(token_strs(tokens))
        .bind(i64::from(max))
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(counted.rows_affected())
    }

    async fn lock_chain_head(&mut self) -> Result<ChainHead, StoreError> {
        chain_head(self.conn(), true).await
    }

    async fn insert_audit_entry(&mut self, entry: &AuditRecord) -> Result<(), StoreError> {
        self.insert_audit_entries(std::slice::from_ref(entry)).await
    }

    async fn insert_audit_entries(&mut self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut seqs = Vec::with_capacity(entries.len());
        let named: usize = entries.iter().map(|entry| entry.tokens.len()).sum();
        let (mut token_seqs, mut positions, mut tokens) =
            (Vec::with_capacity(named), Vec::with_capacity(named), Vec::with_capacity(named));
        for entry in entries {
            let seq = to_i64(entry.seq)?;
            seqs.push(seq);
            // Positions count from 0, as in the SQLite store.
            for (position, token) in (0_i64..).zip(&entry.tokens) {
                token_seqs.push(seq);
                positions.push(position);
                tokens.push(token.as_str());
            }
        }
        let column = |text: fn(&AuditRecord) -> &str| entries.iter().map(text).collect::<Vec<&str>>();
        let times: Vec<i64> = entries.iter().map(|entry| entry.time_ms).collect();
        let counts = entries.iter().map(|entry| to_i64(entry.record_count)).collect::<Result<Vec<_>, _>>()?;
        let prev_hashes: Vec<&[u8]> = entries.iter().map(|entry| &entry.prev_hash[..]).collect();
        let hashes: Vec<&[u8]> = entries.iter().map(|entry| &entry.hash[..]).collect();
        let macs: Vec<Option<&[u8]>> = entries.iter().map(|entry| entry.mac.as_ref().map(|mac| &mac[..])).collect();
        // One statement for every entry and every token they name.
        sqlx::query(
            "WITH entries AS (INSERT INTO audit_entries (seq, time, principal, tenant, operation, outcome, reason, \
             job_id, purpose, record_count, request_id, prev_hash, hash, mac) \
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bytea[], $13::bytea[], \
             $17::bytea[])) \
             INSERT INTO audit_entry_tokens (seq, position, token) \
             SELECT * FROM UNNEST($14::bigint[], $15::bigint[], $16::text[])",
        )
        .bind(&seqs)
        .bind(&times)
        .bind(column(|entry| &entry.principal))
        .bind(column(|entry| &entry.tenant))
        .bind(column(|entry| &entry.operation))
        .bind(column(|entry| &entry.outcome))
        .bind(column(|entry| &entry.reason))
        .bind(column(|entry| &entry.job_id))
        .bind(column(|entry| &entry.purpose))
        .bind(&counts)
        .bind(column(|entry| &entry.request_id))
        .bind(&prev_hashes)
        .bind(&hashes)
        .bind(&token_seqs)
        .bind(&positions)
        .bind(&tokens)
        .bind(&macs)
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn set_chain_head(&mut self, head: &ChainHead) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(to_i64(head.seq)?)
            .bind(&head.hash[..])
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.conn.commit().await.map_err(classify)
    }
}
