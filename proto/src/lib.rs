//! The gRPC API of mnvault, package `mynumber.vault.v1`, generated at build
//! time from `proto/mynumber/vault/v1/*.proto` with protox and tonic-prost-build.
//!
//! The `.proto` files are the contract: every method and field is documented
//! there. This crate adds nothing but the generated code, the encoded file
//! descriptor set that server reflection serves, and the wiping of the
//! messages that carry a number.

#![forbid(unsafe_code)]

/// Package `mynumber.vault.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("mynumber.vault.v1");
}

// The messages that carry a number wipe it when dropped, so neither the
// vault's answer nor the client's request or received answer leaves the
// digits in freed memory once the message is encoded or read. (The encoded
// bytes in tonic's, hyper's and h2's buffers are beyond our reach.) Fields
// cannot be moved out of these types: take them with `std::mem::take`.
impl Drop for v1::TokenizeRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.number);
    }
}

impl Drop for v1::DetokenizeResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.number);
    }
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mnvault_descriptor");
