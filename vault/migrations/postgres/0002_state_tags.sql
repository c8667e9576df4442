-- State tags (see mnvault_core::integrity): MACs under a key the database
-- does not hold, over what decides a release and over a record's binding to
-- its token and blind index. A row without a tag is refused, never trusted.
ALTER TABLE records ADD COLUMN tag BYTEA;
ALTER TABLE filing_jobs ADD COLUMN terms_tag BYTEA;
ALTER TABLE filing_jobs ADD COLUMN state_tag BYTEA;
-- Sequence number of the audit entry that recorded the job's last change.
ALTER TABLE filing_jobs ADD COLUMN state_seq BIGINT NOT NULL DEFAULT 0;
