-- Retention (issue 7): each token's deletion date and legal hold, and what is
-- kept of a token once its number was purged. Dates are calendar dates in
-- Japan as the integer yyyymmdd. Every row carries a state tag under the
-- vault's state key (mnvault_core::vault::retention): the database alone
-- cannot move a date, lift a hold or forge a deletion's when and why.

CREATE TABLE retention (
    tenant     TEXT NOT NULL,
    token      TEXT NOT NULL,
    -- Document class identifiers, sorted, joined by ','.
    classes    TEXT NOT NULL,
    end_date   INTEGER,
    delete_on  INTEGER NOT NULL,
    legal_hold INTEGER NOT NULL,
    set_at     INTEGER NOT NULL,
    -- The audit entry of the SetRetention that wrote the row.
    set_seq    INTEGER NOT NULL,
    tag        BLOB NOT NULL,
    PRIMARY KEY (tenant, token)
) WITHOUT ROWID;
CREATE INDEX retention_due ON retention (delete_on);

-- No number and no blind index: only the token, when and why.
CREATE TABLE tombstones (
    tenant     TEXT NOT NULL,
    token      TEXT NOT NULL,
    deleted_at INTEGER NOT NULL,
    classes    TEXT NOT NULL,
    end_date   INTEGER,
    delete_on  INTEGER NOT NULL,
    -- The retention.delete audit entry that recorded the deletion.
    audit_seq  INTEGER NOT NULL,
    tag        BLOB NOT NULL,
    PRIMARY KEY (tenant, token)
) WITHOUT ROWID;
CREATE INDEX tombstones_time ON tombstones (tenant, deleted_at, token);
