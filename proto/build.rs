//! Compiles `mynumber/vault/v1/*.proto` with protox (pure Rust), so building
//! needs nothing but cargo: no system `protoc`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "mynumber/vault/v1/token.proto",
    "mynumber/vault/v1/filing.proto",
    "mynumber/vault/v1/admin.proto",
    "mynumber/vault/v1/audit.proto",
    "mynumber/vault/v1/retention.proto",
    "mynumber/vault/v1/keys.proto",
    "mynumber/vault/v1/collection.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // The descriptor set also feeds gRPC server reflection.
    std::fs::write(out_dir.join("mnvault_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
