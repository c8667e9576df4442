//! End-to-end tests: each starts the real vault (in-process, random port,
//! own data directory) and drives it through the client library or the CLI.
//! One test binary, so one build and one process for the whole suite.

#[macro_use]
mod helpers;

mod audit_log;
mod crash;
mod dev_mode;
mod filing_rules;
mod integrity;
mod limits;
mod no_number_in_text;
mod private_files;
mod replicas;
mod store_conformance;
mod tampering;
mod tokens;
mod transport;
mod walkthrough;
