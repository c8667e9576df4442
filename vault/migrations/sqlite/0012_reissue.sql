-- Re-issue collections (issue 12): a number the municipality re-issued goes
-- under the token that held the old one, and the old number stays, under a
-- token of its own, until its retention ends. Both columns are covered by
-- the row's tag; empty for a collection that is not a re-issue.
ALTER TABLE collections ADD COLUMN reissue_token TEXT NOT NULL DEFAULT '';
ALTER TABLE collections ADD COLUMN superseded_token TEXT NOT NULL DEFAULT '';
-- SetRetention finds the numbers a token held before by this index.
CREATE INDEX collections_by_reissue ON collections (tenant, reissue_token) WHERE reissue_token <> '';
