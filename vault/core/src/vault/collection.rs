//! Collections: how they are stored, trusted and settled. The rules (bounds,
//! states) are in [`crate::collection`].
//!
//! A collection's row is tagged under the state key over every column, so a
//! database writer can neither reopen a settled collection with a new state,
//! move it to another tenant, lengthen its life nor swap its tokens. Its
//! link is found by a keyed hash of the secret: the secret is never stored.

use std::sync::Arc;

use mnvault_keys::{BlindIndex, TenantKeys};

use super::{
    append, commit_audited, offboarding, open_record, ChainWatch, Drawn, TokenizeFailure, VaultCore, TOKEN_DRAWS,
};
use crate::audit::{AuditDraft, Operation, Outcome};
use crate::clock;
use crate::collection::{
    decode_purposes, decode_relations, encode_purposes, encode_relations, entry_reason, note_fetched, unusable,
    Collection, CollectionForm, CollectionRequest, CollectionState, LinkOutcome, LinkSecret, Reissue, SubmitOutcome,
    UnusableLink, MAX_WATCHED,
};
use crate::error::VaultError;
use crate::id::{CollectionId, Principal, TenantId, Token, TokenFormat};
use crate::mint::{draw_collection_id, draw_token};
use crate::number::MyNumber;
use crate::retention::MAX_RETENTION_TOKENS;
use crate::store::{CollectionRow, NewRecord, WriteTx};
use crate::text::FreeText;

/// The principal the collection page's entries carry: the employee has no
/// certificate, and the vault answers for what its page did.
pub const COLLECTION_PAGE_PRINCIPAL: &str = "mnvault-collection-page";

/// The reason recorded for a link no collection has (never the link).
const UNKNOWN_LINK: &str = "a link that no collection has";

impl VaultCore {
    /// Opens a collection for `tenant` and returns it with its link's
    /// secret, which is not kept. Only the tenant's payroll may.
    pub async fn create_collection(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        request: &CollectionRequest,
        draft: &mut AuditDraft,
    ) -> Result<(Collection, LinkSecret), VaultError> {
        self.authorize_tokenize(caller, tenant)?;
        let terms = request.terms()?;
        self.keyring.tenant_keys(tenant).await?;
        if let Some(token) = &request.reissue {
            self.check_reissued_token(tenant, token).await?;
            draft.tokens = vec![token.clone()];
        }
        let now = clock::now_ms();
        let link = LinkSecret::draw();
        let id = draw_collection_id();
        let mut row = CollectionRow {
            collection_id: id.to_string(),
            tenant: tenant.to_string(),
            link_hash: self.integrity.link_hash(&link).to_vec(),
            reference: request.reference.as_str().to_owned(),
            relations: encode_relations(&terms.asked),
            purposes: encode_purposes(&terms.purposes),
            created_by: caller.to_string(),
            created_at: now,
            expires_at: now.saturating_add(terms.lifetime_ms),
            state: CollectionState::Open.id().to_owned(),
            settled_at: now,
            tokens: String::new(),
            reissue_token: request.reissue.as_ref().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            superseded_token: String::new(),
            changed_seq: 0,
            tag: None,
        };
        let asks = if request.reissue.is_some() { "asks for a re-issued number of" } else { "asks for" };
        draft.reason = entry_reason(&id, &format!("{asks} {}", row.relations));
        let mut tx = self.store.begin_write().await?;
        offboarding::refuse_if_shredded(tx.as_mut(), tenant).await?;
        // The row names the entry that recorded it (see `current_collection`).
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        row.changed_seq = i64::try_from(entry.seq).map_err(|_| VaultError::Internal)?;
        row.tag = Some(self.integrity.collection_tag(&row).to_vec());
        tx.insert_collection(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok((self.trusted_collection(&row)?, link))
    }

    /// The tenant's collections `ids`, settled as expired where their time
    /// has passed. Tokens of submitted ones go into `draft`: a fetch is
    /// audited with what it handed out.
    pub async fn collections(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        ids: &[CollectionId],
        draft: &mut AuditDraft,
    ) -> Result<Vec<Collection>, VaultError> {
        self.authorize_tokenize(caller, tenant)?;
        if ids.is_empty() || ids.len() > MAX_WATCHED {
            return Err(VaultError::InvalidArgument(format!("name 1 to {MAX_WATCHED} collections")));
        }
        self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_read().await?;
        let rows = tx.collections(tenant, ids).await?;
        drop(tx);
        let mut found = Vec::with_capacity(rows.len());
        let watch = self.watch.lock().await;
        for row in &rows {
            let collection = self.trusted_collection(row)?;
            // Not caught up (a read decides nothing), but a row older than a
            // change this process already verified is refused.
            let last = watch.collection_changes.get(collection.id.as_str()).copied();
            if last.and_then(|seq| i64::try_from(seq).ok()).is_some_and(|seq| seq > row.changed_seq) {
                return Err(self.tampered_row(row));
            }
            found.push(collection);
        }
        drop(watch);
        if let Some(missing) = ids.iter().find(|id| !found.iter().any(|c| &c.id == *id)) {
            return Err(VaultError::NotFound(format!("collection {missing} does not exist in tenant {tenant}")));
        }
        let now = clock::now_ms();
        let mut settled = Vec::with_capacity(found.len());
        for collection in found {
            settled.push(match collection.state(now) {
                CollectionState::Expired if collection.stored_state == CollectionState::Open => {
                    self.settle_expired(&collection.id, tenant).await?
                }
                _ => collection,
            });
        }
        // In the order asked.
        settled.sort_by_key(|c| ids.iter().position(|id| *id == c.id));
        note_fetched(draft, &settled, now);
        Ok(settled)
    }

    /// Cancels an open collection: its link stops working at once.
    pub async fn cancel_collection(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        id: &CollectionId,
        draft: &mut AuditDraft,
    ) -> Result<Collection, VaultError> {
        self.authorize_tokenize(caller, tenant)?;
        self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_write().await?;
        let (row, collection) = self.locked_collection(tx.as_mut(), tenant, id).await?;
        let now = clock::now_ms();
        collection.check_cancel(now)?;
        draft.reason = entry_reason(id, "cancelled");
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let row = self.settled_row(row, CollectionState::Cancelled, now, &[], entry.seq)?;
        tx.settle_collection(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        self.trusted_collection(&row)
    }

    /// What the page shows for `link`, recorded as opened (or refused).
    /// Unknown and used links answer alike. Its entry is appended here,
    /// whatever the outcome, except for a link no collection has: anyone may
    /// send one, and an entry for each would let them fill the log (the
    /// edge counts them instead).
    pub async fn open_collection(&self, link: &LinkSecret, draft: &mut AuditDraft) -> Result<LinkOutcome, VaultError> {
        draft.principal = Some(page_principal());
        let outcome = self.look_up_link(link, draft, true).await;
        if let Err(error) = &outcome {
            draft.outcome = error.outcome();
            draft.reason = error.public_message();
        }
        if draft.reason != UNKNOWN_LINK {
            self.record(draft.clone()).await?;
        }
        outcome
    }

    /// What the form of `link` asks for, to read a submitted form by;
    /// records and settles nothing (the submit that follows is audited).
    pub async fn collection_form(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        self.look_up_link(link, &mut AuditDraft::new(Operation::OpenCollection), false).await
    }

    async fn look_up_link(
        &self,
        link: &LinkSecret,
        draft: &mut AuditDraft,
        settle: bool,
    ) -> Result<LinkOutcome, VaultError> {
        let hash = self.integrity.link_hash(link);
        let mut tx = self.store.begin_read().await?;
        let Some(row) = tx.collection_by_link(&hash).await? else {
            draft.reason = UNKNOWN_LINK.into();
            draft.outcome = Outcome::NotFound;
            return Ok(LinkOutcome::Unusable(UnusableLink::UnknownOrUsed));
        };
        let collection = self.trusted_collection(&row)?;
        let company = tx.tenant(&collection.tenant).await?;
        // A shredded tenant takes no more numbers: its links read as cancelled.
        let shredded = tx.tenant_shredded_at(&collection.tenant).await?.is_some();
        drop(tx);
        draft.tenant = Some(collection.tenant.clone());
        if shredded {
            draft.reason = entry_reason(&collection.id, "belongs to a shredded tenant");
            draft.outcome = Outcome::Denied;
            return Ok(LinkOutcome::Unusable(UnusableLink::Cancelled));
        }
        let now = clock::now_ms();
        let state = collection.state(now);
        if settle && state == CollectionState::Expired && collection.stored_state == CollectionState::Open {
            self.settle_expired(&collection.id, &collection.tenant).await?;
        }
        if let Some(refusal) = unusable(state) {
            draft.reason = entry_reason(&collection.id, &format!("is {}", state.id()));
            draft.outcome = Outcome::Denied;
            return Ok(LinkOutcome::Unusable(refusal));
        }
        let company = company
            .and_then(|tenant| FreeText::parse(&tenant.display_name, "display name").ok())
            .ok_or_else(|| self.tampered_row(&row))?;
        draft.reason = entry_reason(&collection.id, "opened");
        Ok(LinkOutcome::Open(CollectionForm {
            company,
            asked: collection.asked,
            purposes: collection.purposes,
            expires_at: collection.expires_at,
            reissue: collection.reissue.is_some(),
        }))
    }

    /// Stores the numbers typed on the page for `link`, one per relation
    /// asked, in order: the records, the collection settled as submitted
    /// with their tokens, and the audit entry, in one transaction. A second
    /// submit finds the collection used.
    /// A refusal is appended here too: the page has no caller to answer for it.
    pub async fn submit_collection(
        &self,
        link: &LinkSecret,
        numbers: &[MyNumber],
        draft: &mut AuditDraft,
    ) -> Result<SubmitOutcome, VaultError> {
        draft.principal = Some(page_principal());
        let outcome = self.submit_numbers(link, numbers, draft).await;
        if let Err(error) = &outcome {
            let mut refused = draft.clone();
            (refused.outcome, refused.reason, refused.tokens) = (error.outcome(), error.public_message(), Vec::new());
            self.record(refused).await?;
        }
        outcome
    }

    async fn submit_numbers(
        &self,
        link: &LinkSecret,
        numbers: &[MyNumber],
        draft: &mut AuditDraft,
    ) -> Result<SubmitOutcome, VaultError> {
        let hash = self.integrity.link_hash(link);
        // The tenant's keys are read and the numbers sealed before the
        // write transaction, as tokenize does; the transaction checks again.
        let mut tx = self.store.begin_read().await?;
        let row = tx.collection_by_link(&hash).await?;
        drop(tx);
        // A link no collection has writes nothing (see `open_collection`).
        let Some(row) = row else {
            return Ok(SubmitOutcome::Unusable(UnusableLink::UnknownOrUsed));
        };
        let collection = self.trusted_collection(&row)?;
        draft.tenant = Some(collection.tenant.clone());
        // A link that no longer works says only that, whatever was sent.
        let state = collection.state(clock::now_ms());
        if let Some(refusal) = unusable(state) {
            draft.reason = entry_reason(&collection.id, &format!("is {}", state.id()));
            return self.refuse_link(self.store.begin_write().await?, refusal, draft).await;
        }
        if numbers.len() != collection.asked.len() {
            return Err(VaultError::InvalidArgument(format!(
                "this form asks for {} numbers; {} were sent",
                collection.asked.len(),
                numbers.len()
            )));
        }
        let keys = self.keyring.tenant_keys(&collection.tenant).await?;
        if let (Some(reissue), [number]) = (&collection.reissue, numbers) {
            for _ in 0..TOKEN_DRAWS {
                match self.commit_reissue(&hash, &collection.id, keys.clone(), &reissue.token, number, draft).await {
                    Err(TokenizeFailure::Collided) => continue,
                    Err(TokenizeFailure::Failed(error)) => return Err(error),
                    Ok(outcome) => return Ok(outcome),
                }
            }
            tracing::error!(collection = %collection.id, "a re-issue kept losing its race");
            return Err(VaultError::Internal);
        }
        for _ in 0..TOKEN_DRAWS {
            let drawn = self.draw(&keys, TokenFormat::Opaque, numbers)?;
            match self.commit_submit(&hash, &collection.id, drawn, draft).await {
                Err(TokenizeFailure::Collided) => continue,
                Err(TokenizeFailure::Failed(error)) => return Err(error),
                Ok(outcome) => return Ok(outcome),
            }
        }
        tracing::error!(collection = %collection.id, "token draws kept colliding");
        Err(VaultError::Internal)
    }

    async fn commit_submit(
        &self,
        hash: &[u8; 32],
        id: &CollectionId,
        drawn: Vec<Drawn>,
        draft: &mut AuditDraft,
    ) -> Result<SubmitOutcome, TokenizeFailure> {
        let mut tx = self.store.begin_write().await?;
        let (row, collection) = match self.lock_open(tx.as_mut(), hash, id, draft).await? {
            Ok(open) => open,
            Err(refused) => {
                commit_audited(tx).await?;
                return Ok(refused);
            }
        };
        let now = clock::now_ms();
        let tenant = &collection.tenant;
        let records: Vec<NewRecord> = drawn
            .into_iter()
            .map(|Drawn { blind_index, token, key_version, sealed }| {
                let tag =
                    self.integrity.record_tag(tenant, &token, TokenFormat::Opaque, &blind_index.0, key_version, now);
                NewRecord { blind_index, token, key_version, sealed, tag }
            })
            .collect();
        let tokens = self.write_records(tx.as_mut(), tenant, TokenFormat::Opaque, &records, now).await?;
        self.current_collection(tx.as_mut(), &row).await?;
        draft.reason = entry_reason(id, "submitted");
        draft.record_count = tokens.len() as u64;
        draft.tokens = tokens.clone();
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let row = self.settled_row(row, CollectionState::Submitted, now, &tokens, entry.seq)?;
        tx.settle_collection(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok(SubmitOutcome::Submitted { numbers: records.len() })
    }

    /// The collection of `hash`, locked, if it is still `id` and open;
    /// otherwise what to answer: a link gone since it was read reads as
    /// unknown and is not recorded, one that no longer works has its refusal
    /// appended to `tx`.
    async fn lock_open(
        &self,
        tx: &mut dyn WriteTx,
        hash: &[u8; 32],
        id: &CollectionId,
        draft: &mut AuditDraft,
    ) -> Result<Result<(CollectionRow, Collection), SubmitOutcome>, VaultError> {
        let row = match tx.lock_collection_by_link(hash).await? {
            Some(row) if row.collection_id == id.as_str() => row,
            _ => return Ok(Err(SubmitOutcome::Unusable(UnusableLink::UnknownOrUsed))),
        };
        // Its tag only: whether it is the chain's latest is checked after the
        // records are written, under the chain head's lock, which a
        // transaction takes after the records it writes (as tokenize and
        // rewrap do), so that two writers never wait for each other's locks.
        let collection = self.trusted_collection(&row)?;
        let state = collection.state(clock::now_ms());
        let Some(refusal) = unusable(state) else { return Ok(Ok((row, collection))) };
        draft.reason = entry_reason(id, &format!("is {}", state.id()));
        draft.outcome = Outcome::Denied;
        append(tx, &self.audit_key, draft.clone(), clock::now_ms()).await?;
        Ok(Err(SubmitOutcome::Unusable(refusal)))
    }

    /// A re-issue's submit, in one transaction: `token`'s record takes the
    /// number typed, its old number moves, sealed again, to a fresh token of
    /// the same format, the collection is settled with both, and the entry
    /// names both. The number typed must not be held in the tenant already
    /// (not even by `token`): the page then refuses it as it refuses a
    /// mistyped one, and the employee can type it again.
    async fn commit_reissue(
        &self,
        hash: &[u8; 32],
        id: &CollectionId,
        keys: Arc<TenantKeys>,
        token: &Token,
        number: &MyNumber,
        draft: &mut AuditDraft,
    ) -> Result<SubmitOutcome, TokenizeFailure> {
        let mut tx = self.store.begin_write().await?;
        let (row, collection) = match self.lock_open(tx.as_mut(), hash, id, draft).await? {
            Ok(open) => open,
            Err(refused) => {
                commit_audited(tx).await?;
                return Ok(refused);
            }
        };
        let tenant = &collection.tenant;
        offboarding::refuse_if_shredded(tx.as_mut(), tenant).await?;
        let Some((old_row, sealed)) = tx.sealed_records(tenant, std::slice::from_ref(token)).await?.pop() else {
            return Err(VaultError::FailedPrecondition(format!(
                "collection {id} re-issues token {token}, which holds no number any more; cancel it"
            ))
            .into());
        };
        let old = self.check_record(tenant, token, &old_row)?;
        // Sealed on another replica under a version added since the keys were cached.
        let version = mnvault_keys::sealed_key_version(&sealed).map_err(|_| self.tampered_record(token))?;
        let keys = self.keyring.keys_holding(tenant, keys, [version]).await?;
        let new_index = keys.blind_index(number.expose_bytes());
        if tx.records_by_blind_index(tenant, old.format, &[new_index]).await?.iter().any(Option::is_some) {
            return Err(VaultError::InvalidArgument(format!(
                "collection {id}: the number typed already has a token in this tenant (perhaps it is the number \
                 being replaced), so it was not stored"
            ))
            .into());
        }
        let old_index = BlindIndex(old_row.blind_index.as_slice().try_into().map_err(|_| self.tampered_record(token))?);
        let now = clock::now_ms();
        let superseded = draw_token(old.format);
        let record = |token: &Token, index: BlindIndex, digits: &[u8], created_at: i64| {
            let sealed = keys.seal(token.as_str(), digits).map_err(|error| {
                tracing::error!(%error, "sealing failed");
                VaultError::Internal
            })?;
            let version = keys.primary_version();
            let tag = self.integrity.record_tag(tenant, token, old.format, &index.0, version, created_at);
            Ok::<_, VaultError>(NewRecord {
                blind_index: index,
                token: token.clone(),
                key_version: version,
                sealed,
                tag,
            })
        };
        // The token keeps its creation time: a tenant export counts and
        // pages the records created before it began, and this one was.
        let replacement = record(token, new_index, number.expose_bytes(), old.created_at)?;
        let old_number = open_record(&keys, token, 1, &sealed, &old_row.blind_index)?;
        let kept = record(&superseded, old_index, old_number.as_bytes(), now)?;
        drop(old_number);
        // Its row changed since this transaction read it (a rewrap on
        // another replica): read it again.
        if !tx.replace_record(tenant, old_row.tag.as_deref().unwrap_or_default(), &replacement, old.created_at).await? {
            return Err(TokenizeFailure::Collided);
        }
        let holders = self.write_records(tx.as_mut(), tenant, old.format, &[kept], now).await?;
        if holders != [superseded.clone()] {
            return Err(TokenizeFailure::Collided);
        }
        self.current_collection(tx.as_mut(), &row).await?;
        draft.reason =
            entry_reason(id, "submitted a re-issued number: its token holds it, the entry's second token the old one");
        draft.record_count = 2;
        draft.tokens = vec![token.clone(), superseded.clone()];
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let mut row = row;
        row.superseded_token = superseded.as_str().to_owned();
        let row = self.settled_row(row, CollectionState::Submitted, now, std::slice::from_ref(token), entry.seq)?;
        tx.settle_collection(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok(SubmitOutcome::Submitted { numbers: 1 })
    }

    /// Refuses a re-issue of `token` unless it holds a number in the tenant
    /// now (the submit checks again).
    async fn check_reissued_token(&self, tenant: &TenantId, token: &Token) -> Result<(), VaultError> {
        let mut read = self.store.begin_read().await?;
        let Some(row) = read.record(tenant, token).await? else {
            self.refuse_purged(read.as_mut(), tenant, std::slice::from_ref(token), |_| true, "request").await?;
            return Err(VaultError::NotFound(format!(
                "the token to re-issue does not exist in tenant \"{tenant}\": a re-issue names a token payroll holds"
            )));
        };
        self.check_record(tenant, token, &row)?;
        Ok(())
    }

    /// The tokens that hold the numbers `tokens` held before a re-issue, by
    /// the tenant's submitted re-issue collections, each trusted as a
    /// decision trusts a collection: its tag verifies and it is the chain's
    /// latest state of it (`watch` is caught up under the head's lock).
    pub(super) async fn superseded_tokens(
        &self,
        tx: &mut dyn WriteTx,
        watch: &ChainWatch,
        tenant: &TenantId,
        tokens: &[Token],
    ) -> Result<Vec<Token>, VaultError> {
        let limit = u32::try_from(MAX_RETENTION_TOKENS).unwrap_or(u32::MAX);
        let rows = tx.submitted_reissues(tenant, tokens, limit + 1).await?;
        if rows.len() > MAX_RETENTION_TOKENS {
            return Err(VaultError::InvalidArgument(format!(
                "these tokens held more than {MAX_RETENTION_TOKENS} numbers before re-issues; name fewer tokens"
            )));
        }
        let mut superseded = Vec::with_capacity(rows.len());
        for row in &rows {
            let collection = self.trusted_collection(row)?;
            let last = watch.collection_changes.get(collection.id.as_str()).copied();
            if last.and_then(|seq| i64::try_from(seq).ok()) != Some(row.changed_seq) {
                return Err(self.tampered_row(row));
            }
            match collection.reissue {
                Some(Reissue { token, superseded: Some(kept) }) if tokens.contains(&token) => superseded.push(kept),
                _ => return Err(self.tampered_row(row)),
            }
        }
        Ok(superseded)
    }

    /// Records a refused submit in the transaction that found it so.
    async fn refuse_link(
        &self,
        mut tx: Box<dyn WriteTx>,
        refusal: UnusableLink,
        draft: &mut AuditDraft,
    ) -> Result<SubmitOutcome, VaultError> {
        draft.outcome = Outcome::Denied;
        append(tx.as_mut(), &self.audit_key, draft.clone(), clock::now_ms()).await?;
        commit_audited(tx).await?;
        Ok(SubmitOutcome::Unusable(refusal))
    }

    /// Settles a collection found past its expiry, with its own entry.
    async fn settle_expired(&self, id: &CollectionId, tenant: &TenantId) -> Result<Collection, VaultError> {
        let mut tx = self.store.begin_write().await?;
        let (row, collection) = self.locked_collection(tx.as_mut(), tenant, id).await?;
        // Another call settled it meanwhile.
        if collection.stored_state != CollectionState::Open {
            return Ok(collection);
        }
        let now = clock::now_ms();
        if collection.state(now) != CollectionState::Expired {
            return Ok(collection);
        }
        let mut draft = AuditDraft::new(Operation::ExpireCollection);
        draft.principal = Some(page_principal());
        draft.tenant = Some(tenant.clone());
        draft.reason = entry_reason(id, "expired unsubmitted");
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let row = self.settled_row(row, CollectionState::Expired, collection.expires_at, &[], entry.seq)?;
        tx.settle_collection(&row).await?;
        commit_audited(tx).await?;
        self.witness(&entry, &draft, now).await;
        self.trusted_collection(&row)
    }

    /// The tenant's collection `id`, its row locked until commit, once its
    /// tag verifies.
    async fn locked_collection(
        &self,
        tx: &mut dyn WriteTx,
        tenant: &TenantId,
        id: &CollectionId,
    ) -> Result<(CollectionRow, Collection), VaultError> {
        let row = tx
            .lock_collection(tenant, id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("collection {id} does not exist in tenant {tenant}")))?;
        let collection = self.current_collection(tx, &row).await?;
        Ok((row, collection))
    }

    /// A locked row, trusted for a decision: its tag verifies, and it is the
    /// state the chain recorded last for it, checked under the head's lock
    /// after catching up. A row put back from before a later change (a
    /// submitted link made open again) is refused as tampering.
    async fn current_collection(&self, tx: &mut dyn WriteTx, row: &CollectionRow) -> Result<Collection, VaultError> {
        let collection = self.trusted_collection(row)?;
        let watch = self.caught_up(tx).await?;
        let last = watch.collection_changes.get(collection.id.as_str()).copied();
        if last.and_then(|seq| i64::try_from(seq).ok()) != Some(row.changed_seq) {
            tracing::error!(collection = %collection.id, changed_seq = row.changed_seq, ?last, "a collection's row is not the chain's latest");
            return Err(self.tampered_row(row));
        }
        Ok(collection)
    }

    /// `row` in a new state, tagged again.
    fn settled_row(
        &self,
        mut row: CollectionRow,
        state: CollectionState,
        at: i64,
        tokens: &[Token],
        entry_seq: u64,
    ) -> Result<CollectionRow, VaultError> {
        row.state = state.id().to_owned();
        row.settled_at = at;
        row.tokens = tokens.iter().map(Token::as_str).collect::<Vec<_>>().join(" ");
        row.changed_seq = i64::try_from(entry_seq).map_err(|_| VaultError::Internal)?;
        row.tag = Some(self.integrity.collection_tag(&row).to_vec());
        Ok(row)
    }

    /// A collection from its row, once its tag verifies.
    fn trusted_collection(&self, row: &CollectionRow) -> Result<Collection, VaultError> {
        let expected = self.integrity.collection_tag(row);
        self.integrity.check_tag(&expected, row.tag.as_deref(), || row_name(row))?;
        let parsed = || -> Option<Collection> {
            let tokens = if row.tokens.is_empty() {
                Vec::new()
            } else {
                row.tokens.split(' ').map(|t| Token::parse(t).ok()).collect::<Option<Vec<_>>>()?
            };
            Some(Collection {
                id: CollectionId::parse(&row.collection_id).ok()?,
                tenant: TenantId::parse(&row.tenant).ok()?,
                reference: FreeText::parse(&row.reference, "reference").ok()?,
                asked: decode_relations(&row.relations)?,
                purposes: decode_purposes(&row.purposes)?,
                created_by: Principal::parse_recorded(&row.created_by).ok()?,
                created_at: row.created_at,
                expires_at: row.expires_at,
                stored_state: CollectionState::parse(&row.state)?,
                settled_at: row.settled_at,
                tokens,
                // A superseded token without a re-issued one fails to parse.
                reissue: match (row.reissue_token.as_str(), row.superseded_token.as_str()) {
                    ("", "") => None,
                    (token, kept) => Some(Reissue {
                        token: Token::parse(token).ok()?,
                        superseded: if kept.is_empty() { None } else { Some(Token::parse(kept).ok()?) },
                    }),
                },
            })
        };
        parsed().ok_or_else(|| self.tampered_row(row))
    }

    fn tampered_row(&self, row: &CollectionRow) -> VaultError {
        self.integrity.tampered(row_name(row))
    }

    fn tampered_record(&self, token: &Token) -> VaultError {
        self.integrity.tampered(format!("the record for token {token}"))
    }
}

/// How a row is named in logs and refusals: by its id only once the id
/// parses, as the database's text could hold anything.
fn row_name(row: &CollectionRow) -> String {
    CollectionId::parse(&row.collection_id)
        .map(|id| format!("collection {id}"))
        .unwrap_or_else(|_| "a collection row with a malformed id".into())
}

fn page_principal() -> Principal {
    Principal::parse(COLLECTION_PAGE_PRINCIPAL).expect("the page's principal follows the grammar")
}
