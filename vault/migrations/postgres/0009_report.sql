-- The incident report (`mnvault audit report`) counts the refused attempts
-- of a time window. The index on (outcome, seq) of the refusals serves a
-- search by position; this one finds a window's refusals by time, and
-- costs a write only for a refused call.
CREATE INDEX audit_entries_refused_time ON audit_entries (time) WHERE outcome <> 'ok';

-- A report's verification starts after the checkpoint signed last before
-- its window: found by the signed time, never by the entries' dates.
CREATE INDEX audit_checkpoints_time ON audit_checkpoints (time);
