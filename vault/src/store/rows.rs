//! Rows both stores read alike, decoded once for either backend: a value of
//! the wrong type or length (a database writer's edit) is `Corrupt`, never
//! a panic.

use mnvault_core::audit::checkpoint::{SignedCheckpoint, SigningKeyRecord};
use mnvault_core::id::TenantId;
use mnvault_core::store::{CollectionRow, NewRecord, PolicyProposalRow, StoreError, TenantPolicyRow};
use mnvault_keys::PublicKey;
use sqlx::{ColumnIndex, Decode, Row, Type};

/// Column `column` of `row`, or `Corrupt` naming `what`.
pub(super) fn column<'r, R, T>(row: &'r R, column: &str, what: &'static str) -> Result<T, StoreError>
where
    R: Row,
    T: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    row.try_get(column).map_err(|_| StoreError::Corrupt { what })
}

fn fixed<const N: usize>(bytes: Vec<u8>, what: &'static str) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt { what })
}

/// A count or position read as `i64`, or `Corrupt` naming `what` when negative.
pub(super) fn position(value: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

/// A row of `audit_checkpoints`.
pub(crate) fn checkpoint<'r, R>(row: &'r R) -> Result<SignedCheckpoint, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(SignedCheckpoint {
        seq: position(column(row, "seq", "audit_checkpoints.seq")?, "audit_checkpoints.seq")?,
        hash: fixed(column(row, "hash", "audit_checkpoints.hash")?, "audit_checkpoints.hash")?,
        time_ms: column(row, "time", "audit_checkpoints.time")?,
        signed_form_from: position(
            column(row, "signed_form_from", "audit_checkpoints.signed_form_from")?,
            "audit_checkpoints.signed_form_from",
        )?,
        signer: PublicKey::from_bytes(fixed(
            column(row, "signer", "audit_checkpoints.signer")?,
            "audit_checkpoints.signer",
        )?),
        signature: fixed(column(row, "signature", "audit_checkpoints.signature")?, "audit_checkpoints.signature")?,
    })
}

/// A row of `signing_keys`.
pub(crate) fn signing_key<'r, R>(row: &'r R) -> Result<SigningKeyRecord, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    let optional = |name: &str, what: &'static str| -> Result<Option<Vec<u8>>, StoreError> { column(row, name, what) };
    Ok(SigningKeyRecord {
        public_key: PublicKey::from_bytes(fixed(
            column(row, "public_key", "signing_keys.public_key")?,
            "signing_keys.public_key",
        )?),
        created_at_ms: column(row, "created_at", "signing_keys.created_at")?,
        from_seq: position(column(row, "from_seq", "signing_keys.from_seq")?, "signing_keys.from_seq")?,
        previous: optional("previous", "signing_keys.previous")?
            .map(|bytes| fixed(bytes, "signing_keys.previous").map(PublicKey::from_bytes))
            .transpose()?,
        signed_by_previous: optional("signed_by_previous", "signing_keys.signed_by_previous")?
            .map(|bytes| fixed(bytes, "signing_keys.signed_by_previous"))
            .transpose()?,
        signed_by_self: optional("signed_by_self", "signing_keys.signed_by_self")?
            .map(|bytes| fixed(bytes, "signing_keys.signed_by_self"))
            .transpose()?,
    })
}

/// A row of `tenant_policies`.
pub(crate) fn tenant_policy<'r, R>(row: &'r R) -> Result<TenantPolicyRow, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(TenantPolicyRow {
        tenant: column(row, "tenant", "tenant_policies.tenant")?,
        policy: column(row, "policy", "tenant_policies.policy")?,
        change_id: column(row, "change_id", "tenant_policies.change_id")?,
        proposed_by: column(row, "proposed_by", "tenant_policies.proposed_by")?,
        approved_by: column(row, "approved_by", "tenant_policies.approved_by")?,
        approved_at: column(row, "approved_at", "tenant_policies.approved_at")?,
        applied_seq: column(row, "applied_seq", "tenant_policies.applied_seq")?,
        tag: column(row, "tag", "tenant_policies.tag")?,
    })
}

/// A row of `tenant_policy_proposals`.
pub(crate) fn policy_proposal<'r, R>(row: &'r R) -> Result<PolicyProposalRow, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(PolicyProposalRow {
        tenant: column(row, "tenant", "tenant_policy_proposals.tenant")?,
        change_id: column(row, "change_id", "tenant_policy_proposals.change_id")?,
        policy: column(row, "policy", "tenant_policy_proposals.policy")?,
        proposed_by: column(row, "proposed_by", "tenant_policy_proposals.proposed_by")?,
        proposed_at: column(row, "proposed_at", "tenant_policy_proposals.proposed_at")?,
        proposed_seq: column(row, "proposed_seq", "tenant_policy_proposals.proposed_seq")?,
        tag: column(row, "tag", "tenant_policy_proposals.tag")?,
    })
}

/// A row of `collections`.
pub(crate) fn collection<'r, R>(row: &'r R) -> Result<CollectionRow, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(CollectionRow {
        collection_id: column(row, "collection_id", "collections.collection_id")?,
        tenant: column(row, "tenant", "collections.tenant")?,
        link_hash: column(row, "link_hash", "collections.link_hash")?,
        reference: column(row, "reference", "collections.reference")?,
        relations: column(row, "relations", "collections.relations")?,
        purposes: column(row, "purposes", "collections.purposes")?,
        created_by: column(row, "created_by", "collections.created_by")?,
        created_at: column(row, "created_at", "collections.created_at")?,
        expires_at: column(row, "expires_at", "collections.expires_at")?,
        state: column(row, "state", "collections.state")?,
        settled_at: column(row, "settled_at", "collections.settled_at")?,
        tokens: column(row, "tokens", "collections.tokens")?,
        reissue_token: column(row, "reissue_token", "collections.reissue_token")?,
        superseded_token: column(row, "superseded_token", "collections.superseded_token")?,
        changed_seq: column(row, "changed_seq", "collections.changed_seq")?,
        tag: column(row, "tag", "collections.tag")?,
    })
}

/// The columns [`collection`] reads, in one place for both backends.
pub(crate) const COLLECTION_COLUMNS: &str = "collection_id, tenant, link_hash, reference, relations, purposes, \
     created_by, created_at, expires_at, state, settled_at, tokens, reissue_token, superseded_token, changed_seq, tag";

/// The statement that inserts `row`, in either backend's placeholders.
pub(crate) fn insert_collection<'args, DB>(row: &CollectionRow) -> sqlx::QueryBuilder<'args, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'args, DB> + Type<DB>,
    i64: sqlx::Encode<'args, DB> + Type<DB>,
    Vec<u8>: sqlx::Encode<'args, DB> + Type<DB>,
    Option<Vec<u8>>: sqlx::Encode<'args, DB> + Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new(format!("INSERT INTO collections ({COLLECTION_COLUMNS}) VALUES ("));
    let mut values = query.separated(", ");
    values.push_bind(row.collection_id.clone());
    values.push_bind(row.tenant.clone());
    values.push_bind(row.link_hash.clone());
    values.push_bind(row.reference.clone());
    values.push_bind(row.relations.clone());
    values.push_bind(row.purposes.clone());
    values.push_bind(row.created_by.clone());
    values.push_bind(row.created_at);
    values.push_bind(row.expires_at);
    values.push_bind(row.state.clone());
    values.push_bind(row.settled_at);
    values.push_bind(row.tokens.clone());
    values.push_bind(row.reissue_token.clone());
    values.push_bind(row.superseded_token.clone());
    values.push_bind(row.changed_seq);
    values.push_bind(row.tag.clone());
    values.push_unseparated(")");
    query
}

/// The statement that settles `row` (state, time, tokens, superseded token, entry, tag), in
/// either backend's placeholders.
pub(crate) fn settle_collection<'args, DB>(row: &CollectionRow) -> sqlx::QueryBuilder<'args, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'args, DB> + Type<DB>,
    i64: sqlx::Encode<'args, DB> + Type<DB>,
    Option<Vec<u8>>: sqlx::Encode<'args, DB> + Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new("UPDATE collections SET state = ");
    query.push_bind(row.state.clone()).push(", settled_at = ").push_bind(row.settled_at);
    query.push(", tokens = ").push_bind(row.tokens.clone());
    query.push(", superseded_token = ").push_bind(row.superseded_token.clone());
    query.push(", changed_seq = ").push_bind(row.changed_seq);
    query
        .push(", tag = ")
        .push_bind(row.tag.clone())
        .push(" WHERE collection_id = ")
        .push_bind(row.collection_id.clone());
    query
}

/// The statement that puts `record` in place of its token's record in
/// `tenant` if that row still has `old_tag`, in either backend's
/// placeholders (a re-issue: another number under the same token).
pub(crate) fn replace_record<'args, DB>(
    tenant: &TenantId,
    old_tag: &[u8],
    record: &NewRecord,
    created_at: i64,
) -> sqlx::QueryBuilder<'args, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'args, DB> + Type<DB>,
    i64: sqlx::Encode<'args, DB> + Type<DB>,
    Vec<u8>: sqlx::Encode<'args, DB> + Type<DB>,
{
    let mut query = sqlx::QueryBuilder::new("UPDATE records SET blind_index = ");
    query.push_bind(record.blind_index.0.to_vec()).push(", key_version = ").push_bind(i64::from(record.key_version));
    query.push(", sealed = ").push_bind(record.sealed.clone()).push(", created_at = ").push_bind(created_at);
    query.push(", tag = ").push_bind(record.tag.to_vec());
    query.push(" WHERE tenant = ").push_bind(tenant.as_str().to_owned());
    query.push(" AND token = ").push_bind(record.token.as_str().to_owned());
    query.push(" AND tag = ").push_bind(old_tag.to_vec());
    query
}
