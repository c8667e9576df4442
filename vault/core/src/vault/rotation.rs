//! [`super::VaultCore`] operations of tenant key rotation.
//!
//! A tenant's record keys are versions 1, 2, …; the highest seals new
//! records, every other one still opens what it sealed. Tokens and blind
//! indexes never depend on a version, so rotating changes no token.
//!
//! - **Rotate** adds version max+1, wrapped by the root key provider for its
//!   slot. Two rotations racing (two replicas' schedules) add it once: the
//!   second finds the version taken and does nothing.
//! - **Rewrap** seals records under an older version again under the
//!   primary, a batch per call, each batch its own transaction and audit
//!   entry. Records are read, opened and sealed outside the write
//!   transaction; a row is written only if it is still exactly what was
//!   read (token, version and tag), so a concurrent rewrap, purge or shred
//!   is never undone. The caller walks the tenant with the cursor each
//!   batch returns; an interrupted walk just starts again from the first
//!   record, and finds only what is left.
//! - **Retire** deletes a version no record uses, that is not primary, and
//!   whose successor has been primary for longer than a day, the longest
//!   key cache any replica may keep ([`MAX_KEY_CACHE_TTL`]): a replica whose
//!   cache predates the rotation may seal under it until then, whatever this
//!   vault's own `keys.cache_ttl_ms` says.

use std::time::Duration;

use mnvault_keys::{sealed_key_version, KeyMaterial, WrapContext};

use super::{append, commit_audited, VaultCore};
use crate::audit::{AuditDraft, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::{Principal, TenantId, Token};
use crate::keyring::MAX_KEY_CACHE_TTL;
use crate::store::{KeyVersionRow, RewrapScan, RewrappedRecord};

/// Records one rewrap call seals again when the caller names no size.
pub const DEFAULT_REWRAP_BATCH: u32 = 1_000;

/// Records one rewrap call seals again at most: bounds its memory, its
/// transaction and the time it holds the write lock.
pub const MAX_REWRAP_BATCH: u32 = 10_000;

/// Records one rewrap call looks at, per record it may seal: bounds the
/// work of a call over a stretch of records already rewrapped.
const REWRAP_WINDOW_PER_RECORD: u32 = 10;

/// Tenants one status page shows when the caller names no size.
pub const DEFAULT_STATUS_PAGE: u32 = 20;

/// Tenants one status page shows at most (each costs a count of its records).
pub const MAX_STATUS_PAGE: u32 = 100;

/// Tenants the rotation schedule reads per page.
const SCHEDULE_PAGE: u32 = 1_000;

/// A record-key version added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The new primary version.
    pub version: u32,
    /// The version that was primary before.
    pub previous: u32,
    /// When it was added (Unix milliseconds).
    pub created_at: i64,
}

/// What one rewrap call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapBatch {
    /// The version records were sealed under.
    pub primary: u32,
    /// Records sealed again and written.
    pub rewrapped: u64,
    /// Records changed by someone else between read and write (left as they
    /// now are; a later walk finds them if they still need it).
    pub changed: u64,
    /// Records that failed their integrity check (left alone, logged and counted).
    pub tampered: u64,
    /// Where the next call goes on from; `None`: the walk reached the end.
    pub next: Option<Token>,
}

/// One record-key version and what uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionStatus {
    /// The version.
    pub version: u32,
    /// When it was added (Unix milliseconds).
    pub created_at: i64,
    /// Records sealed under it.
    pub records: u64,
}

/// A tenant's record-key versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyStatus {
    /// The tenant.
    pub tenant: TenantId,
    /// Its versions, ascending; the last is primary.
    pub versions: Vec<KeyVersionStatus>,
}

impl TenantKeyStatus {
    /// The version that seals new records.
    pub fn primary(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// One page of key status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatusPage {
    /// Tenants, in name order.
    pub tenants: Vec<TenantKeyStatus>,
    /// The last tenant of the page when more may follow.
    pub next_after: Option<TenantId>,
}

impl VaultCore {
    /// Adds a record-key version to `tenant`; new records are sealed under
    /// it from now on (on other replicas once their cached keys expire).
    pub async fn rotate_tenant_key(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        draft: &AuditDraft,
    ) -> Result<RotatedKey, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        match self.add_record_key(tenant, None, draft).await? {
            Added::Rotated(rotated) => Ok(rotated),
            Added::NotDue => Err(VaultError::Internal),
            Added::Raced(version) => Err(VaultError::FailedPrecondition(format!(
                "another rotation of tenant \"{tenant}\" added version {version} at the same time; see `mnvault keys \
                 status --tenant {tenant}` before rotating again"
            ))),
        }
    }

    /// Rotates, as `by`, every tenant whose primary record key is `every`
    /// old or older (the vault's schedule); returns what was rotated. A
    /// tenant that fails is logged and skipped; the next check tries again.
    pub async fn rotate_due_tenant_keys(&self, by: &Principal, every: Duration) -> Result<Vec<RotatedKey>, VaultError> {
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        let mut rotated = Vec::new();
        let mut after = String::new();
        loop {
            let mut read = self.store.begin_read().await?;
            let names = read.tenant_ids(&after, SCHEDULE_PAGE).await?;
            let Some(last) = names.last() else { return Ok(rotated) };
            after = last.clone();
            let mut due = Vec::new();
            for name in &names {
                // A name that does not parse is tampering that `verify_state` does not reach; leave it.
                let Ok(tenant) = TenantId::parse(name) else { continue };
                if rotation_due(&read.record_key_versions(&tenant).await?, clock::now_ms(), every_ms) {
                    due.push(tenant);
                }
            }
            drop(read);
            for tenant in due {
                let draft = AuditDraft::by(by, Operation::RotateTenantKey, Some(&tenant));
                match self.add_record_key(&tenant, Some(every_ms), &draft).await {
                    Ok(Added::Rotated(key)) => rotated.push(key),
                    Ok(Added::NotDue | Added::Raced(_)) => {}
                    Err(error) => tracing::warn!(%tenant, %error, "scheduled key rotation failed; tried again later"),
                }
            }
        }
    }

    /// Wraps a new version outside any transaction (the provider may be an
    /// HSM), then adds it in one, if the versions are still those read and,
    /// for the schedule (`due_after_ms`), the primary is still due.
    async fn add_record_key(
        &self,
        tenant: &TenantId,
        due_after_ms: Option<i64>,
        draft: &AuditDraft,
    ) -> Result<Added, VaultError> {
        let read = self.store.begin_read().await?.record_key_versions(tenant).await?;
        let previous = primary_of(&read).ok_or_else(|| tenant_not_found(tenant))?;
        let version = previous.checked_add(1).ok_or_else(|| {
            VaultError::FailedPrecondition(format!("tenant \"{tenant}\" has used every record-key version"))
        })?;
        let wrapped = self
            .keyring
            .provider()
            .wrap(&KeyMaterial::generate(), &WrapContext::TenantRecordKey { tenant: tenant.as_str(), version })
            .map_err(|error| {
                tracing::error!(%tenant, %error, "cannot wrap a new record key");
                VaultError::Unavailable(
                    "the root key provider could not wrap the new key; nothing was changed, retry shortly".into(),
                )
            })?;
        let mut tx = self.store.begin_write().await?;
        let now = clock::now_ms();
        let locked = tx.lock_record_key_versions(tenant).await?;
        if let Some(every_ms) = due_after_ms {
            if !rotation_due(&locked, now, every_ms) {
                return Ok(Added::NotDue);
            }
        }
        let current = primary_of(&locked).ok_or_else(|| tenant_not_found(tenant))?;
        // A version deleted from the database must not be added again as if new.
        self.keyring.primary_floor().check(tenant, current)?;
        if current != previous || !tx.insert_record_key(tenant, version, &wrapped, now).await? {
            return Ok(Added::Raced(current.max(version)));
        }
        let draft = AuditDraft { reason: format!("record-key version {version} added"), ..draft.clone() };
        append(tx.as_mut(), &self.audit_key, draft, now).await?;
        commit_audited(tx).await?;
        self.keyring.primary_floor().added(tenant, version);
        self.keyring.forget(tenant);
        Ok(Added::Rotated(RotatedKey { tenant: tenant.clone(), version, previous, created_at: now }))
    }

    /// Seals up to `batch` records of `tenant` under an older version again
    /// under the primary, from after `after` (the previous call's
    /// [`RewrapBatch::next`]) on; one transaction and one audit entry.
    pub async fn rewrap_tenant_records(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        batch: u32,
        after: Option<&Token>,
        draft: &AuditDraft,
    ) -> Result<RewrapBatch, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        let batch = rewrap_batch_size(batch)?;
        let mut read = self.store.begin_read().await?;
        let primary = primary_of(&read.record_key_versions(tenant).await?).ok_or_else(|| tenant_not_found(tenant))?;
        let scan = read.records_to_rewrap(tenant, after, primary, batch * REWRAP_WINDOW_PER_RECORD, batch).await?;
        drop(read);
        let next = rewrap_cursor(&scan, batch);
        let versions = scan.records.iter().filter_map(|(_, sealed)| sealed_key_version(sealed).ok());
        let keys = self.keyring.tenant_keys_with(tenant, versions.chain([primary])).await?;
        if !keys.versions().contains(&primary) {
            tracing::error!(%tenant, primary, "the tenant's primary record key is not among its keys");
            return Err(VaultError::Internal);
        }
        let mut tampered = 0;
        let mut rewrapped = Vec::with_capacity(scan.records.len());
        for (row, sealed) in &scan.records {
            let Ok(record) = self.integrity.check_record(tenant, row, None) else {
                tampered += 1;
                continue;
            };
            let opened = (sealed_key_version(sealed).ok() == Some(record.key_version))
                .then(|| keys.open(record.token.as_str(), sealed).ok())
                .flatten();
            let Some(plain) = opened else {
                tracing::error!(token = %record.token, "a stored record does not open; left as it is");
                self.integrity.tampered(format!("the record for token {}", record.token));
                tampered += 1;
                continue;
            };
            let sealed = keys.seal_with_version(primary, record.token.as_str(), &plain).map_err(|error| {
                tracing::error!(%error, "sealing failed");
                VaultError::Internal
            })?;
            drop(plain);
            let tag = self.integrity.record_tag(
                tenant,
                &record.token,
                record.format,
                &row.blind_index,
                primary,
                record.created_at,
            );
            rewrapped.push(RewrappedRecord {
                token: record.token,
                old_version: record.key_version,
                old_tag: row.tag.clone().unwrap_or_default(),
                key_version: primary,
                sealed,
                tag,
            });
        }
        let mut tx = self.store.begin_write().await?;
        let written = if rewrapped.is_empty() { 0 } else { tx.rewrap_records(tenant, &rewrapped).await? };
        let changed = rewrapped.len() as u64 - written.min(rewrapped.len() as u64);
        let mut draft = draft.clone();
        draft.record_count = written;
        draft.reason = format!("re-sealed under record-key version {primary}");
        if changed > 0 || tampered > 0 {
            draft.reason.push_str(&format!("; {changed} changed meanwhile, {tampered} failed their integrity check"));
        }
        append(tx.as_mut(), &self.audit_key, draft, clock::now_ms()).await?;
        commit_audited(tx).await?;
        Ok(RewrapBatch { primary, rewrapped: written, changed, tampered, next })
    }

    /// Each record-key version of `tenant` (or of every tenant, a page from
    /// after `after`, when none is named), its age and how many records use it.
    pub async fn key_status(
        &self,
        caller: &Principal,
        tenant: Option<&TenantId>,
        after: Option<&TenantId>,
        page: u32,
    ) -> Result<KeyStatusPage, VaultError> {
        let policy = self.policy();
        policy.require(caller, &[Role::KeyAdmin], tenant)?;
        if tenant.is_none() && !policy.covers_all_tenants(caller) {
            return Err(VaultError::PermissionDenied(format!(
                "principal {caller} may act only on some tenants; name one"
            )));
        }
        let page = match page {
            0 => DEFAULT_STATUS_PAGE,
            page if page > MAX_STATUS_PAGE => {
                return Err(VaultError::InvalidArgument(format!(
                    "page_size {page} is more than the {MAX_STATUS_PAGE} tenants one status page shows"
                )))
            }
            page => page,
        };
        let mut read = self.store.begin_read().await?;
        let names = match tenant {
            Some(tenant) => vec![tenant.to_string()],
            None => read.tenant_ids(after.map_or("", TenantId::as_str), page).await?,
        };
        let listed = tenant.is_none();
        let mut tenants = Vec::with_capacity(names.len());
        for name in &names {
            let Ok(tenant) = TenantId::parse(name) else { continue };
            let versions = read.record_key_versions(&tenant).await?;
            if versions.is_empty() {
                // A shredded tenant keeps its row but has no keys: left out of a
                // listing (which must go on past it), named when asked for alone.
                match (listed, read.tenant_shredded_at(&tenant).await?) {
                    (true, _) => continue,
                    (false, Some(at)) => return Err(crate::offboarding::shredded(&tenant, at)),
                    (false, None) => return Err(tenant_not_found(&tenant)),
                }
            }
            let counts = read.records_per_key_version(&tenant).await?;
            tenants.push(TenantKeyStatus { tenant, versions: key_version_status(&versions, &counts) });
        }
        let next_after = match tenant {
            None if names.len() == page as usize => names.last().and_then(|name| TenantId::parse(name).ok()),
            _ => None,
        };
        Ok(KeyStatusPage { tenants, next_after })
    }

    /// Deletes record-key version `version` of `tenant`: refused while it is
    /// primary, while a record uses it, or until its successor has been
    /// primary for longer than [`MAX_KEY_CACHE_TTL`]. Returns the versions left.
    pub async fn retire_key_version(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        version: u32,
        draft: &AuditDraft,
    ) -> Result<Vec<u32>, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        let mut tx = self.store.begin_write().await?;
        let versions = tx.lock_record_key_versions(tenant).await?;
        check_not_primary(tenant, &versions, version)?;
        if tx.any_record_under_version(tenant, version).await? {
            return Err(VaultError::FailedPrecondition(format!(
                "record-key version {version} of tenant \"{tenant}\" still seals records (a version is retired only \
                 once no record uses it); run `mnvault keys rewrap --tenant {tenant}` first"
            )));
        }
        let now = clock::now_ms();
        // Not this vault's own ttl: a replica may be configured with a longer one.
        let ttl_ms = i64::try_from(MAX_KEY_CACHE_TTL.as_millis()).unwrap_or(i64::MAX);
        check_successor_age(tenant, &versions, version, now, ttl_ms)?;
        if !tx.delete_record_key(tenant, version).await? {
            return Err(VaultError::Internal);
        }
        let draft = AuditDraft { reason: format!("record-key version {version} retired"), ..draft.clone() };
        append(tx.as_mut(), &self.audit_key, draft, now).await?;
        commit_audited(tx).await?;
        self.keyring.forget(tenant);
        Ok(versions.iter().map(|v| v.version).filter(|v| *v != version).collect())
    }
}

/// How adding a version ended.
enum Added {
    Rotated(RotatedKey),
    /// The schedule's check: not due (any more).
    NotDue,
    /// Someone else added a version meanwhile (the newest one now).
    Raced(u32),
}

fn tenant_not_found(tenant: &TenantId) -> VaultError {
    VaultError::NotFound(format!("tenant \"{tenant}\" does not exist"))
}

/// The primary version: the highest.
fn primary_of(versions: &[KeyVersionRow]) -> Option<u32> {
    versions.iter().map(|v| v.version).max()
}

/// Whether the primary version is `every_ms` old or older at `now`.
fn rotation_due(versions: &[KeyVersionRow], now: i64, every_ms: i64) -> bool {
    let primary = versions.iter().max_by_key(|v| v.version);
    primary.is_some_and(|primary| now.saturating_sub(primary.created_at) >= every_ms)
}

/// The batch size asked for, defaulted and bounded.
fn rewrap_batch_size(batch: u32) -> Result<u32, VaultError> {
    match batch {
        0 => Ok(DEFAULT_REWRAP_BATCH),
        batch if batch > MAX_REWRAP_BATCH => Err(VaultError::InvalidArgument(format!(
            "batch_size {batch} is more than the {MAX_REWRAP_BATCH} records one rewrap call seals; ask for fewer"
        ))),
        batch => Ok(batch),
    }
}

/// Where the walk goes on: after the last record returned when the batch is
/// full (the window may hold more), else after the window.
fn rewrap_cursor(scan: &RewrapScan, batch: u32) -> Option<Token> {
    let last = if scan.records.len() >= batch as usize {
        scan.records.last().map(|(row, _)| row.token.as_str())
    } else {
        scan.window_end.as_deref()
    };
    // A token column that does not parse ends the walk here; `verify_state` names the row.
    last.and_then(|token| Token::parse(token).ok())
}

/// Each version with its record count (0 when none).
fn key_version_status(versions: &[KeyVersionRow], counts: &[(u32, u64)]) -> Vec<KeyVersionStatus> {
    versions
        .iter()
        .map(|v| KeyVersionStatus {
            version: v.version,
            created_at: v.created_at,
            records: counts.iter().filter(|(version, _)| *version == v.version).map(|(_, count)| count).sum(),
        })
        .collect()
}

/// Refuses a version the tenant lacks, or its primary.
fn check_not_primary(tenant: &TenantId, versions: &[KeyVersionRow], version: u32) -> Result<(), VaultError> {
    let primary = primary_of(versions).ok_or_else(|| tenant_not_found(tenant))?;
    if !versions.iter().any(|v| v.version == version) {
        return Err(VaultError::NotFound(format!("tenant \"{tenant}\" has no record-key version {version}")));
    }
    if version == primary {
        return Err(VaultError::FailedPrecondition(format!(
            "record-key version {version} is the primary of tenant \"{tenant}\" and seals new records (the primary \
             is never retired); rotate first"
        )));
    }
    Ok(())
}

/// Refuses until the version after `version` has been primary for longer
/// than `ttl_ms`: until then a replica whose keys were cached before it
/// was added may still seal new records under `version`.
fn check_successor_age(
    tenant: &TenantId,
    versions: &[KeyVersionRow],
    version: u32,
    now: i64,
    ttl_ms: i64,
) -> Result<(), VaultError> {
    let Some(successor) = versions.iter().filter(|v| v.version > version).min_by_key(|v| v.version) else {
        return Err(VaultError::Internal);
    };
    let primary_for = now.saturating_sub(successor.created_at);
    if primary_for <= ttl_ms {
        let wait_s = (ttl_ms - primary_for) / 1_000 + 1;
        return Err(VaultError::FailedPrecondition(format!(
            "record-key version {} replaced version {version} of tenant \"{tenant}\" {} ms ago, not longer than \
             {ttl_ms} ms, the longest keys.cache_ttl_ms a replica may have: replicas with keys cached before may \
             still seal under version {version}; retry in {wait_s} s",
            successor.version, primary_for
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordRow;

    fn versions(rows: &[(u32, i64)]) -> Vec<KeyVersionRow> {
        rows.iter().map(|&(version, created_at)| KeyVersionRow { version, created_at }).collect()
    }

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn precondition(result: Result<(), VaultError>) -> String {
        match result {
            Err(VaultError::FailedPrecondition(message)) => message,
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }

    #[test]
    fn the_primary_is_never_retired_and_an_unknown_version_is_not_found() {
        let rows = versions(&[(1, 0), (2, 10)]);
        assert!(precondition(check_not_primary(&acme(), &rows, 2)).contains("primary"));
        assert!(check_not_primary(&acme(), &rows, 1).is_ok());
        assert!(matches!(check_not_primary(&acme(), &rows, 3), Err(VaultError::NotFound(_))));
        assert!(matches!(check_not_primary(&acme(), &[], 1), Err(VaultError::NotFound(_))));
    }

    #[test]
    fn a_version_is_retired_only_once_its_successor_is_older_than_the_cache_ttl() {
        // v2 added at 1,000; v3 at 5,000; ttl 2,000.
        let rows = versions(&[(1, 0), (2, 1_000), (3, 5_000)]);
        let message = precondition(check_successor_age(&acme(), &rows, 1, 3_000, 2_000));
        assert!(message.contains("keys.cache_ttl_ms"), "{message}");
        assert!(check_successor_age(&acme(), &rows, 1, 3_001, 2_000).is_ok());
        // v2's successor is v3, not the primary by accident of order.
        assert!(check_successor_age(&acme(), &rows, 2, 6_000, 2_000).is_err());
        assert!(check_successor_age(&acme(), &rows, 2, 7_001, 2_000).is_ok());
    }

    #[test]
    fn rotation_is_due_when_the_primary_is_old_enough() {
        let rows = versions(&[(1, 0), (2, 1_000)]);
        assert!(!rotation_due(&rows, 1_999, 1_000));
        assert!(rotation_due(&rows, 2_000, 1_000));
        assert!(!rotation_due(&[], 5_000, 1_000));
    }

    #[test]
    fn batch_sizes_default_and_are_bounded() {
        assert_eq!(rewrap_batch_size(0).unwrap(), DEFAULT_REWRAP_BATCH);
        assert_eq!(rewrap_batch_size(MAX_REWRAP_BATCH).unwrap(), MAX_REWRAP_BATCH);
        assert!(matches!(rewrap_batch_size(MAX_REWRAP_BATCH + 1), Err(VaultError::InvalidArgument(_))));
    }

    fn row(token: &str) -> (RecordRow, Vec<u8>) {
        let row = RecordRow {
            token: token.into(),
            format: "opaque".into(),
            blind_index: vec![],
            key_version: 1,
            created_at: 0,
            tag: None,
        };
        (row, vec![])
    }

    #[test]
    fn the_cursor_follows_a_full_batch_or_else_the_window() {
        let a = "mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa";
        let b = "mnt_bbbbbbbbbbbbbbbbbbbbbbbbbb";
        let z = "mnt_zzzzzzzzzzzzzzzzzzzzzzzzzz";
        let full = RewrapScan { records: vec![row(a), row(b)], window_end: Some(z.into()) };
        assert_eq!(rewrap_cursor(&full, 2).unwrap().as_str(), b);
        assert_eq!(rewrap_cursor(&full, 3).unwrap().as_str(), z);
        let end = RewrapScan { records: vec![row(a)], window_end: None };
        assert_eq!(rewrap_cursor(&end, 3), None);
    }

    #[test]
    fn status_counts_every_version_and_zero_for_unused_ones() {
        let rows = versions(&[(1, 0), (2, 10), (3, 20)]);
        let status = key_version_status(&rows, &[(1, 5), (3, 7), (9, 1)]);
        let counts: Vec<(u32, u64)> = status.iter().map(|v| (v.version, v.records)).collect();
        assert_eq!(counts, [(1, 5), (2, 0), (3, 7)]);
    }
}
