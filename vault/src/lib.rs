//! mnvault: a vault for Japanese My Numbers (個人番号), served over gRPC.
//!
//! Payroll systems send a number and keep only the opaque token they get
//! back. Numbers are stored sealed under per-tenant keys, which are wrapped by
//! a root key that lives outside the database. A number leaves only inside an
//! approved filing job, and every call is written to a hash-chained audit log
//! that never holds a number.
//!
//! Layout: every rule lives in the `mnvault-core` crate. Here, [`startup`]
//! builds and runs the server; [`service`] translates gRPC to the core;
//! [`store`] implements the core's store contract on SQLite and PostgreSQL;
//! [`identity`] names the caller from its certificate; [`datadir`]
//! initialises a data directory; [`cli`] is the `mnvault` command line.
//! Crypto lives in the `mnvault-keys` crate.

#![forbid(unsafe_code)]

pub mod alarms;
pub mod audit_sink;
pub mod backup;
pub mod checkpointer;
pub mod cli;
pub mod collect_page;
pub mod config;
pub mod datadir;
pub mod dev_pki;
pub mod error;
pub mod health;
pub mod identity;
pub mod key_schedule;
pub mod lifecycle;
pub mod metrics;
pub mod pki;
pub mod purge;
pub mod refresh;
pub mod reload;
pub mod root_key;
pub mod serve;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls_watch;
pub mod watermark;
