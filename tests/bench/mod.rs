//! The load benchmark of issue 11: one vault in a process of its own, driven
//! over gRPC (mutual TLS, the client library) on one backend, and beside each
//! write rate the storage ceiling, the rate at which the same store takes the
//! same rows written directly ([`ceiling`]).
//!
//! Included twice, by `#[path]`: by the release benchmark `tests/benches/load.rs`
//! (`cargo bench -p mnvault-tests --bench load`), and by the smoke test
//! `tests/api/bench_smoke.rs`, which runs every scenario at a tiny scale in
//! the normal test run and checks answers, never speed, so this code cannot
//! rot unnoticed.
//!
//! Every number sent is generated from the check-digit rule ([`numbers`]),
//! and no number is ever printed or written anywhere by the benchmark.

pub mod ceiling;
pub mod numbers;
pub mod report;
pub mod rewrap;
pub mod scenarios;
pub mod server;
pub mod target;

use std::time::Duration;

pub use report::BackendReport;

/// Which store the vault under test runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// A SQLite file in the vault's data directory.
    Sqlite,
    /// Fresh databases on the PostgreSQL server at this URL (any database
    /// of the server: it is only used to create and drop the bench's own).
    Postgres {
        /// The server.
        server_url: String,
    },
}

impl BackendKind {
    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres { .. } => "postgres",
        }
    }
}

/// How the benchmark starts its vault process: this same executable, with
/// these arguments and [`server::SERVE_DATA_DIR`] set. The benchmark binary
/// needs none; a test binary names the ignored test that serves.
#[derive(Debug, Clone, Default)]
pub struct ChildCommand {
    /// Arguments after the executable.
    pub args: Vec<String>,
}

/// What one run measures, on one backend.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store.
    pub backend: BackendKind,
    /// How to start the vault process.
    pub child: ChildCommand,
    /// Unary `Tokenize` is measured at each of these concurrencies.
    pub unary_concurrency: Vec<usize>,
    /// `Tokenize` calls per concurrency, each with a fresh number.
    pub unary_calls: usize,
    /// Numbers of each measured `TokenizeStream` (fresh, then after the fill).
    pub stream_records: usize,
    /// Tokens stored after the fill, before the second stream; 0 skips both.
    pub fill_to: usize,
    /// Numbers per stream while filling.
    pub fill_stream_records: usize,
    /// Tokens released by `Detokenize`, from the first stream's.
    pub detokenize_tokens: usize,
    /// Tokens per `Detokenize` call.
    pub detokenize_call_tokens: usize,
    /// Tokens per filing job (the vault's `limits.max_job_tokens` by default).
    pub job_tokens: usize,
    /// Records per `RewrapTenantRecords` call; 0 skips the rewrap.
    pub rewrap_batch: u32,
    /// Rotations of the tenant's key, each followed by a rewrap of every record.
    pub rewrap_rounds: usize,
    /// Tokens of phase 2 released after each rewrap, to check it.
    pub rewrap_check_tokens: usize,
    /// Progress bars and phase lines on standard error.
    pub progress: bool,
}

impl Plan {
    /// The sizes issue 11 asks for.
    pub fn full(backend: BackendKind) -> Self {
        Plan {
            backend,
            child: ChildCommand::default(),
            unary_concurrency: vec![1, 8, 64],
            unary_calls: 5_000,
            stream_records: 100_000,
            fill_to: 1_000_000,
            fill_stream_records: 100_000,
            detokenize_tokens: 10_000,
            // A filing run releases a job's numbers in one call; each call
            // reads and checks the whole job, so paging a large job in small
            // calls costs more (`--detokenize-call-tokens 1000` shows how much).
            detokenize_call_tokens: 10_000,
            job_tokens: mnvault::config::LimitSettings::default().max_job_tokens,
            // The largest call: a rewrap is a background walk, not a caller waiting.
            rewrap_batch: mnvault_core::vault::MAX_REWRAP_BATCH,
            rewrap_rounds: 1,
            rewrap_check_tokens: 1_000,
            progress: true,
        }
    }

    /// A quick look (about a tenth of the full run).
    pub fn small(backend: BackendKind) -> Self {
        Plan {
            unary_calls: 1_000,
            stream_records: 10_000,
            fill_to: 100_000,
            fill_stream_records: 50_000,
            detokenize_tokens: 2_000,
            ..Plan::full(backend)
        }
    }
}

/// Runs every phase of `plan` against a fresh vault and a fresh ceiling
/// store, and removes both afterwards.
pub async fn run(plan: &Plan) -> anyhow::Result<BackendReport> {
    let target = target::Target::create(&plan.backend).await?;
    let outcome = scenarios::run_all(plan, &target).await;
    target.remove().await;
    outcome
}

/// A bound on waiting for the vault process, not a speed requirement.
pub const START_WAIT: Duration = Duration::from_secs(300);
