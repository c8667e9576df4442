//! The edge's side of errors: each [`VaultError`] of the core becomes a gRPC
//! status with the message a person can act on. Internal causes were logged
//! where they happened and never reach the client.

pub use mnvault_core::VaultError;
use tonic::{Code, Status};

/// The gRPC code of `error`.
pub fn code(error: &VaultError) -> Code {
    match error {
        VaultError::InvalidArgument(_) => Code::InvalidArgument,
        VaultError::PermissionDenied(_) => Code::PermissionDenied,
        VaultError::NotFound(_) => Code::NotFound,
        VaultError::FailedPrecondition(_) => Code::FailedPrecondition,
        VaultError::Unavailable(_) => Code::Unavailable,
        VaultError::DataLoss(_) => Code::DataLoss,
        VaultError::Unauthenticated(_) => Code::Unauthenticated,
        // A rate may succeed later; the other limits will not, as asked.
        VaultError::Limit(refusal) if refusal.limit.is_rate() => Code::ResourceExhausted,
        VaultError::Limit(_) => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// The status a client receives for `error`.
pub fn status(error: &VaultError) -> Status {
    Status::new(code(error), error.public_message())
}
