//! [`super::VaultCore`] operations of retention.
