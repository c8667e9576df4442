//! `mnvault audit report`: the incident report of a window of time, from
//! the database of --data-dir (vault running or stopped, no root key),
//! with the log's evidence checked with public keys only. The report's
//! rules and layout are the core's (`mnvault_core::audit::report`).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, ValueEnum};
use mnvault_core::audit::report::{verify_for_report, IncidentReport, ReportFormat, ReportQuery};
use mnvault_core::id::TenantId;

use super::audit_verify::{anchored_walk, read_checkpoint};
use super::{create_private, load_settings, progress_bar};
use crate::startup;
use crate::store::OpenMode;

/// The report's formats on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatChoice {
    /// Markdown, laid out along the items of a leak report.
    Markdown,
    /// One JSON object, for machines (stable field names, `version`).
    Json,
    /// One self-contained HTML page.
    Html,
}

/// `mnvault audit report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Start of the window, inclusive: RFC 3339 (2026-11-05T09:00:00+09:00)
    /// or a date (2026-11-05, midnight in Japan).
    #[arg(long, value_name = "TIME")]
    pub since: String,
    /// End of the window, exclusive: RFC 3339 or a date (midnight in Japan
    /// starting it).
    #[arg(long, value_name = "TIME")]
    pub until: String,
    /// Only this tenant (refusals filed under no tenant are then only
    /// counted).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatChoice::Markdown)]
    pub format: FormatChoice,
    /// Write the report to this new file (readable by its owner only)
    /// instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The vault's public signing key (`ed25519:<base64>`, or a file holding
    /// it), trusted over `[audit] public_key`.
    #[arg(long, value_name = "KEY")]
    pub public_key: Option<String>,
    /// A checkpoint saved earlier (`mnvault audit checkpoint --out FILE`),
    /// kept outside the server: the log must still extend it. Its signer is
    /// trusted when no key is pinned.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
}

/// `mnvault audit report`.
pub async fn report(
    args: ReportArgs,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // Everything given is checked before the database is opened.
    let tenant = match args.tenant.as_deref() {
        Some(text) => Some(
            TenantId::parse(text)
                .map_err(|_| anyhow::anyhow!("--tenant is not a tenant id (lowercase letters, digits and -)"))?,
        ),
        None => None,
    };
    let query = ReportQuery::parse(&args.since, &args.until, tenant)?;
    let format = match args.format {
        FormatChoice::Markdown => ReportFormat::Markdown,
        FormatChoice::Json => ReportFormat::Json,
        FormatChoice::Html => ReportFormat::Html,
    };
    let external = args.checkpoint.as_deref().map(read_checkpoint).transpose()?;
    let settings = load_settings(data_dir, config, database_url)?;
    // Unpinned, the report is still made (an office needs it now), and says
    // loudly where its keys came from.
    let pinned = settings.audit.pinned_public_key();
    let (walk, anchors_from_database) = anchored_walk(args.public_key.as_deref(), pinned, None, external, true)?;
    let store = startup::open_store(&settings, OpenMode::Review).await?;
    let mut file = match args.out.as_deref().map(create_private).transpose() {
        Ok(file) => file,
        Err(error) => {
            store.close().await;
            return Err(error);
        }
    };
    let written = async {
        let head = store.begin_read().await?.audit_head().await?;
        let bar = progress_bar(head.seq, head.seq > 10_000);
        let verification =
            verify_for_report(store.as_ref(), walk, &query, anchors_from_database, |checked| bar.set_position(checked))
                .await;
        bar.finish_and_clear();
        let report =
            IncidentReport::gather(store.as_ref(), query, verification?, mnvault_core::clock::now_ms()).await?;
        let written = match file.as_mut() {
            Some(file) => {
                let mut writer = BufWriter::with_capacity(1 << 20, file);
                let written = report.write(store.as_ref(), format, &mut writer).await?;
                writer.flush()?;
                written
            }
            None => {
                let mut writer = BufWriter::with_capacity(1 << 20, &mut *out);
                let written = report.write(store.as_ref(), format, &mut writer).await?;
                writer.flush()?;
                written
            }
        };
        if let Some(file) = file.as_mut() {
            file.sync_all()?;
        }
        anyhow::Ok((report, written))
    }
    .await;
    store.close().await;
    let (report, written) = match written {
        Ok(done) => done,
        Err(error) => {
            if let Some(path) = &args.out {
                // A cut-short report must not be mistaken for a whole one.
                let _ = std::fs::remove_file(path);
            }
            return Err(error);
        }
    };
    if let Some(path) = &args.out {
        let evidence = &report.verification.evidence;
        writeln!(
            out,
            "report written to {}: {} person(s) released, {} token(s) listed; log {} up to entry #{}",
            path.display(),
            report.releases.persons,
            written,
            if evidence.broken.is_none() { "verified" } else { "NOT verified" },
            report.verification.up_to_seq
        )?;
    }
    if let Some(broken) = &report.verification.evidence.broken {
        bail!("the audit log does not verify ({broken}); the report says so, but cannot be relied on");
    }
    Ok(())
}
