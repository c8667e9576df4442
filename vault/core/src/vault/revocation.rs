//! Revoking client certificates, and refusing the revoked ones. What a
//! revocation is and how the chain records it is in [`crate::revocation`].

use super::{append, commit_audited, VaultCore};
use crate::audit::{AuditDraft, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::{CertificateSerial, Principal};
use crate::revocation::{entry_reason, Revocation, INVESTIGATION, REVOCATIONS_STALE_MS, REVOCATION_PAGE};
use crate::text::FreeText;

impl VaultCore {
    /// Revokes the client certificate `serial`, for a key-admin of every
    /// tenant (a certificate may act for any). This replica refuses it from
    /// the commit on; the others once their next [`VaultCore::refresh`]
    /// reads the entry.
    pub async fn revoke_certificate(
        &self,
        caller: &Principal,
        serial: &CertificateSerial,
        note: &FreeText,
        draft: &mut AuditDraft,
    ) -> Result<Revocation, VaultError> {
        self.require_operator(caller, &[Role::KeyAdmin])?;
        let mut tx = self.store.begin_write().await?;
        // Under the chain head's lock: two replicas revoking at once see each other.
        let watch = self.caught_up(tx.as_mut()).await?;
        watch.revocations.check_new(serial)?;
        drop(watch);
        let now = clock::now_ms();
        draft.reason = entry_reason(serial, note);
        let entry = append(tx.as_mut(), &self.audit_key, draft.clone(), now).await?;
        self.sign_head(tx.as_mut(), &entry, now).await?;
        commit_audited(tx).await?;
        self.witness(&entry, draft, now).await;
        Ok(Revocation {
            serial: serial.clone(),
            revoked_at: now,
            revoked_by: caller.to_string(),
            note: note.to_string(),
            seq: entry.seq,
        })
    }

    /// A page of the revoked certificates after `after`, for a key-admin or
    /// an auditor of every tenant, as of the last verified entry.
    pub fn revoked_certificates(
        &self,
        caller: &Principal,
        after: Option<&CertificateSerial>,
    ) -> Result<Vec<Revocation>, VaultError> {
        self.require_operator(caller, &[Role::KeyAdmin, Role::Auditor])?;
        Ok(self.revoked.load().page(after, REVOCATION_PAGE))
    }

    /// Refuses `caller`, calling `operation`, when its certificate was
    /// revoked as far as this replica has read the chain (`serial` is `None`
    /// for a certificate whose serial cannot be revoked here), or when this
    /// replica cannot know that: the chain broke (a revocation after the
    /// break is unreadable; a database writer may have cut it out), or it
    /// was last read too long ago. Then only an auditor of every tenant
    /// reading the log ([`INVESTIGATION`]) is served.
    pub fn check_certificate(
        &self,
        caller: &Principal,
        serial: Option<&CertificateSerial>,
        operation: Operation,
    ) -> Result<(), VaultError> {
        self.revoked.load().check_caller(serial)?;
        match self.revocations_unknown() {
            Some(refusal)
                if !(INVESTIGATION.contains(&operation) && self.require_operator(caller, &[Role::Auditor]).is_ok()) =>
            {
                Err(refusal)
            }
            _ => Ok(()),
        }
    }

    /// Why this replica cannot tell whether a certificate was revoked, if it
    /// cannot.
    fn revocations_unknown(&self) -> Option<VaultError> {
        if self.chain_broken() {
            return Some(VaultError::DataLoss(
                "the audit log does not verify, so certificates revoked since the break cannot be told apart: only \
                 auditors of every tenant reading the log are served until the database is restored and the vault \
                 restarted (docs/OPERATIONS.md, \"The audit chain does not verify\")"
                    .into(),
            ));
        }
        let read_ms = self.revocations_read_ms.load(std::sync::atomic::Ordering::Acquire);
        let unread_ms = clock::now_ms().saturating_sub(read_ms);
        (unread_ms > REVOCATIONS_STALE_MS).then(|| {
            VaultError::Unavailable(format!(
                "this replica has not read the audit log for {} s, so a certificate revoked on another replica \
                 meanwhile cannot be told apart; try another replica, or again once the database answers",
                unread_ms / 1000
            ))
        })
    }

    /// Whether this replica found the audit chain broken (see
    /// [`VaultCore::check_certificate`]).
    pub fn chain_broken(&self) -> bool {
        self.chain_broken.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads what other replicas appended since this one last looked:
    /// revocations take effect here without waiting for a decision to read
    /// the chain. `serve` calls it every second.
    pub async fn refresh(&self) -> Result<(), VaultError> {
        // The connection first (a writer holding one may be waiting for the
        // watch), then the watch's lock, then the snapshot, which both stores
        // take at the first read: one older than what the watch verified
        // would read as a truncated log.
        let mut read = self.store.begin_read().await?;
        let mut watch = self.watch.lock().await;
        let head = read.audit_head().await?;
        let was_broken = watch.broken.is_some();
        watch.catch_up(read.as_mut(), &self.audit_key, &head).await?;
        self.save_watermark(&watch);
        self.publish_revocations(&watch);
        match &watch.broken {
            // Found here, not by a decision: said and counted like one.
            Some(broken) if !was_broken => Err(self.integrity.tampered(format!("the audit log ({broken})"))),
            // Counted once; from then on nothing more is read.
            Some(_) => {
                Err(VaultError::DataLoss("the audit log does not verify; nothing after the break is read".into()))
            }
            None => Ok(()),
        }
    }

    /// Refuses unless `caller` has one of `roles` on every tenant: a
    /// certificate may act for any tenant, so its revocation concerns all.
    fn require_operator(&self, caller: &Principal, roles: &[Role]) -> Result<(), VaultError> {
        let policy = self.policy();
        policy.require(caller, roles, None)?;
        if !policy.covers_all_tenants(caller) {
            return Err(VaultError::PermissionDenied(format!(
                "principal {caller} acts only for some tenants; revocations concern every tenant"
            )));
        }
        Ok(())
    }
}
