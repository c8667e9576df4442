//! `mnvault retention set`, `mnvault purge`, `mnvault deletion-certificate`
//! (issue, and `verify` offline) and `mnvault signing-key export`.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use mnvault_client::retention::SetRetentionRequest;
use mnvault_core::retention::DeletionCertificate;
use time::OffsetDateTime;

use super::Connection;
use crate::startup;
use crate::store::OpenMode;

/// Largest certificate file `verify` reads (a full certificate is a few MiB).
const MAX_CERTIFICATE_BYTES: u64 = 64 * 1024 * 1024;

/// Retention commands.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Set the retention of tokens (as an admin): the document classes that
    /// hold their numbers and the end of employment, and/or a deletion date
    /// set directly (the latest date wins), and the legal hold. Replaces
    /// what was set before.
    Set {
        /// Tenant of the tokens.
        #[arg(long)]
        tenant: String,
        /// A document class (repeat): tax-declaration,
        /// employment-insurance-insured, employment-insurance-other,
        /// health-pension-insurance.
        #[arg(long = "class", value_name = "CLASS")]
        classes: Vec<String>,
        /// End of employment (退職日), YYYY-MM-DD.
        #[arg(long)]
        end_date: Option<String>,
        /// A deletion date set directly, YYYY-MM-DD.
        #[arg(long)]
        delete_after: Option<String>,
        /// Hold deletion (a legal hold) until set again without it.
        #[arg(long)]
        legal_hold: bool,
        /// Tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `mnvault purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Only this tenant (default: every tenant, which needs a grant on all).
    #[arg(long)]
    tenant: Option<String>,
    /// List what is due; delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `mnvault deletion-certificate`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertificateArgs {
    #[command(subcommand)]
    command: Option<CertificateCommand>,
    /// The tenant (required to issue).
    #[arg(long)]
    tenant: Option<String>,
    /// Start of the period (inclusive): YYYY-MM-DD (midnight in Japan) or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    since: Option<OffsetDateTime>,
    /// End of the period (exclusive): YYYY-MM-DD (midnight in Japan) or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<OffsetDateTime>,
    /// Write the certificate here (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

/// Deletion certificate commands.
#[derive(Debug, Subcommand)]
pub enum CertificateCommand {
    /// Verify a certificate offline: no vault, no database, no secret.
    Verify {
        /// The certificate file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The vault's public key: `ed25519:<base64>`, or a file holding it.
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
}

/// Signing key commands.
#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Print the vault's public signing key (`ed25519:<base64>`), read from
    /// the database of --data-dir with the root key; give it to whoever
    /// verifies certificates and checkpoints, and pin it in `[audit]
    /// public_key`.
    Export,
    /// Replace the vault's signing key on the running vault (as an admin
    /// of every tenant). The old and the new key both sign the handover, so
    /// old checkpoints and certificates still verify; pin the new key.
    Rotate {
        #[command(flatten)]
        connection: super::Connection,
    },
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(date) = mnvault_core::retention::parse_date(text, "date") {
        let jst = time::UtcOffset::from_hms(9, 0, 0).map_err(|e| e.to_string())?;
        return Ok(date.midnight().assume_offset(jst));
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "write a date as YYYY-MM-DD or a time as RFC 3339".to_owned())
}

/// `mnvault retention …`.
pub async fn retention(command: RetentionCommand, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        RetentionCommand::Set { tenant, classes, end_date, delete_after, legal_hold, tokens, connection } => {
            let client = connection.connect(data_dir).await?;
            let request = SetRetentionRequest {
                tenant,
                tokens,
                classes,
                end_date: end_date.unwrap_or_default(),
                delete_after: delete_after.unwrap_or_default(),
                legal_hold,
            };
            let set = client.set_retention(request).await?;
            let hold = if set.legal_hold { "on" } else { "off" };
            writeln!(out, "{} token(s): deletion from {} (legal hold {hold})", set.tokens, set.delete_on)?;
            Ok(())
        }
    }
}

/// `mnvault purge`: calls until nothing more is due, one line per token.
pub async fn purge(args: PurgeArgs, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = args.connection.connect(data_dir).await?;
    let tenant = args.tenant.unwrap_or_default();
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(if args.dry_run { "listing what is due" } else { "purging" });
    let (mut tokens, mut held, mut tampered) = (0u64, 0u64, 0u64);
    loop {
        let report = client.purge_expired(&tenant, args.dry_run).await?;
        for token in &report.tokens {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}",
                if report.dry_run { "due" } else { "deleted" },
                token.tenant,
                token.token,
                token.delete_on,
                token.classes.join(",")
            )?;
        }
        for named in &report.tampered_named {
            spinner.suspend(|| eprintln!("not purged: {named}"));
        }
        tokens += report.tokens.len() as u64;
        held += report.held;
        tampered += report.tampered;
        spinner.set_position(tokens);
        // A dry run lists one call's worth: listing more would repeat it. A
        // call that deleted nothing would be repeated the same way (rows it
        // cannot act on fill its batches): the next purge retries them.
        if !report.more || report.dry_run || report.tokens.is_empty() {
            break;
        }
    }
    spinner.finish_and_clear();
    let verb = if args.dry_run { "due" } else { "deleted" };
    eprintln!("{tokens} token(s) {verb}; {held} on legal hold; {tampered} failed their integrity check");
    if tampered > 0 {
        bail!(
            "{tampered} retention row(s) failed their integrity check and were left alone; tell the vault's operator"
        );
    }
    Ok(())
}

/// `mnvault deletion-certificate [verify]`.
pub async fn certificate(args: CertificateArgs, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if let Some(CertificateCommand::Verify { file, public_key }) = args.command {
        return verify(&file, &public_key, out);
    }
    let (Some(tenant), Some(since), Some(until)) = (args.tenant, args.since, args.until) else {
        bail!("issuing a certificate needs --tenant, --since and --until");
    };
    let client = args.connection.connect(data_dir).await?;
    let issued = client.issue_deletion_certificate(&tenant, since, until).await?;
    match args.out {
        Some(path) => {
            write_new(&path, issued.certificate_json.as_bytes())?;
            writeln!(
                out,
                "{} deletion(s) certified in {}; signed by {}",
                issued.deletions,
                path.display(),
                issued.key_id
            )?;
            writeln!(out, "public key: {}", issued.public_key)?;
        }
        None => writeln!(out, "{}", issued.certificate_json)?,
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

fn verify(file: &Path, public_key: &str, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let key = super::audit_verify::read_public_key(public_key)?;
    let mut json = String::new();
    std::fs::File::open(file)
        .with_context(|| format!("cannot open {}", file.display()))?
        .take(MAX_CERTIFICATE_BYTES + 1)
        .read_to_string(&mut json)
        .with_context(|| format!("cannot read {} as text", file.display()))?;
    if json.len() as u64 > MAX_CERTIFICATE_BYTES {
        bail!("{} is larger than any certificate the vault issues", file.display());
    }
    let body = DeletionCertificate::verify(&json, &key).map_err(|error| anyhow::anyhow!("invalid: {error}"))?;
    writeln!(
        out,
        "valid: {} deletion(s) of tenant {} from {} to {}, issued {} by {}, signed by {}",
        body.count, body.tenant, body.since, body.until, body.issued_at, body.issued_by, body.key_id
    )?;
    Ok(())
}

/// `mnvault signing-key export`.
pub async fn signing_key(
    command: SigningKeyCommand,
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if let SigningKeyCommand::Rotate { connection } = command {
        let client = connection.connect(data_dir).await?;
        let rotated = client.rotate_signing_key().await?;
        writeln!(out, "previous\t{}", rotated.previous_public_key)?;
        writeln!(out, "new\t{}", rotated.public_key)?;
        return Ok(());
    }
    let settings = super::load_settings(data_dir, config, database_url)?;
    let provider = startup::root_key_provider(&settings)?;
    // Reads only: a missing key is the vault's to create, at its start.
    let store = startup::open_store(&settings, OpenMode::Review).await?;
    let key = mnvault_core::keyring::load_signing_key(store.as_ref(), provider.as_ref()).await;
    store.close().await;
    let key = key.context("cannot read the vault's signing key")?;
    writeln!(out, "{}", key.public_key())?;
    Ok(())
}
