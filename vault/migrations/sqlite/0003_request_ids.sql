-- The request id of the call that wrote an entry (`req_` and 26 base32
-- characters), covered by the entry's hash. Empty for entries written
-- before request ids existed and for the vault's own (`mnvault init`).
ALTER TABLE audit_entries ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_entries_request_id ON audit_entries (request_id) WHERE request_id <> '';
