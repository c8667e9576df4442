//! The store and the root key provider the core is given, with their
//! failures counted. They pass every step through unchanged: the core's
//! rules and errors stay exactly what they are.
//!
//! A failed audit write is a failed step of the audit append protocol
//! (`lock_chain_head`, `insert_audit_entry`, `set_chain_head`) or a failed
//! commit of a transaction that holds an entry; it is also a store error.
//!
//! Every method of [`Store`] and [`RootKeyProvider`] is passed on, those
//! with a default too: a method added there must be added here.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use mnvault_core::audit::AuditRecord;
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::store::{
    AuditFilter, ChainHead, JobRow, NewJob, NewRecord, NewTenant, PoolUsage, ReadTx, RecordRow, Store, StoreError,
    StoredTenant, WriteTx,
};
use mnvault_keys::{BlindIndex, KeyError, KeyMaterial, RootKeyProvider, WrapContext, WrappedKey};

use super::Metrics;

mod checkpoint;
mod collection;
mod offboarding;
mod report;
mod retention;
mod root_rotation;
mod rotation;
mod tenant_policy;

/// A store whose errors are counted.
pub(super) struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub(super) fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl Metrics {
    /// Counts `result`'s error, if any, as a store error.
    fn counted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.store_failed(error);
        }
        result
    }

    /// Counts `result`'s error, if any, as a store error and a failed audit write.
    fn counted_audit<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.audit_write_failed(error);
        }
        self.counted(result)
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn begin_write(&self) -> Result<Box<dyn WriteTx>, StoreError> {
        let inner = self.metrics.counted(self.inner.begin_write().await)?;
        Ok(Box::new(MeteredTx { metrics: self.metrics.clone(), holds_entry: false, inner }))
    }

    async fn begin_read(&self) -> Result<Box<dyn ReadTx>, StoreError> {
        let inner = self.metrics.counted(self.inner.begin_read().await)?;
        Ok(Box::new(MeteredTx { metrics: self.metrics.clone(), holds_entry: false, inner }))
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.metrics.counted(self.inner.ping().await)
    }

    async fn settle_deletions(&self) -> Result<bool, StoreError> {
        self.metrics.counted(self.inner.settle_deletions().await)
    }

    fn pools(&self) -> Vec<PoolUsage> {
        self.inner.pools()
    }
}

/// A transaction (read or write) whose errors are counted.
struct MeteredTx<T: ?Sized> {
    metrics: Arc<Metrics>,
    /// Whether an audit entry was inserted: its commit is then an audit write.
    holds_entry: bool,
    inner: Box<T>,
}

#[async_trait]
impl<T: ReadTx + ?Sized> ReadTx for MeteredTx<T> {
    async fn system_key(&mut self, name: &str) -> Result<Option<WrappedKey>, StoreError> {
        let result = self.inner.system_key(name).await;
        self.metrics.counted(result)
    }

    async fn tenant(&mut self, tenant: &TenantId) -> Result<Option<StoredTenant>, StoreError> {
        let result = self.inner.tenant(tenant).await;
        self.metrics.counted(result)
    }

    async fn records_by_blind_index(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        blind_indexes: &[BlindIndex],
    ) -> Result<Vec<Option<RecordRow>>, StoreError> {
        let result = self.inner.records_by_blind_index(tenant, format, blind_indexes).await;
        self.metrics.counted(result)
    }

    async fn record(&mut self, tenant: &TenantId, token: &Token) -> Result<Option<RecordRow>, StoreError> {
        let result = self.inner.record(tenant, token).await;
        self.metrics.counted(result)
    }

    async fn existing_tokens(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<HashSet<String>, StoreError> {
        let result = self.inner.existing_tokens(tenant, tokens).await;
        self.metrics.counted(result)
    }

    async fn sealed_records(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let result = self.inner.sealed_records(tenant, tokens).await;
        self.metrics.counted(result)
    }

    async fn job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        let result = self.inner.job(job_id).await;
        self.metrics.counted(result)
    }

    async fn job_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let result = self.inner.job_ids(after, limit).await;
        self.metrics.counted(result)
    }

    async fn record_rows(
        &mut self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<(String, RecordRow)>, StoreError> {
        let result = self.inner.record_rows(after, limit).await;
        self.metrics.counted(result)
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        let result = self.inner.audit_head().await;
        self.metrics.counted(result)
    }

    async fn audit_entries(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let result = self.inner.audit_entries(filter).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> WriteTx for MeteredTx<T> {
    async fn insert_system_key(&mut self, name: &str, key: &WrappedKey, created_at: i64) -> Result<bool, StoreError> {
        let result = self.inner.insert_system_key(name, key, created_at).await;
        self.metrics.counted(result)
    }

    async fn insert_tenant(&mut self, tenant: &NewTenant) -> Result<bool, StoreError> {
        let result = self.inner.insert_tenant(tenant).await;
        self.metrics.counted(result)
    }

    async fn insert_records(
        &mut self,
        tenant: &TenantId,
        format: TokenFormat,
        records: &[NewRecord],
        created_at: i64,
    ) -> Result<(), StoreError> {
        let result = self.inner.insert_records(tenant, format, records, created_at).await;
        self.metrics.counted(result)
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<(), StoreError> {
        let result = self.inner.insert_job(job).await;
        self.metrics.counted(result)
    }

    async fn lock_job(&mut self, job_id: &JobId) -> Result<Option<JobRow>, StoreError> {
        let result = self.inner.lock_job(job_id).await;
        self.metrics.counted(result)
    }

    async fn set_job_earlier_approvals(&mut self, job_id: &JobId, approvals: &str) -> Result<(), StoreError> {
        let result = self.inner.set_job_earlier_approvals(job_id, approvals).await;
        self.metrics.counted(result)
    }

    async fn set_job_approved(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        let result = self.inner.set_job_approved(job_id, by, at).await;
        self.metrics.counted(result)
    }

    async fn set_job_cancelled(&mut self, job_id: &JobId, by: &Principal, at: i64) -> Result<(), StoreError> {
        let result = self.inner.set_job_cancelled(job_id, by, at).await;
        self.metrics.counted(result)
    }

    async fn set_job_state(&mut self, job_id: &JobId, state_seq: u64, state_tag: &[u8; 32]) -> Result<(), StoreError> {
        let result = self.inner.set_job_state(job_id, state_seq, state_tag).await;
        self.metrics.counted(result)
    }

    async fn count_releases(&mut self, job_id: &JobId, tokens: &[Token], max: u32) -> Result<u64, StoreError> {
        let result = self.inner.count_releases(job_id, tokens, max).await;
        self.metrics.counted(result)
    }

    async fn lock_chain_head(&mut self) -> Result<ChainHead, StoreError> {
        let result = self.inner.lock_chain_head().await;
        self.metrics.counted_audit(result)
    }

    async fn insert_audit_entry(&mut self, entry: &AuditRecord) -> Result<(), StoreError> {
        let result = self.inner.insert_audit_entry(entry).await;
        self.holds_entry |= result.is_ok();
        self.metrics.counted_audit(result)
    }

    async fn insert_audit_entries(&mut self, entries: &[AuditRecord]) -> Result<(), StoreError> {
        let result = self.inner.insert_audit_entries(entries).await;
        self.holds_entry |= result.is_ok();
        self.metrics.counted_audit(result)
    }

    async fn set_chain_head(&mut self, head: &ChainHead) -> Result<(), StoreError> {
        let result = self.inner.set_chain_head(head).await;
        self.metrics.counted_audit(result)
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let MeteredTx { metrics, holds_entry, inner } = *self;
        let result = inner.commit().await;
        if holds_entry {
            metrics.counted_audit(result)
        } else {
            metrics.counted(result)
        }
    }
}

/// A root key provider whose failures are counted.
pub(super) struct MeteredKeys {
    inner: Arc<dyn RootKeyProvider>,
    metrics: Arc<Metrics>,
}

impl MeteredKeys {
    pub(super) fn new(inner: Arc<dyn RootKeyProvider>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl RootKeyProvider for MeteredKeys {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        let result = self.inner.wrap(key, context);
        if result.is_err() {
            self.metrics.key_provider_failed("wrap");
        }
        result
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        let result = self.inner.unwrap(wrapped, context);
        if result.is_err() {
            self.metrics.key_provider_failed("unwrap");
        }
        result
    }

    fn check(&self) -> Result<(), KeyError> {
        let result = self.inner.check();
        if result.is_err() {
            self.metrics.key_provider_failed("check");
        }
        result
    }
}
