-- Tenant policies (issue 9). A filing job keeps how many persons must
-- approve it (the tenant's policy when it was created) and the approvals
-- given while it still needed more, one "<unix ms> <principal>" line each;
-- approved_by/approved_at stay the approval that completed it. Both are
-- covered by the job's tags; a job of one approval tags as before.
ALTER TABLE filing_jobs ADD COLUMN approvals_required BIGINT NOT NULL DEFAULT 1;
ALTER TABLE filing_jobs ADD COLUMN earlier_approvals TEXT NOT NULL DEFAULT '';

-- A tenant's applied policy, tagged under the vault's state key and bound
-- to the audit entry that recorded its approval. No row: the default policy,
-- unless the audit chain records a change (then the row was deleted).
CREATE TABLE tenant_policies (
    tenant      TEXT PRIMARY KEY REFERENCES tenants (tenant),
    policy      TEXT NOT NULL,
    change_id   TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at BIGINT NOT NULL,
    applied_seq BIGINT NOT NULL,
    tag         BYTEA
);

-- A change one key-admin proposed, waiting for another to approve it.
CREATE TABLE tenant_policy_proposals (
    tenant      TEXT PRIMARY KEY REFERENCES tenants (tenant),
    change_id   TEXT NOT NULL,
    policy      TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    proposed_at BIGINT NOT NULL,
    -- The audit entry that recorded the proposal: only the chain's latest
    -- proposal, not yet applied, may be approved.
    proposed_seq BIGINT NOT NULL,
    tag         BYTEA
);
