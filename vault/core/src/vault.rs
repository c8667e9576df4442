//! [`VaultCore`]: every operation of the vault, each a sequence of store steps
//! inside one transaction, with the rules applied in between.
//!
//! The shape of a state-changing operation is always the same:
//! 1. read what authorisation needs (a job's tenant) and check the policy;
//! 2. begin a write transaction and lock what the decision depends on (the
//!    job row); read the clock only then, so no decision can go stale;
//! 3. apply the rule ([`crate::job::Job`]) and write the change;
//! 4. append the call's audit entry ([`append`]) and commit. The entry and the
//!    change commit together or not at all, and a released number is handed
//!    back only after the commit.

use std::sync::Arc;

use futures::channel::oneshot;
use mnvault_keys::{AuditChainKey, BlindIndex, RootKeyProvider, TenantKeys};
use zeroize::Zeroizing;

use crate::audit::{AuditDraft, AuditRecord, ChainBreak, ChainVerifier, Operation, VerifiedChain};
use crate::authz::{Policy, Role};
use crate::clock;
use crate::error::VaultError;
use crate::group_commit::{GroupCommit, Queued};
use crate::id::{JobId, Principal, TenantId, Token, TokenFormat};
use crate::integrity::{Integrity, CHANGED, JOB_STATE_CHANGES};
use crate::job::{Job, JobRequest, JobState, JobTerms, Stamp};
use crate::keyring::{load_system_keys, AuditKeyError, KeyCacheLimits, Keyring};
use crate::mint::{draw_job_id, draw_token};
use crate::number::MyNumber;
use crate::store::{AuditFilter, ChainHead, NewJob, NewRecord, RecordRow, Store, StoreError, WriteTx};
use crate::text::FreeText;

pub mod checkpoint;
mod collection;
mod offboarding;
mod retention;
mod revocation;
mod root_rotation;
mod rotation;
mod tenant_policy;

pub use collection::COLLECTION_PAGE_PRINCIPAL;
pub use offboarding::{ExportChunk, Shredded, TenantExport, EXPORT_PAGE};
pub use retention::{IssuedCertificate, PurgeItem, PurgeReport, PURGE_PRINCIPAL};
pub use root_rotation::{
    count_wrapped_keys, root_key_census, slot_context, RootKeyCensus, RootRotation, ROOT_ROTATION_PAGE,
};
pub use rotation::{
    KeyStatusPage, KeyVersionStatus, RewrapBatch, RotatedKey, TenantKeyStatus, DEFAULT_REWRAP_BATCH,
    DEFAULT_STATUS_PAGE, MAX_REWRAP_BATCH, MAX_STATUS_PAGE,
};

/// A random token collides with an existing one about never; retrying a few
/// times turns "about never" into "never".
const TOKEN_DRAWS: usize = 4;

/// Records one group commit writes at most: bounds the transaction (and
/// the time the write lock is held) whatever the queue holds.
const GROUP_COMMIT_MAX_RECORDS: usize = 4_096;

/// Entries per page when walking the chain.
pub const AUDIT_PAGE: u32 = 1_000;

/// A number's token, and whether this call created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The token.
    pub token: Token,
    /// Whether this call created it (false: the number was already known).
    pub created: bool,
}

/// A number released by a filing job.
pub struct Released {
    /// The token it was released for.
    pub token: Token,
    /// The twelve digits; wiped when dropped.
    pub number: Zeroizing<String>,
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Released").field("token", &self.token).field("number", &"[redacted]").finish()
    }
}

/// What the vault says about a token (never its number).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The token.
    pub token: Token,
    /// Its format.
    pub format: TokenFormat,
    /// Version of the record key it is sealed under.
    pub key_version: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A tenant as created.
#[derive(Debug, Clone)]
pub struct CreatedTenant {
    /// Identifier.
    pub tenant: TenantId,
    /// Human-readable name.
    pub display_name: FreeText,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Version of the record key new records use.
    pub primary_key_version: u32,
}

/// The vault's operations over one store.
pub struct VaultCore {
    store: Arc<dyn Store>,
    keyring: Keyring,
    /// Swapped whole by [`VaultCore::set_policy`]: each check sees one policy.
    policy: arc_swap::ArcSwap<Policy>,
    audit_key: Arc<AuditChainKey>,
    /// The vault's Ed25519 key: signed checkpoints (see `checkpoint`) and
    /// deletion certificates (see `retention`). Swapped whole by a rotation.
    signing: arc_swap::ArcSwap<mnvault_keys::VaultSigningKey>,
    /// The signing-key rotations the chain recorded when `signing` was
    /// loaded: one more in the chain means another replica rotated it.
    signing_rotations: std::sync::atomic::AtomicU64,
    integrity: Integrity,
    watch: futures::lock::Mutex<ChainWatch>,
    /// The revoked certificates as the watch last saw them, for every
    /// call's check without taking the watch's lock.
    revoked: arc_swap::ArcSwap<crate::revocation::Revocations>,
    /// Whether the watch found the chain broken: revocations appended after
    /// the break cannot be read, so calls are refused (see
    /// [`VaultCore::check_certificate`]). Never unset: a repaired database
    /// is served again by a restart, which verifies it whole.
    chain_broken: std::sync::atomic::AtomicBool,
    /// Unix milliseconds of the last catch-up that read the chain to its
    /// head: older than [`crate::revocation::REVOCATIONS_STALE_MS`], a
    /// revocation made on another replica may be missed, and calls wait.
    revocations_read_ms: std::sync::atomic::AtomicI64,
    watermark: Option<Arc<dyn Watermark>>,
    tokenize_queue: GroupCommit<QueuedTokenize>,
}

/// Where a vault process keeps, outside the database, the furthest position
/// of the audit chain it has verified. A database rolled back whole while the
/// vault was stopped (rows, log tail and head together) then shows at the
/// next start as a chain that ends before it, or forks from it.
pub trait Watermark: Send + Sync {
    /// The position saved last, if any.
    fn load(&self) -> Option<ChainHead>;
    /// Saves `head`; a failure is logged, never fatal.
    fn save(&self, head: &ChainHead);
}

impl VaultCore {
    /// The core over `store`. The system keys are loaded here, before
    /// anything can be appended or checked: a core without them cannot exist.
    pub async fn open(
        store: Arc<dyn Store>,
        provider: Arc<dyn RootKeyProvider>,
        policy: Policy,
    ) -> Result<Self, AuditKeyError> {
        let keys = load_system_keys(store.as_ref(), provider.as_ref()).await?;
        // Walk the chain once now, without holding any lock, so the first
        // decision only has to verify what was appended since.
        let mut watch = ChainWatch::default();
        let mut read = store.begin_read().await?;
        let head = read.audit_head().await?;
        watch.catch_up(read.as_mut(), &keys.audit_chain, &head).await?;
        if let Some(broken) = &watch.broken {
            tracing::error!(%broken, "the audit chain does not verify; only auditors of every tenant are served");
        }
        // Every entry this binary appends has a MAC: from the next one on, if none has yet.
        if watch.first_signed_form.is_none() {
            watch.first_signed_form = Some(watch.seq + 1);
        }
        let signing_rotations = watch.signing_rotations;
        drop(read);
        // Once a certificate was signed, a missing key was deleted, not never
        // made: a new one would leave those certificates with no key that
        // vouches for them, and nobody the wiser.
        // Checkpoints, too, are signed by it: a log that has some was signed before.
        let signed = watch.certified || store.begin_read().await?.latest_audit_checkpoint().await?.is_some();
        let signing = if signed {
            crate::keyring::load_signing_key(store.as_ref(), provider.as_ref()).await.map_err(|error| match error {
                AuditKeyError::SigningKeyMissing => AuditKeyError::SigningKeyLost,
                other => other,
            })?
        } else {
            crate::keyring::load_or_create_signing_key(store.as_ref(), provider.as_ref(), clock::now_ms()).await?
        };
        checkpoint::record_first_signing_key(store.as_ref(), &signing).await?;
        let keyring = Keyring::new(provider, store.clone()).with_primary_floor(watch.primary_floor.clone());
        let broken_at_start = watch.broken.clone();
        let core = Self {
            store,
            keyring,
            policy: arc_swap::ArcSwap::from_pointee(policy),
            audit_key: Arc::new(keys.audit_chain),
            signing: arc_swap::ArcSwap::from_pointee(signing),
            signing_rotations: std::sync::atomic::AtomicU64::new(signing_rotations),
            integrity: Integrity::new(keys.state),
            revoked: arc_swap::ArcSwap::new(watch.revocations.clone()),
            chain_broken: std::sync::atomic::AtomicBool::new(watch.broken.is_some()),
            revocations_read_ms: std::sync::atomic::AtomicI64::new(clock::now_ms()),
            watch: futures::lock::Mutex::new(watch),
            watermark: None,
            tokenize_queue: GroupCommit::new(GROUP_COMMIT_MAX_RECORDS),
        };
        // Counted like a break a decision finds; refresh counts only new ones.
        if let Some(broken) = broken_at_start {
            drop(core.integrity.tampered(format!("the audit log ({broken})")));
        }
        Ok(core)
    }

    /// Checks the chain against the position `watermark` saved before and
    /// keeps it up to date from now on. A chain that ends before that
    /// position, or holds another entry there, counts as broken: auditors
    /// of every tenant only, until a restart on a repaired database.
    pub async fn with_watermark(mut self, watermark: Arc<dyn Watermark>) -> Result<Self, StoreError> {
        if let Some(saved) = watermark.load() {
            let mut watch = self.watch.lock().await;
            if watch.broken.is_none() {
                let at_saved = if watch.seq < saved.seq {
                    None
                } else {
                    let filter =
                        AuditFilter { after_seq: saved.seq.saturating_sub(1), limit: 1, ..AuditFilter::default() };
                    let entry = self.store.begin_read().await?.audit_entries(&filter).await?.pop();
                    entry.filter(|entry| entry.seq == saved.seq).map(|entry| entry.hash)
                };
                if at_saved != Some(saved.hash) {
                    let broken = format!(
                        "it does not hold entry #{} as this host verified it before (the database was rolled back)",
                        saved.seq
                    );
                    tracing::error!(%broken, "the audit chain does not verify; only auditors of every tenant are served");
                    drop(self.integrity.tampered(format!("the audit log ({broken})")));
                    watch.broken = Some(broken);
                    self.publish_revocations(&watch);
                }
            }
        }
        self.watermark = Some(watermark);
        Ok(self)
    }

    /// Bounds the cache of unwrapped tenant keys; call right after `open`.
    pub fn with_key_cache(mut self, limits: KeyCacheLimits) -> Self {
        let floor = self.keyring.primary_floor().clone();
        self.keyring =
            Keyring::with_limits(self.keyring.provider().clone(), self.store.clone(), limits).with_primary_floor(floor);
        self
    }

    /// Saves what this process has verified, if it keeps a watermark.
    fn save_watermark(&self, watch: &ChainWatch) {
        if let (Some(watermark), None) = (&self.watermark, &watch.broken) {
            if watch.seq > 0 {
                watermark.save(&ChainHead { seq: watch.seq, hash: watch.hash });
            }
        }
    }

    /// How many stored objects failed their integrity check since start.
    pub fn integrity_failures(&self) -> u64 {
        self.integrity.failures()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Who may do what, now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Replaces the policy (a reload of `[principals]`): calls checked
    /// from now on are checked against `policy`.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The root key provider the keys are unwrapped with.
    pub fn root_key_provider(&self) -> &Arc<dyn RootKeyProvider> {
        self.keyring.provider()
    }

    /// Appends `draft` in a transaction of its own (calls that change
    /// nothing, refusals).
    pub async fn record(&self, draft: AuditDraft) -> Result<u64, VaultError> {
        let mut tx = self.store.begin_write().await?;
        let seq = append(tx.as_mut(), &self.audit_key, draft, clock::now_ms()).await?.seq;
        commit_audited(tx).await?;
        Ok(seq)
    }

    /// Creates a tenant with its own keys.
    pub async fn create_tenant(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        display_name: FreeText,
        draft: &AuditDraft,
    ) -> Result<CreatedTenant, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        let now = clock::now_ms();
        let new = self.keyring.new_tenant(tenant, display_name.as_str(), now)?;
        let mut tx = self.store.begin_write().await?;
        if !tx.insert_tenant(&new).await? {
            return Err(VaultError::FailedPrecondition(format!("tenant \"{tenant}\" already exists")));
        }
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
        Ok(CreatedTenant { tenant: tenant.clone(), display_name, created_at: now, primary_key_version: 1 })
    }

    /// Tokenizes valid numbers of one tenant and format in one transaction,
    /// with one audit entry naming every token. The same number in the same
    /// tenant and format always gets the same token, whoever writes first.
    ///
    /// Reading, sealing and drawing tokens happen first, concurrently with
    /// other calls; the write joins whatever else is committing now
    /// ([`crate::group_commit`]), so concurrent calls share one commit. The
    /// answer comes only after that commit. Should the shared batch fail
    /// (a token drawn twice somewhere in it, a store error), the call is
    /// written again on its own, so nobody else's failure becomes its own.
    pub async fn tokenize(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        format: TokenFormat,
        numbers: &[MyNumber],
        draft: &AuditDraft,
    ) -> Result<Vec<Tokenized>, VaultError> {
        self.authorize_tokenize(caller, tenant)?;
        let keys = self.keyring.tenant_keys(tenant).await?;
        // Every number gets a drawn record; the insert skips those whose
        // number is known, and the look-up after it names the holder. One
        // pass over the indexes instead of a read before and a look-up after.
        let work = || -> Result<TokenizeWork, VaultError> {
            let drawn = self.draw(&keys, format, numbers)?;
            Ok(TokenizeWork { tenant: tenant.clone(), format, drawn, draft: draft.clone() })
        };
        let (reply, answer) = oneshot::channel();
        let queued = QueuedTokenize { work: work()?, reply };
        let commit = |batch| self.commit_tokenize_batch(batch);
        match self.tokenize_queue.submit(queued, answer, commit).await {
            Some(GroupAnswer::Tokenized(tokenized)) => return Ok(tokenized),
            Some(GroupAnswer::Failed(error)) => return Err(error),
            Some(GroupAnswer::WriteAlone) | None => {}
        }
        for _ in 0..TOKEN_DRAWS {
            match self.commit_tokenize(vec![work()?]).await {
                Ok(mut answers) => return answers.pop().ok_or(VaultError::Internal),
                Err(TokenizeFailure::Collided) => continue, // draw again
                Err(TokenizeFailure::Failed(error)) => return Err(error),
            }
        }
        tracing::error!(%tenant, "token draws kept colliding");
        Err(VaultError::Internal)
    }

    /// Whether `caller` may tokenize for `tenant`: checked by
    /// [`VaultCore::tokenize`], and by the edge before it queues a call.
    pub fn authorize_tokenize(&self, caller: &Principal, tenant: &TenantId) -> Result<(), VaultError> {
        self.policy().require(caller, &[Role::Payroll], Some(tenant))
    }

    /// Leads one group commit and answers every member. A batch of one
    /// gets its own failure (a collision: draw again, alone); the members
    /// of a larger one are told to write themselves again alone.
    async fn commit_tokenize_batch(&self, batch: Vec<QueuedTokenize>) {
        let (works, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.work, q.reply)).unzip();
        match self.commit_tokenize(works).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(GroupAnswer::Tokenized(answer));
                }
            }
            Err(TokenizeFailure::Failed(error)) if replies.len() == 1 => {
                let _ = replies.into_iter().next().map(|reply| reply.send(GroupAnswer::Failed(error)));
            }
            Err(failure) => {
                if let TokenizeFailure::Failed(error) = &failure {
                    tracing::warn!(%error, calls = replies.len(), "a group commit failed; each call is written again alone");
                }
                for reply in replies {
                    let _ = reply.send(GroupAnswer::WriteAlone);
                }
            }
        }
    }

    /// Writes tokenize calls in one transaction: their new records (one
    /// insert and one look-up per tenant and format), then an audit entry
    /// per call, then one commit. Answers are in the order of `works`.
    async fn commit_tokenize(&self, works: Vec<TokenizeWork>) -> Result<Vec<Vec<Tokenized>>, TokenizeFailure> {
        let mut tx = self.store.begin_write().await?;
        let now = clock::now_ms();
        let mut answers: Vec<Vec<Option<Tokenized>>> = works.iter().map(|work| vec![None; work.drawn.len()]).collect();
        let mut groups: Vec<RecordGroup> = Vec::new();
        let mut drafts = Vec::with_capacity(works.len());
        for (call, work) in works.into_iter().enumerate() {
            let TokenizeWork { tenant, format, drawn, draft } = work;
            let group = match groups.iter().position(|g| g.tenant == tenant && g.format == format) {
                Some(group) => group,
                None => {
                    groups.push(RecordGroup { tenant: tenant.clone(), format, records: Vec::new(), slots: Vec::new() });
                    groups.len() - 1
                }
            };
            let group = &mut groups[group];
            for (position, Drawn { blind_index, token, key_version, sealed }) in drawn.into_iter().enumerate() {
                let tag = self.integrity.record_tag(&tenant, &token, format, &blind_index.0, key_version, now);
                group.records.push(NewRecord { blind_index, token, key_version, sealed, tag });
                group.slots.push((call, position));
            }
            drafts.push(draft);
        }
        // Groups in one order on every replica, so two batches never wait
        // for each other's rows in opposite orders.
        groups.sort_by(|a, b| (&a.tenant, a.format).cmp(&(&b.tenant, b.format)));
        for RecordGroup { tenant, format, records, slots } in &groups {
            if records.is_empty() {
                continue;
            }
            let holders = self.write_records(tx.as_mut(), tenant, *format, records, now).await?;
            for ((record, &(call, position)), token) in records.iter().zip(slots).zip(holders) {
                answers[call][position] = Some(Tokenized { created: token == record.token, token });
            }
        }
        let answers = answers
            .into_iter()
            .map(|answer| answer.into_iter().collect::<Option<Vec<Tokenized>>>().ok_or(VaultError::Internal))
            .collect::<Result<Vec<_>, _>>()?;
        let drafts = drafts
            .into_iter()
            .zip(&answers)
            .map(|(draft, tokenized)| AuditDraft {
                tokens: tokenized.iter().map(|t| t.token.clone()).collect(),
                record_count: tokenized.len() as u64,
                ..draft
            })
            .collect();
        append_all(tx.as_mut(), &self.audit_key, drafts, now).await?;
        commit_audited(tx).await?;
        Ok(answers)
    }

    /// Inserts one tenant's and format's new records and returns, for each,
    /// the token that holds its number now: its own, an earlier one, or a
    /// concurrent writer's. The one way records are written, by tokenize and
    /// by a collection's submit alike.
    async fn write_records(
        &self,
        tx: &mut dyn WriteTx,
        tenant: &TenantId,
        format: TokenFormat,
        records: &[NewRecord],
        now: i64,
    ) -> Result<Vec<Token>, TokenizeFailure> {
        offboarding::refuse_if_shredded(tx, tenant).await?;
        tx.insert_records(tenant, format, records, now).await?;
        let indexes: Vec<BlindIndex> = records.iter().map(|r| r.blind_index).collect();
        let holders = tx.records_by_blind_index(tenant, format, &indexes).await?;
        let holders = self.holders(tenant, &indexes, holders)?;
        // Nobody holds an index: our row lost on the token itself.
        holders.into_iter().map(|holder| holder.ok_or(TokenizeFailure::Collided)).collect()
    }

    /// What the vault knows about a token, never its number.
    pub async fn describe_token(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        token: &Token,
    ) -> Result<TokenInfo, VaultError> {
        let roles = [Role::Payroll, Role::Requester, Role::Approver, Role::Filer, Role::Auditor];
        self.policy().require(caller, &roles, Some(tenant))?;
        self.keyring.tenant_keys(tenant).await?;
        let row = self
            .store
            .begin_read()
            .await?
            .record(tenant, token)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("the token does not exist in tenant \"{tenant}\"")))?;
        let record = self.check_record(tenant, token, &row)?;
        Ok(TokenInfo {
            token: record.token,
            format: record.format,
            key_version: record.key_version,
            created_at: record.created_at,
        })
    }

    /// Creates a filing job, within the tenant's policy. It releases
    /// nothing until as many persons as the policy asks, none of them
    /// `caller`, approve it.
    pub async fn create_job(
        &self,
        caller: &Principal,
        request: &JobRequest,
        draft: &mut AuditDraft,
    ) -> Result<Job, VaultError> {
        let tenant = &request.tenant;
        self.policy().require(caller, &[Role::Requester], Some(tenant))?;
        // The terms are checked once without the policy, so that only a
        // well-formed request has its tokens looked up and recorded.
        let (terms, tokens) = request.terms(draw_job_id(), caller, 1, clock::now_ms())?;
        // Only an authorised, well-formed request has its tokens recorded, and
        // only those that exist: a mistyped number parses as a legacy token.
        draft.job_id = Some(terms.job_id.clone());
        draft.record_count = tokens.len() as u64;
        self.keyring.tenant_keys(tenant).await?;
        let existing = self.store.begin_read().await?.existing_tokens(tenant, &tokens).await?;
        draft.tokens = tokens.iter().filter(|t| existing.contains(t.as_str())).cloned().collect();
        let mut read = self.store.begin_read().await?;
        self.refuse_purged(read.as_mut(), tenant, &request.tokens, |t| !existing.contains(t.as_str()), "request")
            .await?;
        if let Some(first) = tokens.iter().find(|t| !existing.contains(t.as_str())) {
            let position = request.tokens.iter().position(|t| t == first).map_or(0, |p| p + 1);
            return Err(VaultError::NotFound(format!(
                "{} of the {} token(s) do not exist in tenant \"{tenant}\"; the first is token #{position} of the \
                 request",
                tokens.len() - draft.tokens.len(),
                tokens.len()
            )));
        }
        let mut tx = self.store.begin_write().await?;
        offboarding::refuse_if_shredded(tx.as_mut(), tenant).await?;
        // The policy as the verified chain last changed it, read under the chain head's lock.
        drop(self.caught_up(tx.as_mut()).await?);
        let policy = self.applied_policy(tx.as_mut(), tenant).await?.policy;
        let now = clock::now_ms();
        if request.purpose != crate::purpose::Purpose::TenantExport {
            policy.check_job(tenant, request.purpose, tokens.len(), request.expires_at - now)?;
        }
        let terms = JobTerms { approvals_required: policy.approvals_required, created_at: now, ..terms };
        let terms_tag = self.integrity.terms_tag(&terms, &tokens);
        let job = Job {
            terms,
            approved: None,
            earlier_approvals: Vec::new(),
            cancelled: None,
            tokens: tokens.iter().map(|t| (t.clone(), 0)).collect(),
            state_seq: 0,
        };
        let state_tag = self.integrity.state_tag(&job, &terms_tag);
        tx.insert_job(&NewJob { terms: job.terms.clone(), tokens, terms_tag, state_tag }).await?;
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
        Ok(job)
    }

    /// A job, if `caller` may see it with one of `roles`. Names the job's
    /// tenant and purpose in `draft` as soon as they are known.
    pub async fn open_job(
        &self,
        caller: &Principal,
        job_id: &JobId,
        roles: &[Role],
        draft: &mut AuditDraft,
    ) -> Result<Job, VaultError> {
        draft.job_id = Some(job_id.clone());
        let row = self.store.begin_read().await?.job(job_id).await;
        let row = row.map_err(self.unreadable(|| format!("filing job {job_id}")))?;
        let job = self.integrity.check_job(row.ok_or_else(|| not_found(job_id))?)?;
        draft.tenant = Some(job.terms.tenant.clone());
        draft.purpose = Some(job.terms.purpose);
        self.policy().require(caller, roles, Some(&job.terms.tenant))?;
        Ok(job)
    }

    /// Approves a pending job as `caller`, who must not be its creator.
    pub async fn approve_job(
        &self,
        caller: &Principal,
        job_id: &JobId,
        draft: &mut AuditDraft,
    ) -> Result<Job, VaultError> {
        self.open_job(caller, job_id, &[Role::Approver], draft).await?;
        let mut tx = self.store.begin_write().await?;
        let (mut job, terms_tag, now) = self.lock_job(tx.as_mut(), job_id).await?;
        job.check_approval(caller, now)?;
        if job.add_approval(Stamp { by: caller.clone(), at: now }) {
            tx.set_job_approved(job_id, caller, now).await?;
        } else {
            tx.set_job_earlier_approvals(job_id, &crate::job::encode_approvals(&job.earlier_approvals)).await?;
        }
        self.commit_job_change(tx, &mut job, &terms_tag, draft, now).await?;
        Ok(job)
    }

    /// Cancels a job; nothing more can be released from it.
    pub async fn cancel_job(
        &self,
        caller: &Principal,
        job_id: &JobId,
        draft: &mut AuditDraft,
    ) -> Result<Job, VaultError> {
        self.open_job(caller, job_id, &[Role::Requester, Role::Approver], draft).await?;
        let mut tx = self.store.begin_write().await?;
        let (mut job, terms_tag, now) = self.lock_job(tx.as_mut(), job_id).await?;
        job.check_cancel()?;
        tx.set_job_cancelled(job_id, caller, now).await?;
        job.cancelled = Some(Stamp { by: caller.clone(), at: now });
        self.commit_job_change(tx, &mut job, &terms_tag, draft, now).await?;
        Ok(job)
    }

    /// Cancels, as `by`, every job not cancelled yet, each in its own
    /// audited transaction with `reason`; returns the jobs cancelled. After a restore the release counts are the
    /// backup's: releases made after it are gone from them, so a job left
    /// open could release the same numbers again. New jobs, approved anew by
    /// a second person, are the way on.
    pub async fn cancel_open_jobs(&self, by: &Principal, reason: &str) -> Result<Vec<JobId>, VaultError> {
        let mut cancelled = Vec::new();
        let mut after = String::new();
        loop {
            let ids = self.store.begin_read().await?.job_ids(&after, AUDIT_PAGE).await?;
            let Some(last) = ids.last() else { return Ok(cancelled) };
            after = last.clone();
            for id in ids {
                // A row whose id does not parse is tampering that `verify_state` names.
                let Ok(job_id) = JobId::parse(&id) else { continue };
                let mut tx = self.store.begin_write().await?;
                let (mut job, terms_tag, now) = self.lock_job(tx.as_mut(), &job_id).await?;
                // An expired job is cancelled too: expiry is judged by each
                // replica's clock, and clocks disagree or get corrected.
                if job.state(now) == JobState::Cancelled {
                    continue;
                }
                let mut draft = AuditDraft::by(by, Operation::CancelFilingJob, Some(&job.terms.tenant));
                draft.job_id = Some(job_id.clone());
                draft.purpose = Some(job.terms.purpose);
                draft.reason = reason.to_owned();
                tx.set_job_cancelled(&job_id, by, now).await?;
                job.cancelled = Some(Stamp { by: by.clone(), at: now });
                self.commit_job_change(tx, &mut job, &terms_tag, &draft, now).await?;
                cancelled.push(job_id);
            }
        }
    }

    /// Releases `asked` (every listed token when empty) from an approved job.
    /// The release is counted and audited in one transaction, which commits
    /// before the numbers are returned. All or nothing.
    pub async fn release(
        &self,
        caller: &Principal,
        job_id: &JobId,
        asked: &[Token],
        draft: &mut AuditDraft,
    ) -> Result<Vec<Released>, VaultError> {
        // Tokens are recorded only once the caller is authorised for the job,
        // and only those the job lists (the rest are counted, not written down).
        let listed = self.open_job(caller, job_id, &[Role::Filer], draft).await?;
        // Which tokens a job lists never changes, so this may be read before the lock.
        let tokens = listed.tokens_to_release(asked);
        draft.tokens = listed.listed_of(&tokens);
        draft.record_count = tokens.len() as u64;
        let tenant = &listed.terms.tenant;
        let keys = self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_write().await?;
        let (mut job, terms_tag, now) = self.lock_job(tx.as_mut(), job_id).await?;
        job.check_release(&tokens, now)?;
        // The chain head is locked and verified up to it: the counts are every committed release.
        let applied = self.applied_policy(tx.as_mut(), tenant).await?;
        let watch = self.watch.lock().await;
        let person = caller.person_key();
        let count = tokens.len() as u64;
        applied.policy.check_release(tenant, job.terms.purpose, &person, count, &watch.releases, now)?;
        drop(watch);
        offboarding::refuse_if_shredded(tx.as_mut(), tenant).await?;
        let counted = tx.count_releases(job_id, &tokens, job.terms.max_releases_per_token).await?;
        if counted != tokens.len() as u64 {
            // The job row is locked, so only a store that breaks its contract gets here.
            tracing::error!(%job_id, counted, asked = tokens.len(), "release count disagrees with the locked job");
            return Err(VaultError::Internal);
        }
        let mut sealed: std::collections::HashMap<String, (RecordRow, Vec<u8>)> = tx
            .sealed_records(tenant, &tokens)
            .await?
            .into_iter()
            .map(|(row, sealed)| (row.token.clone(), (row, sealed)))
            .collect();
        // Records sealed or rewrapped on another replica may name a version added after our keys were cached.
        let versions = sealed.values().filter_map(|(_, record)| mnvault_keys::sealed_key_version(record).ok());
        let keys = self.keyring.keys_holding(tenant, keys, versions.collect::<Vec<_>>()).await?;
        self.refuse_purged(tx.as_mut(), tenant, &tokens, |t| !sealed.contains_key(t.as_str()), "release").await?;
        let mut released = Vec::with_capacity(tokens.len());
        // A listed token may be named, but also by position: a legacy token is
        // twelve digits, which redaction hides.
        for (position, token) in (1usize..).zip(&tokens) {
            let (row, record) = sealed.remove(token.as_str()).ok_or_else(|| {
                tracing::error!(%job_id, %token, "a listed token has no record");
                VaultError::DataLoss(format!(
                    "the stored record of token #{position} of the release ({token}) is missing, so nothing was \
                     released; tell the vault's operator"
                ))
            })?;
            self.check_record(tenant, token, &row)?;
            let number = open_record(&keys, token, position, &record, &row.blind_index)?;
            released.push(Released { token: token.clone(), number });
        }
        let asked: std::collections::HashSet<&Token> = tokens.iter().collect();
        for (token, releases) in &mut job.tokens {
            if asked.contains(&*token) {
                *releases += 1;
            }
        }
        self.commit_job_change(tx, &mut job, &terms_tag, draft, now).await?;
        Ok(released)
    }

    /// Entries matching `filter`, if `caller` may audit them: an auditor of
    /// the tenant named, or of every tenant when none is.
    pub async fn audit_entries(
        &self,
        caller: &Principal,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, VaultError> {
        self.require_auditor(caller, filter.tenant.as_ref())?;
        Ok(self.store.begin_read().await?.audit_entries(filter).await?)
    }

    /// Checks every stored record and job, if `caller` audits every tenant.
    pub async fn verify_state(&self, caller: &Principal) -> Result<StateReport, VaultError> {
        self.require_auditor(caller, None)?;
        Ok(verify_state(self.store.as_ref(), &self.audit_key, &self.integrity, |_| {}).await?)
    }

    /// Walks the whole chain, if `caller` audits every tenant.
    pub async fn verify_chain(&self, caller: &Principal) -> Result<Result<VerifiedChain, ChainBreak>, VaultError> {
        self.require_auditor(caller, None)?;
        Ok(verify_chain(self.store.as_ref(), &self.audit_key, |_| {}).await?)
    }

    fn require_auditor(&self, caller: &Principal, tenant: Option<&TenantId>) -> Result<(), VaultError> {
        let policy = self.policy();
        policy.require(caller, &[Role::Auditor], tenant)?;
        if tenant.is_none() && !policy.covers_all_tenants(caller) {
            return Err(VaultError::PermissionDenied(format!(
                "principal {caller} may audit only some tenants; name one"
            )));
        }
        Ok(())
    }
}

fn not_found(job_id: &JobId) -> VaultError {
    VaultError::NotFound(format!("filing job {job_id} does not exist"))
}

impl VaultCore {
    /// Locks the job row and checks its tags, then locks the chain head and
    /// checks that the job's state is not older than the last change of it
    /// in the audit chain as this process verified it (never a query over
    /// columns a database writer could edit); then reads the clock, so the
    /// decision is taken at a time no earlier than the locks. Returns the
    /// job's terms tag too, for tagging its next state.
    async fn lock_job(&self, tx: &mut dyn WriteTx, job_id: &JobId) -> Result<(Job, [u8; 32], i64), VaultError> {
        let row = tx.lock_job(job_id).await.map_err(self.unreadable(|| format!("filing job {job_id}")))?;
        let (job, terms_tag) = self.integrity.check_job_and_terms(row.ok_or_else(|| not_found(job_id))?)?;
        // Job row, then chain head: the order every writer takes them in.
        let watch = self.caught_up(tx).await?;
        self.integrity.check_not_rolled_back(&job, watch.last_change.get(job_id.as_str()).copied())?;
        drop(watch);
        Ok((job, terms_tag, clock::now_ms()))
    }

    /// Locks the chain head in `tx` and verifies the chain up to it: what
    /// the returned watch holds is then every committed entry. Refuses once
    /// the chain does not verify.
    async fn caught_up(&self, tx: &mut dyn WriteTx) -> Result<futures::lock::MutexGuard<'_, ChainWatch>, VaultError> {
        let head = tx.lock_chain_head().await?;
        let mut watch = self.watch.lock().await;
        watch.catch_up(tx, &self.audit_key, &head).await?;
        self.verified(&watch)?;
        Ok(watch)
    }

    /// After a catch-up: hands on what `watch` learned (revocations, a
    /// break), then refuses a chain that does not verify, or saves how far
    /// it does.
    fn verified(&self, watch: &ChainWatch) -> Result<(), VaultError> {
        self.publish_revocations(watch);
        if let Some(broken) = &watch.broken {
            return Err(self.integrity.tampered(format!("the audit log ({broken})")));
        }
        self.save_watermark(watch);
        Ok(())
    }

    /// Hands the calls' check the watch's revocations when they changed,
    /// and whether the chain broke (after which they are incomplete).
    fn publish_revocations(&self, watch: &ChainWatch) {
        if !Arc::ptr_eq(&self.revoked.load(), &watch.revocations) {
            self.revoked.store(watch.revocations.clone());
        }
        if watch.broken.is_some() {
            self.chain_broken.store(true, std::sync::atomic::Ordering::Release);
        } else {
            self.revocations_read_ms.fetch_max(clock::now_ms(), std::sync::atomic::Ordering::Release);
        }
    }

    /// Ends a decision that changed `job`: appends its entry, tags the job's
    /// new state naming that entry, commits, and notes the entry as verified.
    async fn commit_job_change(
        &self,
        mut tx: Box<dyn WriteTx>,
        job: &mut Job,
        terms_tag: &[u8; 32],
        draft: &AuditDraft,
        now: i64,
    ) -> Result<(), VaultError> {
        let job_id = job.terms.job_id.clone();
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        // Every change of a job (creation aside), releases first, is signed
        // before it commits: lock_job verified the chain up to here.
        self.sign_head(tx.as_mut(), &entry, now).await?;
        job.state_seq = entry.seq;
        tx.set_job_state(&job_id, job.state_seq, &self.integrity.state_tag(job, terms_tag)).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok(())
    }

    /// Notes a committed change, recorded by `entry` from `draft` at
    /// `time_ms`, as verified: this process sealed it right after the head
    /// it had verified under the same lock. Without this, cutting the log
    /// back to just before it would go unseen until the next decision read
    /// past it. Only changes of a job, of a tenant's policy and revocations
    /// come here.
    async fn witness(&self, entry: &ChainHead, draft: &AuditDraft, time_ms: i64) {
        let mut watch = self.watch.lock().await;
        if watch.broken.is_none() && watch.seq + 1 == entry.seq {
            (watch.seq, watch.hash) = (entry.seq, entry.hash);
            if let Some(job_id) = &draft.job_id {
                watch.last_change.insert(job_id.to_string(), entry.seq);
            }
            let principal = draft.principal.as_ref().map(|p| p.to_string()).unwrap_or_default();
            let tenant = draft.tenant.as_ref().map(|t| t.as_str()).unwrap_or_default();
            watch.note_entry(&Noted {
                seq: entry.seq,
                time_ms,
                operation: draft.operation.id(),
                outcome: draft.outcome.id(),
                principal: &principal,
                tenant,
                record_count: draft.record_count,
                // What the entry holds, as every other replica reads it.
                reason: &crate::number::redact_numbers(&draft.reason),
            });
            self.save_watermark(&watch);
            self.publish_revocations(&watch);
        }
    }

    /// A row that does not even decode (a value of the wrong type written
    /// into the database) is tampering with `object`, not an internal error.
    fn unreadable<'a>(&'a self, object: impl FnOnce() -> String + 'a) -> impl FnOnce(StoreError) -> VaultError + 'a {
        move |error| match error {
            StoreError::Corrupt { what } => {
                tracing::error!(what, "a stored value does not decode");
                self.integrity.tampered(object())
            }
            other => other.into(),
        }
    }

    /// The checked token of each row found for `indexes`.
    fn holders(
        &self,
        tenant: &TenantId,
        indexes: &[BlindIndex],
        rows: Vec<Option<RecordRow>>,
    ) -> Result<Vec<Option<Token>>, VaultError> {
        rows.iter()
            .zip(indexes)
            .map(|(row, index)| {
                row.as_ref()
                    .map(|row| self.integrity.check_record(tenant, row, Some(&index.0)).map(|record| record.token))
                    .transpose()
            })
            .collect()
    }

    /// The checked record of `token`, found by its token.
    fn check_record(
        &self,
        tenant: &TenantId,
        token: &Token,
        row: &RecordRow,
    ) -> Result<crate::integrity::CheckedRecord, VaultError> {
        let record = self.integrity.check_record(tenant, row, None)?;
        if &record.token != token {
            tracing::error!(%token, "the store answered another token's row");
            return Err(VaultError::Internal);
        }
        Ok(record)
    }

    /// A fresh token and the sealed number for each number. The tag waits
    /// for the commit, which fixes the creation time.
    fn draw(&self, keys: &TenantKeys, format: TokenFormat, numbers: &[MyNumber]) -> Result<Vec<Drawn>, VaultError> {
        numbers
            .iter()
            .map(|number| {
                let token = draw_token(format);
                let sealed = keys.seal(token.as_str(), number.expose_bytes()).map_err(|error| {
                    tracing::error!(%error, "sealing failed");
                    VaultError::Internal
                })?;
                let blind_index = keys.blind_index(number.expose_bytes());
                Ok(Drawn { blind_index, token, key_version: keys.primary_version(), sealed })
            })
            .collect()
    }
}

/// A record drawn for a number, sealed, not yet tagged.
struct Drawn {
    blind_index: BlindIndex,
    token: Token,
    key_version: u32,
    sealed: Vec<u8>,
}

/// One tokenize call, ready to write: no number in it, only what was
/// sealed.
struct TokenizeWork {
    tenant: TenantId,
    format: TokenFormat,
    /// A drawn record for each number, by position.
    drawn: Vec<Drawn>,
    draft: AuditDraft,
}

/// A call waiting in the group commit queue.
struct QueuedTokenize {
    work: TokenizeWork,
    reply: oneshot::Sender<GroupAnswer>,
}

/// What a group commit answers a member.
enum GroupAnswer {
    /// Committed.
    Tokenized(Vec<Tokenized>),
    /// The member's own failure (it was alone in the batch).
    Failed(VaultError),
    /// Not committed: write again alone.
    WriteAlone,
}

impl Queued for QueuedTokenize {
    fn weight(&self) -> usize {
        self.work.drawn.len()
    }
    fn abandoned(&self) -> bool {
        self.reply.is_canceled()
    }
}

/// New records of one tenant and format in a group commit, and where each
/// one's answer goes: (call, position).
struct RecordGroup {
    tenant: TenantId,
    format: TokenFormat,
    records: Vec<NewRecord>,
    slots: Vec<(usize, usize)>,
}

/// Why a tokenize transaction did not commit.
enum TokenizeFailure {
    /// A drawn token was taken: draw again.
    Collided,
    /// Anything else.
    Failed(VaultError),
}

impl From<VaultError> for TokenizeFailure {
    fn from(error: VaultError) -> Self {
        TokenizeFailure::Failed(error)
    }
}

impl From<StoreError> for TokenizeFailure {
    fn from(error: StoreError) -> Self {
        TokenizeFailure::Failed(error.into())
    }
}

/// Opens a record's sealed number. The number must be the one the row's
/// blind index (which its tag covers) names: a token's number can change
/// (a re-issue), and sealed bytes put back from before the change open
/// under the same token and key, but name another number.
fn open_record(
    keys: &TenantKeys,
    token: &Token,
    position: usize,
    sealed: &[u8],
    blind_index: &[u8],
) -> Result<Zeroizing<String>, VaultError> {
    let integrity = || {
        tracing::error!(%token, "stored record failed its integrity check");
        VaultError::DataLoss(format!(
            "the stored record of token #{position} ({token}) failed its integrity check, so nothing was released \
             or changed; tell the vault's operator"
        ))
    };
    let plain = keys.open(token.as_str(), sealed).map_err(|_| integrity())?;
    if keys.blind_index(&plain).0.as_slice() != blind_index {
        return Err(integrity());
    }
    let digits = std::str::from_utf8(&plain).map_err(|_| integrity())?;
    Ok(Zeroizing::new(digits.to_owned()))
}

/// The audit append protocol, the one place an entry is written: lock the
/// chain head, seal the entry after it, insert it, move the head. Runs inside
/// the caller's transaction, so the entry commits with what it records. A
/// database failure here is an unwritable audit log, and the call fails.
pub async fn append(
    tx: &mut dyn WriteTx,
    key: &AuditChainKey,
    draft: AuditDraft,
    now: i64,
) -> Result<ChainHead, VaultError> {
    append_all(tx, key, vec![draft], now).await
}

/// [`append`] for several entries at once (a group commit's): one head
/// lock, the entries chained one after another, one move of the head.
pub async fn append_all(
    tx: &mut dyn WriteTx,
    key: &AuditChainKey,
    drafts: Vec<AuditDraft>,
    now: i64,
) -> Result<ChainHead, VaultError> {
    let result = async {
        let mut head = tx.lock_chain_head().await?;
        let mut entries = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let entry = AuditRecord::seal(draft, head.seq + 1, now, head.hash, key);
            head = ChainHead { seq: entry.seq, hash: entry.hash };
            entries.push(entry);
        }
        tx.insert_audit_entries(&entries).await?;
        tx.set_chain_head(&head).await?;
        Ok::<_, StoreError>(head)
    }
    .await;
    result.map_err(audit_failure)
}

/// Commits a transaction that holds an audit entry. A failed commit (disk
/// full, I/O error) means the entry was not written: the call fails and
/// nothing it did took effect.
pub async fn commit_audited(tx: Box<dyn WriteTx>) -> Result<(), VaultError> {
    tx.commit().await.map_err(audit_failure)
}

/// Busy and unreachable stay what they are (retry shortly); anything else
/// while writing the audit entry means the log could not be written.
fn audit_failure(error: StoreError) -> VaultError {
    match error {
        StoreError::Unavailable(_) => error.into(),
        other => VaultError::audit_unwritable(&other),
    }
}

/// Walks the whole chain in pages, up to the head read at the start (the
/// vault may be appending meanwhile); `progress` is told how many entries
/// have been checked so far.
pub async fn verify_chain(
    store: &dyn Store,
    key: &AuditChainKey,
    mut progress: impl FnMut(u64) + Send,
) -> Result<Result<VerifiedChain, ChainBreak>, StoreError> {
    let head = store.begin_read().await?.audit_head().await?;
    let mut verifier = ChainVerifier::new(key);
    let mut filter = AuditFilter { limit: AUDIT_PAGE, ..AuditFilter::default() };
    let mut checked = 0;
    while filter.after_seq < head.seq {
        filter.limit = AUDIT_PAGE.min((head.seq - filter.after_seq).try_into().unwrap_or(AUDIT_PAGE));
        let page = store.begin_read().await?.audit_entries(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        for entry in page.iter().filter(|entry| entry.seq <= head.seq) {
            if let Err(broken) = verifier.check(entry) {
                return Ok(Err(broken));
            }
            checked += 1;
        }
        progress(checked);
    }
    Ok(verifier.finish(head.seq, &head.hash))
}

/// Most tampered objects [`verify_state`] names; the rest are counted.
pub const MAX_NAMED_TAMPERED: usize = 100;

/// What [`verify_state`] found.
#[derive(Debug, Default)]
pub struct StateReport {
    /// Record rows checked.
    pub records: u64,
    /// Filing jobs checked.
    pub jobs: u64,
    /// How many failed their check.
    pub tampered: u64,
    /// What failed, named (the first [`MAX_NAMED_TAMPERED`]).
    pub named: Vec<String>,
}

impl StateReport {
    fn failed(&mut self, error: VaultError) -> Result<(), StoreError> {
        match error {
            VaultError::DataLoss(message) => {
                self.tampered += 1;
                if self.named.len() < MAX_NAMED_TAMPERED {
                    self.named.push(message);
                }
                Ok(())
            }
            other => Err(StoreError::Database(other.to_string().into())),
        }
    }
}

/// Checks the state tag of every record and every filing job, and that no
/// job's state is older than its audit log, in pages; `progress` is told how
/// many objects have been checked so far.
pub async fn verify_state(
    store: &dyn Store,
    audit_key: &AuditChainKey,
    integrity: &Integrity,
    mut progress: impl FnMut(u64) + Send,
) -> Result<StateReport, StoreError> {
    let mut report = StateReport::default();
    // Each job's last change, from the entries of the chain that verify.
    let mut watch = ChainWatch::default();
    let mut read = store.begin_read().await?;
    let head = read.audit_head().await?;
    watch.catch_up(read.as_mut(), audit_key, &head).await?;
    drop(read);
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store
            .begin_read()
            .await?
            .record_rows(after.as_ref().map(|(tenant, token)| (tenant.as_str(), token.as_str())), AUDIT_PAGE)
            .await;
        let page = match page {
            Ok(page) => page,
            Err(StoreError::Corrupt { what }) => {
                // One undecodable row hides its page from a paged walk; name it and go on to the jobs.
                report
                    .failed(integrity.tampered(format!(
                        "a record row ({what} does not decode; records after it were not checked)"
                    )))?;
                break;
            }
            Err(other) => return Err(other),
        };
        let Some((tenant, row)) = page.last() else { break };
        after = Some((tenant.clone(), row.token.clone()));
        for (tenant, row) in &page {
            report.records += 1;
            let checked = match TenantId::parse(tenant) {
                Ok(tenant) => integrity.check_record(&tenant, row, None).map(|_| ()),
                Err(_) => Err(integrity.tampered("a record of a tenant whose name does not parse".into())),
            };
            if let Err(error) = checked {
                report.failed(error)?;
            }
        }
        progress(report.records);
    }
    let mut after = String::new();
    loop {
        let ids = store.begin_read().await?.job_ids(&after, AUDIT_PAGE).await?;
        let Some(last) = ids.last() else { break };
        after = last.clone();
        for id in &ids {
            report.jobs += 1;
            let Ok(job_id) = JobId::parse(id) else {
                report.failed(integrity.tampered("a filing job whose id does not parse".into()))?;
                continue;
            };
            let row = match store.begin_read().await?.job(&job_id).await {
                Ok(Some(row)) => row,
                Ok(None) => continue,
                Err(StoreError::Corrupt { .. }) => {
                    report.failed(integrity.tampered(format!("filing job {job_id}")))?;
                    continue;
                }
                Err(other) => return Err(other),
            };
            let checked = integrity
                .check_job(row)
                .and_then(|job| integrity.check_not_rolled_back(&job, watch.last_change.get(id).copied()));
            if let Err(error) = checked {
                report.failed(error)?;
            }
        }
        progress(report.records + report.jobs);
    }
    Ok(report)
}

/// The fields of one verified entry (or of the draft this process just
/// appended) that [`ChainWatch::note_entry`] reads.
#[derive(Clone, Copy)]
struct Noted<'a> {
    seq: u64,
    time_ms: i64,
    operation: &'a str,
    outcome: &'a str,
    principal: &'a str,
    tenant: &'a str,
    record_count: u64,
    reason: &'a str,
}

/// What this process has verified of the audit chain, and from it the last
/// allowed change of each filing job. The rollback check trusts only this:
/// entries verified under the chain key, never a query over columns a
/// database writer could edit for the length of one call.
#[derive(Debug, Default)]
struct ChainWatch {
    /// Last entry verified (0: none).
    seq: u64,
    /// Its hash.
    hash: [u8; 32],
    /// Why the chain stopped verifying; sticky until the process restarts.
    broken: Option<String>,
    /// Job id → sequence number of its last allowed change.
    last_change: std::collections::HashMap<String, u64>,
    /// Each token's last `SetRetention`, from the same verified entries.
    retention: retention::RetentionWatch,
    /// Each tenant's rotations, from the same verified entries; shared with the keyring.
    primary_floor: Arc<crate::keyring::PrimaryFloor>,
    /// Whether a verified entry records a deletion certificate issued.
    certified: bool,
    /// The first verified entry of the current form (with a MAC).
    first_signed_form: Option<u64>,
    /// Signing-key rotations the verified entries record.
    signing_rotations: u64,
    /// Tenant → sequence number of its last approved policy change.
    policy_changes: std::collections::HashMap<String, u64>,
    /// Tenant → sequence number of its last proposed policy change.
    policy_proposals: std::collections::HashMap<String, u64>,
    /// Numbers released, by person and by tenant, from the verified entries.
    releases: crate::tenant_policy::ReleaseCounts,
    /// Client certificates revoked, from the same entries; shared whole
    /// with the calls' check (`VaultCore::revoked`), copied on a change.
    revocations: Arc<crate::revocation::Revocations>,
    /// Collection id → sequence number of its last change (created,
    /// submitted, cancelled, expired).
    collection_changes: std::collections::HashMap<String, u64>,
}

impl ChainWatch {
    /// Notes what the vault's own decisions read from one verified entry:
    /// numbers released (by person and tenant), policy changes proposed and
    /// approved, certificates revoked.
    /// The one place both the chain walk and [`VaultCore::witness`] count.
    fn note_entry(&mut self, entry: &Noted<'_>) {
        if entry.outcome != CHANGED.id() {
            return;
        }
        let Noted { seq, time_ms, operation, principal, tenant, .. } = *entry;
        if operation == Operation::Detokenize.id() {
            // An entry's principal parsed when it was written; one that no longer does is counted as itself.
            let person = Principal::parse_recorded(principal);
            let person = person.as_ref().map_or_else(|_| crate::id::person_key(principal), Principal::person_key);
            self.releases.note(&person, tenant, time_ms, entry.record_count);
        } else if operation == Operation::ApproveTenantPolicy.id() {
            self.policy_changes.insert(tenant.to_owned(), seq);
        } else if operation == Operation::ProposeTenantPolicy.id() {
            self.policy_proposals.insert(tenant.to_owned(), seq);
        } else if operation == Operation::RevokeCertificate.id() {
            Arc::make_mut(&mut self.revocations).note(seq, time_ms, principal, entry.reason);
        } else if crate::collection::COLLECTION_CHANGES.iter().any(|change| change.id() == operation) {
            if let Some(id) = crate::collection::collection_of_reason(entry.reason) {
                self.collection_changes.insert(id.to_string(), seq);
            }
        }
    }

    /// Verifies the entries after those already verified, up to `head`, and
    /// notes the changes of jobs they record. A head behind what was already
    /// verified (a truncated tail) breaks the chain too.
    async fn catch_up<R: crate::store::ReadTx + ?Sized>(
        &mut self,
        read: &mut R,
        key: &AuditChainKey,
        head: &ChainHead,
    ) -> Result<(), StoreError> {
        if self.broken.is_some() {
            return Ok(());
        }
        if head.seq < self.seq {
            self.broken = Some(format!("its head is at entry #{} but #{} was verified before", head.seq, self.seq));
            return Ok(());
        }
        let changes = JOB_STATE_CHANGES.map(|operation| operation.id());
        let mut verifier = ChainVerifier::resume(key, self.seq, self.hash);
        let mut filter = AuditFilter { after_seq: self.seq, limit: AUDIT_PAGE, ..AuditFilter::default() };
        while filter.after_seq < head.seq {
            filter.limit = AUDIT_PAGE.min((head.seq - filter.after_seq).try_into().unwrap_or(AUDIT_PAGE));
            let page = match read.audit_entries(&filter).await {
                Ok(page) => page,
                // An entry that does not even read is a break, not an outage:
                // failing open here would hide every later revocation.
                Err(StoreError::Corrupt { what }) => {
                    self.broken = Some(format!("an entry after #{} does not read ({what})", filter.after_seq));
                    return Ok(());
                }
                Err(other) => return Err(other),
            };
            let Some(last) = page.last() else { break };
            filter.after_seq = last.seq;
            for entry in page.iter().filter(|entry| entry.seq <= head.seq) {
                if let Err(broken) = verifier.check(entry) {
                    self.broken = Some(broken.to_string());
                    return Ok(());
                }
                if entry.outcome == CHANGED.id()
                    && !entry.job_id.is_empty()
                    && changes.contains(&entry.operation.as_str())
                {
                    self.last_change.insert(entry.job_id.clone(), entry.seq);
                }
                self.note_entry(&Noted {
                    seq: entry.seq,
                    time_ms: entry.time_ms,
                    operation: &entry.operation,
                    outcome: &entry.outcome,
                    principal: &entry.principal,
                    tenant: &entry.tenant,
                    record_count: entry.record_count,
                    reason: &entry.reason,
                });
                self.retention.note(entry);
                self.primary_floor.note(entry);
                self.certified |= entry.operation == Operation::IssueDeletionCertificate.id()
                    && entry.outcome == crate::audit::Outcome::Ok.id();
                if entry.mac.is_some() && self.first_signed_form.is_none() {
                    self.first_signed_form = Some(entry.seq);
                }
                if entry.operation == Operation::RotateSigningKey.id() && entry.outcome == CHANGED.id() {
                    self.signing_rotations += 1;
                }
                (self.seq, self.hash) = (entry.seq, entry.hash);
            }
        }
        if let Err(broken) = verifier.finish(head.seq, &head.hash) {
            self.broken = Some(broken.to_string());
        }
        Ok(())
    }
}
