//! [`VaultError`]: why the vault did not carry out a call, as a person should
//! read it. The gRPC edge maps each variant to a status code; this crate
//! knows nothing of gRPC.
//!
//! Messages are built from parsed identifiers and counts, never from caller
//! text, and [`VaultError::public_message`] redacts any number as a last line
//! of defence. Internal causes (database errors, key errors) are logged where
//! they are turned into a `VaultError` and never reach the caller.

use crate::audit::Outcome;
use crate::id::IdError;
use crate::number::{redact_numbers, NumberError};
use crate::purpose::UnknownPurpose;
use crate::store::StoreError;
use crate::text::FreeTextError;

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
    /// A tenant policy's limit (or a job's) refused it; see
    /// [`crate::tenant_policy::Limit`]. Rates may succeed later; the rest
    /// will not, as asked.
    #[error("{}", .0.message)]
    Limit(crate::tenant_policy::LimitRefusal),
    /// A fault inside the vault; the cause is in the vault's log.
    #[error("internal error; the vault's log has the cause")]
    Internal,
}

impl VaultError {
    /// How the audit log records this refusal.
    pub fn outcome(&self) -> Outcome {
        match self {
            VaultError::InvalidArgument(_) => Outcome::Invalid,
            VaultError::PermissionDenied(_)
            | VaultError::FailedPrecondition(_)
            | VaultError::Unauthenticated(_)
            | VaultError::Limit(_) => Outcome::Denied,
            VaultError::NotFound(_) => Outcome::NotFound,
            VaultError::Unavailable(_) | VaultError::DataLoss(_) | VaultError::Internal => Outcome::Failed,
        }
    }

    /// The message for people, with any number redacted.
    pub fn public_message(&self) -> String {
        redact_numbers(&self.to_string()).into_owned()
    }

    /// The error for an audit entry that could not be written: the whole call
    /// was undone and nothing was released.
    pub fn audit_unwritable(cause: &StoreError) -> Self {
        tracing::error!(%cause, "audit log could not be written; call refused");
        VaultError::Unavailable(
            "the audit log could not be written, so nothing was done and no number was released; tell the vault's \
             operator"
                .into(),
        )
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
            other => {
                tracing::error!(cause = %other, "store failure");
                VaultError::Internal
            }
        }
    }
}

impl From<crate::tenant_policy::LimitRefusal> for VaultError {
    fn from(refusal: crate::tenant_policy::LimitRefusal) -> Self {
        VaultError::Limit(refusal)
    }
}

impl From<IdError> for VaultError {
    fn from(error: IdError) -> Self {
        VaultError::InvalidArgument(error.to_string())
    }
}

impl From<FreeTextError> for VaultError {
    fn from(error: FreeTextError) -> Self {
        VaultError::InvalidArgument(error.to_string())
    }
}

impl From<NumberError> for VaultError {
    fn from(error: NumberError) -> Self {
        VaultError::InvalidArgument(error.to_string())
    }
}

impl From<UnknownPurpose> for VaultError {
    fn from(error: UnknownPurpose) -> Self {
        VaultError::InvalidArgument(error.to_string())
    }
}
