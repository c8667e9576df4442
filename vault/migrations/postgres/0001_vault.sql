-- mnvault schema, PostgreSQL flavour: the same tables, columns, constraints
-- and indexes as the SQLite flavour. Times are Unix milliseconds (UTC).
-- No column ever holds a plaintext number: records hold only sealed
-- (AES-256-GCM) bytes and a keyed blind index.
--
-- Every integer the vault binds or reads is BIGINT, so it maps to one Rust
-- type (i64) without casts.

CREATE TABLE tenants (
    tenant            TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    -- The tenant's blind-index key, wrapped by the root key. Never rotated:
    -- tokens must not depend on a key version.
    index_key_wrapped BYTEA NOT NULL
);

CREATE TABLE tenant_record_keys (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    version     BIGINT NOT NULL CHECK (version > 0),
    wrapped_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, version)
);

-- One row per token. The same number has one token per format in a tenant,
-- enforced by the unique blind index, so concurrent writers cannot create two:
-- an INSERT ... ON CONFLICT DO NOTHING waits for a concurrent inserter of the
-- same index, then skips.
CREATE TABLE records (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    token       TEXT NOT NULL,
    format      TEXT NOT NULL,
    blind_index BYTEA NOT NULL,
    key_version BIGINT NOT NULL,
    sealed      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, token),
    UNIQUE (tenant, format, blind_index)
);
CREATE INDEX records_key_version ON records (tenant, key_version);

CREATE TABLE filing_jobs (
    job_id                 TEXT PRIMARY KEY,
    tenant                 TEXT NOT NULL REFERENCES tenants (tenant),
    purpose                TEXT NOT NULL,
    note                   TEXT NOT NULL,
    max_releases_per_token BIGINT NOT NULL CHECK (max_releases_per_token > 0),
    created_by             TEXT NOT NULL,
    created_at             BIGINT NOT NULL,
    expires_at             BIGINT NOT NULL,
    approved_by            TEXT,
    approved_at            BIGINT,
    cancelled_by           TEXT,
    cancelled_at           BIGINT
);
CREATE INDEX filing_jobs_tenant ON filing_jobs (tenant, created_at);

CREATE TABLE filing_job_tokens (
    job_id   TEXT NOT NULL REFERENCES filing_jobs (job_id),
    position BIGINT NOT NULL,
    token    TEXT NOT NULL,
    releases BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, token)
);

-- Keys of the vault itself (the audit-chain key), wrapped by the root key.
CREATE TABLE system_keys (
    name        TEXT PRIMARY KEY,
    wrapped_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- The head of the audit chain: a single row that every append locks
-- (SELECT ... FOR UPDATE) and updates, so appends are serialised even with
-- several replicas, and the chain cannot fork.
CREATE TABLE audit_chain_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- seq is assigned by the chain (head + 1), never by a sequence.
CREATE TABLE audit_entries (
    seq          BIGINT PRIMARY KEY,
    time         BIGINT NOT NULL,
    principal    TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    operation    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    record_count BIGINT NOT NULL,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL
);
CREATE INDEX audit_entries_time ON audit_entries (time);
CREATE INDEX audit_entries_tenant_time ON audit_entries (tenant, time);
CREATE INDEX audit_entries_job ON audit_entries (job_id) WHERE job_id <> '';

-- Tokens an entry names, in order; covered by the entry's hash.
CREATE TABLE audit_entry_tokens (
    seq      BIGINT NOT NULL REFERENCES audit_entries (seq),
    position BIGINT NOT NULL,
    token    TEXT NOT NULL,
    PRIMARY KEY (seq, position)
);
CREATE INDEX audit_entry_tokens_token ON audit_entry_tokens (token, seq);
