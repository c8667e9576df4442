-- Tenant offboarding (issue 7). A shredded tenant keeps its row, since its
-- filing jobs and audit entries name it, but no key: its wrapped index key
-- is overwritten with nothing and its record keys are deleted. This column
-- says since when, so that every later call for it can be told.
ALTER TABLE tenants ADD COLUMN shredded_at BIGINT;
