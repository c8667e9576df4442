//! The gRPC API of mnvault, package `mynumber.vault.v1`, generated at build
//! time from `proto/mynumber/vault/v1/*.proto` with protox and tonic-prost-build.
//!
//! The `.proto` files are the contract: every method and field is documented
//! there. This crate adds nothing but the generated code and the encoded file
//! descriptor set that server reflection serves.

#![forbid(unsafe_code)]

/// Package `mynumber.vault.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mynumber.vault.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mnvault_descriptor");
