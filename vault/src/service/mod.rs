//! The gRPC services. Each handler: identifies the caller from its client
//! certificate, checks the policy, validates, acts, and makes sure the call is
//! in the audit log, allowed or refused. Calls that change state append their
//! entry inside the store transaction; refusals append one of their own.

mod admin;
mod audit_review;
mod filing;
mod token;

pub use admin::AdminApi;
pub use audit_review::{verify_chain, AuditApi};
pub use filing::FilingApi;
pub use token::TokenApi;

use std::sync::Arc;

use tonic::{Request, Status};

use crate::audit::AuditDraft;
use crate::authz::Policy;
use crate::dev_pki::principal_from_certificate;
use crate::error::VaultError;
use crate::keyring::Keyring;
use crate::store::Store;

/// What every service shares.
pub struct VaultContext {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Tenant keys.
    pub keyring: Keyring,
    /// Who may do what.
    pub policy: Policy,
    /// The audit-chain key, for verification.
    pub audit_key: Arc<mnvault_keys::AuditChainKey>,
}

/// Principal recorded for a caller without a usable certificate.
const UNAUTHENTICATED: &str = "(unauthenticated)";

impl VaultContext {
    /// The caller's principal: the common name of its client certificate.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<String, VaultError> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| VaultError::Unauthenticated("no client certificate: connect with mutual TLS".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| VaultError::Unauthenticated("no client certificate: connect with mutual TLS".into()))?;
        principal_from_certificate(leaf.as_ref())
            .map_err(|error| VaultError::Unauthenticated(format!("unusable client certificate: {error}")))
    }

    /// The caller and `draft` now naming it, or a refusal that is itself audited.
    pub async fn authenticate<T>(
        &self,
        request: &Request<T>,
        draft: AuditDraft,
    ) -> Result<(String, AuditDraft), Status> {
        match self.caller(request) {
            Ok(caller) => Ok((caller.clone(), AuditDraft { principal: caller, ..draft })),
            Err(error) => {
                let draft = AuditDraft { principal: UNAUTHENTICATED.into(), ..draft };
                Err(self.refuse(draft, error).await)
            }
        }
    }

    /// Records a refused or failed call, then turns the error into a status.
    pub async fn refuse(&self, mut draft: AuditDraft, error: VaultError) -> Status {
        let message = error.public_message();
        draft.outcome = error.outcome();
        draft.reason = message.clone();
        if let Err(audit_error) = self.store.append_audit(draft).await {
            tracing::error!(%audit_error, "could not audit a refused call");
        }
        tracing::info!(code = ?error.code(), reason = %message, "call refused");
        Status::new(error.code(), message)
    }

    /// For calls that change nothing: appends `draft` when `result` is Ok (the
    /// call fails if that append fails), or the refusal when it is not.
    pub async fn audited<T>(&self, draft: AuditDraft, result: Result<T, VaultError>) -> Result<T, Status> {
        match result {
            Ok(value) => match self.store.append_audit(draft).await {
                Ok(_) => Ok(value),
                Err(error) => Err(VaultError::from(error).into()),
            },
            Err(error) => Err(self.refuse(draft, error).await),
        }
    }

    /// For calls that append their own entry in their transaction: only a
    /// refusal is appended here.
    pub async fn settled<T>(&self, draft: AuditDraft, result: Result<T, VaultError>) -> Result<T, Status> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => Err(self.refuse(draft, error).await),
        }
    }
}

/// Draws random identifiers until one holds no run that [`redact_numbers`]
/// would take for a number, so redaction never hides a token or job id the
/// vault made itself.
///
/// [`redact_numbers`]: mnvault_client::number::redact_numbers
pub fn draw_without_number(draw: impl Fn() -> String) -> String {
    loop {
        let drawn = draw();
        if !mnvault_client::number::contains_number(&drawn) {
            return drawn;
        }
    }
}

/// Shared handle the services hold.
pub type Context = Arc<VaultContext>;
