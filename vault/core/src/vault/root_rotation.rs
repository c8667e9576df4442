//! [`super::VaultCore`] operations of root key rotation.
