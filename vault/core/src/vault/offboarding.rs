//! [`super::VaultCore`] operations of tenant offboarding.
