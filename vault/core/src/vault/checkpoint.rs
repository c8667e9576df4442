//! Signing the chain head, rotating the signing key, and verifying the log
//! with public keys only.
//!
//! The vault signs a head only after this process verified the chain up to
//! it, MACs included (under the chain head's lock): its signature is what a
//! public verifier trusts, so it must never vouch for an entry a database
//! writer slipped in.

use mnvault_keys::{KeyMaterial, PublicKey, VaultSigningKey, WrapContext};

use super::{append, audit_failure, commit_audited, VaultCore};
use crate::audit::checkpoint::{
    ChainEvidence, CheckpointVerifier, SignedCheckpoint, SigningKeyRecord, TrustedKeys, MAX_SIGNING_KEYS,
};
use crate::audit::line::AuditLine;
use crate::audit::{AuditDraft, AuditRecord, ChainBreak, ChainVerifier};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::Principal;
use crate::keyring::{AuditKeyError, SIGNING_KEY_NAME};
use crate::store::{AuditFilter, ChainHead, Store, StoreError, WrappedKeySlot, WriteTx};

/// Records the vault's first signing key when the log has none yet (a new
/// database, or one from before signed checkpoints).
pub(super) async fn record_first_signing_key(store: &dyn Store, key: &VaultSigningKey) -> Result<(), AuditKeyError> {
    let known = store.begin_read().await?.signing_keys(MAX_SIGNING_KEYS as u32).await?;
    if known.is_empty() {
        let mut tx = store.begin_write().await?;
        tx.insert_signing_key(&SigningKeyRecord::first(key, clock::now_ms())).await?;
        tx.commit().await?;
    } else if !known.iter().any(|record| record.public_key == key.public_key()) {
        tracing::warn!(
            key = %key.public_key().key_id(),
            "the vault's signing key is not among the signing keys the database lists; checkpoints it signs verify \
             only for whoever pins it"
        );
    }
    Ok(())
}

/// A rotated signing key.
#[derive(Debug, Clone)]
pub struct RotatedSigningKey {
    /// The key replaced.
    pub previous: PublicKey,
    /// The new key.
    pub public_key: PublicKey,
}

impl VaultCore {
    /// The vault's current public signing key.
    pub fn signing_key_public(&self) -> PublicKey {
        self.signing.load().public_key()
    }

    /// Checks `entries`, which must follow entry `after_seq` whose hash is
    /// `after_hash`, as the vault checks its own chain: links, hashes and
    /// MACs. For whoever copies the log out of the database (the sinks),
    /// so that nothing a database writer slipped in is shipped as genuine.
    pub fn check_entries(
        &self,
        after_seq: u64,
        after_hash: [u8; 32],
        entries: &[crate::audit::AuditRecord],
    ) -> Result<(), ChainBreak> {
        let mut verifier = ChainVerifier::resume(&self.audit_key, after_seq, after_hash);
        entries.iter().try_for_each(|entry| verifier.check(entry))
    }

    /// Signs `head` (just appended in `tx`, after a chain this process
    /// verified under the same lock) and stores the checkpoint in `tx`.
    pub(super) async fn sign_head(
        &self,
        tx: &mut dyn WriteTx,
        head: &ChainHead,
        now: i64,
    ) -> Result<SignedCheckpoint, VaultError> {
        self.refresh_signing_key(tx).await?;
        let checkpoint = SignedCheckpoint::sign_from(&self.signing.load(), head, self.signed_form_from().await, now);
        tx.insert_audit_checkpoint(&checkpoint).await.map_err(audit_failure)?;
        Ok(checkpoint)
    }

    /// Loads the signing key again when the verified chain records a
    /// rotation this process has not loaded (another replica rotated it):
    /// the old key is trusted only for positions before the rotation.
    async fn refresh_signing_key(&self, tx: &mut dyn WriteTx) -> Result<(), VaultError> {
        use std::sync::atomic::Ordering;
        let recorded = self.watch.lock().await.signing_rotations;
        if recorded <= self.signing_rotations.load(Ordering::Acquire) {
            return Ok(());
        }
        let stored = tx.system_key(SIGNING_KEY_NAME).await?.ok_or(VaultError::Internal)?;
        let opened = self.keyring.provider().unwrap(&stored, &WrapContext::SigningKey).map_err(|error| {
            tracing::error!(%error, "could not unwrap the rotated signing key");
            VaultError::Unavailable("the root key provider did not open the vault's signing key; try again".into())
        })?;
        let key = VaultSigningKey::new(&opened);
        tracing::info!(key = %key.public_key().key_id(), "loaded the signing key another replica rotated to");
        self.signing.store(std::sync::Arc::new(key));
        self.signing_rotations.store(recorded, Ordering::Release);
        Ok(())
    }

    /// Where the entries with a MAC start, as this process verified the
    /// chain; called under the chain head's lock, before or after this
    /// transaction's own entries (which all have one).
    async fn signed_form_from(&self) -> u64 {
        let watch = self.watch.lock().await;
        watch.first_signed_form.unwrap_or(watch.seq.saturating_add(1))
    }

    /// Locks the chain head and verifies the chain up to it; refuses a
    /// chain that does not verify: the vault signs nothing after a break.
    async fn locked_verified_head(&self, tx: &mut dyn WriteTx) -> Result<ChainHead, VaultError> {
        let head = tx.lock_chain_head().await?;
        let mut watch = self.watch.lock().await;
        watch.catch_up(tx, &self.audit_key, &head).await?;
        self.verified(&watch)?;
        Ok(head)
    }

    /// Signs the head on demand, as `caller` (an auditor of every tenant)
    /// asked: the call's own entry is appended, then the head after it is
    /// signed, in one transaction.
    pub async fn sign_checkpoint(
        &self,
        caller: &Principal,
        draft: &AuditDraft,
    ) -> Result<SignedCheckpoint, VaultError> {
        self.require_auditor(caller, None)?;
        let mut tx = self.store.begin_write().await?;
        self.locked_verified_head(tx.as_mut()).await?;
        let now = clock::now_ms();
        let head = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        let checkpoint = self.sign_head(tx.as_mut(), &head, now).await?;
        commit_audited(tx).await?;
        Ok(checkpoint)
    }

    /// Signs the head if entries were appended since the last checkpoint
    /// (the periodic checkpoint); no entry of its own, or it would never
    /// be done.
    pub async fn checkpoint_head(&self) -> Result<Option<SignedCheckpoint>, VaultError> {
        let mut tx = self.store.begin_write().await?;
        let head = self.locked_verified_head(tx.as_mut()).await?;
        // Only a valid checkpoint of this very head counts: a row planted
        // further on must not stop the vault signing.
        let signed = tx.audit_checkpoint_at_or_before(head.seq).await?;
        let done = signed.is_some_and(|c| c.seq == head.seq && c.hash == head.hash && c.signature_valid());
        if head.seq == 0 || done {
            return Ok(None);
        }
        let checkpoint = self.sign_head(tx.as_mut(), &head, clock::now_ms()).await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    }

    /// Replaces the signing key, as `caller` (an admin of every tenant):
    /// the new seed is stored wrapped in place of the old (compare and
    /// swap), both keys sign the succession, the call is audited and the
    /// head after its entry is signed by the new key, in one transaction.
    /// This process signs with the new key from then on; other replicas
    /// with the old one until they restart, which still verifies.
    pub async fn rotate_signing_key(
        &self,
        caller: &Principal,
        draft: &AuditDraft,
    ) -> Result<RotatedSigningKey, VaultError> {
        let policy = self.policy();
        policy.require(caller, &[Role::KeyAdmin], None)?;
        // The key vouches for every tenant's log: an admin of some tenants may not replace it.
        if !policy.covers_all_tenants(caller) {
            return Err(VaultError::PermissionDenied(format!(
                "principal {caller} administers only some tenants; the signing key is the whole vault's"
            )));
        }
        let provider = self.keyring.provider().clone();
        let material = KeyMaterial::generate();
        let next = VaultSigningKey::new(&material);
        let wrapped = provider.wrap(&material, &WrapContext::SigningKey).map_err(|error| {
            tracing::error!(%error, "could not wrap a new signing key");
            VaultError::Unavailable("the root key provider did not wrap the new signing key; try again".into())
        })?;
        let mut tx = self.store.begin_write().await?;
        self.locked_verified_head(tx.as_mut()).await?;
        let current = self.signing.load_full();
        let slot = WrappedKeySlot::System(SIGNING_KEY_NAME.to_owned());
        let stored = tx.system_key(SIGNING_KEY_NAME).await?.ok_or(VaultError::Internal)?;
        // Only the key this process signs with may be replaced from here.
        let opened = provider.unwrap(&stored, &WrapContext::SigningKey).map_err(|_| VaultError::Internal)?;
        if VaultSigningKey::new(&opened).public_key() != current.public_key() {
            return Err(VaultError::FailedPrecondition(
                "the signing key was rotated by another replica since this one started; restart this replica, \
                 then rotate again if still needed"
                    .into(),
            ));
        }
        if !tx.replace_wrapped_key(&slot, &stored, &wrapped).await? {
            return Err(VaultError::FailedPrecondition("the signing key changed meanwhile; try again".into()));
        }
        let now = clock::now_ms();
        let draft = AuditDraft {
            reason: format!("signing key {} replaced by {}", current.public_key().key_id(), next.public_key().key_id()),
            ..draft.clone()
        };
        let head = append(tx.as_mut(), &self.audit_key, draft, now).await?;
        // The new key signs from the rotation's own entry on; the old one
        // is trusted only before it.
        tx.insert_signing_key(&SigningKeyRecord::succeed(&current, &next, head.seq, now)).await?;
        let checkpoint = SignedCheckpoint::sign_from(&next, &head, self.signed_form_from().await, now);
        tx.insert_audit_checkpoint(&checkpoint).await.map_err(audit_failure)?;
        commit_audited(tx).await?;
        let rotated = RotatedSigningKey { previous: current.public_key(), public_key: next.public_key() };
        self.signing.store(std::sync::Arc::new(next));
        self.signing_rotations.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tracing::warn!(
            previous = %rotated.previous.key_id(),
            key = %rotated.public_key.key_id(),
            "the vault's signing key was rotated; pin the new public key where checkpoints are verified"
        );
        Ok(rotated)
    }
}

/// Walks a log, entry by entry, with public keys only: every link, every
/// public hash, every signed checkpoint, and an external checkpoint if one
/// was given. Fed from the database ([`verify_log`]) or from an export
/// (`mnvault audit verify --from FILE`), in order; stops at the first break.
pub struct LogWalk {
    chain: ChainVerifier<'static>,
    checkpoints: CheckpointVerifier,
    trusted: TrustedKeys,
    keys_seen: usize,
    external: Option<SignedCheckpoint>,
    external_matched: bool,
    anchored_by: String,
    started: bool,
    /// The checkpoint an export starts from, if it does.
    anchor: Option<SignedCheckpoint>,
    /// The earliest position from which a trusted checkpoint signed that
    /// every entry carries a MAC: an entry of the older form there is a
    /// newer one with its MAC removed.
    form_from: Option<u64>,
    /// Trust the first key the log lists (no anchor was given).
    trust_first_listed: bool,
    broken: Option<ChainBreak>,
}

impl LogWalk {
    /// The position of the checkpoint saved outside the server this walk
    /// checks, if any: a walk over part of the log must pass it.
    pub fn external_seq(&self) -> Option<u64> {
        self.external.as_ref().map(|checkpoint| checkpoint.seq)
    }

    /// A walk trusting `anchors` (and whatever keys they hand over to),
    /// checking `external` on the way if given (checked beforehand by
    /// [`check_external_checkpoint`]). `anchored_by` says, for people,
    /// where the anchors came from.
    pub fn new(anchors: TrustedKeys, anchored_by: String, external: Option<SignedCheckpoint>) -> Self {
        Self {
            chain: ChainVerifier::public(),
            checkpoints: CheckpointVerifier::new(anchors.clone()),
            trusted: anchors,
            keys_seen: 0,
            form_from: external.as_ref().map(|c| c.signed_form_from),
            external,
            external_matched: false,
            anchored_by,
            started: false,
            anchor: None,
            trust_first_listed: false,
            broken: None,
        }
    }

    /// A walk with no anchor: it trusts the first signing key the log
    /// lists (the one with no predecessor). Weaker, and `anchored_by` must
    /// say so: whoever rewrote the whole log could have replaced that key.
    pub fn unpinned(anchored_by: String, external: Option<SignedCheckpoint>) -> Self {
        Self { trust_first_listed: true, ..Self::new(TrustedKeys::default(), anchored_by, external) }
    }

    /// The first problem met, if any.
    pub fn broken(&self) -> Option<&ChainBreak> {
        self.broken.as_ref()
    }

    /// Takes the next line; `false` once the walk has stopped at a break.
    pub fn feed(&mut self, line: AuditLine) -> bool {
        if self.broken.is_some() {
            return false;
        }
        if let Err(broken) = self.step(line) {
            self.broken = Some(broken);
        }
        self.broken.is_none()
    }

    fn step(&mut self, line: AuditLine) -> Result<(), ChainBreak> {
        let (seq, _) = self.chain.position();
        match line {
            AuditLine::SigningKey(record) => {
                self.keys_seen += 1;
                if self.keys_seen > MAX_SIGNING_KEYS {
                    return Err(ChainBreak { seq, problem: format!("more than {MAX_SIGNING_KEYS} signing keys") });
                }
                if self.trust_first_listed && record.previous.is_none() && self.trusted.is_empty() {
                    self.trusted = TrustedKeys::anchored([record.public_key]);
                }
                // Each handover's signatures are checked once, here.
                self.trusted.learn(&record);
                self.checkpoints.trust(self.trusted.clone());
                return Ok(());
            }
            AuditLine::Checkpoint(checkpoint) if !self.started && checkpoint.seq > 0 && seq == 0 => {
                // An export that starts after a signed head: the head vouches
                // for the hash the first entry must link to.
                if !checkpoint.signature_valid() || !self.trusted.trusts_at(&checkpoint.signer, checkpoint.seq) {
                    return Err(ChainBreak {
                        seq: checkpoint.seq,
                        problem: "the checkpoint the export starts from is not signed by a trusted key".into(),
                    });
                }
                self.chain = ChainVerifier::public_after(checkpoint.seq, checkpoint.hash);
                self.started = true;
                self.note_form(&checkpoint)?;
                self.anchor = Some(checkpoint);
                return self.check_external();
            }
            AuditLine::Checkpoint(checkpoint) => {
                let (seq, hash) = self.chain.position();
                self.checkpoints.check(&checkpoint, seq, &hash)?;
                return self.note_form(&checkpoint);
            }
            AuditLine::Entry(entry) => self.chain.check(&entry)?,
            AuditLine::Stub { seq, prev_hash, digest } => {
                self.chain.check_stub(seq, &prev_hash, &digest)?;
            }
            AuditLine::LegacyStub { seq, prev_hash, hash } => self.chain.check_legacy_stub(seq, &prev_hash, &hash)?,
        }
        self.started = true;
        self.check_form()?;
        self.check_external()
    }

    /// Notes where `checkpoint` says MACs start, and checks what was walked.
    fn note_form(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), ChainBreak> {
        let from = checkpoint.signed_form_from;
        self.form_from = Some(self.form_from.map_or(from, |known| known.min(from)));
        self.check_form()
    }

    /// An entry of the older form where a trusted checkpoint signed that
    /// entries have a MAC is a newer entry whose MAC was removed.
    fn check_form(&self) -> Result<(), ChainBreak> {
        let legacy = self.chain.last_legacy();
        match self.form_from {
            Some(from) if legacy > 0 && legacy >= from => Err(ChainBreak {
                seq: from,
                problem: format!(
                    "has no MAC, but the vault signed that every entry from #{from} on has one (its MAC was removed \
                     to pass an edit off as an older entry)"
                ),
            }),
            _ => Ok(()),
        }
    }

    fn check_external(&mut self) -> Result<(), ChainBreak> {
        let (seq, hash) = self.chain.position();
        if let Some(external) = &self.external {
            if external.seq == seq {
                if external.hash != hash {
                    let since = self.checkpoints.last().map_or(1, |last| last.seq.saturating_add(1));
                    return Err(ChainBreak {
                        seq,
                        problem: format!(
                            "differs from the saved checkpoint signed at {} (the log was rewritten between #{since} \
                             and here)",
                            clock::rfc3339(external.time_ms)
                        ),
                    });
                }
                self.external_matched = true;
            }
        }
        Ok(())
    }

    /// Ends the walk; `head` is where the log says it ends (the database's
    /// head row), if it says.
    pub fn finish(mut self, head: Option<&ChainHead>) -> ChainEvidence {
        let (seq, hash) = self.chain.position();
        if self.broken.is_none() {
            if let Some(head) = head {
                if let Err(broken) = self.chain.finish(head.seq, &head.hash) {
                    self.broken = Some(broken);
                }
            }
        }
        if self.broken.is_none() {
            if let Some(external) = &self.external {
                if !self.external_matched {
                    self.broken = Some(ChainBreak {
                        seq: seq.saturating_add(1),
                        problem: format!(
                            "the log ends at #{seq}, before entry #{} of the saved checkpoint signed at {} (truncated)",
                            external.seq,
                            clock::rfc3339(external.time_ms)
                        ),
                    });
                }
            }
        }
        let verified = self.chain.verified();
        let first_seq = self.anchor.as_ref().map_or(1, |anchor| anchor.seq.saturating_add(1));
        let signed_up_to = self.checkpoints.last().map(|c| c.seq).or(self.anchor.as_ref().map(|a| a.seq));
        let last_checkpoint = self.checkpoints.last().cloned();
        ChainEvidence {
            entries: seq.saturating_sub(first_seq.saturating_sub(1)),
            first_seq,
            head_hash: hash,
            checkpoints_verified: self.checkpoints.verified(),
            unsigned_tail: seq.saturating_sub(signed_up_to.unwrap_or(0).min(seq)),
            last_checkpoint,
            unchecked_legacy: verified.unchecked_legacy,
            anchored_by: self.anchored_by,
            external_checkpoint: self.external,
            broken: self.broken,
        }
    }
}

/// Checks an external checkpoint (a saved file) before a walk relies on
/// it: its signature, by a key the walk trusts.
pub fn check_external_checkpoint(checkpoint: &SignedCheckpoint, trusted: &TrustedKeys) -> Result<(), String> {
    if !checkpoint.signature_valid() {
        return Err("the saved checkpoint's signature does not verify (the file was altered)".into());
    }
    if !trusted.trusts(&checkpoint.signer) {
        return Err(format!(
            "the saved checkpoint is signed by {}, which is not the pinned key nor one it handed over to",
            checkpoint.signer.key_id()
        ));
    }
    Ok(())
}

/// Entries per page when verifying: larger than the core's pages, since a
/// verification reads the whole log (tokens per page stay bounded by the
/// store).
const VERIFY_PAGE: u32 = 10_000;

/// Where a walk over the database starts and stops.
#[derive(Debug, Clone, Default)]
pub struct LogRange {
    /// Start after this checkpoint (its signature vouches for the hash the
    /// next entry links to) instead of at entry #1.
    pub start_after: Option<SignedCheckpoint>,
    /// Stop at a checkpoint instead of at the head (no truncation check
    /// then: that needs the head).
    pub stop: Option<StopAt>,
}

/// Which checkpoint a walk stops at: the first verified at or after
/// `from_seq` and signed at or after `signed_from_ms`. Only the signed time
/// counts, so nothing the database says alone can end a walk early.
#[derive(Debug, Clone, Copy)]
pub struct StopAt {
    /// Not before this position.
    pub from_seq: u64,
    /// Not signed before this time (Unix ms).
    pub signed_from_ms: i64,
}

/// Walks the whole log in the database with public keys only, up to the
/// head read at the start; `progress` is told how many entries were
/// checked. Reads in pages: bounded memory however long the log.
pub async fn verify_log(
    store: &dyn Store,
    walk: LogWalk,
    progress: impl FnMut(u64) + Send,
) -> Result<ChainEvidence, StoreError> {
    verify_log_range(store, walk, LogRange::default(), progress).await
}

/// Pages a walk reads ahead of the one it checks: each on its own read
/// connection, so the database reads (SQLite's worker threads, PostgreSQL's
/// backends) run while this task hashes.
const READ_AHEAD: usize = 2;

/// Entries a walk checks between giving the pages read ahead a turn.
const ENTRIES_PER_TURN: usize = 512;

/// The entries after `after_seq` up to `to_seq`: one store page (so cut
/// short when their tokens pass the store's bound; the caller reads on from
/// the last). Where rows are missing it runs on past `to_seq` (up to
/// `head`), so that the walk meets the gap and breaks there, rather than
/// reading run after empty run up to a head a database writer moved far
/// ahead.
async fn read_run(store: &dyn Store, after_seq: u64, to_seq: u64, head: u64) -> Result<Vec<AuditRecord>, StoreError> {
    let limit = u32::try_from(to_seq.saturating_sub(after_seq)).unwrap_or(VERIFY_PAGE).min(VERIFY_PAGE);
    let filter = AuditFilter { limit, after_seq, ..AuditFilter::default() };
    let mut page = store.begin_read().await?.audit_entries(&filter).await?;
    // Written after the walk began: not part of it.
    page.retain(|entry| entry.seq <= head);
    Ok(page)
}

/// Gives the other futures of this task a turn (the core has no runtime of
/// its own to ask).
async fn yield_turn() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// [`verify_log`] over part of the log (an incident report's window).
pub async fn verify_log_range(
    store: &dyn Store,
    mut walk: LogWalk,
    range: LogRange,
    mut progress: impl FnMut(u64) + Send,
) -> Result<ChainEvidence, StoreError> {
    use futures::{SinkExt as _, StreamExt as _};
    let mut read = store.begin_read().await?;
    let head = read.audit_head().await?;
    for record in read.signing_keys(MAX_SIGNING_KEYS as u32).await? {
        walk.feed(AuditLine::SigningKey(record));
    }
    drop(read);
    let start = range.start_after.as_ref().map_or(0, |anchor| anchor.seq);
    if let Some(anchor) = range.start_after.filter(|anchor| anchor.seq > 0 && anchor.seq <= head.seq) {
        walk.feed(AuditLine::Checkpoint(anchor));
    }
    // Runs of `VERIFY_PAGE` positions, read ahead in order.
    let runs = (start..head.seq)
        .step_by(VERIFY_PAGE as usize)
        .map(|after| (after, after.saturating_add(u64::from(VERIFY_PAGE)).min(head.seq)));
    let (pages_in, pages) = futures::channel::mpsc::channel(0);
    let read_ahead = futures::stream::iter(runs)
        .map(|(after, to)| async move { read_run(store, after, to, head.seq).await.map(|page| (to, page)) })
        .buffered(READ_AHEAD)
        .map(Ok)
        // Ends when the walk stops taking pages.
        .forward(pages_in.sink_map_err(|_| ()));
    let check = async {
        // Dropped when the walk ends, which ends the reading ahead.
        let mut pages = pages;
        let mut checkpoints: std::collections::VecDeque<SignedCheckpoint> = Default::default();
        let mut checkpoints_after = start;
        let mut checked = 0;
        'walk: while let Some(run) = pages.next().await {
            let (to, mut page): (u64, Vec<AuditRecord>) = run?;
            if page.is_empty() {
                // Nothing left up to the head: the end of the walk says
                // what is missing.
                break 'walk;
            }
            while let Some(last) = page.last().map(|entry| entry.seq) {
                if checkpoints.back().is_none_or(|c| c.seq < last) {
                    let mut read = store.begin_read().await?;
                    checkpoints.extend(read.audit_checkpoints(checkpoints_after, VERIFY_PAGE).await?);
                    checkpoints_after = checkpoints.back().map_or(checkpoints_after, |c| c.seq);
                }
                for (index, entry) in page.into_iter().enumerate() {
                    let seq = entry.seq;
                    if !walk.feed(AuditLine::Entry(entry)) {
                        break 'walk;
                    }
                    while checkpoints.front().is_some_and(|c| c.seq <= seq) {
                        let checkpoint = checkpoints.pop_front().expect("checked above");
                        let signed_ms = checkpoint.time_ms;
                        if !walk.feed(AuditLine::Checkpoint(checkpoint)) {
                            break 'walk;
                        }
                        // Verified: its signed time can be trusted now.
                        if range.stop.is_some_and(|stop| seq >= stop.from_seq && signed_ms >= stop.signed_from_ms) {
                            progress(checked + 1);
                            return Ok(true);
                        }
                    }
                    checked += 1;
                    if index % ENTRIES_PER_TURN == ENTRIES_PER_TURN - 1 {
                        yield_turn().await;
                    }
                }
                progress(checked);
                if last >= to {
                    break;
                }
                // The rest of a run cut short by its tokens.
                page = read_run(store, last, to, head.seq).await?;
                if page.is_empty() {
                    break 'walk;
                }
            }
        }
        Ok::<_, StoreError>(false)
    };
    let (stopped, _) = futures::future::join(check, read_ahead).await;
    let stopped = stopped?;
    if stopped {
        return Ok(walk.finish(None));
    }
    // A checkpoint past the end of the log: entries removed from its end
    // after they were signed, or a row planted. Read before the head: the
    // vault stores a checkpoint with its entry, so a genuine one is never
    // past a head read after it.
    if walk.broken().is_none() {
        let furthest = store.begin_read().await?.latest_audit_checkpoint().await?;
        let now = store.begin_read().await?.audit_head().await?;
        if now.seq < head.seq {
            walk.broken = Some(ChainBreak {
                seq: now.seq.saturating_add(1),
                problem: format!("the log got shorter while it was verified (#{} to #{})", head.seq, now.seq),
            });
        } else if let Some(furthest) = furthest.filter(|c| c.seq > now.seq) {
            walk.broken = Some(ChainBreak {
                seq: now.seq.saturating_add(1),
                problem: format!(
                    "a checkpoint is stored at #{} but the log ends at #{} (entries removed from its end, or a row \
                     planted)",
                    furthest.seq, now.seq
                ),
            });
        }
    }
    Ok(walk.finish(Some(&head)))
}
