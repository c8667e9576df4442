//! Persistence behind one trait, [`Store`], so that SQLite (the embedded
//! default) and PostgreSQL (production, several replicas) share every rule.
//!
//! The trait speaks in domain operations, not SQL: each method is one
//! transaction, and every method that changes state takes the [`AuditDraft`]
//! of the call and appends it to the audit chain inside that same
//! transaction. Either both the change and its audit entry are committed, or
//! neither is. Implementations must keep the rules with concurrent writers:
//! blind-index uniqueness by a unique constraint, release limits by
//! conditional updates, the audit chain by updating its single head row.

mod sqlite;

pub use sqlite::{OpenMode, SqliteStore, DATABASE_FILE};

use async_trait::async_trait;
use mnvault_keys::{BlindIndex, WrappedKey};
use zeroize::Zeroizing;

use crate::audit::{AuditDraft, AuditRecord};

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, or stayed busy past the write timeout.
    #[error("the database is unavailable or busy: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The audit entry could not be written, so the whole transaction was undone.
    #[error("the audit log could not be written: {0}")]
    AuditUnwritable(#[source] sqlx::Error),
    /// A row that must be unique already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A randomly drawn token is already taken in the tenant; draw again.
    #[error("token collision")]
    TokenCollision,
    /// The state changed under the call (e.g. a job was cancelled meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// A release was refused by the job's limits.
    #[error("{0}")]
    ReleaseRefused(String),
    /// Stored data is inconsistent (a record missing, a bad column).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A record failed to decrypt while releasing it.
    #[error("the record for token {token} failed its integrity check")]
    Integrity {
        /// The token whose record failed.
        token: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Which of the two token formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFormat {
    /// `mnt_` + 26 base32 characters.
    Opaque,
    /// 12 digits with a deliberately wrong check digit.
    LegacyDigits,
}

impl StoredFormat {
    /// The identifier stored in the `format` column.
    pub fn id(self) -> &'static str {
        match self {
            StoredFormat::Opaque => "opaque",
            StoredFormat::LegacyDigits => "legacy-digits",
        }
    }

    /// Parses a stored identifier.
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            "opaque" => Some(StoredFormat::Opaque),
            "legacy-digits" => Some(StoredFormat::LegacyDigits),
            _ => None,
        }
    }
}

/// A tenant as created.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Identifier.
    pub tenant: String,
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
    /// Identifier.
    pub tenant: String,
    /// Human-readable name.
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Blind-index key, wrapped.
    pub index_key: WrappedKey,
    /// Record keys by version, wrapped.
    pub record_keys: Vec<(u32, WrappedKey)>,
}

/// A record to insert: its token is a fresh random draw.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Keyed hash of the number in this tenant.
    pub blind_index: BlindIndex,
    /// The token drawn for it.
    pub token: String,
    /// Version of the record key that sealed it.
    pub key_version: u32,
    /// The sealed number.
    pub sealed: Vec<u8>,
}

/// One valid number of a tokenization batch, in input order.
#[derive(Debug, Clone)]
pub enum BatchItem {
    /// Its token was found before the transaction.
    Existing(String),
    /// Not found: insert it, unless a concurrent writer did first.
    New(NewRecord),
}

/// A record's metadata (never its content).
#[derive(Debug, Clone)]
pub struct RecordInfo {
    /// The token.
    pub token: String,
    /// Its format.
    pub format: StoredFormat,
    /// Version of the key it is sealed under.
    pub key_version: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What a filing job declares when it is created; never changes afterwards.
#[derive(Debug, Clone)]
pub struct JobTerms {
    /// Random identifier.
    pub job_id: String,
    /// Tenant.
    pub tenant: String,
    /// Purpose identifier.
    pub purpose: String,
    /// Free text.
    pub note: String,
    /// Releases allowed per token.
    pub max_releases_per_token: u32,
    /// Principal that created it.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// A filing job as created.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What it declares.
    pub terms: JobTerms,
    /// Tokens, in order, without duplicates.
    pub tokens: Vec<String>,
}

/// A filing job as stored.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// What it declared.
    pub terms: JobTerms,
    /// Approver, once approved.
    pub approved_by: Option<String>,
    /// Unix milliseconds.
    pub approved_at: Option<i64>,
    /// Who cancelled it.
    pub cancelled_by: Option<String>,
    /// Unix milliseconds.
    pub cancelled_at: Option<i64>,
    /// Tokens with their release counts, in order.
    pub tokens: Vec<(String, u32)>,
}

/// Filters of an audit listing; empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// From this time (Unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Before this time (Unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only entries naming this token.
    pub token: Option<String>,
    /// Only this job.
    pub job_id: Option<String>,
    /// Only this operation identifier.
    pub operation: Option<String>,
    /// Only entries after this sequence number.
    pub after_seq: u64,
    /// At most this many.
    pub limit: u32,
}

/// Decrypts a sealed record of `token` while a release transaction is open.
pub type OpenRecord<'a> = dyn Fn(&str, &[u8]) -> Option<Zeroizing<String>> + Send + Sync + 'a;

/// The vault's persistence. Each method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The wrapped system key `name`, if stored.
    async fn system_key(&self, name: &str) -> Result<Option<WrappedKey>, StoreError>;
    /// Stores a system key; `AlreadyExists` if `name` is taken.
    async fn put_system_key(&self, name: &str, key: &WrappedKey, created_at: i64) -> Result<(), StoreError>;

    /// Creates a tenant with its first keys.
    async fn create_tenant(&self, tenant: &NewTenant, audit: AuditDraft) -> Result<(), StoreError>;
    /// A tenant with its wrapped keys.
    async fn tenant(&self, tenant: &str) -> Result<Option<StoredTenant>, StoreError>;

    /// Tokens already assigned to these blind indexes in the tenant and format.
    async fn find_tokens(
        &self,
        tenant: &str,
        format: StoredFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<String>>, StoreError>;
    /// Inserts the new records of a batch and appends its audit entry (whose
    /// tokens are set to the batch's final tokens). Returns the token of every
    /// item in order. `TokenCollision` means nothing was written: draw new
    /// tokens and call again.
    async fn tokenize(
        &self,
        tenant: &str,
        format: StoredFormat,
        items: Vec<BatchItem>,
        audit: AuditDraft,
    ) -> Result<Vec<String>, StoreError>;
    /// Metadata of a record.
    async fn record_info(&self, tenant: &str, token: &str) -> Result<Option<RecordInfo>, StoreError>;
    /// Which of `tokens` do not exist in the tenant.
    async fn missing_tokens(&self, tenant: &str, tokens: &[String]) -> Result<Vec<String>, StoreError>;

    /// Creates a job.
    async fn create_job(&self, job: &NewJob, audit: AuditDraft) -> Result<(), StoreError>;
    /// A job with its tokens.
    async fn job(&self, job_id: &str) -> Result<Option<StoredJob>, StoreError>;
    /// Approves a job if it is still pending, uncancelled and unexpired when
    /// the write lock is held.
    async fn approve_job(&self, job_id: &str, approver: &str, audit: AuditDraft) -> Result<(), StoreError>;
    /// Cancels a job if it is not already cancelled.
    async fn cancel_job(&self, job_id: &str, by: &str, audit: AuditDraft) -> Result<(), StoreError>;
    /// Releases `tokens` of an approved job: counts each release against the
    /// job's limit, decrypts each record with `open`, and appends `audit`, all
    /// in one transaction, which commits before this returns the numbers.
    async fn release(
        &self,
        job_id: &str,
        tokens: &[String],
        open: &OpenRecord<'_>,
        audit: AuditDraft,
    ) -> Result<Vec<(String, Zeroizing<String>)>, StoreError>;

    /// Appends an entry on its own (calls that change nothing, refusals).
    async fn append_audit(&self, audit: AuditDraft) -> Result<u64, StoreError>;
    /// Entries matching `filter`, in sequence order.
    async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError>;
    /// The chain head: last sequence number and its hash.
    async fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError>;
}
