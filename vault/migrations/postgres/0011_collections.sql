-- Collections (issue 12): an employee types their own number on the vault's
-- page. The link's secret is never stored, only its keyed hash under the
-- state key; every column is covered by the row's tag.
CREATE TABLE collections (
    collection_id TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (tenant),
    link_hash     BYTEA NOT NULL UNIQUE,
    reference     TEXT NOT NULL,
    relations     TEXT NOT NULL,
    purposes      TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    state         TEXT NOT NULL,
    settled_at    BIGINT NOT NULL,
    -- Space-separated tokens, one per number asked for, once submitted.
    tokens        TEXT NOT NULL,
    -- The audit entry that recorded this state (create, submit, cancel,
    -- expire): a row put back from before a later change is refused.
    changed_seq   BIGINT NOT NULL,
    tag           BYTEA
);
CREATE INDEX collections_by_tenant ON collections (tenant, collection_id);
