//! `cargo bench -p mnvault-tests --bench audit_report -- [--backend sqlite|postgres|both] [--entries N]`
//!
//! The incident report over a large log (issue 8: "over a million entries
//! in seconds"). For each backend it initialises a dev data directory,
//! generates a log of `--entries` entries through the store itself (sealed
//! with the vault's own chain key by `AuditRecord::seal`, written by
//! `insert_audit_entries` in transactions of `--batch`, each head signed
//! with the vault's signing key as of its last entry's time), then times the report's phases through the same code
//! `mnvault audit report` runs, and the command itself, end to end:
//!
//! - checked, verify: how many entries the report verified (the window's part
//!   of the log) with public keys only, and in what time
//!   (`verify_for_report`: from the checkpoint before it to the one after);
//! - gather: every count of the report (aggregate statements);
//! - write: the report written, its affected tokens streamed from the store.
//!
//! The log spans 30 days: tokenize calls, filing jobs (create, approve,
//! one or two releases of 12 tokens each, a tenth released again in part),
//! tenant exports, refusals, alerts, key rotations, listings; 20 tenants,
//! 40 filers, every filing purpose. Day 20 has no job: its report says no
//! number left the vault. No number is involved: tokens are drawn.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mnvault::config::Settings;
use mnvault::datadir;
use mnvault::store::OpenMode;
use mnvault_core::audit::checkpoint::{SignedCheckpoint, TrustedKeys};
use mnvault_core::audit::report::{verify_for_report, IncidentReport, ReportFormat, ReportQuery};
use mnvault_core::audit::{AuditDraft, AuditRecord, Operation, Outcome};
use mnvault_core::id::{JobId, Principal, TenantId, Token, TokenFormat};
use mnvault_core::mint::{draw_job_id, draw_request_id, draw_token};
use mnvault_core::purpose::Purpose;
use mnvault_core::store::{ChainHead, Store};
use mnvault_core::vault::checkpoint::LogWalk;
use mnvault_core::VaultCore;
use mnvault_keys::AuditChainKey;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::Connection as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backends {
    Sqlite,
    Postgres,
    Both,
}

/// The incident report over a generated log.
#[derive(Debug, Parser)]
#[command(name = "audit_report")]
struct Args {
    /// Which store(s).
    #[arg(long, value_enum, default_value = "both")]
    backend: Backends,
    /// Entries in the generated log.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per write transaction while generating; the vault signs a
    /// checkpoint after each (a running vault signs one a minute and on
    /// every job change, far closer together), so a window's report
    /// verifies from the checkpoint before it to the one after.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// The PostgreSQL server; a fresh database is made there and dropped.
    #[arg(
        long,
        env = "MNVAULT_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// Keep the SQLite data directory (and print where it is) to look at
    /// the queries by hand.
    #[arg(long)]
    keep: bool,
    /// Arguments cargo passes to every bench target (`--bench`).
    #[arg(long, hide = true)]
    bench: bool,
}

const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 30;
/// The day without filing jobs.
const QUIET_DAY: i64 = 20;
const TENANTS: usize = 20;
const FILERS: usize = 40;
const JOB_TOKENS: usize = 12;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if matches!(args.backend, Backends::Sqlite | Backends::Both) {
            run("sqlite", None, &args).await?;
        }
        if matches!(args.backend, Backends::Postgres | Backends::Both) {
            let mut admin = sqlx::PgConnection::connect(&args.database_url)
                .await
                .context("cannot reach PostgreSQL (set --database-url or MNVAULT_TEST_POSTGRES_URL)")?;
            let name = format!("mnvault_bench_report_{}", rand::thread_rng().gen::<u32>());
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
            let (base, _) = args.database_url.rsplit_once('/').context("a URL ending in /DATABASE")?;
            let ran = run("postgres", Some(format!("{base}/{name}")), &args).await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
            ran?;
        }
        anyhow::Ok(())
    })
}

/// Generates the log: who does what, and when.
struct Generator {
    rng: StdRng,
    key: AuditChainKey,
    seq: u64,
    prev: [u8; 32],
    base_ms: i64,
    total: u64,
    tenants: Vec<TenantId>,
    filers: Vec<Principal>,
    others: [Principal; 4],
    purposes: Vec<Purpose>,
    /// Entries of one job cycle or call not yet sealed.
    pending: Vec<AuditDraft>,
}

impl Generator {
    fn time_of(&self, seq: u64) -> i64 {
        self.base_ms + (i128::from(DAYS * DAY_MS) * i128::from(seq) / i128::from(self.total.max(1))) as i64
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.gen_range(0..items.len())].clone()
    }

    fn draft(principal: &Principal, operation: Operation, tenant: &TenantId) -> AuditDraft {
        AuditDraft { request_id: Some(draw_request_id()), ..AuditDraft::by(principal, operation, Some(tenant)) }
    }

    /// The drafts of the next call or job cycle at position `seq`.
    fn next_drafts(&mut self) {
        let day = (self.time_of(self.seq + 1) - self.base_ms) / DAY_MS;
        let tenant = self.pick(&self.tenants.clone());
        let [payroll, requester, approver, admin] = self.others.clone();
        let roll = self.rng.gen_range(0..1000);
        match roll {
            // A filing job: created, approved, released once or twice.
            0..=99 if day != QUIET_DAY => {
                let tokens: Vec<Token> = (0..JOB_TOKENS).map(|_| draw_token(TokenFormat::Opaque)).collect();
                let job: JobId = draw_job_id();
                let purpose = self.pick(&self.purposes.clone());
                let filer = self.pick(&self.filers.clone());
                let mut create = Self::draft(&requester, Operation::CreateFilingJob, &tenant);
                create.job_id = Some(job.clone());
                create.purpose = Some(purpose);
                create.tokens = tokens.clone();
                create.record_count = tokens.len() as u64;
                let approve = AuditDraft { tokens: Vec::new(), record_count: 0, ..create.clone() };
                let approve =
                    AuditDraft { operation: Operation::ApproveFilingJob, principal: Some(approver), ..approve };
                self.pending.extend([create, approve]);
                let halves = self.rng.gen_bool(0.3);
                let parts: Vec<&[Token]> =
                    if halves { vec![&tokens[..JOB_TOKENS / 2], &tokens[JOB_TOKENS / 2..]] } else { vec![&tokens[..]] };
                for part in parts {
                    let mut release = Self::draft(&filer, Operation::Detokenize, &tenant);
                    release.job_id = Some(job.clone());
                    release.purpose = Some(purpose);
                    release.tokens = part.to_vec();
                    release.record_count = part.len() as u64;
                    self.pending.push(release);
                }
                if self.rng.gen_bool(0.1) {
                    // Released again (a filing redone), a third of the job.
                    let mut again = Self::draft(&filer, Operation::Detokenize, &tenant);
                    again.job_id = Some(job);
                    again.purpose = Some(purpose);
                    again.tokens = tokens[..JOB_TOKENS / 3].to_vec();
                    again.record_count = again.tokens.len() as u64;
                    self.pending.push(again);
                }
            }
            // A tenant export page (rare).
            100 if day != QUIET_DAY => {
                let filer = self.pick(&self.filers.clone());
                let mut page = Self::draft(&filer, Operation::ExportTenant, &tenant);
                page.job_id = Some(draw_job_id());
                page.purpose = Some(Purpose::TenantExport);
                page.tokens = (0..100).map(|_| draw_token(TokenFormat::Opaque)).collect();
                page.record_count = 100;
                self.pending.push(page);
            }
            // Refusals: a release, a job, a tokenize.
            101..=130 => {
                let principal = if roll % 3 == 0 { self.pick(&self.filers.clone()) } else { requester };
                let operation = [Operation::Detokenize, Operation::CreateFilingJob, Operation::Tokenize][roll % 3];
                let mut refused = Self::draft(&principal, operation, &tenant);
                refused.outcome = if roll % 2 == 0 { Outcome::Denied } else { Outcome::Invalid };
                refused.reason = "refused by the benchmark".into();
                if roll % 7 == 0 {
                    refused.tenant = None;
                }
                self.pending.push(refused);
            }
            // An alert, a key rotation, a retention change (rare).
            131 => {
                let mut alert = Self::draft(&payroll, Operation::RaiseAlert, &tenant);
                alert.reason = "releases outside configured hours".into();
                self.pending.push(alert);
            }
            132 => self.pending.push(Self::draft(&admin, Operation::RotateTenantKey, &tenant)),
            133..=135 => {
                let mut set = Self::draft(&payroll, Operation::SetRetention, &tenant);
                set.tokens = vec![draw_token(TokenFormat::Opaque)];
                set.record_count = 1;
                self.pending.push(set);
            }
            // Listings and job reads.
            136..=199 => self.pending.push(Self::draft(&approver, Operation::GetFilingJob, &tenant)),
            // Tokenize, one number a call.
            _ => {
                let mut tokenize = Self::draft(&payroll, Operation::Tokenize, &tenant);
                tokenize.tokens = vec![draw_token(TokenFormat::Opaque)];
                tokenize.record_count = 1;
                self.pending.push(tokenize);
            }
        }
    }

    /// The next `count` entries, sealed and chained.
    fn seal(&mut self, count: usize) -> Vec<AuditRecord> {
        let mut records = Vec::with_capacity(count);
        while records.len() < count && self.seq < self.total {
            if self.pending.is_empty() {
                self.next_drafts();
                self.pending.reverse();
            }
            let draft = self.pending.pop().expect("drafts pending");
            self.seq += 1;
            let record = AuditRecord::seal(draft, self.seq, self.time_of(self.seq), self.prev, &self.key);
            self.prev = record.hash;
            records.push(record);
        }
        records
    }
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident memory to the current (`clear_refs` 5) and
/// returns the current.
fn reset_peak_kib() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_kib("VmRSS:")
}

fn secs(elapsed: Duration) -> String {
    format!("{:.2} s", elapsed.as_secs_f64())
}

async fn run(backend: &str, database_url: Option<String>, args: &Args) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("mnvault-bench-report-").tempdir()?;
    let dir = work.path().join("vault");
    let mut settings = datadir::dev_settings(&dir);
    if let Some(url) = &database_url {
        settings.database.url = url.clone();
    }
    datadir::initialise(&settings).await.context("initialise the data directory")?;
    let settings = Settings::load(&dir)?;
    let provider = mnvault::startup::root_key_provider(&settings)?;
    let store: Arc<dyn Store> =
        mnvault::store::open(&settings.database(), OpenMode::Serve, settings.database.write_timeout()).await?;
    let core =
        VaultCore::open(store.clone(), provider.clone(), settings.access_policy().map_err(anyhow::Error::msg)?).await?;
    let key = mnvault_core::keyring::load_system_keys(store.as_ref(), provider.as_ref()).await?.audit_chain;
    let signing_key = mnvault_core::keyring::load_signing_key(store.as_ref(), provider.as_ref()).await?;

    // The log.
    let head = store.begin_read().await?.audit_head().await?;
    let now = mnvault_core::clock::now_ms();
    let base_ms = (now - DAYS * DAY_MS - 60_000) / DAY_MS * DAY_MS;
    let mut generator = Generator {
        rng: StdRng::seed_from_u64(8),
        key,
        seq: head.seq,
        prev: head.hash,
        base_ms,
        total: head.seq + args.entries,
        tenants: (1..=TENANTS).map(|i| TenantId::parse(&format!("t{i:02}")).unwrap()).collect(),
        filers: (1..=FILERS).map(|i| Principal::parse(&format!("filer-{i:02}")).unwrap()).collect(),
        others: ["payroll", "requester", "approver", "admin"].map(|p| Principal::parse(p).unwrap()),
        purposes: Purpose::ALL.into_iter().filter(|p| *p != Purpose::TenantExport).collect(),
        pending: Vec::new(),
    };
    let started = Instant::now();
    let (mut sealing, mut writing, mut signing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let bar = indicatif::ProgressBar::new(args.entries);
    loop {
        let lap = Instant::now();
        let batch = generator.seal(args.batch);
        sealing += lap.elapsed();
        let Some(last) = batch.last() else { break };
        let head = ChainHead { seq: last.seq, hash: last.hash };
        let lap = Instant::now();
        let mut tx = store.begin_write().await?;
        tx.lock_chain_head().await?;
        tx.insert_audit_entries(&batch).await?;
        tx.set_chain_head(&head).await?;
        // Signed as the vault would have signed it then: a second after
        // its entry (a report finds its checkpoints by their signed times).
        let lap_signing = Instant::now();
        let checkpoint = SignedCheckpoint::sign(&signing_key, &head, generator.time_of(last.seq) + 1_000);
        tx.insert_audit_checkpoint(&checkpoint).await?;
        signing += lap_signing.elapsed();
        tx.commit().await?;
        writing += lap.elapsed();
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let generated = started.elapsed();
    if database_url.is_some() {
        // A database in use has its statistics (autovacuum); a fresh one gets them now.
        let mut conn = sqlx::PgConnection::connect(database_url.as_deref().unwrap()).await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        let _ = conn.close().await;
    }
    let head = store.begin_read().await?.audit_head().await?;
    println!(
        "\n== {backend}: {} entries generated in {} (sealing {}, writing {}, of which signing {})",
        head.seq,
        secs(generated),
        secs(sealing),
        secs(writing),
        secs(signing)
    );

    let public_key = core.signing_key_public();
    let windows: Vec<(String, i64, i64, Option<&str>)> = vec![
        ("whole log (30 days)".into(), base_ms - DAY_MS, now + 60_000, None),
        ("whole log, tenant t01".into(), base_ms - DAY_MS, now + 60_000, Some("t01")),
        ("one day (day 10)".into(), base_ms + 10 * DAY_MS, base_ms + 11 * DAY_MS, None),
        ("the quiet day (day 20)".into(), base_ms + QUIET_DAY * DAY_MS, base_ms + (QUIET_DAY + 1) * DAY_MS, None),
    ];
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}  statement",
        "window", "checked", "verify", "gather", "write", "total", "persons", "tokens", "+MiB v/g/w"
    );
    for (name, since, until, tenant) in windows {
        let query =
            ReportQuery { since_ms: since, until_ms: until, tenant: tenant.map(|t| TenantId::parse(t).unwrap()) };
        // How far above the memory held before each phase its peak went.
        let rise = |before: Option<u64>| {
            status_kib("VmHWM:")
                .zip(before)
                .map_or("?".to_owned(), |(peak, before)| (peak.saturating_sub(before) / 1024).to_string())
        };
        let before = reset_peak_kib();
        let lap = Instant::now();
        let walk = LogWalk::new(TrustedKeys::anchored([public_key]), "the benchmark's key".into(), None);
        let verification = verify_for_report(store.as_ref(), walk, &query, false, |_| {}).await?;
        let verify = lap.elapsed();
        let verify_rise = rise(before);
        let before = reset_peak_kib();
        let lap = Instant::now();
        let report = IncidentReport::gather(store.as_ref(), query, verification, now).await?;
        let gather = lap.elapsed();
        let gather_rise = rise(before);
        let before = reset_peak_kib();
        let lap = Instant::now();
        let path = work.path().join("report.md");
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        let tokens = report.write(store.as_ref(), ReportFormat::Markdown, &mut file).await?;
        file.flush()?;
        let write = lap.elapsed();
        let rises = format!("{verify_rise}/{gather_rise}/{}", rise(before));
        let statement = report.statement();
        let first = statement.first().map(String::as_str).unwrap_or_default();
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}  {}",
            name,
            report.verification.evidence.entries,
            secs(verify),
            secs(gather),
            secs(write),
            secs(verify + gather + write),
            report.releases.persons,
            tokens,
            rises,
            first.chars().take(60).collect::<String>()
        );
        assert_eq!(tokens, report.releases.persons, "every affected token is listed once");
        assert!(report.verification.evidence.broken.is_none(), "{:?}", report.verification.evidence.broken);
        if name.starts_with("the quiet day") {
            assert!(report.nothing_released() && first.starts_with("No number left the vault"), "{first}");
        }
    }

    // The command itself, end to end (JSON to a file).
    let out = work.path().join("report.json");
    let (since, until) = (
        mnvault_core::audit::report::japan_time(base_ms - DAY_MS),
        mnvault_core::audit::report::japan_time(now + 60_000),
    );
    let key_text = public_key.to_string();
    let argv = [
        "mnvault",
        "audit",
        "report",
        "--since",
        &since,
        "--until",
        &until,
        "--format",
        "json",
        "--public-key",
        &key_text,
        "--out",
    ];
    let mut argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    argv.push(out.display().to_string());
    argv.extend(["--data-dir".into(), dir.display().to_string()]);
    let cli = <mnvault::cli::Cli as clap::Parser>::try_parse_from(argv)?;
    let lap = Instant::now();
    let mut said = Vec::new();
    mnvault::cli::run(cli, &mut said).await?;
    println!(
        "mnvault audit report --format json (whole log): {} end to end, {} MiB written; {}",
        secs(lap.elapsed()),
        std::fs::metadata(&out)?.len() / (1024 * 1024),
        String::from_utf8_lossy(&said).trim()
    );
    drop(core);
    store.close().await;
    if args.keep && database_url.is_none() {
        println!("data directory kept: {}", work.keep().display());
    }
    Ok(())
}
