-- The tokens an audit entry names, stored once, in the order of their key.
-- As a rowid table each token row was written twice (the table and the
-- automatic index of its primary key); without a rowid the primary key is
-- the table, appended in sequence order like the entries themselves.
CREATE TABLE audit_entry_tokens_0004 (
    seq      INTEGER NOT NULL REFERENCES audit_entries (seq),
    position INTEGER NOT NULL,
    token    TEXT NOT NULL,
    PRIMARY KEY (seq, position)
) WITHOUT ROWID;
INSERT INTO audit_entry_tokens_0004 (seq, position, token)
    SELECT seq, position, token FROM audit_entry_tokens ORDER BY seq, position;
DROP TABLE audit_entry_tokens;
ALTER TABLE audit_entry_tokens_0004 RENAME TO audit_entry_tokens;
-- Finding the entries that name a token (an audit listing filtered by
-- token) needs an index keyed by the token, and tokens are random, so every
-- tokenized batch writes all over it. It is keyed by the token's last eight
-- characters only (40 random bits of an opaque token, 8 digits of a legacy
-- one), which finds a token's entries among millions with few false hits
-- (the query checks the whole token) at half the size, so twice as much of
-- it stays in the page cache. `substr` is a built-in, so the index also
-- reads with `trusted_schema = OFF` (backups are opened untrusted).
CREATE INDEX audit_entry_tokens_token ON audit_entry_tokens (substr(token, -8), seq);

-- records_key_version was read by no query (16 bytes and an index write per
-- token). A rotation that needs the records of an old version can build a
-- partial index for its run.
DROP INDEX records_key_version;
