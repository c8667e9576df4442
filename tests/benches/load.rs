//! `cargo bench -p mnvault-tests --bench load -- [--backend sqlite|postgres|both] [--scale small|full]`
//!
//! Starts a vault in a process of its own (this executable again, see
//! `bench::server`) on each backend, drives it over gRPC with mutual TLS, and
//! prints a table per backend: rates, p50/p99, the storage ceiling beside
//! each write rate, the vault's resident memory and database bytes per token.
//! Last, the tenant's key is rotated and every record rewrapped.
//! The phases and what each column means are in `tests/bench/`; the README
//! shows the command and figures.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

#[path = "../bench/mod.rs"]
mod bench;

use bench::{BackendKind, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backends {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scale {
    /// About a tenth of the full run: a quick look.
    Small,
    /// Issue 11's sizes: 100,000-record streams, a fill to 1,000,000 tokens,
    /// 10,000 releases, a rewrap of every token.
    Full,
}

/// Load benchmark of the vault: one command, both backends.
#[derive(Debug, Parser)]
#[command(name = "load")]
struct Args {
    /// Which store(s) to run the vault on.
    #[arg(long, value_enum, default_value = "both")]
    backend: Backends,
    /// Sizes of the phases (the flags below change single ones).
    #[arg(long, value_enum, default_value = "full")]
    scale: Scale,
    /// The PostgreSQL server; the benchmark creates fresh databases there and
    /// drops them at the end.
    #[arg(
        long,
        env = "MNVAULT_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// Concurrencies of unary `Tokenize`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// `Tokenize` calls at each concurrency.
    #[arg(long)]
    unary_calls: Option<usize>,
    /// Records of each measured `TokenizeStream`.
    #[arg(long)]
    stream_records: Option<usize>,
    /// Tokens stored before the second stream (0: no fill, no second stream).
    #[arg(long)]
    fill_to: Option<usize>,
    /// Tokens released by `Detokenize`.
    #[arg(long)]
    detokenize_tokens: Option<usize>,
    /// Tokens per `Detokenize` call.
    #[arg(long)]
    detokenize_call_tokens: Option<usize>,
    /// Records per `RewrapTenantRecords` call (0: no rotation, no rewrap).
    #[arg(long)]
    rewrap_batch: Option<u32>,
    /// Rotations, each followed by a rewrap of every record (to see the spread).
    #[arg(long)]
    rewrap_rounds: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bars or phase lines on standard error.
    #[arg(long)]
    quiet: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    // The vault under test is this executable started again.
    if bench::server::serve_if_asked()? {
        return Ok(());
    }
    let args = Args::parse();
    let backends = match args.backend {
        Backends::Sqlite => vec![BackendKind::Sqlite],
        Backends::Postgres => vec![BackendKind::Postgres { server_url: args.database_url.clone() }],
        Backends::Both => {
            vec![BackendKind::Sqlite, BackendKind::Postgres { server_url: args.database_url.clone() }]
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    println!("{}", machine());
    let mut reports = Vec::new();
    let mut failed = None;
    for backend in backends {
        let name = backend.name();
        let plan = plan(&args, backend);
        match runtime.block_on(bench::run(&plan)) {
            Ok(report) => {
                println!("\n{}", report.table());
                let problems = report.problems();
                if !problems.is_empty() {
                    eprintln!("bench {name}: wrong answers, so these figures mean nothing:");
                    problems.iter().for_each(|problem| eprintln!("  {problem}"));
                    failed = Some(anyhow::anyhow!("the {name} vault answered wrongly"));
                }
                reports.push(report);
            }
            Err(error) => {
                eprintln!("bench {name}: failed: {error:#}");
                failed = Some(error.context(format!("the {name} run failed")));
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "machine": machine(),
            "backends": reports.iter().map(bench::BackendReport::json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    failed.map_or(Ok(()), Err)
}

fn plan(args: &Args, backend: BackendKind) -> Plan {
    let mut plan = match args.scale {
        Scale::Small => Plan::small(backend),
        Scale::Full => Plan::full(backend),
    };
    if let Some(concurrency) = &args.concurrency {
        plan.unary_concurrency = concurrency.clone();
    }
    let set = |field: &mut usize, value: Option<usize>| *field = value.unwrap_or(*field);
    set(&mut plan.unary_calls, args.unary_calls);
    set(&mut plan.stream_records, args.stream_records);
    set(&mut plan.fill_to, args.fill_to);
    set(&mut plan.detokenize_tokens, args.detokenize_tokens);
    set(&mut plan.detokenize_call_tokens, args.detokenize_call_tokens);
    set(&mut plan.rewrap_rounds, args.rewrap_rounds);
    plan.rewrap_batch = args.rewrap_batch.unwrap_or(plan.rewrap_batch);
    plan.progress = !args.quiet;
    plan
}

/// The CPUs the figures were taken on.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split_once(':')))
        .map_or("unknown CPU", |(_, model)| model.trim());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cpus} CPU(s), {model}")
}
