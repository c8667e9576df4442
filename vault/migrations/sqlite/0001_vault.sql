-- mnvault schema, SQLite flavour. Times are Unix milliseconds (UTC).
-- No column ever holds a plaintext number: records hold only sealed
-- (AES-256-GCM) bytes and a keyed blind index.

CREATE TABLE tenants (
    tenant            TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    -- The tenant's blind-index key, wrapped by the root key. Never rotated:
    -- tokens must not depend on a key version.
    index_key_wrapped BLOB NOT NULL
);

CREATE TABLE tenant_record_keys (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    version     INTEGER NOT NULL CHECK (version > 0),
    wrapped_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, version)
);

-- One row per token. The same number has one token per format in a tenant,
-- enforced by the unique blind index, so concurrent writers cannot create two.
CREATE TABLE records (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    token       TEXT NOT NULL,
    format      TEXT NOT NULL,
    blind_index BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, token),
    UNIQUE (tenant, format, blind_index)
);
CREATE INDEX records_key_version ON records (tenant, key_version);

CREATE TABLE filing_jobs (
    job_id                 TEXT PRIMARY KEY,
    tenant                 TEXT NOT NULL REFERENCES tenants (tenant),
    purpose                TEXT NOT NULL,
    note                   TEXT NOT NULL,
    max_releases_per_token INTEGER NOT NULL CHECK (max_releases_per_token > 0),
    created_by             TEXT NOT NULL,
    created_at             INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    approved_by            TEXT,
    approved_at            INTEGER,
    cancelled_by           TEXT,
    cancelled_at           INTEGER
);
CREATE INDEX filing_jobs_tenant ON filing_jobs (tenant, created_at);

CREATE TABLE filing_job_tokens (
    job_id   TEXT NOT NULL REFERENCES filing_jobs (job_id),
    position INTEGER NOT NULL,
    token    TEXT NOT NULL,
    releases INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, token)
);

-- Keys of the vault itself (the audit-chain key), wrapped by the root key.
CREATE TABLE system_keys (
    name        TEXT PRIMARY KEY,
    wrapped_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The head of the audit chain: a single row that every append updates, so
-- appends are serialised even with several writers.
CREATE TABLE audit_chain_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE audit_entries (
    seq          INTEGER PRIMARY KEY,
    time         INTEGER NOT NULL,
    principal    TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    operation    TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    record_count INTEGER NOT NULL,
    prev_hash    BLOB NOT NULL,
    hash         BLOB NOT NULL
);
CREATE INDEX audit_entries_time ON audit_entries (time);
CREATE INDEX audit_entries_tenant_time ON audit_entries (tenant, time);
CREATE INDEX audit_entries_job ON audit_entries (job_id) WHERE job_id <> '';

-- Tokens an entry names, in order; covered by the entry's hash.
CREATE TABLE audit_entry_tokens (
    seq      INTEGER NOT NULL REFERENCES audit_entries (seq),
    position INTEGER NOT NULL,
    token    TEXT NOT NULL,
    PRIMARY KEY (seq, position)
);
CREATE INDEX audit_entry_tokens_token ON audit_entry_tokens (token, seq);
