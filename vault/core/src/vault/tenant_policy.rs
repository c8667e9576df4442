//! Tenant policies: read, proposed by one key-admin, applied when another
//! person approves. The rules a policy sets are in [`crate::tenant_policy`];
//! this is how a policy is stored and trusted.

use super::{append, commit_audited, VaultCore};
use crate::audit::AuditDraft;
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::{PolicyChangeId, Principal, TenantId};
use crate::mint::draw_policy_change_id;
use crate::store::{PolicyProposalRow, ReadTx, TenantPolicyRow};
use crate::tenant_policy::{AppliedChange, AppliedTenantPolicy, PolicyProposal, TenantPolicy};

impl VaultCore {
    /// The tenant's applied policy and its pending change, for a key-admin
    /// or an auditor of the tenant.
    pub async fn tenant_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
    ) -> Result<(AppliedTenantPolicy, Option<PolicyProposal>), VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin, Role::Auditor], Some(tenant))?;
        self.keyring.tenant_keys(tenant).await?;
        // Under the chain head's lock, as a decision reads it: a read snapshot
        // older than what this process verified would look like a rollback.
        // Rolled back when dropped: nothing is written.
        let mut tx = self.store.begin_write().await?;
        drop(self.caught_up(tx.as_mut()).await?);
        let applied = self.applied_policy(tx.as_mut(), tenant).await?;
        let proposal = self.proposal(tx.as_mut(), tenant).await?;
        Ok((applied, proposal))
    }

    /// Proposes `policy` for the tenant, replacing any change still
    /// pending. It applies only once another key-admin approves it.
    pub async fn propose_tenant_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        policy: TenantPolicy,
        draft: &mut AuditDraft,
    ) -> Result<PolicyProposal, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        self.keyring.tenant_keys(tenant).await?;
        let now = clock::now_ms();
        let proposal = PolicyProposal {
            change_id: draw_policy_change_id(),
            policy,
            proposed_by: caller.clone(),
            proposed_at: now,
        };
        draft.reason = format!("proposed change {}: {}", proposal.change_id, proposal.policy.summary());
        let mut tx = self.store.begin_write().await?;
        drop(self.caught_up(tx.as_mut()).await?);
        // The row names the entry that recorded it: an older proposal put back
        // (from a backup, or one already applied) is not the chain's latest.
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let mut row = PolicyProposalRow {
            tenant: tenant.to_string(),
            change_id: proposal.change_id.to_string(),
            policy: proposal.policy.encode(),
            proposed_by: caller.to_string(),
            proposed_at: now,
            proposed_seq: i64::try_from(entry.seq).map_err(|_| VaultError::Internal)?,
            tag: None,
        };
        row.tag = Some(self.integrity.policy_proposal_tag(&row).to_vec());
        tx.put_policy_proposal(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok(proposal)
    }

    /// Applies the tenant's pending change `change_id`, approved by
    /// `caller`, who must be another person than its proposer.
    pub async fn approve_tenant_policy(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        change_id: &PolicyChangeId,
        draft: &mut AuditDraft,
    ) -> Result<AppliedTenantPolicy, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_write().await?;
        drop(self.caught_up(tx.as_mut()).await?);
        // In the transaction: a shred on another replica is seen whatever its key cache holds.
        super::offboarding::refuse_if_shredded(tx.as_mut(), tenant).await?;
        let proposal = self.proposal(tx.as_mut(), tenant).await?.filter(|p| &p.change_id == change_id);
        let Some(proposal) = proposal else {
            return Err(VaultError::NotFound(format!(
                "tenant \"{tenant}\" has no pending policy change {change_id}; `mnvault policy show` lists the \
                 pending one"
            )));
        };
        if proposal.proposed_by.is_same_person(caller) {
            let person = caller.person();
            return Err(VaultError::PermissionDenied(format!(
                "{person} proposed policy change {change_id}, so {person} cannot approve it, under any certificate; \
                 another key-admin must"
            )));
        }
        let now = clock::now_ms();
        draft.reason =
            format!("applied change {change_id} proposed by {}: {}", proposal.proposed_by, proposal.policy.summary());
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        self.sign_head(tx.as_mut(), &entry, now).await?;
        let mut row = TenantPolicyRow {
            tenant: tenant.to_string(),
            policy: proposal.policy.encode(),
            change_id: change_id.to_string(),
            proposed_by: proposal.proposed_by.to_string(),
            approved_by: caller.to_string(),
            approved_at: now,
            applied_seq: i64::try_from(entry.seq).map_err(|_| VaultError::Internal)?,
            tag: None,
        };
        row.tag = Some(self.integrity.tenant_policy_tag(&row).to_vec());
        tx.put_tenant_policy(&row).await?;
        tx.delete_policy_proposal(tenant).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        let change = AppliedChange {
            change_id: change_id.clone(),
            proposed_by: proposal.proposed_by,
            approved_by: caller.clone(),
            approved_at: now,
        };
        Ok(AppliedTenantPolicy { policy: proposal.policy, change: Some(change) })
    }

    /// The tenant's applied policy, trusted only if its tag verifies and it
    /// is the last change the verified chain records (the watch must be
    /// caught up): a row deleted, or set back to an earlier genuine one, is
    /// tampering, never the laxer default.
    pub(super) async fn applied_policy<R: ReadTx + ?Sized>(
        &self,
        read: &mut R,
        tenant: &TenantId,
    ) -> Result<AppliedTenantPolicy, VaultError> {
        let object = || format!("the policy of tenant \"{tenant}\"");
        let row = read.tenant_policy(tenant).await?;
        let last_change = self.watch.lock().await.policy_changes.get(tenant.as_str()).copied();
        let Some(row) = row else {
            return match last_change {
                None => Ok(AppliedTenantPolicy { policy: TenantPolicy::default(), change: None }),
                Some(seq) => {
                    tracing::error!(%tenant, last_change = seq, "a tenant's policy row is missing");
                    Err(self.integrity.tampered(object()))
                }
            };
        };
        self.integrity.check_tag(&self.integrity.tenant_policy_tag(&row), row.tag.as_deref(), object)?;
        if row.tenant != tenant.as_str() || last_change.is_some_and(|seq| row.applied_seq < seq as i64) {
            tracing::error!(%tenant, applied_seq = row.applied_seq, ?last_change, "a tenant's policy is older than its audit log");
            return Err(self.integrity.tampered(object()));
        }
        let parsed = (|| {
            Some(AppliedTenantPolicy {
                policy: TenantPolicy::decode(&row.policy).ok()?,
                change: Some(AppliedChange {
                    change_id: PolicyChangeId::parse(&row.change_id).ok()?,
                    proposed_by: Principal::parse_recorded(&row.proposed_by).ok()?,
                    approved_by: Principal::parse_recorded(&row.approved_by).ok()?,
                    approved_at: row.approved_at,
                }),
            })
        })();
        parsed.ok_or_else(|| self.integrity.tampered(object()))
    }

    /// The tenant's pending change, if its tag verifies and it is the last
    /// change the verified chain records proposed and not yet applied (the
    /// watch must be caught up).
    async fn proposal<R: ReadTx + ?Sized>(
        &self,
        read: &mut R,
        tenant: &TenantId,
    ) -> Result<Option<PolicyProposal>, VaultError> {
        let Some(row) = read.policy_proposal(tenant).await? else { return Ok(None) };
        let object = || format!("the pending policy change of tenant \"{tenant}\"");
        self.integrity.check_tag(&self.integrity.policy_proposal_tag(&row), row.tag.as_deref(), object)?;
        let (proposed, applied) = {
            let watch = self.watch.lock().await;
            (watch.policy_proposals.get(tenant.as_str()).copied(), watch.policy_changes.get(tenant.as_str()).copied())
        };
        let latest = proposed.is_some_and(|seq| seq as i64 == row.proposed_seq);
        let still_pending = applied.is_none_or(|seq| (seq as i64) < row.proposed_seq);
        if row.tenant != tenant.as_str() || !latest || !still_pending {
            tracing::error!(%tenant, proposed_seq = row.proposed_seq, ?proposed, ?applied,
                "a pending policy change is not the chain's latest proposal");
            return Err(self.integrity.tampered(object()));
        }
        let parsed = (|| {
            Some(PolicyProposal {
                change_id: PolicyChangeId::parse(&row.change_id).ok()?,
                policy: TenantPolicy::decode(&row.policy).ok()?,
                proposed_by: Principal::parse_recorded(&row.proposed_by).ok()?,
                proposed_at: row.proposed_at,
            })
        })();
        parsed.map(Some).ok_or_else(|| self.integrity.tampered(object()))
    }
}
