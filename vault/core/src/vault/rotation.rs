//! [`super::VaultCore`] operations of tenant key rotation.
