//! The domain core of mnvault: every rule of the vault, written once.
//!
//! The gRPC handlers (`mnvault::service`) only translate between protobuf and
//! this crate; the stores (`mnvault::store`, SQLite and PostgreSQL) only
//! offer the simple transactional steps of [`store::WriteTx`]. What decides
//! whether a number may leave lives here and nowhere else:
//!
//! - [`id`], [`number`], [`purpose`], [`text`]: what a caller sends, parsed
//!   once at the edge into types with strict grammars. A value that parsed
//!   holds no My Number, so it may appear in messages and audit entries; one
//!   that did not is refused without being repeated.
//! - [`job`]: the filing-job state machine, who may approve, what may be
//!   released.
//! - [`authz`], [`identity`]: roles and tenant scopes, from the caller's
//!   SPIFFE ID or, in the compatibility mode, from `[principals]`.
//! - [`integrity`]: state tags, so nothing the database says decides a
//!   release unless a key the database does not hold vouches for it.
//! - [`mint`]: drawing tokens, job identifiers and request ids.
//! - [`audit`]: entries, their chain and its verification; [`vault::append`]
//!   is the one append protocol.
//! - [`vault::VaultCore`]: each operation as a sequence of store steps in one
//!   transaction, rules in between.
//!
//! No gRPC, no SQL and no async runtime here: the crate can be read, tested
//! and reviewed on its own.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod authz;
pub mod clock;
pub mod collection;
pub mod error;
mod group_commit;
pub mod id;
pub mod identity;
pub mod integrity;
pub mod job;
pub mod keyring;
pub mod mint;
pub mod number;
pub mod offboarding;
pub mod purpose;
pub mod retention;
pub mod revocation;
pub mod store;
pub mod tenant_policy;
pub mod text;
pub mod vault;

pub use error::VaultError;
pub use vault::VaultCore;
