//! Store steps of tenant policies and the changes proposed to them.

use async_trait::async_trait;

use super::StoreError;
use crate::id::TenantId;

/// A tenant's applied policy as stored, unparsed: the core checks its tag
/// and its place in the audit chain before believing any of it.
#[derive(Debug, Clone)]
pub struct TenantPolicyRow {
    /// The `tenant` column.
    pub tenant: String,
    /// The policy in its stored form ([`crate::tenant_policy::TenantPolicy::encode`]).
    pub policy: String,
    /// The change that applied it.
    pub change_id: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// Who approved it.
    pub approved_by: String,
    /// Unix milliseconds of the approval.
    pub approved_at: i64,
    /// Sequence number of the audit entry that recorded the approval.
    pub applied_seq: i64,
    /// The state tag (absent in a row nobody tagged).
    pub tag: Option<Vec<u8>>,
}

/// A proposed change as stored, unparsed.
#[derive(Debug, Clone)]
pub struct PolicyProposalRow {
    /// The `tenant` column.
    pub tenant: String,
    /// The change identifier.
    pub change_id: String,
    /// The proposed policy in its stored form.
    pub policy: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// Unix milliseconds.
    pub proposed_at: i64,
    /// Sequence number of the audit entry that recorded the proposal.
    pub proposed_seq: i64,
    /// The state tag (absent in a row nobody tagged).
    pub tag: Option<Vec<u8>>,
}

/// Read steps of tenant policies; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait TenantPolicyReadTx: Send {
    /// The tenant's applied policy, if a change was ever applied.
    async fn tenant_policy(&mut self, tenant: &TenantId) -> Result<Option<TenantPolicyRow>, StoreError>;

    /// The tenant's pending change, if any.
    async fn policy_proposal(&mut self, tenant: &TenantId) -> Result<Option<PolicyProposalRow>, StoreError>;
}

/// Write steps of tenant policies; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait TenantPolicyWriteTx: Send {
    /// Stores the tenant's applied policy, replacing the one before.
    async fn put_tenant_policy(&mut self, row: &TenantPolicyRow) -> Result<(), StoreError>;

    /// Stores the tenant's pending change, replacing any before it.
    async fn put_policy_proposal(&mut self, row: &PolicyProposalRow) -> Result<(), StoreError>;

    /// Deletes the tenant's pending change, if any.
    async fn delete_policy_proposal(&mut self, tenant: &TenantId) -> Result<(), StoreError>;
}
