//! mnvault: a vault for Japanese My Numbers (個人番号), served over gRPC.
//!
//! Payroll systems send a number and keep only the opaque token they get
//! back. Numbers are stored sealed under per-tenant keys, which are wrapped by
//! a root key that lives outside the database. A number leaves only inside an
//! approved filing job, and every call is written to a hash-chained audit log
//! that never holds a number.
//!
//! Layout: [`startup`] builds and runs the server; [`service`] holds the gRPC
//! handlers; [`store`] is persistence behind one trait; [`keyring`] unwraps
//! tenant keys; [`audit`] defines entries and the chain; [`authz`] the access
//! policy; [`datadir`] initialises a data directory; [`cli`] is the `mnvault`
//! command line. Crypto lives in the `mnvault-keys` crate.

#![forbid(unsafe_code)]

pub mod audit;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datadir;
pub mod dev_pki;
pub mod error;
pub mod keyring;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
