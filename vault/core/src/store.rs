//! The store contract: what a backend (SQLite, PostgreSQL) must offer.
//!
//! A store offers explicit transactions made of simple steps: read a job,
//! insert records in a batch, count releases, read and move the chain head.
//! It decides nothing. Every rule (job states, who may approve, what may be
//! released, the audit append protocol) runs in [`crate::VaultCore`], inside
//! the transaction, whatever the backend, so no rule is written twice.
//!
//! What a backend must guarantee, with several writers (processes or
//! replicas) at once:
//! - [`Store::begin_write`] starts a transaction that either commits whole or
//!   not at all, and fails promptly ([`StoreError::Unavailable`]) rather than
//!   waiting without bound for a lock;
//! - [`WriteTx::lock_job`] and [`WriteTx::lock_chain_head`] hold their row
//!   until commit, so decisions taken on what they return cannot go stale;
//! - [`WriteTx::insert_records`] never creates a second row for a tenant,
//!   format and blind index, nor for a tenant and token (a conflicting row is
//!   skipped, not an error);
//! - [`WriteTx::count_releases`] counts a token only while it is under the
//!   limit, even against a concurrent writer.

use std::collections::HashSet;

use async_trait::async_trait;
use mnvault_keys::{BlindIndex, WrappedKey};

use crate::audit::AuditRecord;
use crate::id::{JobId, Principal, RequestId, TenantId, Token, TokenFormat};
use crate::job::JobTerms;

mod checkpoint;
mod collection;
mod offboarding;
mod report;
mod retention;
mod root_rotation;
mod rotation;
mod tenant_policy;

pub use checkpoint::{CheckpointReadTx, CheckpointWriteTx};
pub use collection::{CollectionReadTx, CollectionRow, CollectionWriteTx};
pub use offboarding::{OffboardingReadTx, OffboardingWriteTx};
pub use report::ReportReadTx;
pub use retention::{RetentionReadTx, RetentionRow, RetentionWriteTx, TombstoneRow};
pub use root_rotation::{RootRotationReadTx, RootRotationWriteTx, StoredWrappedKey, WrappedKeySlot};
pub use rotation::{KeyVersionRow, RewrapScan, RewrappedRecord, RotationReadTx, RotationWriteTx};
pub use tenant_policy::{PolicyProposalRow, TenantPolicyReadTx, TenantPolicyRow, TenantPolicyWriteTx};

/// The cause of a store failure, as the backend reported it. Logged, never
/// sent to a caller.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a store step failed: a typed cause, not a sentence for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, or stayed busy or locked past the
    /// write timeout; nothing was done.
    #[error("database unavailable or busy: {0}")]
    Unavailable(#[source] Cause),
    /// A stored value does not have its expected form; `what` names the
    /// table and column.
    #[error("stored value of {what} is malformed")]
    Corrupt {
        /// Table and column.
        what: &'static str,
    },
    /// Applying the schema migrations failed.
    #[error("schema migration failed: {0}")]
    Migration(#[source] Cause),
    /// Any other database failure (a constraint, a full disk, a bug).
    #[error("database error: {0}")]
    Database(#[source] Cause),
}

/// The head of the audit chain: the last entry's position and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last entry (0 for an empty chain).
    pub seq: u64,
    /// Hash of the last entry (zeros for an empty chain).
    pub hash: [u8; 32],
}

/// A tenant as created.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Identifier.
    pub tenant: TenantId,
    /// Human-readable name.
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Blind-index key, wrapped by the root key.
    pub index_key: WrappedKey,
    /// Record key version 1, wrapped by the root key.
    pub first_record_key: WrappedKey,
}

/// A tenant's row and its wrapped keys.
#[derive(Debug, Clone)]
pub struct StoredTenant {
    /// Human-readable name.
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Blind-index key, wrapped.
    pub index_key: WrappedKey,
    /// Record keys by version, wrapped.
    pub record_keys: Vec<(u32, WrappedKey)>,
}

/// A record to insert: a freshly drawn token and the sealed number.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Keyed hash of the number in this tenant.
    pub blind_index: BlindIndex,
    /// The token drawn for it.
    pub token: Token,
    /// Version of the record key that sealed it.
    pub key_version: u32,
    /// The sealed number.
    pub sealed: Vec<u8>,
    /// State tag binding tenant, token, format, blind index, key version and
    /// creation time ([`crate::integrity`]).
    pub tag: [u8; 32],
}

/// A record's row as stored (never its content), unparsed: the core checks
/// its tag before believing any of it.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// The `token` column.
    pub token: String,
    /// The `format` column.
    pub format: String,
    /// The `blind_index` column.
    pub blind_index: Vec<u8>,
    /// Version of the key it is sealed under.
    pub key_version: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The `tag` column (absent in a row nobody tagged).
    pub tag: Option<Vec<u8>>,
}

/// A filing job as created.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What it declares.
    pub terms: JobTerms,
    /// Tokens, in order, without duplicates.
    pub tokens: Vec<Token>,
    /// State tag of the terms and token list ([`crate::integrity`]).
    pub terms_tag: [u8; 32],
    /// State tag of the initial state (pending, nothing released).
    pub state_tag: [u8; 32],
}

/// A filing job's row as stored, unparsed: [`crate::job::Job::from_row`]
/// parses it, in one place for every backend.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Identifier.
    pub job_id: String,
    /// Tenant.
    pub tenant: String,
    /// Purpose identifier.
    pub purpose: String,
    /// Free text.
    pub note: String,
    /// Releases allowed per token.
    pub max_releases_per_token: i64,
    /// Creator.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Approver, once approved.
    pub approved_by: Option<String>,
    /// Unix milliseconds.
    pub approved_at: Option<i64>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// Unix milliseconds.
    pub cancelled_at: Option<i64>,
    /// Distinct persons who must approve it.
    pub approvals_required: i64,
    /// Approvals given while it still needed more, in their stored form
    /// ([`crate::job::encode_approvals`]); empty for none.
    pub earlier_approvals: String,
    /// Tokens with their release counts, in position order.
    pub tokens: Vec<(String, i64)>,
    /// Tag of the terms and token list.
    pub terms_tag: Option<Vec<u8>>,
    /// Tag of the approval, cancellation, release counts and `state_seq`.
    pub state_tag: Option<Vec<u8>>,
    /// Sequence number of the audit entry that recorded the last change of
    /// state (0 before any).
    pub state_seq: i64,
}

/// Filters of an audit listing; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this tenant.
    pub tenant: Option<TenantId>,
    /// From this time (Unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Before this time (Unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only entries naming this token.
    pub token: Option<Token>,
    /// Only this job.
    pub job_id: Option<JobId>,
    /// Only this operation identifier.
    pub operation: Option<&'static str>,
    /// Only the entries of this call.
    pub request_id: Option<RequestId>,
    /// Only entries by this principal.
    pub principal: Option<Principal>,
    /// Only this outcome identifier ([`crate::audit::Outcome::id`]).
    pub outcome: Option<&'static str>,
    /// Only entries after this sequence number.
    pub after_seq: u64,
    /// At most this many (at least one is asked for); fewer when their
    /// tokens pass [`AUDIT_PAGE_TOKENS`].
    pub limit: u32,
}

/// Tokens one page of audit entries holds at most, unless its first entry
/// alone has more: an entry names up to a whole job's tokens, so a page of
/// [`AuditFilter::limit`] entries alone would not bound memory.
pub const AUDIT_PAGE_TOKENS: usize = 100_000;

/// The tokens of a page of audit entries, as a store reads them (in
/// sequence and position order): cuts the page before the entry that
/// would start past [`AUDIT_PAGE_TOKENS`], so every store bounds a page the
/// same way. Callers page on by the last entry's sequence number, so a
/// shorter page loses nothing.
#[derive(Debug, Default)]
pub struct PageTokens {
    by_seq: std::collections::HashMap<u64, Vec<String>>,
    loaded: usize,
    cut: Option<u64>,
}

impl PageTokens {
    /// Takes one token row; `false`: the page is full, stop reading.
    pub fn push(&mut self, seq: u64, token: String) -> bool {
        if self.loaded >= AUDIT_PAGE_TOKENS && !self.by_seq.contains_key(&seq) {
            self.cut = Some(seq);
            return false;
        }
        self.by_seq.entry(seq).or_default().push(token);
        self.loaded += 1;
        true
    }

    /// The last entry that got tokens, and how many it has so far.
    pub fn last_entry(&self) -> Option<(u64, usize)> {
        self.by_seq.keys().max().map(|seq| (*seq, self.by_seq[seq].len()))
    }

    /// Ends the page after entry `seq` (a store that read a page's worth of
    /// rows at most, then the rest of `seq`'s own).
    pub fn end_after(&mut self, seq: u64) {
        self.cut = Some(self.cut.map_or(seq + 1, |cut| cut.min(seq + 1)));
    }

    /// Gives each entry its tokens and drops the entries from the cut on.
    pub fn attach(mut self, entries: &mut Vec<AuditRecord>) {
        if let Some(cut) = self.cut {
            entries.retain(|entry| entry.seq < cut);
        }
        for entry in entries {
            entry.tokens = self.by_seq.remove(&entry.seq).unwrap_or_default();
        }
    }
}

/// A backend. Cheap to share; every method may be called concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Starts a write transaction. It is rolled back when dropped without
    /// [`WriteTx::commit`].
    async fn begin_write(&self) -> Result<Box<dyn WriteTx>, StoreError>;
    /// A read-only transaction: every read in it sees one consistent
    /// snapshot (a job's row and its tokens' counts always belong together).
    async fn begin_read(&self) -> Result<Box<dyn ReadTx>, StoreError>;
    /// Closes the connections, waiting for running statements.
    async fn close(&self);
    /// Whether the database answers now, within the write timeout, on a
    /// connection of the check's own: the health check calls it every
    /// `server.health_check_interval_ms`. Changes nothing.
    async fn ping(&self) -> Result<(), StoreError>;
    /// After a shred: folds what it overwrote into the database's own files
    /// where the backend keeps older copies of pages beside them (SQLite:
    /// a TRUNCATE checkpoint of the WAL). `Ok(false)` if readers kept it from
    /// completing. A backend without such files has nothing to do.
    async fn settle_deletions(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// How full each of the store's connection pools is now, for the
    /// metrics; a store without pools has none.
    fn pools(&self) -> Vec<PoolUsage> {
        Vec::new()
    }
}

/// One connection pool of a store, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Which pool: a fixed name, e.g. `sqlite-writer`.
    pub pool: &'static str,
    /// Connections open, idle or in use.
    pub open: u32,
    /// Open connections waiting for a statement.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Steps that read. Available in read and write transactions.
#[async_trait]
pub trait ReadTx:
    Send
    + RotationReadTx
    + RootRotationReadTx
    + RetentionReadTx
    + OffboardingReadTx
    + CheckpointReadTx
    + ReportReadTx
    + TenantPolicyReadTx
    + CollectionReadTx
{
    /// The wrapped system key `name`, if stored.
    async fn system_key(&mut self, name: &str) -> Result<Option<WrappedKey>, StoreError>;
    /// A tenant with its wrapped keys.
    async fn tenant(&mut self, tenant: &TenantId) -> Result<Option<StoredTenant>, StoreError>;
    /// The record holding each blind index in the tenant and format, in order.
    async fn records_by_blind_index(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<RecordRow>>, StoreError>;
    /// A record's row.
    async fn record(&mut self, tenant: &TenantId, token: &Token) -> Result<Option<RecordRow>, StoreError>;
    /// Which of `tokens` have a record in the tenant.
    async fn existing_tokens(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<HashSet<String>, StoreError>;
    /// The row and sealed bytes of each of `tokens` that has a record in the tenant.
    async fn sealed_records(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError>;
    /// A job with its tokens.
    async fn job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError>;
    /// Up to `limit` job ids after `after` (from the first when empty), in order.
    async fn job_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Up to `limit` record rows after (`tenant`, `token`) (all when `None`),
    /// in (tenant, token) order, each with its tenant column.
    async fn record_rows(
        &mut self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, RecordRow)>, StoreError>;
    /// The chain head as last committed.
    async fn audit_head(&mut self) -> Result<ChainHead, StoreError>;
    /// Entries matching `filter`, in sequence order, with their tokens.
    async fn audit_entries(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
}

/// Steps that write, inside one transaction.
#[async_trait]
pub trait WriteTx:
    ReadTx
    + RotationWriteTx
    + RootRotationWriteTx
    + RetentionWriteTx
    + OffboardingWriteTx
    + CheckpointWriteTx
    + TenantPolicyWriteTx
    + CollectionWriteTx
{
    /// Stores a system key; `false` if `name` is already taken.
    async fn insert_system_key(&mut self, name: &str, key: &WrappedKey, created_at: i64) -> Result<bool, StoreError>;
    /// Creates a tenant with its first keys; `false` if it already exists.
    async fn insert_tenant(&mut self, tenant: &NewTenant) -> Result<bool, StoreError>;
    /// Inserts records, skipping any whose blind index or token is taken.
    async fn insert_records(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        records: &[NewRecord],
        created_at: i64,
    ) -> Result<(), StoreError>;
    /// Creates a job with its tokens.
    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError>;
    /// A job, its row locked until commit.
    async fn lock_job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError>;
    /// Records the approvals given while a job still needs more, in their
    /// stored form ([`crate::job::encode_approvals`]).
    async fn set_job_earlier_approvals(&mut self, job_id: &JobId, approvals: &str) -> Result<(), StoreError>;
    /// Records the approval that completed a job's approvals.
    async fn set_job_approved(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError>;
    /// Records the cancellation of a job.
    async fn set_job_cancelled(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError>;
    /// Stores a job's new state tag and the sequence number of the audit
    /// entry that recorded the change.
    async fn set_job_state(&mut self, job_id: &JobId, state_seq: u64, state_tag: &[u8; 32]) -> Result<(), StoreError>;
    /// Adds one release to each of `tokens` (distinct) of the job whose count
    /// is below `max`; returns how many were counted.
    async fn count_releases(&mut self, job_id: &JobId, tokens: &[Token], max: u32) -> Result<u64, StoreError>;
    /// The chain head, its row locked until commit: appends are serialised.
    async fn lock_chain_head(&mut self) -> Result<ChainHead, StoreError>;
    /// Inserts a sealed audit entry and its tokens.
    async fn insert_audit_entry(&mut self, entry: &AuditRecord) -> Result<(), StoreError>;
    /// Inserts consecutive sealed entries (a group commit's), in order. A
    /// store that can should do it in a few statements, not one per entry.
    async fn insert_audit_entries(&mut self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        for entry in entries {
            self.insert_audit_entry(entry).await?;
        }
        Ok(())
    }
    /// Moves the chain head.
    async fn set_chain_head(&mut self, head: &ChainHead) -> Result<(), StoreError>;
    /// Commits everything this transaction did.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
