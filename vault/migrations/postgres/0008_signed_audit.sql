-- Signed audit checkpoints (issue 8). An entry's hash is now public
-- (SHA-256 over the previous hash and the digest of its fields) and the
-- vault's MAC of it sits beside it; entries written before keep a NULL MAC
-- and their HMAC hash.
ALTER TABLE audit_entries ADD COLUMN mac BYTEA;

-- Heads of the chain signed by the vault's Ed25519 key: on every release,
-- periodically and on demand. One per position. `signed_form_from`: the
-- first position from which every entry has a MAC, signed with the rest.
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      BYTEA NOT NULL,
    time      BIGINT NOT NULL,
    signed_form_from BIGINT NOT NULL,
    signer    BYTEA NOT NULL,
    signature BYTEA NOT NULL
);

-- The vault's signing keys, public halves: the first, and each later one
-- with the position it signs from and the succession signed by the key it
-- replaced and by itself.
CREATE TABLE signing_keys (
    public_key         BYTEA PRIMARY KEY,
    created_at         BIGINT NOT NULL,
    from_seq           BIGINT NOT NULL,
    previous           BYTEA,
    signed_by_previous BYTEA,
    signed_by_self     BYTEA
);

-- Review (`audit search`, `audit report`): by principal, by operation in a
-- time range, and the refusals.
CREATE INDEX audit_entries_principal ON audit_entries (principal, seq);
CREATE INDEX audit_entries_operation_time ON audit_entries (operation, time);
CREATE INDEX audit_entries_refused ON audit_entries (outcome, seq) WHERE outcome <> 'ok';
