//! [`super::VaultCore`] operations of retention: setting a token's deletion
//! date and legal hold, purging what is due, and the signed deletion
//! certificate. The rules (classes, dates, holds) are in
//! [`crate::retention`].
//!
//! # What a database writer cannot do
//!
//! - **Move a date or lift a hold.** A retention row carries a state tag
//!   over all its fields and `set_seq`, the audit entry of the
//!   `SetRetention` that wrote it. A purge believes a row only if its tag
//!   verifies *and* `set_seq` is the token's last `SetRetention` in the audit
//!   chain as this process verified it ([`RetentionWatch`], fed by the same
//!   walk as the filing jobs' rollback check), so neither an edited row nor
//!   an earlier genuine one put back is acted on: it is skipped, logged,
//!   counted ([`crate::VaultCore::integrity_failures`]) and named in the
//!   purge's report.
//! - **Forge a deletion's when and why.** Tombstones are tagged too; a
//!   certificate or a refusal message is built only from tombstones whose tag
//!   verifies.
//!
//! What it *can* do: delete rows (a retention row deleted means the number is
//! not purged; records can be deleted anyway), or postpone a purge by
//! editing a row so that the purge's query does not select it. Both keep a
//! number longer, never shorter.
//!
//! # Replicas
//!
//! A purge batch locks the chain head first, as every decision does, so two
//! replicas' purges (and a purge and a `SetRetention`) run one after the
//! other, and the second sees what the first deleted.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher as _;

use mnvault_keys::{PublicKey, StateKey};

use super::{append, append_all, commit_audited, ChainWatch, VaultCore};
use crate::audit::{AuditDraft, AuditRecord, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::{Principal, RequestId, TenantId, Token};
use crate::integrity::CHANGED;
use crate::retention::{
    classes_of_text, classes_text, date_in_japan, date_number, date_of_number, date_text, CertificateBody,
    CertifiedDeletion, DeletionCertificate, Due, Retention, RetentionRequest, CERTIFICATE_FORMAT,
    MAX_CERTIFICATE_DELETIONS, MAX_RETENTION_TOKENS, PURGE_BATCH,
};
use crate::store::{ChainHead, ReadTx, RetentionRow, TombstoneRow, WriteTx};

/// The principal the background purge records as its own.
pub const PURGE_PRINCIPAL: &str = "mnvault-purge";

/// Tag kinds of retention's state rows (distinct from integrity's own).
mod kind {
    pub const RETENTION: &[u8] = b"retention";
    pub const TOMBSTONE: &[u8] = b"tombstone";
}

/// Most tampered rows a purge report names; the rest are counted.
const MAX_NAMED_TAMPERED: usize = 100;

/// A token a purge deleted (or, in a dry run, would delete).
#[derive(Debug, Clone)]
pub struct PurgeItem {
    /// Its tenant.
    pub tenant: TenantId,
    /// The token.
    pub token: Token,
    /// Why.
    pub retention: Retention,
}

/// What a purge did.
#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    /// Nothing was deleted: `items` is what would have been.
    pub dry_run: bool,
    /// Tokens deleted (or due, in a dry run), for a call that answers them;
    /// the background purge keeps none (it may delete millions in a run).
    pub items: Vec<PurgeItem>,
    /// How many tokens were deleted (or are due, in a dry run).
    pub deleted_tokens: u64,
    /// Records actually deleted (a token whose record was already gone
    /// gets a tombstone but no count).
    pub deleted_records: u64,
    /// Tokens past their date but on legal hold, as the database counts
    /// them (a number for people; no decision rests on it).
    pub held: u64,
    /// Rows that failed their check and were left alone.
    pub tampered: u64,
    /// What failed, named (the first 100).
    pub tampered_named: Vec<String>,
    /// The call stopped after its batches; more may be due.
    pub more: bool,
}

impl PurgeReport {
    fn failed(&mut self, message: String) {
        self.tampered += 1;
        if self.tampered_named.len() < MAX_NAMED_TAMPERED {
            self.tampered_named.push(message);
        }
    }

    /// One line for the audit entry of the call.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "due (dry run, nothing deleted)" } else { "deleted" };
        format!(
            "{} token(s) {verb}; {} held; {} failed their integrity check{}",
            self.deleted_tokens,
            self.held,
            self.tampered,
            if self.more { "; more may be due" } else { "" }
        )
    }
}

/// A deletion certificate and the key that checks it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The signed document.
    pub certificate: DeletionCertificate,
    /// The vault's public key.
    pub public_key: PublicKey,
}

/// A tombstone whose tag verified.
struct CheckedTombstone {
    token: Token,
    deleted_at: i64,
    retention: Retention,
    audit_seq: u64,
}

/// Each token's last allowed `SetRetention`, from verified audit entries
/// only. Keyed by a per-process keyed hash of tenant and token (16 bytes an
/// entry). A collision can only make a genuine row look replaced, which
/// refuses its purge: never the other way round.
#[derive(Debug, Default)]
pub(super) struct RetentionWatch {
    hasher: RandomState,
    last_set: HashMap<u64, u64>,
}

impl RetentionWatch {
    fn key(&self, tenant: &str, token: &str) -> u64 {
        self.hasher.hash_one((tenant, token))
    }

    /// Notes a verified entry: a `SetRetention` sets its tokens' last
    /// change, a deletion forgets them.
    pub(super) fn note(&mut self, entry: &AuditRecord) {
        if entry.outcome != CHANGED.id() {
            return;
        }
        let tokens = entry.tokens.iter().map(String::as_str);
        if entry.operation == Operation::SetRetention.id() {
            self.set(&entry.tenant, tokens, entry.seq);
        } else if entry.operation == Operation::DeleteRecords.id() {
            self.forget(&entry.tenant, tokens);
        }
    }

    fn set<'a>(&mut self, tenant: &str, tokens: impl Iterator<Item = &'a str>, seq: u64) {
        for token in tokens {
            let key = self.key(tenant, token);
            let last = self.last_set.entry(key).or_default();
            *last = (*last).max(seq);
        }
    }

    fn forget<'a>(&mut self, tenant: &str, tokens: impl Iterator<Item = &'a str>) {
        for token in tokens {
            let key = self.key(tenant, token);
            self.last_set.remove(&key);
        }
    }

    fn last_set(&self, tenant: &str, token: &str) -> Option<u64> {
        self.last_set.get(&self.key(tenant, token)).copied()
    }
}

/// `[0]` for none, `[1] ‖ i64 BE` for a value: the marker fixes the length.
fn optional_field(value: Option<i64>) -> Vec<u8> {
    match value {
        None => vec![0],
        Some(value) => [&[1u8][..], &value.to_be_bytes()].concat(),
    }
}

fn stored_matches(expected: &[u8; 32], stored: Option<&[u8]>) -> bool {
    stored.is_some_and(|tag| StateKey::matches(expected, tag))
}

impl VaultCore {
    /// The vault's public signing key (deletion certificates).
    pub fn signing_public_key(&self) -> PublicKey {
        self.signing.load().public_key()
    }

    /// Sets the retention of `tokens` of `tenant` (admins only: it decides
    /// when numbers are deleted for good). All or nothing, in one
    /// transaction with its audit entry.
    pub async fn set_retention(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        tokens: &[Token],
        request: &RetentionRequest,
        draft: &mut AuditDraft,
    ) -> Result<Retention, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        if tokens.is_empty() || tokens.len() > MAX_RETENTION_TOKENS {
            return Err(VaultError::InvalidArgument(format!(
                "name 1 to {MAX_RETENTION_TOKENS} tokens in one call; {} were named",
                tokens.len()
            )));
        }
        let retention = request.decide()?;
        let mut seen = HashSet::new();
        let unique: Vec<Token> = tokens.iter().filter(|t| seen.insert(*t)).cloned().collect();
        draft.record_count = unique.len() as u64;
        self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_write().await?;
        let (head, watch) = self.lock_watch(tx.as_mut()).await?;
        // A token's earlier numbers (before a re-issue) were on the same
        // documents as its current one: they follow its retention.
        let superseded = self.superseded_tokens(tx.as_mut(), &watch, tenant, &unique).await?;
        drop(watch);
        let existing = tx.existing_tokens(tenant, &unique).await?;
        self.refuse_purged(tx.as_mut(), tenant, tokens, |t| !existing.contains(t.as_str()), "request").await?;
        if let Some(position) = tokens.iter().position(|t| !existing.contains(t.as_str())) {
            return Err(VaultError::NotFound(format!(
                "{} of the {} token(s) do not exist in tenant \"{tenant}\"; the first is token #{} of the request",
                unique.iter().filter(|t| !existing.contains(t.as_str())).count(),
                unique.len(),
                position + 1
            )));
        }
        // Those already deleted (or set in this call already) are left out.
        let kept = tx.existing_tokens(tenant, &superseded).await?;
        let mut named: HashSet<Token> = unique.iter().cloned().collect();
        let mut unique = unique;
        unique.extend(superseded.into_iter().filter(|t| kept.contains(t.as_str()) && named.insert(t.clone())));
        draft.record_count = unique.len() as u64;
        let now = clock::now_ms();
        // The chain head is locked: this call's entry comes right after it.
        let set_seq = head.seq + 1;
        let rows: Vec<RetentionRow> =
            unique.iter().map(|token| self.retention_row(tenant, token, &retention, now, set_seq)).collect();
        tx.upsert_retention(&rows).await?;
        draft.tokens = unique;
        draft.reason = retention.describe();
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        if entry.seq != set_seq {
            tracing::error!(expected = set_seq, appended = entry.seq, "the chain moved under its lock");
            return Err(VaultError::Internal);
        }
        commit_audited(tx).await?;
        let mut watch = self.watch.lock().await;
        if watch.broken.is_none() && watch.seq == head.seq {
            (watch.seq, watch.hash) = (entry.seq, entry.hash);
            watch.retention.set(tenant.as_str(), draft.tokens.iter().map(Token::as_str), entry.seq);
            self.save_watermark(&watch);
        }
        Ok(retention)
    }

    /// Deletes (or, with `dry_run`, lists) the numbers past their deletion
    /// date and not on hold, of `tenant` or of every tenant, as an admin
    /// (of every tenant when none is named). Runs at most
    /// [`crate::retention::PURGE_BATCHES_PER_CALL`] batches.
    pub async fn purge_expired(
        &self,
        caller: &Principal,
        tenant: Option<&TenantId>,
        dry_run: bool,
        draft: &mut AuditDraft,
    ) -> Result<PurgeReport, VaultError> {
        let policy = self.policy();
        policy.require(caller, &[Role::KeyAdmin], tenant)?;
        if tenant.is_none() && !policy.covers_all_tenants(caller) {
            return Err(VaultError::PermissionDenied(format!(
                "principal {caller} may purge only some tenants; name one"
            )));
        }
        if let Some(tenant) = tenant {
            self.keyring.tenant_keys(tenant).await?;
        }
        let batches = crate::retention::PURGE_BATCHES_PER_CALL;
        let report = self.purge(caller, tenant, dry_run, draft.request_id.clone(), batches, true).await?;
        draft.record_count = report.deleted_tokens;
        draft.reason = report.summary();
        Ok(report)
    }

    /// The background purge: every tenant, until nothing due is left, as
    /// [`PURGE_PRINCIPAL`].
    pub async fn purge_in_background(&self) -> Result<PurgeReport, VaultError> {
        let by = Principal::parse(PURGE_PRINCIPAL).map_err(|_| VaultError::Internal)?;
        self.purge(&by, None, false, None, u32::MAX, false).await
    }

    async fn purge(
        &self,
        by: &Principal,
        tenant: Option<&TenantId>,
        dry_run: bool,
        request_id: Option<RequestId>,
        batches: u32,
        keep_items: bool,
    ) -> Result<PurgeReport, VaultError> {
        let mut report = PurgeReport { dry_run, ..PurgeReport::default() };
        let mut after: Option<(String, String)> = None;
        for batch in 0..batches {
            let mut tx = self.store.begin_write().await?;
            let (head, watch) = self.lock_watch(tx.as_mut()).await?;
            let now = clock::now_ms();
            let today = date_in_japan(now);
            if batch == 0 {
                report.held = tx.count_held_due(tenant, date_number(today)).await?;
            }
            let cursor = after.as_ref().map(|(tenant, token)| (tenant.as_str(), token.as_str()));
            let rows = tx
                .due_retention(tenant, cursor, date_number(today), PURGE_BATCH)
                .await
                .map_err(self.unreadable(|| "a retention row".into()))?;
            let Some(last) = rows.last() else { return Ok(report) };
            after = Some((last.tenant.clone(), last.token.clone()));
            let full = rows.len() == PURGE_BATCH as usize;
            let mut due: BTreeMap<TenantId, Vec<(Token, Retention)>> = BTreeMap::new();
            for row in &rows {
                match self.check_retention_row(row, &watch) {
                    Ok((tenant, token, retention)) => match retention.due(today) {
                        Due::Delete => due.entry(tenant).or_default().push((token, retention)),
                        Due::Held => report.held += 1,
                        Due::NotYet => {}
                    },
                    Err(VaultError::DataLoss(message)) => report.failed(message),
                    Err(other) => return Err(other),
                }
            }
            drop(watch);
            let items = due.iter().flat_map(|(tenant, items)| {
                items.iter().map(|(token, retention)| PurgeItem {
                    tenant: tenant.clone(),
                    token: token.clone(),
                    retention: retention.clone(),
                })
            });
            if dry_run || due.is_empty() {
                report.deleted_tokens += due.values().map(|items| items.len() as u64).sum::<u64>();
                if keep_items {
                    report.items.extend(items);
                }
                drop(tx);
                if !full {
                    return Ok(report);
                }
                continue;
            }
            let items: Vec<PurgeItem> = items.collect();
            let mut drafts = Vec::with_capacity(due.len());
            for (tenant, items) in &due {
                let tokens: Vec<Token> = items.iter().map(|(token, _)| token.clone()).collect();
                let deleted = tx.delete_records(tenant, &tokens).await?;
                report.deleted_records += deleted;
                let latest = items.iter().map(|(_, retention)| retention.delete_on).max().unwrap_or(today);
                let mut draft = AuditDraft::by(by, Operation::DeleteRecords, Some(tenant));
                draft.request_id = request_id.clone();
                draft.reason = format!(
                    "retention over and no legal hold: {} token(s), {deleted} sealed number(s) deleted; deletion dates \
                     up to {}",
                    tokens.len(),
                    date_text(latest)
                );
                draft.tokens = tokens;
                draft.record_count = deleted;
                drafts.push(draft);
            }
            let last = append_all(tx.as_mut(), &self.audit_key, drafts, now).await?;
            // One entry per tenant, in `due`'s order, right after the locked head.
            let tombstones: Vec<TombstoneRow> = due
                .iter()
                .zip(head.seq + 1..)
                .flat_map(|((tenant, items), seq)| {
                    items.iter().map(move |(token, retention)| self.tombstone_row(tenant, token, retention, now, seq))
                })
                .collect();
            tx.insert_tombstones(&tombstones).await?;
            commit_audited(tx).await?;
            self.witness_deletions(&head, &last, &items).await;
            report.deleted_tokens += items.len() as u64;
            if keep_items {
                report.items.extend(items);
            }
            if !full {
                return Ok(report);
            }
        }
        report.more = true;
        Ok(report)
    }

    /// A signed certificate of the deletions of `tenant` in [`since_ms`,
    /// `until_ms`), for an admin or auditor of the tenant. A range holding
    /// more than [`MAX_CERTIFICATE_DELETIONS`] is refused, to be split.
    pub async fn issue_deletion_certificate(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        since_ms: i64,
        until_ms: i64,
        draft: &mut AuditDraft,
    ) -> Result<IssuedCertificate, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin, Role::Auditor], Some(tenant))?;
        if since_ms >= until_ms {
            return Err(VaultError::InvalidArgument("the period's start must come before its end".into()));
        }
        let limit = MAX_CERTIFICATE_DELETIONS as u32 + 1;
        let rows = self.store.begin_read().await?.tombstones_between(tenant, since_ms, until_ms, limit).await;
        let rows = rows.map_err(self.unreadable(|| format!("a tombstone of tenant \"{tenant}\"")))?;
        if let Some(first_left_out) = rows.get(MAX_CERTIFICATE_DELETIONS) {
            // A purge deletes a whole batch at one instant, so a month may not
            // split in whole days: name where the first certificate can end.
            return Err(VaultError::FailedPrecondition(format!(
                "more than {MAX_CERTIFICATE_DELETIONS} deletions fall in the period; ask for shorter periods: the \
                 first {MAX_CERTIFICATE_DELETIONS} end before {}, so ask until then, then from then on",
                clock::rfc3339(first_left_out.deleted_at)
            )));
        }
        let mut deletions = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        for row in &rows {
            let stone = self.check_tombstone(tenant, row)?;
            deletions.push(CertifiedDeletion {
                token: stone.token.to_string(),
                deleted_at: clock::rfc3339(stone.deleted_at),
                classes: stone.retention.classes.iter().map(|c| c.id().to_owned()).collect(),
                end_date: stone.retention.end_date.map(date_text),
                delete_on: date_text(stone.retention.delete_on),
                legal_basis: stone.retention.legal_basis(),
                audit_seq: stone.audit_seq,
            });
            tokens.push(stone.token);
        }
        let signing = self.signing.load_full();
        let public_key = signing.public_key();
        let body = CertificateBody {
            format: CERTIFICATE_FORMAT.to_owned(),
            tenant: tenant.to_string(),
            since: clock::rfc3339(since_ms),
            until: clock::rfc3339(until_ms),
            issued_at: clock::rfc3339(clock::now_ms()),
            issued_by: caller.to_string(),
            key_id: public_key.key_id(),
            count: deletions.len() as u64,
            deletions,
        };
        draft.record_count = tokens.len() as u64;
        draft.reason = format!("deletion certificate of {} deletion(s)", tokens.len());
        draft.tokens = tokens;
        Ok(IssuedCertificate { certificate: DeletionCertificate::sign(body, &signing), public_key })
    }

    /// Refuses, as `NOT_FOUND` saying when and why, when one of `tokens`
    /// for which `missing` holds (its record is gone) was deleted by a
    /// purge. `what` names the list in the message ("release", "request").
    pub(super) async fn refuse_purged<R: ReadTx + ?Sized>(
        &self,
        read: &mut R,
        tenant: &TenantId,
        tokens: &[Token],
        missing: impl Fn(&Token) -> bool,
        what: &str,
    ) -> Result<(), VaultError> {
        let gone: Vec<Token> = tokens.iter().filter(|t| missing(t)).cloned().collect();
        if gone.is_empty() {
            return Ok(());
        }
        let stones = read.tombstones(tenant, &gone).await;
        let stones = stones.map_err(self.unreadable(|| format!("a tombstone of tenant \"{tenant}\"")))?;
        let Some((position, row)) = tokens
            .iter()
            .enumerate()
            .find_map(|(position, token)| stones.iter().find(|s| s.token == token.as_str()).map(|s| (position + 1, s)))
        else {
            return Ok(());
        };
        let stone = self.check_tombstone(tenant, row)?;
        let others = stones.len() - 1;
        Err(VaultError::NotFound(format!(
            "token #{position} of the {what} ({}) has no number any more: it was deleted at {} because its retention \
             ended ({}; audit entry #{}){}",
            stone.token,
            clock::rfc3339(stone.deleted_at),
            stone.retention.describe(),
            stone.audit_seq,
            if others > 0 { format!("; {others} more token(s) of the {what} were deleted too") } else { String::new() }
        )))
    }

    /// Locks the chain head and verifies the chain up to it, as every
    /// decision does; the watch stays locked for the caller.
    async fn lock_watch(
        &self,
        tx: &mut dyn WriteTx,
    ) -> Result<(ChainHead, futures::lock::MutexGuard<'_, ChainWatch>), VaultError> {
        let head = tx.lock_chain_head().await?;
        let mut watch = self.watch.lock().await;
        watch.catch_up(tx, &self.audit_key, &head).await?;
        self.verified(&watch)?;
        Ok((head, watch))
    }

    /// Notes this process's own committed deletion entries (after `head`,
    /// up to `last`) as verified.
    async fn witness_deletions(&self, head: &ChainHead, last: &ChainHead, items: &[PurgeItem]) {
        let mut watch = self.watch.lock().await;
        if watch.broken.is_none() && watch.seq == head.seq {
            (watch.seq, watch.hash) = (last.seq, last.hash);
            for item in items {
                watch.retention.forget(item.tenant.as_str(), std::iter::once(item.token.as_str()));
            }
            self.save_watermark(&watch);
        }
    }

    fn retention_tag(&self, row: &RetentionRow) -> [u8; 32] {
        self.integrity.tag_of(
            kind::RETENTION,
            [
                row.tenant.as_bytes(),
                row.token.as_bytes(),
                row.classes.as_bytes(),
                &optional_field(row.end_date),
                &row.delete_on.to_be_bytes(),
                &[u8::from(row.legal_hold)],
                &row.set_at.to_be_bytes(),
                &row.set_seq.to_be_bytes(),
            ],
        )
    }

    fn retention_row(
        &self,
        tenant: &TenantId,
        token: &Token,
        retention: &Retention,
        now: i64,
        set_seq: u64,
    ) -> RetentionRow {
        let mut row = RetentionRow {
            tenant: tenant.to_string(),
            token: token.to_string(),
            classes: classes_text(&retention.classes),
            end_date: retention.end_date.map(date_number),
            delete_on: date_number(retention.delete_on),
            legal_hold: retention.legal_hold,
            set_at: now,
            set_seq: i64::try_from(set_seq).unwrap_or(i64::MAX),
            tag: None,
        };
        let tag = self.retention_tag(&row);
        row.tag = Some(tag.to_vec());
        row
    }

    /// Parses a retention row and checks its tag and that it is the token's
    /// last `SetRetention` as the verified chain says.
    fn check_retention_row(
        &self,
        row: &RetentionRow,
        watch: &ChainWatch,
    ) -> Result<(TenantId, Token, Retention), VaultError> {
        let (Ok(tenant), Ok(token)) = (TenantId::parse(&row.tenant), Token::parse(&row.token)) else {
            return Err(self.integrity.tampered("a retention row whose tenant or token does not parse".into()));
        };
        let object = || format!("the retention of token {token} of tenant \"{tenant}\"");
        let expected = self.retention_tag(row);
        if !stored_matches(&expected, row.tag.as_deref()) {
            return Err(self.integrity.tampered(object()));
        }
        if watch.retention.last_set(&row.tenant, &row.token) != u64::try_from(row.set_seq).ok() {
            tracing::error!(%tenant, %token, set_seq = row.set_seq, "a retention row is not the token's last one");
            return Err(self.integrity.tampered(object()));
        }
        let retention = (|| {
            Some(Retention {
                classes: classes_of_text(&row.classes)?,
                end_date: match row.end_date {
                    Some(number) => Some(date_of_number(number)?),
                    None => None,
                },
                delete_on: date_of_number(row.delete_on)?,
                legal_hold: row.legal_hold,
            })
        })();
        // A tagged row the vault wrote always parses; one that does not is not ours.
        let retention = retention.ok_or_else(|| self.integrity.tampered(object()))?;
        Ok((tenant, token, retention))
    }

    fn tombstone_tag(&self, row: &TombstoneRow) -> [u8; 32] {
        self.integrity.tag_of(
            kind::TOMBSTONE,
            [
                row.tenant.as_bytes(),
                row.token.as_bytes(),
                &row.deleted_at.to_be_bytes(),
                row.classes.as_bytes(),
                &optional_field(row.end_date),
                &row.delete_on.to_be_bytes(),
                &row.audit_seq.to_be_bytes(),
            ],
        )
    }

    fn tombstone_row(
        &self,
        tenant: &TenantId,
        token: &Token,
        retention: &Retention,
        now: i64,
        seq: u64,
    ) -> TombstoneRow {
        let mut row = TombstoneRow {
            tenant: tenant.to_string(),
            token: token.to_string(),
            deleted_at: now,
            classes: classes_text(&retention.classes),
            end_date: retention.end_date.map(date_number),
            delete_on: date_number(retention.delete_on),
            audit_seq: i64::try_from(seq).unwrap_or(i64::MAX),
            tag: None,
        };
        row.tag = Some(self.tombstone_tag(&row).to_vec());
        row
    }

    fn check_tombstone(&self, tenant: &TenantId, row: &TombstoneRow) -> Result<CheckedTombstone, VaultError> {
        let token = Token::parse(&row.token)
            .map_err(|_| self.integrity.tampered(format!("a tombstone of tenant \"{tenant}\"")))?;
        let object = || format!("the tombstone of token {token} of tenant \"{tenant}\"");
        if row.tenant != tenant.as_str() || !stored_matches(&self.tombstone_tag(row), row.tag.as_deref()) {
            return Err(self.integrity.tampered(object()));
        }
        let retention = (|| {
            Some(Retention {
                classes: classes_of_text(&row.classes)?,
                end_date: match row.end_date {
                    Some(number) => Some(date_of_number(number)?),
                    None => None,
                },
                delete_on: date_of_number(row.delete_on)?,
                legal_hold: false,
            })
        })()
        .ok_or_else(|| self.integrity.tampered(object()))?;
        let audit_seq = u64::try_from(row.audit_seq).map_err(|_| self.integrity.tampered(object()))?;
        Ok(CheckedTombstone { token, deleted_at: row.deleted_at, retention, audit_seq })
    }
}
