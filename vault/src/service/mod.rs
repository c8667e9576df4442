//! The gRPC services: they only translate. Each handler authenticates the
//! caller from its client certificate, parses what the request holds into the
//! core's types (a field that does not parse is refused without being
//! repeated), calls [`VaultCore`], and turns the answer or the refusal into
//! protobuf. Every outcome is audited: calls that change state append their
//! entry inside the core's transaction; everything else goes through
//! [`VaultContext::audited`] or [`VaultContext::refuse`].

mod admin;
mod audit_review;
mod filing;
mod token;
mod wire;

pub use admin::AdminApi;
pub use audit_review::AuditApi;
pub use filing::FilingApi;
pub use token::TokenApi;

use std::sync::Arc;

use mnvault_core::audit::AuditDraft;
use mnvault_core::id::Principal;
use mnvault_core::VaultCore;
use tonic::{Request, Status};

use crate::error::{status, VaultError};
use crate::identity::principal_from_certificate;

/// What every service shares.
pub struct VaultContext {
    /// The rules and the store.
    pub core: VaultCore,
}

impl VaultContext {
    /// The caller's principal, from its client certificate.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Principal, VaultError> {
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| VaultError::Unauthenticated("no client certificate: connect with mutual TLS".into()))?;
        principal_from_certificate(leaf.as_ref())
            .map_err(|error| VaultError::Unauthenticated(format!("unusable client certificate: {error}")))
    }

    /// The caller, now named in `draft`, or a refusal that is itself audited.
    pub async fn authenticate<T>(&self, request: &Request<T>, draft: &mut AuditDraft) -> Result<Principal, Status> {
        match self.caller(request) {
            Ok(caller) => {
                draft.principal = Some(caller.clone());
                Ok(caller)
            }
            Err(error) => Err(self.refuse(draft.clone(), error).await),
        }
    }

    /// Records a refused or failed call, then turns the error into a status.
    pub async fn refuse(&self, mut draft: AuditDraft, error: VaultError) -> Status {
        let status = status(&error);
        draft.outcome = error.outcome();
        draft.reason = status.message().to_owned();
        let operation = draft.operation.id();
        if let Err(audit_error) = self.core.record(draft).await {
            tracing::error!(operation, %audit_error, "could not audit a refused call");
        }
        tracing::info!(operation, code = ?status.code(), reason = status.message(), "call refused");
        status
    }

    /// For calls that change nothing: appends `draft` when `result` is Ok (the
    /// call fails if that append fails), or the refusal when it is not.
    pub async fn audited<T>(&self, draft: AuditDraft, result: Result<T, VaultError>) -> Result<T, Status> {
        match result {
            Ok(value) => match self.core.record(draft).await {
                Ok(_) => Ok(value),
                Err(error) => Err(status(&error)),
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

/// Shared handle the services hold.
pub type Context = Arc<VaultContext>;
