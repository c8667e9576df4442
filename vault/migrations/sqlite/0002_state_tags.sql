-- State tags (see mnvault_core::integrity): MACs under a key the database
-- does not hold, over what decides a release and over a record's binding to
-- its token and blind index. A row without a tag is refused, never trusted.
ALTER TABLE records ADD COLUMN tag BLOB;
ALTER TABLE filing_jobs ADD COLUMN terms_tag BLOB;
ALTER TABLE filing_jobs ADD COLUMN state_tag BLOB;
-- Sequence number of the audit entry that recorded the job's last change.
ALTER TABLE filing_jobs ADD COLUMN state_seq INTEGER NOT NULL DEFAULT 0;
