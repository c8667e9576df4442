//! The phases of a run, in order, against one vault process:
//!
//! 1. unary `Tokenize` at each concurrency (one connection per caller, each
//!    call a fresh number);
//! 2. one `TokenizeStream` of fresh numbers;
//! 3. streams of fresh numbers until the vault holds `fill_to` tokens;
//! 4. one more `TokenizeStream` of fresh numbers, on the full database;
//! 5. `Detokenize` of tokens from phase 2, in approved filing jobs;
//! 6. rotation of the tenant's key and a rewrap of every record
//!    ([`super::rewrap`]), `rewrap_rounds` times.
//!
//! After each write phase the ceiling store takes the same rows
//! ([`super::ceiling`]), so it holds as many as the vault's at every phase.
//! Every answer is checked (every call OK, one distinct token per distinct
//! number, each released number the one sent for its token); the counts go
//! into the report, and the smoke test asserts on them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use mnvault::config::LimitSettings;
use mnvault_client::{NewFilingJob, TokenFormat};
use mnvault_core::audit::Operation;
use mnvault_core::store::Store;
use secrecy::ExposeSecret as _;

use super::ceiling::Commit;
use super::numbers::NumberSource;
use super::report::{group, BackendReport, Latency, Row};
use super::server::VaultProcess;
use super::target::Target;
use super::Plan;

/// The tenant every phase uses (made by the dev initialisation).
const TENANT: &str = "demo";
/// Tokens with the number sent for each, kept from phase 2 for `Detokenize`.
type Pairs = Vec<(String, String)>;

/// Runs every phase of `plan`; the vault process is stopped at the end.
pub async fn run_all(plan: &Plan, target: &Target) -> anyhow::Result<BackendReport> {
    let backend = plan.backend.name();
    say(plan, format_args!("{backend}: starting the vault and the ceiling store"));
    let vault =
        VaultProcess::start(&plan.child, &target.vault_dir(), target.vault_database.as_deref(), &target.vault_log())
            .await?;
    say(plan, format_args!("{backend}: vault process {} (for a profiler)", vault.pid()));
    // The initialised vault's own rows (keys, tenant, audit entries of its
    // start) are not the tokens'.
    let empty_bytes = target.vault_database_bytes().await?;
    // The start's peak (migrations, key set-up) counts for the run, not the first phase.
    let started_peak = vault.memory()?.peak;
    vault.reset_peak();
    let ceiling = target.ceiling_store().await?;
    // The vault serves the dev defaults, so these are its limits.
    let limits = LimitSettings::default();
    let numbers = NumberSource::new();
    let mut report = BackendReport { backend, ..BackendReport::default() };

    for &concurrency in &plan.unary_concurrency {
        let what = format!("Tokenize c={concurrency}");
        let mut row = unary(plan, &vault, &what, concurrency, numbers.take(plan.unary_calls)).await?;
        let commit = Commit { operation: Operation::Tokenize, calls: concurrency, records_per_call: 1 };
        row.ceiling = Some(ceiling_phase(plan, &ceiling, commit, row.count).await?);
        (row.rss, row.peak_rss) = memory(&vault)?;
        report.stored_tokens += row.distinct_tokens;
        done(plan, &row);
        report.rows.push(row);
    }

    let stream_commit =
        Commit { operation: Operation::TokenizeStream, calls: 1, records_per_call: limits.stream_batch_records };
    let what = format!("TokenizeStream {} fresh", group(plan.stream_records as u64));
    let keep = plan.detokenize_tokens.min(plan.stream_records);
    let (mut row, pairs) = stream(plan, &vault, &what, numbers.take(plan.stream_records), keep).await?;
    report.stored_tokens += row.distinct_tokens;
    row.ceiling = Some(ceiling_phase(plan, &ceiling, stream_commit, row.count).await?);
    close_write_row(plan, &vault, target, empty_bytes, &mut report, row).await?;

    if plan.fill_to > 0 {
        let mut fill =
            Row { what: format!("fill to {}", group(plan.fill_to as u64)), unit: "records", ..Row::default() };
        // Each fill stream is followed by the ceiling's same rows, so that
        // both see the machine alike (other work on it comes and goes).
        let (mut elapsed, mut ceiling_elapsed) = (Duration::ZERO, Duration::ZERO);
        while (report.stored_tokens as usize) < plan.fill_to {
            let count = plan.fill_stream_records.min(plan.fill_to - report.stored_tokens as usize);
            let what = format!("fill {} of {}", group(report.stored_tokens), group(plan.fill_to as u64));
            let (row, _) = stream(plan, &vault, &what, numbers.take(count), 0).await?;
            report.stored_tokens += row.distinct_tokens;
            elapsed += row.elapsed.unwrap_or_default();
            ceiling_elapsed += ceiling_phase(plan, &ceiling, stream_commit, row.count).await?;
            fill.count += row.count;
            fill.answered_ok += row.answered_ok;
            fill.distinct_numbers += row.distinct_numbers;
            fill.distinct_tokens += row.distinct_tokens;
        }
        fill.elapsed = Some(elapsed);
        fill.ceiling = Some(ceiling_elapsed);
        close_write_row(plan, &vault, target, empty_bytes, &mut report, fill).await?;

        let what = format!("TokenizeStream {} at {}", group(plan.stream_records as u64), group(report.stored_tokens));
        let (mut row, _) = stream(plan, &vault, &what, numbers.take(plan.stream_records), 0).await?;
        report.stored_tokens += row.distinct_tokens;
        row.ceiling = Some(ceiling_phase(plan, &ceiling, stream_commit, row.count).await?);
        close_write_row(plan, &vault, target, empty_bytes, &mut report, row).await?;
    }

    let mut row = detokenize(plan, &vault, &pairs).await?;
    (row.rss, row.peak_rss) = memory(&vault)?;
    done(plan, &row);
    report.rows.push(row);

    if plan.rewrap_batch > 0 {
        for _ in 0..plan.rewrap_rounds {
            let walk = super::rewrap::rotate_and_rewrap(plan, &vault, report.stored_tokens).await?;
            let mut row = walk.row;
            (row.rss, row.peak_rss) = memory(&vault)?;
            row.bytes_per_token = Some(bytes_per_token(target, empty_bytes, report.stored_tokens).await?);
            let ceiling = ceiling_rewrap(plan, &ceiling, walk.primary, row.count).await?;
            row.ceiling = Some(ceiling.elapsed);
            let check = &pairs[..plan.rewrap_check_tokens.min(pairs.len())];
            let released = detokenize(plan, &vault, check).await?;
            row.checked_releases = Some((released.count, released.released_matching));
            // The check's own peak is not the rewrap's.
            vault.reset_peak();
            done(plan, &row);
            say(
                plan,
                format_args!(
                    "{backend}: {} calls; ceiling {} calls in {:.2} s: scans {:.2} s, updates {:.2} s, audit \
                     {:.2} s, commits {:.2} s",
                    row.calls.unwrap_or(0),
                    ceiling.calls,
                    ceiling.elapsed.as_secs_f64(),
                    ceiling.reading.as_secs_f64(),
                    ceiling.updating.as_secs_f64(),
                    ceiling.auditing.as_secs_f64(),
                    ceiling.committing.as_secs_f64(),
                ),
            );
            report.rows.push(row);
        }
    }

    let since_last = vault.memory()?.peak;
    report.peak_rss = report.rows.iter().filter_map(|row| row.peak_rss).fold(since_last.max(started_peak), u64::max);
    report.bytes_per_token = Some(bytes_per_token(target, empty_bytes, report.stored_tokens).await?);
    ceiling.close().await;
    vault.stop().await?;
    Ok(report)
}

/// Unary `Tokenize` of `numbers` by `concurrency` callers, each on its own
/// connection, taking the next number until none is left.
async fn unary(
    plan: &Plan,
    vault: &VaultProcess,
    what: &str,
    concurrency: usize,
    numbers: Vec<String>,
) -> anyhow::Result<Row> {
    let mut callers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        callers.push(vault.client("payroll").await?);
    }
    let sent = numbers.len();
    let distinct_numbers = numbers.iter().collect::<HashSet<_>>().len() as u64;
    let numbers = Arc::new(numbers);
    let next = Arc::new(AtomicUsize::new(0));
    let bar = progress(plan, what, sent as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in callers {
        let (numbers, next, bar) = (numbers.clone(), next.clone(), bar.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(number) = numbers.get(i) else { break };
                let call = Instant::now();
                let token = caller.tokenize(TENANT, number, TokenFormat::Opaque).await?;
                latencies.push(call.elapsed());
                tokens.push(token);
                bar.inc(1);
            }
            anyhow::Ok((latencies, tokens))
        });
    }
    let mut latencies = Vec::with_capacity(sent);
    let mut tokens = HashSet::with_capacity(sent);
    let mut answered_ok = 0u64;
    while let Some(done) = tasks.join_next().await {
        let (task_latencies, task_tokens) = done.context("a caller task")??;
        answered_ok += task_tokens.len() as u64;
        latencies.extend(task_latencies);
        tokens.extend(task_tokens);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Row {
        what: what.to_owned(),
        unit: "calls",
        count: sent as u64,
        elapsed: Some(elapsed),
        latency: Latency::of(latencies),
        answered_ok,
        distinct_numbers,
        distinct_tokens: tokens.len() as u64,
        ..Row::default()
    })
}

/// One `TokenizeStream` of `numbers`; returns the tokens of the first `keep`
/// numbers with the number sent for each.
async fn stream(
    plan: &Plan,
    vault: &VaultProcess,
    what: &str,
    numbers: Vec<String>,
    keep: usize,
) -> anyhow::Result<(Row, Pairs)> {
    let client = vault.client("payroll").await?;
    let sent = numbers.len();
    let distinct_numbers = numbers.iter().collect::<HashSet<_>>().len() as u64;
    let kept: Vec<String> = numbers[..keep.min(sent)].to_vec();
    let mut pairs = Vec::with_capacity(kept.len());
    let mut tokens = HashSet::with_capacity(sent);
    let mut answered_ok = 0u64;
    let bar = progress(plan, what, sent as u64);
    let started = Instant::now();
    let mut answers = std::pin::pin!(client.tokenize_stream(TENANT, TokenFormat::Opaque, numbers).await?);
    while let Some(answer) = answers.next().await {
        let answer = answer?;
        let token = match answer.result {
            Ok(token) => token,
            Err(refused) => bail!("record #{} of the stream was refused: {}", answer.index, refused.message),
        };
        answered_ok += 1;
        if let Some(number) = kept.get(answer.index as usize) {
            pairs.push((token.clone(), number.clone()));
        }
        tokens.insert(token);
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let row = Row {
        what: what.to_owned(),
        unit: "records",
        count: sent as u64,
        elapsed: Some(elapsed),
        answered_ok,
        distinct_numbers,
        distinct_tokens: tokens.len() as u64,
        ..Row::default()
    };
    Ok((row, pairs))
}

/// Releases the numbers of `pairs`' tokens: filing jobs of up to
/// `job_tokens` tokens are created and approved first (not timed), then a
/// filer detokenizes them `detokenize_call_tokens` tokens per call.
async fn detokenize(plan: &Plan, vault: &VaultProcess, pairs: &[(String, String)]) -> anyhow::Result<Row> {
    let per_call = plan.detokenize_call_tokens.clamp(1, plan.job_tokens.max(1)).min(pairs.len().max(1));
    let what = format!("Detokenize {} in jobs, {} per call", group(pairs.len() as u64), group(per_call as u64));
    let (requester, approver, filer) =
        (vault.client("requester").await?, vault.client("approver").await?, vault.client("filer").await?);
    let mut jobs = Vec::new();
    for chunk in pairs.chunks(plan.job_tokens.max(1)) {
        let job = NewFilingJob {
            tenant: TENANT.into(),
            purpose: "withholding-slip".into(),
            tokens: chunk.iter().map(|(token, _)| token.clone()).collect(),
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(6),
            max_releases_per_token: 1,
            note: String::new(),
        };
        let created = requester.create_filing_job(job).await.context("create a filing job")?;
        approver.approve_filing_job(&created.job_id).await.context("approve a filing job")?;
        jobs.push((created.job_id, chunk));
    }
    let expected: HashMap<&str, &str> = pairs.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
    let mut matching = HashSet::with_capacity(pairs.len());
    let mut latencies = Vec::new();
    let mut released_total = 0u64;
    let bar = progress(plan, &what, pairs.len() as u64);
    let started = Instant::now();
    for (job_id, chunk) in &jobs {
        for call in chunk.chunks(plan.detokenize_call_tokens.max(1)) {
            let tokens = call.iter().map(|(token, _)| token.clone()).collect();
            let sent = Instant::now();
            let released = filer.detokenize(job_id, tokens).await.context("Detokenize")?;
            latencies.push(sent.elapsed());
            released_total += released.len() as u64;
            for number in released {
                if expected.get(number.token.as_str()) == Some(&number.number.expose_secret()) {
                    matching.insert(number.token);
                }
            }
            bar.inc(call.len() as u64);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Row {
        what,
        unit: "numbers",
        count: pairs.len() as u64,
        elapsed: Some(elapsed),
        latency: Latency::of(latencies),
        answered_ok: released_total,
        distinct_numbers: pairs.len() as u64,
        distinct_tokens: expected.len() as u64,
        released_matching: matching.len() as u64,
        ..Row::default()
    })
}

/// The ceiling's counterpart of a write phase: `rows` records in commits shaped as `commit`.
async fn ceiling_phase(plan: &Plan, store: &Arc<dyn Store>, commit: Commit, rows: u64) -> anyhow::Result<Duration> {
    let bar = if plan.progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_message(format!("{}: ceiling: {} rows straight into the store", plan.backend.name(), group(rows)));
    bar.enable_steady_tick(Duration::from_millis(250));
    let elapsed = super::ceiling::write(store, commit, rows).await?;
    bar.finish_and_clear();
    Ok(elapsed)
}

/// The ceiling's counterpart of a rewrap walk to `version` over `rows` records.
async fn ceiling_rewrap(
    plan: &Plan,
    store: &Arc<dyn Store>,
    version: u32,
    rows: u64,
) -> anyhow::Result<super::ceiling::RewrapCeiling> {
    let bar = if plan.progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_message(format!("{}: ceiling: rewrap of {} rows straight in the store", plan.backend.name(), group(rows)));
    bar.enable_steady_tick(Duration::from_millis(250));
    let outcome = super::ceiling::rewrap(store, plan.rewrap_batch, version).await?;
    bar.finish_and_clear();
    if outcome.written != rows {
        bail!("the ceiling rewrapped {} rows of {rows}", outcome.written);
    }
    Ok(outcome)
}

/// The vault's resident memory now and at most since the last reading,
/// which starts the next phase's peak.
/// Ends a write phase's row: the vault's memory after it, and its database
/// bytes per stored token; then reports the row.
async fn close_write_row(
    plan: &Plan,
    vault: &VaultProcess,
    target: &Target,
    empty_bytes: u64,
    report: &mut BackendReport,
    mut row: Row,
) -> anyhow::Result<()> {
    (row.rss, row.peak_rss) = memory(vault)?;
    row.bytes_per_token = Some(bytes_per_token(target, empty_bytes, report.stored_tokens).await?);
    done(plan, &row);
    report.rows.push(row);
    Ok(())
}

/// Database bytes the vault added since it was initialised (`empty_bytes`),
/// per stored token.
async fn bytes_per_token(target: &Target, empty_bytes: u64, stored: u64) -> anyhow::Result<f64> {
    let added = target.vault_database_bytes().await?.saturating_sub(empty_bytes);
    Ok(added as f64 / stored.max(1) as f64)
}

fn memory(vault: &VaultProcess) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let memory = vault.memory()?;
    vault.reset_peak();
    Ok((Some(memory.rss), Some(memory.peak)))
}

pub(super) fn progress(plan: &Plan, what: &str, length: u64) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length).with_message(format!("{}: {what}", plan.backend.name()));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {bar:30} {pos}/{len} {per_sec}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn say(plan: &Plan, line: std::fmt::Arguments<'_>) {
    if plan.progress {
        eprintln!("bench {line}");
    }
}

/// A phase's line on standard error, as soon as it is measured.
fn done(plan: &Plan, row: &Row) {
    let rate = row.rate().map_or_else(|| "-".to_owned(), |r| group(r.round() as u64));
    let ceiling = row.ceiling_rate().map_or_else(String::new, |r| format!(", ceiling {}/s", group(r.round() as u64)));
    let seconds = row.elapsed.unwrap_or_default().as_secs_f64();
    say(
        plan,
        format_args!(
            "{}: {}: {} {} in {seconds:.1} s, {rate}/s{ceiling}",
            plan.backend.name(),
            row.what,
            group(row.count),
            row.unit
        ),
    );
}
