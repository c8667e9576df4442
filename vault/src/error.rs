//! The vault's error type and its mapping to gRPC status at the edge.
//!
//! A [`VaultError`] carries a message a person can act on. Internal causes
//! (database errors, key errors) are logged where they happen and replaced by
//! a generic message: they never reach the client. No message ever contains a
//! number.

use mnvault_client::number::redact_numbers;
use tonic::{Code, Status};

use crate::audit::Outcome;
use crate::store::StoreError;

/// Why a call was not carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The request is malformed (a bad number, an unknown purpose...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this (role, tenant, own job).
    #[error("{0}")]
    PermissionDenied(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it (job pending, expired, cancelled...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency is down or busy; nothing was done; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data failed its integrity check; nothing was released.
    #[error("{0}")]
    DataLoss(String),
    /// The caller presented no usable client certificate.
    #[error("{0}")]
    Unauthenticated(String),
    /// A fault inside the vault; the cause is in the vault's log.
    #[error("internal error; the vault's log has the cause")]
    Internal,
}

impl VaultError {
    /// How the audit log records this refusal.
    pub fn outcome(&self) -> Outcome {
        match self {
            VaultError::InvalidArgument(_) => Outcome::Invalid,
            VaultError::PermissionDenied(_) | VaultError::FailedPrecondition(_) | VaultError::Unauthenticated(_) => {
                Outcome::Denied
            }
            VaultError::NotFound(_) => Outcome::NotFound,
            VaultError::Unavailable(_) | VaultError::DataLoss(_) | VaultError::Internal => Outcome::Failed,
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            VaultError::InvalidArgument(_) => Code::InvalidArgument,
            VaultError::PermissionDenied(_) => Code::PermissionDenied,
            VaultError::NotFound(_) => Code::NotFound,
            VaultError::FailedPrecondition(_) => Code::FailedPrecondition,
            VaultError::Unavailable(_) => Code::Unavailable,
            VaultError::DataLoss(_) => Code::DataLoss,
            VaultError::Unauthenticated(_) => Code::Unauthenticated,
            VaultError::Internal => Code::Internal,
        }
    }
}

impl VaultError {
    /// The message for people: the error's text with any number in it
    /// redacted (messages may quote what the caller sent).
    pub fn public_message(&self) -> String {
        redact_numbers(&self.to_string()).into_owned()
    }
}

impl From<VaultError> for Status {
    fn from(error: VaultError) -> Self {
        Status::new(error.code(), error.public_message())
    }
}

impl From<StoreError> for VaultError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                VaultError::Unavailable(
                    "the vault's database is busy or unreachable; nothing was done, retry shortly".into(),
                )
            }
            StoreError::AuditUnwritable(cause) => {
                tracing::error!(%cause, "audit log could not be written; call refused");
                VaultError::Unavailable(
                    "the audit log could not be written, so nothing was done and no number was released; \
                     tell the vault's operator"
                        .into(),
                )
            }
            StoreError::AlreadyExists(what) => VaultError::FailedPrecondition(format!("{what} already exists")),
            StoreError::Conflict(message) | StoreError::ReleaseRefused(message) => {
                VaultError::FailedPrecondition(message)
            }
            StoreError::Integrity { token } => {
                tracing::error!(%token, "stored record failed its integrity check");
                VaultError::DataLoss(format!(
                    "the stored record for token {token} failed its integrity check, so nothing was released; \
                     tell the vault's operator"
                ))
            }
            other => {
                tracing::error!(cause = %other, "store failure");
                VaultError::Internal
            }
        }
    }
}
