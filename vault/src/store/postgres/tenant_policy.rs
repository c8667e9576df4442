//! PostgreSQL steps of tenant policies.

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::id::TenantId;
use mnvault_core::store::{PolicyProposalRow, StoreError, TenantPolicyReadTx, TenantPolicyRow, TenantPolicyWriteTx};
use sqlx::PgConnection;

use super::{classify, PgTx};

#[async_trait]
impl<C> TenantPolicyReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn tenant_policy(&mut self, tenant: &TenantId) -> Result<Option<TenantPolicyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, policy, change_id, proposed_by, approved_by, approved_at, applied_seq, tag \
             FROM tenant_policies WHERE tenant = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.conn())
        .await
        .map_err(classify)?;
        row.as_ref().map(super::super::rows::tenant_policy).transpose()
    }

    async fn policy_proposal(&mut self, tenant: &TenantId) -> Result<Option<PolicyProposalRow>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant, change_id, policy, proposed_by, proposed_at, proposed_seq, tag FROM tenant_policy_proposals \
             WHERE tenant = $1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.conn())
        .await
        .map_err(classify)?;
        row.as_ref().map(super::super::rows::policy_proposal).transpose()
    }
}

#[async_trait]
impl<C> TenantPolicyWriteTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn put_tenant_policy(&mut self, row: &TenantPolicyRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_policies (tenant, policy, change_id, proposed_by, approved_by, approved_at, \
             applied_seq, tag) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant) DO UPDATE SET policy = excluded.policy, \
             change_id = excluded.change_id, proposed_by = excluded.proposed_by, approved_by = excluded.approved_by, \
             approved_at = excluded.approved_at, applied_seq = excluded.applied_seq, tag = excluded.tag",
        )
        .bind(&row.tenant)
        .bind(&row.policy)
        .bind(&row.change_id)
        .bind(&row.proposed_by)
        .bind(&row.approved_by)
        .bind(row.approved_at)
        .bind(row.applied_seq)
        .bind(row.tag.as_deref())
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn put_policy_proposal(&mut self, row: &PolicyProposalRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_policy_proposals (tenant, change_id, policy, proposed_by, proposed_at, proposed_seq, tag) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant) DO UPDATE SET change_id = excluded.change_id, \
             policy = excluded.policy, proposed_by = excluded.proposed_by, proposed_at = excluded.proposed_at, \
             proposed_seq = excluded.proposed_seq, tag = excluded.tag",
        )
        .bind(&row.tenant)
        .bind(&row.change_id)
        .bind(&row.policy)
        .bind(&row.proposed_by)
        .bind(row.proposed_at)
        .bind(row.proposed_seq)
        .bind(row.tag.as_deref())
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn delete_policy_proposal(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM tenant_policy_proposals WHERE tenant = $1")
            .bind(tenant.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }
}
