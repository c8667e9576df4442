-- Millions of tokens (issue 11): every index costs bytes per token and work
-- per insert, so each one left is there for a query that needs it. Indexes
-- and constraints change; no table, column or row does, so every row stays
-- as it was.
--
-- records keeps two indexes, each needed: the primary key (tenant, token)
-- answers look-ups by token and pages through records in (tenant, token)
-- order (verification); the unique (tenant, format, blind_index) gives one
-- token per number and answers tokenize's look-up.
--
-- records_key_version was read by no query. A rotation that needs the
-- records of an old version can build a partial index for its run.
DROP INDEX records_key_version;

-- Foreign keys checked by a trigger per inserted row (and a share lock on the
-- parent row, which concurrent writers then share through a multixact): a
-- record is only ever written with its tenant's keys in hand, and an entry's
-- tokens only in the statement that writes the entry, which its hash covers.
-- Tenants and entries are never deleted, so the checks never had anything
-- to catch. Someone who can write the database can now add token rows for
-- an entry not yet written; that entry then fails verification when it is
-- (as any edit of the log does), and `audit verify` names it.
ALTER TABLE records DROP CONSTRAINT records_tenant_fkey;
ALTER TABLE audit_entry_tokens DROP CONSTRAINT audit_entry_tokens_seq_fkey;

-- The primary key (seq, position) stays: pages of entries read their tokens
-- in that order straight from it, and stop reading once a page is full.

-- A token's entries are found by equality only: a hash index keeps a 4-byte
-- hash per row instead of the 30-character token, and its size does not
-- depend on the token's length.
DROP INDEX audit_entry_tokens_token;
CREATE INDEX audit_entry_tokens_token ON audit_entry_tokens USING hash (token);

-- A release adds one to a job token's count: room left on each page lets
-- that update stay on the page (HOT), without a new primary-key entry.
ALTER TABLE filing_job_tokens SET (fillfactor = 50);
