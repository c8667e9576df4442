//! `mnvault audit search` and `mnvault audit export`: reviewing the log
//! offline, straight from the configured database (SQLite or PostgreSQL),
//! with the vault running or stopped and no root key. Both read page by
//! page and write each page before the next, so memory stays bounded
//! whatever the log's length; both stop at the head read at their start.
//!
//! The export's order (signing keys, anchor checkpoint, entries and stubs,
//! checkpoints after the entries they sign) is the core's
//! ([`mnvault_core::audit::export`]); this module only writes the file.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use mnvault_core::audit::export::{operation_id, outcome_id, outcome_ids, ExportPlan};
use mnvault_core::audit::line::AuditLine;
use mnvault_core::audit::AuditRecord;
use mnvault_core::clock;
use mnvault_core::id::{JobId, Principal, RequestId, TenantId, Token};
use mnvault_core::store::{AuditFilter, Store};
use mnvault_core::vault::AUDIT_PAGE;

use crate::startup;
use crate::store::OpenMode;

/// Entries past which search and export show a progress bar.
const PROGRESS_FROM: u64 = 10_000;

/// Filters of `audit search` and `audit export`; each one given narrows.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only entries by this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only entries naming this token.
    #[arg(long)]
    pub token: Option<String>,
    /// Only this filing job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only this operation, e.g. filing.detokenize.
    #[arg(long)]
    pub operation: Option<String>,
    /// Only this outcome: ok, denied, invalid, not-found or failed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// From this time on (RFC 3339, e.g. 2026-11-24T09:00:00+09:00).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the entries of this call: the request id in its log lines and
    /// its answer's x-request-id header.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `mnvault audit search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How entries are printed: an aligned table, or JSON lines (the
    /// export's `entry` lines).
    #[arg(long, value_enum, default_value_t = SearchFormat::Table)]
    pub format: SearchFormat,
    /// Print at most this many entries (the first ones).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// How `audit search` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SearchFormat {
    /// One line per entry, aligned columns, tokens summarised.
    Table,
    /// One JSON object per line, every field.
    Jsonl,
}

/// `mnvault audit export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (0600); it must not exist yet. It verifies on its
    /// own: `mnvault audit verify --from FILE --public-key KEY`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
}

impl FilterArgs {
    /// The filters parsed into their types. A refusal names the option and
    /// its grammar, never the text given (it may be a number pasted in).
    fn parse(&self) -> anyhow::Result<AuditFilter> {
        fn parsed<T, E: std::error::Error + Send + Sync + 'static>(
            option: &str,
            text: &Option<String>,
            parse: impl FnOnce(&str) -> Result<T, E>,
        ) -> anyhow::Result<Option<T>> {
            text.as_deref().map(parse).transpose().with_context(|| format!("--{option}"))
        }
        let since = parsed("since", &self.since, time_ms)?;
        let until = parsed("until", &self.until, time_ms)?;
        if let (Some(since), Some(until)) = (since, until) {
            if since >= until {
                bail!("--since must be before --until");
            }
        }
        Ok(AuditFilter {
            tenant: parsed("tenant", &self.tenant, TenantId::parse)?,
            since_ms: since,
            until_ms: until,
            token: parsed("token", &self.token, Token::parse)?,
            job_id: parsed("job", &self.job, JobId::parse)?,
            operation: parsed("operation", &self.operation, |text| {
                operation_id(text)
                    .ok_or(FilterError("not an operation the audit log records, e.g. filing.detokenize".into()))
            })?,
            request_id: parsed("request-id", &self.request_id, RequestId::parse)?,
            principal: parsed("principal", &self.principal, Principal::parse_recorded)?,
            outcome: parsed("outcome", &self.outcome, |text| {
                outcome_id(text)
                    .ok_or_else(|| FilterError(format!("not an outcome: name one of {}", outcome_ids()).into()))
            })?,
            after_seq: 0,
            limit: AUDIT_PAGE,
        })
    }
}

/// Why a filter value was refused (never its text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FilterError(std::borrow::Cow<'static, str>);

fn time_ms(text: &str) -> Result<i64, FilterError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(clock::to_ms)
        .map_err(|_| FilterError("not an RFC 3339 time, e.g. 2026-11-24T09:00:00+09:00 or 2026-11-24T00:00:00Z".into()))
}

/// Prints the entries matching the filters, page by page.
pub async fn search(
    args: SearchArgs,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let filter = args.filter.parse()?;
    let settings = super::load_settings(data_dir, config, database_url)?;
    let store = startup::open_store(&settings, OpenMode::Review).await?;
    let searched = search_store(store.as_ref(), filter, args.format, args.limit, out).await;
    store.close().await;
    searched
}

async fn search_store(
    store: &dyn Store,
    mut filter: AuditFilter,
    format: SearchFormat,
    limit: Option<u64>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let head = store.begin_read().await?.audit_head().await?;
    // Not over a table on the same terminal.
    let bar = super::progress_bar(head.seq, head.seq > PROGRESS_FROM && !std::io::stdout().is_terminal());
    let mut out = std::io::BufWriter::new(out);
    if format == SearchFormat::Table {
        writeln!(out, "{}", table_header())?;
    }
    let mut left = limit.unwrap_or(u64::MAX);
    while left > 0 && filter.after_seq < head.seq {
        filter.limit = AUDIT_PAGE.min(u32::try_from(left).unwrap_or(AUDIT_PAGE));
        // A short transaction per page: a running vault is not held up.
        let page = store.begin_read().await?.audit_entries(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        for entry in page.into_iter().take_while(|entry| entry.seq <= head.seq) {
            match format {
                SearchFormat::Table => writeln!(out, "{}", table_row(&entry))?,
                SearchFormat::Jsonl => writeln!(out, "{}", AuditLine::Entry(entry).to_json())?,
            }
            left -= 1;
            if left == 0 {
                break;
            }
        }
        out.flush()?;
        bar.set_position(filter.after_seq.min(head.seq));
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

/// Columns of the table: title, width, right-aligned. Widths fit the
/// vault's identifiers; a longer value pushes the rest of its line along.
const COLUMNS: [(&str, usize, bool); 11] = [
    ("SEQ", 8, true),
    ("TIME", 24, false),
    ("PRINCIPAL", 16, false),
    ("TENANT", 12, false),
    ("OPERATION", 26, false),
    ("OUTCOME", 9, false),
    ("JOB", 20, false),
    ("PURPOSE", 18, false),
    ("RECORDS", 7, true),
    ("TOKENS", 34, false),
    ("REASON", 0, false),
];

fn table_header() -> String {
    line(COLUMNS.map(|(title, ..)| title.to_owned()))
}

fn table_row(entry: &AuditRecord) -> String {
    let text = |value: &str| if value.is_empty() { "-".to_owned() } else { printable(value) };
    line([
        entry.seq.to_string(),
        clock::rfc3339(entry.time_ms),
        text(&entry.principal),
        text(&entry.tenant),
        text(&entry.operation),
        text(&entry.outcome),
        text(&entry.job_id),
        text(&entry.purpose),
        entry.record_count.to_string(),
        tokens_summary(&entry.tokens),
        text(&entry.reason),
    ])
}

/// `-`, the token, or the first token and how many more.
fn tokens_summary(tokens: &[String]) -> String {
    match tokens {
        [] => "-".to_owned(),
        [token] => printable(token),
        [first, rest @ ..] => format!("{} +{}", printable(first), rest.len()),
    }
}

/// One line whatever the database holds: control characters (a newline, a
/// terminal escape written into a row) are shown as `?`.
fn printable(value: &str) -> String {
    value.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn line(cells: [String; 11]) -> String {
    let mut line = String::new();
    for ((_, width, right), cell) in COLUMNS.iter().zip(cells) {
        if !line.is_empty() {
            line.push_str("  ");
        }
        if *right {
            line.push_str(&format!("{cell:>width$}"));
        } else {
            line.push_str(&format!("{cell:<width$}"));
        }
    }
    line.trim_end().to_owned()
}

/// Writes the export to a private file beside `args.out`, then renames it
/// into place: a cut export leaves no file to be mistaken for one.
pub async fn export(
    args: ExportArgs,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let filter = args.filter.parse()?;
    if args.out.symlink_metadata().is_ok() {
        bail!("{} exists; name a new file", args.out.display());
    }
    let settings = super::load_settings(data_dir, config, database_url)?;
    let store = startup::open_store(&settings, OpenMode::Review).await?;
    let exported = export_store(store.as_ref(), &filter, &args.out).await;
    store.close().await;
    let (summary, head) = exported?;
    let from = summary.anchor.map_or(1, |anchor| anchor + 1);
    writeln!(
        out,
        "exported {} matching entr{} of #{from}..#{head} to {} ({} as stubs, {} checkpoint(s){})",
        summary.matched,
        if summary.matched == 1 { "y" } else { "ies" },
        args.out.display(),
        summary.stubs,
        summary.checkpoints,
        summary.anchor.map(|seq| format!(", anchored at the checkpoint of #{seq}")).unwrap_or_default(),
    )?;
    if summary.last_seq < head {
        // The database's head says more than its entries: verify names what is missing.
        eprintln!(
            "warning: the log's entries end at #{}, before its head #{head}; `mnvault audit verify` names what is \
             missing",
            summary.last_seq
        );
    }
    writeln!(out, "verify it with: mnvault audit verify --from {} --public-key KEY", args.out.display())?;
    Ok(())
}

async fn export_store(
    store: &dyn Store,
    filter: &AuditFilter,
    path: &Path,
) -> anyhow::Result<(mnvault_core::audit::export::ExportSummary, u64)> {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let plan = ExportPlan::prepare(store, filter).await?;
    let head = plan.head().seq;
    let mut temp = tempfile::Builder::new()
        .prefix(".mnvault-audit-export-")
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&directory)
        .with_context(|| format!("cannot create a file in {}", directory.display()))?;
    let bar = super::progress_bar(plan.entries(), plan.entries() > PROGRESS_FROM);
    let mut writer = std::io::BufWriter::new(temp.as_file_mut());
    let written = plan
        .write(
            store,
            |line| {
                writer.write_all(line.to_json().as_bytes())?;
                writer.write_all(b"\n")
            },
            |entries| bar.set_position(entries),
        )
        .await;
    bar.finish_and_clear();
    let summary =
        written.with_context(|| format!("the export was not completed; nothing was written to {}", path.display()))?;
    writer.into_inner().map_err(|error| error.into_error()).and_then(|file| file.sync_all()).with_context(|| {
        format!("cannot write the export in {}; nothing was written to {}", directory.display(), path.display())
    })?;
    temp.persist_noclobber(path)
        .map_err(|error| error.error)
        .with_context(|| format!("cannot move the export to {} (it must not exist yet)", path.display()))?;
    // The rename itself survives a crash once the directory is synced.
    std::fs::File::open(&directory)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("cannot sync {}", directory.display()))?;
    Ok((summary, head))
}
