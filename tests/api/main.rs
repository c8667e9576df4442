//! End-to-end tests: each starts the real vault (in-process, random port,
//! own data directory) and drives it through the client library or the CLI.
//! One test binary, so one build and one process for the whole suite.

#[macro_use]
mod helpers;

mod alarms;
mod audit_log;
mod audit_search;
mod audit_sinks;
mod backup;
mod bench_smoke;
mod browser;
mod collection;
mod config_check;
mod crash;
mod dev_mode;
mod filing_rules;
mod health;
mod identity;
mod incident_report;
mod integrity;
mod key_rotation;
mod limits;
mod metrics;
mod no_number_in_text;
mod offboarding;
mod pki;
mod private_files;
mod reload;
mod replicas;
mod request_ids;
mod retention;
mod review_keys;
mod review_offboarding;
mod review_retention;
mod revocation;
mod root_keys;
mod shutdown;
mod signed_audit;
mod store_conformance;
mod tampering;
mod tenant_policy;
mod tls_lifecycle;
mod tokens;
mod transport;
mod walkthrough;
