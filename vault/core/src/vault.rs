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

use mnvault_keys::{AuditChainKey, BlindIndex, RootKeyProvider, TenantKeys};
use zeroize::Zeroizing;

use crate::audit::{AuditDraft, AuditRecord, ChainBreak, ChainVerifier, VerifiedChain};
use crate::authz::{Policy, Role};
use crate::clock;
use crate::error::VaultError;
use crate::id::{JobId, Principal, TenantId, Token, TokenFormat};
use crate::job::{Job, JobRequest, Stamp};
use crate::keyring::{load_audit_key, AuditKeyError, Keyring};
use crate::mint::{draw_job_id, draw_token};
use crate::number::MyNumber;
use crate::store::{AuditFilter, ChainHead, NewJob, NewRecord, Store, StoreError, WriteTx};
use crate::text::FreeText;

/// A random token collides with an existing one about never; retrying a few
/// times turns "about never" into "never".
const TOKEN_DRAWS: usize = 4;

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
    policy: Policy,
    audit_key: Arc<AuditChainKey>,
}

impl VaultCore {
    /// The core over `store`. The audit-chain key is loaded here, before
    /// anything can be appended: a core without its key cannot exist.
    pub async fn open(
        store: Arc<dyn Store>,
        provider: Arc<dyn RootKeyProvider>,
        policy: Policy,
    ) -> Result<Self, AuditKeyError> {
        let audit_key = Arc::new(load_audit_key(store.as_ref(), provider.as_ref()).await?);
        let keyring = Keyring::new(provider, store.clone());
        Ok(Self { store, keyring, policy, audit_key })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Who may do what.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Appends `draft` in a transaction of its own (calls that change
    /// nothing, refusals).
    pub async fn record(&self, draft: AuditDraft) -> Result<u64, VaultError> {
        let mut tx = self.store.begin_write().await?;
        let seq = append(tx.as_mut(), &self.audit_key, draft, clock::now_ms()).await?;
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
        self.policy.require(caller, &[Role::Admin], Some(tenant))?;
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
    pub async fn tokenize(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        format: TokenFormat,
        numbers: &[MyNumber],
        draft: &AuditDraft,
    ) -> Result<Vec<Tokenized>, VaultError> {
        self.policy.require(caller, &[Role::Tokenizer], Some(tenant))?;
        let keys = self.keyring.tenant_keys(tenant).await?;
        let indexes: Vec<BlindIndex> = numbers.iter().map(|n| keys.blind_index(n.expose_bytes())).collect();
        let known = self.store.begin_read().await?.tokens_by_blind_index(tenant, format, &indexes).await?;
        let known = parse_tokens(known)?;
        for _ in 0..TOKEN_DRAWS {
            let new_records = seal_unknown(&keys, format, numbers, &indexes, &known)?;
            let mut tx = self.store.begin_write().await?;
            let now = clock::now_ms();
            let records: Vec<NewRecord> = new_records.iter().flatten().cloned().collect();
            tx.insert_records(tenant, format, &records, now).await?;
            // Who holds each new index now: our row, or a concurrent writer's.
            let holders = tx
                .tokens_by_blind_index(tenant, format, &records.iter().map(|r| r.blind_index).collect::<Vec<_>>())
                .await?;
            let mut holders = parse_tokens(holders)?.into_iter();
            let mut tokenized = Vec::with_capacity(numbers.len());
            let mut collided = false;
            for (known, drawn) in known.iter().zip(&new_records) {
                tokenized.push(match (known, drawn) {
                    (Some(token), _) => Tokenized { token: token.clone(), created: false },
                    (None, Some(record)) => match holders.next().flatten() {
                        Some(token) => Tokenized { created: token == record.token, token },
                        None => {
                            // Nobody holds the index, so our row lost on the token itself.
                            collided = true;
                            break;
                        }
                    },
                    (None, None) => unreachable!("every unknown number was sealed"),
                });
            }
            if collided {
                continue; // dropping the transaction rolls it back; draw again
            }
            let draft = AuditDraft {
                tokens: tokenized.iter().map(|t| t.token.clone()).collect(),
                record_count: tokenized.len() as u64,
                ..draft.clone()
            };
            append(tx.as_mut(), &self.audit_key, draft, now).await?;
            commit_audited(tx).await?;
            return Ok(tokenized);
        }
        tracing::error!(%tenant, "token draws kept colliding");
        Err(VaultError::Internal)
    }

    /// What the vault knows about a token, never its number.
    pub async fn describe_token(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        token: &Token,
    ) -> Result<TokenInfo, VaultError> {
        let roles = [Role::Tokenizer, Role::Requester, Role::Approver, Role::Filer, Role::Auditor];
        self.policy.require(caller, &roles, Some(tenant))?;
        self.keyring.tenant_keys(tenant).await?;
        let row = self
            .store
            .begin_read()
            .await?
            .record(tenant, token)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("token {token} does not exist in tenant \"{tenant}\"")))?;
        let format = TokenFormat::from_id(&row.format).ok_or(StoreError::Corrupt { what: "records.format" })?;
        Ok(TokenInfo { token: token.clone(), format, key_version: row.key_version, created_at: row.created_at })
    }

    /// Creates a filing job. It releases nothing until someone other than
    /// `caller` approves it.
    pub async fn create_job(
        &self,
        caller: &Principal,
        request: &JobRequest,
        draft: &mut AuditDraft,
    ) -> Result<Job, VaultError> {
        let tenant = &request.tenant;
        self.policy.require(caller, &[Role::Requester], Some(tenant))?;
        let now = clock::now_ms();
        let (terms, tokens) = request.terms(draw_job_id(), caller, now)?;
        // Only an authorised, well-formed request has its tokens recorded.
        draft.job_id = Some(terms.job_id.clone());
        draft.tokens = tokens.clone();
        draft.record_count = tokens.len() as u64;
        self.keyring.tenant_keys(tenant).await?;
        let existing = self.store.begin_read().await?.existing_tokens(tenant, &tokens).await?;
        let missing: Vec<&Token> = tokens.iter().filter(|t| !existing.contains(t.as_str())).collect();
        if let Some(first) = missing.first() {
            return Err(VaultError::NotFound(format!(
                "{} token(s) do not exist in tenant \"{tenant}\", the first is {first}",
                missing.len()
            )));
        }
        let job = NewJob { terms, tokens };
        let mut tx = self.store.begin_write().await?;
        tx.insert_job(&job).await?;
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
        Ok(Job {
            terms: job.terms,
            approved: None,
            cancelled: None,
            tokens: job.tokens.into_iter().map(|t| (t, 0)).collect(),
        })
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
        let row = self.store.begin_read().await?.job(job_id).await?;
        let job = Job::from_row(row.ok_or_else(|| not_found(job_id))?)?;
        draft.tenant = Some(job.terms.tenant.clone());
        draft.purpose = Some(job.terms.purpose);
        self.policy.require(caller, roles, Some(&job.terms.tenant))?;
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
        let (mut job, now) = lock_job(tx.as_mut(), job_id).await?;
        job.check_approval(caller, now)?;
        tx.set_job_approved(job_id, caller, now).await?;
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
        job.approved = Some(Stamp { by: caller.clone(), at: now });
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
        let (mut job, now) = lock_job(tx.as_mut(), job_id).await?;
        job.check_cancel()?;
        tx.set_job_cancelled(job_id, caller, now).await?;
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
        job.cancelled = Some(Stamp { by: caller.clone(), at: now });
        Ok(job)
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
        // Tokens are recorded only once the caller is authorised for the job.
        let listed = self.open_job(caller, job_id, &[Role::Filer], draft).await?;
        // Which tokens a job lists never changes, so this may be read before the lock.
        let tokens = listed.tokens_to_release(asked);
        draft.tokens = tokens.clone();
        draft.record_count = tokens.len() as u64;
        let tenant = &listed.terms.tenant;
        let keys = self.keyring.tenant_keys(tenant).await?;
        let mut tx = self.store.begin_write().await?;
        let (job, now) = lock_job(tx.as_mut(), job_id).await?;
        job.check_release(&tokens, now)?;
        let counted = tx.count_releases(job_id, &tokens, job.terms.max_releases_per_token).await?;
        if counted != tokens.len() as u64 {
            // The job row is locked, so only a store that breaks its contract gets here.
            tracing::error!(%job_id, counted, asked = tokens.len(), "release count disagrees with the locked job");
            return Err(VaultError::Internal);
        }
        let mut sealed: std::collections::HashMap<String, Vec<u8>> =
            tx.sealed_records(tenant, &tokens).await?.into_iter().collect();
        let mut released = Vec::with_capacity(tokens.len());
        for token in &tokens {
            let record = sealed.remove(token.as_str()).ok_or_else(|| {
                tracing::error!(%job_id, %token, "a listed token has no record");
                VaultError::DataLoss(format!(
                    "the stored record for token {token} is missing, so nothing was released; tell the vault's \
                     operator"
                ))
            })?;
            released.push(Released { token: token.clone(), number: open_record(&keys, token, &record)? });
        }
        append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        commit_audited(tx).await?;
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

    /// Walks the whole chain, if `caller` audits every tenant.
    pub async fn verify_chain(&self, caller: &Principal) -> Result<Result<VerifiedChain, ChainBreak>, VaultError> {
        self.require_auditor(caller, None)?;
        Ok(verify_chain(self.store.as_ref(), &self.audit_key, |_| {}).await?)
    }

    fn require_auditor(&self, caller: &Principal, tenant: Option<&TenantId>) -> Result<(), VaultError> {
        self.policy.require(caller, &[Role::Auditor], tenant)?;
        if tenant.is_none() && !self.policy.covers_all_tenants(caller) {
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

/// Locks the job row, then reads the clock: the decision is taken at a time
/// no earlier than the lock.
async fn lock_job(tx: &mut dyn WriteTx, job_id: &JobId) -> Result<(Job, i64), VaultError> {
    let row = tx.lock_job(job_id).await?.ok_or_else(|| not_found(job_id))?;
    Ok((Job::from_row(row)?, clock::now_ms()))
}

fn parse_tokens(tokens: Vec<Option<String>>) -> Result<Vec<Option<Token>>, StoreError> {
    tokens
        .into_iter()
        .map(|token| {
            token.map(|t| Token::parse(&t).map_err(|_| StoreError::Corrupt { what: "records.token" })).transpose()
        })
        .collect()
}

/// A sealed record with a fresh token for each number not `known`.
fn seal_unknown(
    keys: &TenantKeys,
    format: TokenFormat,
    numbers: &[MyNumber],
    indexes: &[BlindIndex],
    known: &[Option<Token>],
) -> Result<Vec<Option<NewRecord>>, VaultError> {
    numbers
        .iter()
        .zip(indexes)
        .zip(known)
        .map(|((number, index), known)| {
            if known.is_some() {
                return Ok(None);
            }
            let token = draw_token(format);
            let sealed = keys.seal(token.as_str(), number.expose_bytes()).map_err(|error| {
                tracing::error!(%error, "sealing failed");
                VaultError::Internal
            })?;
            Ok(Some(NewRecord { blind_index: *index, token, key_version: keys.primary_version(), sealed }))
        })
        .collect()
}

fn open_record(keys: &TenantKeys, token: &Token, sealed: &[u8]) -> Result<Zeroizing<String>, VaultError> {
    let integrity = || {
        tracing::error!(%token, "stored record failed its integrity check");
        VaultError::DataLoss(format!(
            "the stored record for token {token} failed its integrity check, so nothing was released; tell the \
             vault's operator"
        ))
    };
    let plain = keys.open(token.as_str(), sealed).map_err(|_| integrity())?;
    let digits = std::str::from_utf8(&plain).map_err(|_| integrity())?;
    Ok(Zeroizing::new(digits.to_owned()))
}

/// The audit append protocol, the one place an entry is written: lock the
/// chain head, seal the entry after it, insert it, move the head. Runs inside
/// the caller's transaction, so the entry commits with what it records. A
/// database failure here is an unwritable audit log, and the call fails.
pub async fn append(tx: &mut dyn WriteTx, key: &AuditChainKey, draft: AuditDraft, now: i64) -> Result<u64, VaultError> {
    let result = async {
        let head = tx.lock_chain_head().await?;
        let entry = AuditRecord::seal(draft, head.seq + 1, now, head.hash, key);
        tx.insert_audit_entry(&entry).await?;
        tx.set_chain_head(&ChainHead { seq: entry.seq, hash: entry.hash }).await?;
        Ok::<_, StoreError>(entry.seq)
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
