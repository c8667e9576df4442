//! The `mnvault` command line: one binary for operators and for scripted
//! client work. Output is plain: one token, job id or `token<TAB>number` per
//! line on standard output; progress and diagnostics go to standard error.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mnvault_client::purpose::Purpose;
use mnvault_client::{
    ClientIdentity, FilingJob, FilingJobState, ListAuditEntriesRequest, NewFilingJob, TokenFormat, VaultClient,
    DEV_ENDPOINT,
};
use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::config::Settings;
use crate::datadir::{self, DEV_PKI_DIR};
use crate::lifecycle::Signals;
use crate::startup::Application;

mod alerts;
mod audit_report;
mod audit_review;
mod audit_verify;
mod collect;
mod keys;
mod pki;
mod policy;

mod root_key;

mod retention;

pub mod offboarding;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "mnvault-data";

/// mnvault: a vault for Japanese My Numbers (個人番号).
#[derive(Debug, Parser)]
#[command(name = "mnvault", version, about, long_about = None)]
pub struct Cli {
    /// The vault's data directory (serve, init, audit verify, backup,
    /// restore, pki with a CA key on the vault's token), where `--as` also
    /// finds the dev identities.
    #[arg(long, global = true, env = "MNVAULT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// The database (serve, init, audit verify, backup, restore): a SQLite file or a
    /// `postgres://` URL. Overrides `database.url` in the configuration.
    #[arg(long, global = true, env = "MNVAULT__DATABASE__URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// The configuration file (serve, audit verify, backup, restore, config
    /// check, pki with a CA key on the vault's token); default
    /// `<data-dir>/mnvault.toml`. Relative paths in it stay
    /// relative to the data directory.
    #[arg(long, global = true, env = "MNVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the vault.
    Serve {
        /// Development setup: initialises the data directory on first start
        /// (root key, dev PKI, tenant `demo`) and listens on loopback only.
        #[arg(long)]
        dev: bool,
        /// Address to listen on (overrides the configuration).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Initialise a production data directory: root key file, database,
    /// audit key and a configuration to complete (TLS files, principals).
    Init,
    /// The configuration: check it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The root key: create it, rotate the stored keys onto it, see which
    /// root key opens them (working on the database of --data-dir).
    RootKey {
        #[command(subcommand)]
        command: root_key::RootKeyCommand,
    },
    /// Tenant lifecycle.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Turn numbers into tokens: arguments, or one per line from --file.
    Tokenize {
        /// Tenant the numbers belong to.
        #[arg(long)]
        tenant: String,
        /// Token format.
        #[arg(long, value_enum, default_value_t = FormatArg::Opaque)]
        format: FormatArg,
        /// Read numbers from this file, one per line (`-` for standard input).
        /// Prefer this to arguments, which shells keep in their history.
        #[arg(long, conflicts_with = "numbers")]
        file: Option<PathBuf>,
        /// Numbers to tokenize.
        numbers: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Filing jobs: the only way numbers leave the vault.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Release the numbers of an approved filing job, as `token<TAB>number` lines.
    Detokenize {
        /// The filing job.
        #[arg(long)]
        job: String,
        /// Tokens to release; none means every token of the job.
        tokens: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Audit log review.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tenant record keys: rotate, rewrap, status, retire (as a principal
    /// with the admin role).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Ask the vault's health service: prints SERVING or NOT_SERVING and
    /// exits non-zero unless SERVING (a liveness or readiness probe that
    /// speaks mutual TLS). Any certificate the vault accepts will do.
    Health {
        /// A service's full name, e.g. mynumber.vault.v1.TokenService; the
        /// whole vault when left out.
        #[arg(long, default_value = "")]
        service: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Back up the embedded database (SQLite) while the vault serves: one
    /// verified file, 0600, holding no root key. PostgreSQL: use pg_dump
    /// (README, "Backup and restore").
    Backup {
        /// The backup file to write; it must not exist yet.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Retention of tokens: document classes, end of employment, deletion
    /// date, legal hold.
    Retention {
        #[command(subcommand)]
        command: retention::RetentionCommand,
    },
    /// Delete the numbers past their deletion date and not on legal hold
    /// (as an admin), keeping a tombstone and an audit entry of each.
    Purge(retention::PurgeArgs),
    /// Issue a signed deletion certificate (廃棄証明書), or `verify` one offline.
    DeletionCertificate(retention::CertificateArgs),
    /// The vault's signing key.
    SigningKey {
        #[command(subcommand)]
        command: retention::SigningKeyCommand,
    },
    /// A tenant's policy: approvals per job, job bounds, purposes, release
    /// rates and hours; changed by one key-admin, applied when another approves.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Collections: the employee types their own number on the vault's
    /// page, payroll gets tokens (create prints the link and a QR code;
    /// show, watch, cancel).
    Collect {
        #[command(subcommand)]
        command: collect::CollectCommand,
    },
    /// A CA directory (init), client certificates with SPIFFE identities from
    /// it (issue), what it issued (list), and revocation in the running vault
    /// (revoke, revoked).
    Pki {
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
    /// Restore the database from a backup (vault stopped), or adopt one
    /// restored by other means; either way verify it and move this host's
    /// chain watermark to its head.
    Restore {
        /// The backup file (SQLite only).
        #[arg(long, value_name = "FILE", required_unless_present = "adopt")]
        from: Option<PathBuf>,
        /// Replace the database there (kept aside under a new name).
        #[arg(long, requires = "from")]
        force: bool,
        /// The database was restored by other means (pg_restore,
        /// point-in-time recovery, a file copied back): verify it as it is
        /// and accept its audit head on this host.
        #[arg(long, conflicts_with = "from")]
        adopt: bool,
    },
}

/// Tenant commands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant with its own keys (as a principal with the admin role).
    Create {
        /// Identifier: lowercase letters, digits and hyphens, e.g. acme-corp.
        #[arg(long)]
        tenant: String,
        /// Human-readable name.
        #[arg(long, default_value = "")]
        display_name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Export a tenant's tokens and numbers, encrypted in the vault to the
    /// client's age key (as a filer, under an approved job of purpose
    /// tenant-export).
    Export(offboarding::ExportArgs),
    /// Shred a tenant: destroy its keys and sealed numbers, irreversibly (as
    /// an admin). Asks for the tenant's name unless --yes.
    Shred(offboarding::ShredArgs),
}

/// Filing-job commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List the lawful purposes a job may declare.
    Purposes,
    /// Create a job; prints its id. Another principal must approve it.
    Create {
        /// Tenant whose tokens the job lists.
        #[arg(long)]
        tenant: String,
        /// Purpose identifier (see `mnvault job purposes`).
        #[arg(long)]
        purpose: String,
        /// How long the job may release numbers, e.g. 2h, 7d (at most 90d).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        expires_in: Duration,
        /// How often each token may be released.
        #[arg(long, default_value_t = 1)]
        max_releases: u32,
        /// Free text for reviewers (never a number).
        #[arg(long, default_value = "")]
        note: String,
        /// Read tokens from this file, one per line (`-` for standard input).
        #[arg(long)]
        tokens_file: Option<PathBuf>,
        /// Tokens the job may release.
        tokens: Vec<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Approve a job created by someone else.
    Approve {
        /// The job.
        job: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a job, its state and its release counts.
    Show {
        /// The job.
        job: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a job; nothing more can be released from it.
    Cancel {
        /// The job.
        job: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Audit commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; size does not matter
pub enum AuditCommand {
    /// Check the log with the public key only: every link and hash, every
    /// signed checkpoint, and a saved checkpoint if given; in the database
    /// of --data-dir (vault running or stopped) or in an export (--from).
    /// With the root key at hand, also every entry's MAC and the stored
    /// records' and jobs' tags. Exits non-zero naming the first bad entry.
    Verify(audit_verify::VerifyArgs),
    /// Ask the running vault to sign its chain head now and save it to a
    /// file (as an auditor of every tenant).
    Checkpoint(audit_verify::CheckpointArgs),
    /// Search the log in the database of --data-dir (vault running or
    /// stopped, no root key): a table or JSON lines, streamed.
    Search(audit_review::SearchArgs),
    /// Export the log, or the entries matching filters, as JSON lines that
    /// verify on their own (`audit verify --from FILE`).
    Export(audit_review::ExportArgs),
    /// List the alerts the vault's alarms raised (`audit.alert` entries)
    /// from a running vault, as an auditor: seq, time, rule, principal,
    /// tenant, job, reason.
    Alerts(alerts::AlertsArgs),
    /// The incident report of a window of time, from the database of
    /// --data-dir (vault running or stopped, no root key): distinct persons
    /// whose numbers were released (by tenant, principal, purpose and job)
    /// and their tokens, refused attempts, alerts, changes of keys and
    /// principals, and the log's evidence; laid out along a leak report.
    Report(audit_report::ReportArgs),
    /// List entries from a running vault, one per line (as an auditor).
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only entries naming this token.
        #[arg(long)]
        token: Option<String>,
        /// Only this filing job.
        #[arg(long)]
        job: Option<String>,
        /// Only this operation, e.g. filing.detokenize.
        #[arg(long)]
        operation: Option<String>,
        /// Only the entries of this call: the request id in its log lines
        /// and its answer's x-request-id header.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration as `serve` would (file, `MNVAULT__…` overrides,
    /// --database-url), check its values and the files it names, and print
    /// the effective configuration as TOML with secrets redacted. Exits
    /// non-zero listing every problem.
    Check {
        /// Check syntax and values only; read none of the files the
        /// configuration names (for a file meant for another machine).
        #[arg(long)]
        no_files: bool,
    },
}

/// Token formats on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// `mnt_` followed by 26 base32 characters.
    Opaque,
    /// 12 digits with a deliberately wrong check digit.
    LegacyDigits,
}

/// How a client command reaches the vault and who it is.
#[derive(Debug, Args)]
pub struct Connection {
    /// The vault's URL.
    #[arg(long, env = "MNVAULT_ENDPOINT", default_value = DEV_ENDPOINT)]
    pub endpoint: String,
    /// Act as this dev principal, from `<data-dir>/dev-pki`.
    #[arg(long = "as", value_name = "NAME", conflicts_with_all = ["cert", "key", "ca"])]
    pub principal: Option<String>,
    /// Client certificate (PEM).
    #[arg(long, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires_all = ["cert", "ca"])]
    pub key: Option<PathBuf>,
    /// CA certificate that signed the vault's certificate (PEM).
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
}

impl Connection {
    async fn connect(&self, data_dir: &Path) -> anyhow::Result<VaultClient> {
        let identity = match (&self.principal, &self.cert, &self.key, &self.ca) {
            (Some(name), ..) => ClientIdentity::from_dev_pki(&data_dir.join(DEV_PKI_DIR), name)?,
            (None, Some(cert), Some(key), Some(ca)) => ClientIdentity::from_files(cert, key, ca)?,
            _ => bail!("say who you are: --as NAME for a dev identity, or --cert, --key and --ca"),
        };
        Ok(VaultClient::connect(&self.endpoint, &identity).await?)
    }
}

/// Runs a parsed command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    let database_url = cli.database_url;
    let config = cli.config;
    match cli.command {
        Command::Serve { dev, listen } => serve(&data_dir, config.as_deref(), database_url, dev, listen).await,
        Command::Init => {
            if config.is_some() {
                bail!("init writes <data-dir>/mnvault.toml and reads no configuration: drop --config");
            }
            let mut settings = datadir::production_settings(&data_dir);
            if let Some(url) = database_url {
                settings.database.url = url;
            }
            datadir::initialise(&settings).await?;
            writeln!(out, "initialised {}", data_dir.display())?;
            writeln!(
                out,
                "next: put the TLS files and principals into {}",
                data_dir.join(crate::config::CONFIG_FILE).display()
            )?;
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { no_files } } => {
            config_check(&data_dir, config.as_deref(), database_url, no_files, out)
        }
        Command::RootKey { command } => root_key::run(command, &data_dir, config.as_deref(), database_url, out).await,
        Command::Tenant { command: TenantCommand::Export(args) } => offboarding::export(args, &data_dir, out).await,
        Command::Tenant { command: TenantCommand::Shred(args) } => {
            let mut stdin = std::io::BufReader::new(std::io::stdin());
            offboarding::shred(args, &data_dir, &mut stdin, out).await
        }
        Command::Tenant { command: TenantCommand::Create { tenant, display_name, connection } } => {
            let client = connection.connect(&data_dir).await?;
            let created = client.create_tenant(&tenant, &display_name).await?;
            writeln!(out, "{}", created.tenant)?;
            Ok(())
        }
        Command::Tokenize { tenant, format, file, numbers, connection } => {
            let format = match format {
                FormatArg::Opaque => TokenFormat::Opaque,
                FormatArg::LegacyDigits => TokenFormat::LegacyDigits,
            };
            let (numbers, show_progress) = match file {
                Some(path) => (read_lines(&path)?, true),
                None => (numbers, false),
            };
            if numbers.is_empty() {
                bail!("no numbers given: pass them as arguments or with --file");
            }
            let client = connection.connect(&data_dir).await?;
            tokenize(&client, &tenant, format, numbers, show_progress, out).await
        }
        Command::Job { command } => job(command, &data_dir, out).await,
        Command::Keys { command } => keys::run(command, &data_dir, out).await,
        Command::Detokenize { job, tokens, connection } => {
            let client = connection.connect(&data_dir).await?;
            for released in client.detokenize(&job, tokens).await? {
                writeln!(out, "{}\t{}", released.token, released.number.expose_secret())?;
            }
            Ok(())
        }
        Command::Backup { out: file } => {
            let report =
                crate::backup::backup(&load_settings(&data_dir, config.as_deref(), database_url)?, &file).await?;
            write!(out, "{report}")?;
            Ok(())
        }
        Command::Restore { from, force, adopt: _ } => {
            let settings = load_settings(&data_dir, config.as_deref(), database_url)?;
            let report = match from {
                Some(from) => crate::backup::restore(&settings, &from, force).await?,
                None => crate::backup::adopt(&settings).await?,
            };
            write!(out, "{report}")?;
            Ok(())
        }
        Command::Health { service, connection } => {
            let status = match connection.connect(&data_dir).await?.health(&service).await {
                Err(error) if error.code() == Some(mnvault_client::Code::NotFound) => bail!(
                    "the vault reports no service named \"{service}\"; name one of {}, or leave out --service for the \
                     whole vault",
                    crate::health::REPORTED_SERVICES[1..].join(", ")
                ),
                status => status?,
            };
            writeln!(out, "{}", status.as_str_name())?;
            if status != mnvault_client::ServingStatus::Serving {
                let what = if service.is_empty() { "the vault" } else { service.as_str() };
                bail!("{what} is not serving ({})", status.as_str_name());
            }
            Ok(())
        }
        Command::Retention { command } => retention::retention(command, &data_dir, out).await,
        Command::Pki { command } => pki::pki(command, &data_dir, config.as_deref(), out).await,
        Command::Policy { command } => policy::run(command, &data_dir, out).await,
        Command::Collect { command } => collect::run(command, &data_dir, out).await,
        Command::Purge(args) => retention::purge(args, &data_dir, out).await,
        Command::DeletionCertificate(args) => retention::certificate(args, &data_dir, out).await,
        Command::SigningKey { command } => {
            retention::signing_key(command, &data_dir, config.as_deref(), database_url, out).await
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify(args) => {
                audit_verify::verify(args, &data_dir, config.as_deref(), database_url, out).await
            }
            AuditCommand::Checkpoint(args) => audit_verify::checkpoint(args, &data_dir, out).await,
            AuditCommand::Search(args) => {
                audit_review::search(args, &data_dir, config.as_deref(), database_url, out).await
            }
            AuditCommand::Export(args) => {
                audit_review::export(args, &data_dir, config.as_deref(), database_url, out).await
            }
            AuditCommand::Alerts(args) => alerts::run(args, &data_dir, out).await,
            AuditCommand::Report(args) => {
                audit_report::report(args, &data_dir, config.as_deref(), database_url, out).await
            }
            AuditCommand::List { tenant, token, job, operation, request_id, connection } => {
                let client = connection.connect(&data_dir).await?;
                let mut request = ListAuditEntriesRequest {
                    tenant: tenant.unwrap_or_default(),
                    token: token.unwrap_or_default(),
                    job_id: job.unwrap_or_default(),
                    operation: operation.unwrap_or_default(),
                    request_id: request_id.unwrap_or_default(),
                    ..Default::default()
                };
                loop {
                    let page = client.list_audit_entries(request.clone()).await?;
                    for entry in &page.entries {
                        let time = entry
                            .time
                            .as_ref()
                            .and_then(mnvault_client::from_timestamp)
                            .map(rfc3339)
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            entry.seq,
                            time,
                            entry.principal,
                            entry.tenant,
                            entry.operation,
                            entry.outcome,
                            entry.job_id,
                            entry.purpose,
                            entry.record_count,
                            entry.reason,
                            entry.request_id
                        )?;
                    }
                    if page.next_after_seq == 0 {
                        break Ok(());
                    }
                    request.after_seq = page.next_after_seq;
                }
            }
        },
    }
}

/// The settings of `data_dir` from `config` (default
/// `<data-dir>/mnvault.toml`), with `--database-url` over the file's, refused
/// with every problem of their values named by key and origin.
fn load_settings(
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
) -> Result<Settings, crate::config::ConfigError> {
    let mut loaded = crate::config::Loaded::load(data_dir, config, crate::config::process_environment())?;
    if let Some(url) = database_url {
        loaded.set_database_url(url);
    }
    let problems = loaded.value_problems();
    if !problems.is_empty() {
        return Err(crate::config::ConfigError::Invalid(crate::config::Problems(problems)));
    }
    Ok(loaded.settings)
}

/// `mnvault config check`: the effective configuration on `out`, and an
/// error listing every problem, one per line.
fn config_check(
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    no_files: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    use crate::config::check::{check, FileChecks};
    let files = if no_files { FileChecks::Skip } else { FileChecks::Read };
    let report = check(data_dir, config, crate::config::process_environment(), database_url, files);
    if let Some(effective) = &report.effective {
        write!(out, "{effective}")?;
    }
    if report.problems.is_empty() {
        writeln!(out, "# {}: no problems found", report.file.display())?;
        return Ok(());
    }
    let lines: Vec<String> = report.problems.iter().map(|problem| format!("  {problem}")).collect();
    bail!("{} problem(s) in the configuration:\n{}", report.problems.len(), lines.join("\n"))
}

/// A dev vault serves the collection page on loopback unless its
/// configuration says where.
fn serve_dev_page(settings: &mut Settings) {
    if settings.dev && settings.collection.listen.is_none() {
        settings.collection.listen = Some(datadir::DEV_PAGE_LISTEN.parse().expect("valid address"));
    }
}

async fn serve(
    data_dir: &Path,
    config: Option<&Path>,
    database_url: Option<String>,
    dev: bool,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // Before the vault is reachable, so that an early SIGHUP reloads it
    // instead of ending the process.
    let signals = Signals::install().context("cannot install the signal handlers")?;
    // A reload reads the configuration as this start did, flags included.
    let source = {
        let (data_dir, config, database_url) = (data_dir.to_owned(), config.map(Path::to_owned), database_url.clone());
        move || {
            let mut settings = load_settings(&data_dir, config.as_deref(), database_url.clone())?;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            serve_dev_page(&mut settings);
            Ok(settings)
        }
    };
    let mut settings = if dev {
        if config.is_some() {
            bail!("a dev vault's configuration is <data-dir>/mnvault.toml: drop --config, or serve a production vault");
        }
        datadir::ensure_dev(data_dir, database_url.as_deref()).await?
    } else {
        let settings = load_settings(data_dir, config, database_url)?;
        if settings.dev {
            bail!("{} holds a dev vault; start it with --dev", data_dir.display());
        }
        settings
    };
    if let Some(listen) = listen {
        settings.listen = listen;
    }
    serve_dev_page(&mut settings);
    crate::telemetry::apply(&settings.log);
    let application = Application::build(&settings).await?.with_reload_source(source);
    if settings.dev {
        tracing::warn!(
            address = %application.local_addr(),
            pki = %data_dir.join(DEV_PKI_DIR).display(),
            "DEV MODE: development keys and certificates, loopback only. Never put real My Numbers in this vault."
        );
    }
    let reloader = application.reloader();
    application.run_until_stopped(signals.until_terminated(reloader)).await?;
    tracing::info!("vault stopped");
    Ok(())
}

/// The lines of a file (`-`: standard input). Blank lines inside are kept, so
/// that answers line up with inputs; blank lines at the end are dropped.
fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        lines.push(line.trim_end_matches('\r').to_owned());
    }
    while lines.last().is_some_and(|line| line.trim().is_empty()) {
        lines.pop();
    }
    Ok(lines)
}

/// A new file only the vault's user reads; refused when the path exists.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

fn progress_bar(length: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar
}

async fn tokenize(
    client: &VaultClient,
    tenant: &str,
    format: TokenFormat,
    numbers: Vec<String>,
    show_progress: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let total = numbers.len();
    let bar = progress_bar(total as u64, show_progress);
    let mut results = std::pin::pin!(client.tokenize_stream(tenant, format, numbers).await?);
    let mut refused = 0usize;
    let mut answered = 0usize;
    while let Some(result) = results.next().await {
        let result = result?;
        answered += 1;
        match result.result {
            Ok(token) => writeln!(out, "{token}")?,
            Err(error) => {
                refused += 1;
                // Keep one output line per input line, so outputs can be pasted beside inputs.
                writeln!(out)?;
                bar.suspend(|| eprintln!("line {}: {}", result.index + 1, error.message));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if answered != total {
        bail!("the vault answered {answered} of {total} numbers; the stream was cut");
    }
    if refused > 0 {
        bail!("{refused} of {total} numbers were refused; their lines are empty");
    }
    Ok(())
}

async fn job(command: JobCommand, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        JobCommand::Purposes => {
            for purpose in Purpose::ALL {
                writeln!(out, "{}\t{}\t{}", purpose.id(), purpose.name_ja(), purpose.submitted_to())?;
            }
        }
        JobCommand::Create { tenant, purpose, expires_in, max_releases, note, tokens_file, mut tokens, connection } => {
            if let Some(path) = tokens_file {
                tokens.extend(read_lines(&path)?.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).map(str::to_owned));
            }
            if tokens.is_empty() && purpose != Purpose::TenantExport.id() {
                bail!("no tokens given: pass them as arguments or with --tokens-file");
            }
            let client = connection.connect(data_dir).await?;
            let job = client
                .create_filing_job(NewFilingJob {
                    tenant,
                    purpose,
                    tokens,
                    expires_at: OffsetDateTime::now_utc() + expires_in,
                    max_releases_per_token: max_releases,
                    note,
                })
                .await?;
            writeln!(out, "{}", job.job_id)?;
        }
        JobCommand::Approve { job, connection } => {
            let job = connection.connect(data_dir).await?.approve_filing_job(&job).await?;
            writeln!(out, "{}\t{}", job.job_id, state_name(&job))?;
        }
        JobCommand::Show { job, connection } => {
            let job = connection.connect(data_dir).await?.get_filing_job(&job).await?;
            write_job(&job, out)?;
        }
        JobCommand::Cancel { job, connection } => {
            let job = connection.connect(data_dir).await?.cancel_filing_job(&job).await?;
            writeln!(out, "{}\t{}", job.job_id, state_name(&job))?;
        }
    }
    Ok(())
}

fn state_name(job: &FilingJob) -> &'static str {
    match FilingJobState::try_from(job.state).unwrap_or(FilingJobState::Unspecified) {
        FilingJobState::PendingApproval => "pending-approval",
        FilingJobState::Approved => "approved",
        FilingJobState::Cancelled => "cancelled",
        FilingJobState::Expired => "expired",
        FilingJobState::Unspecified => "unknown",
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn when(at: &Option<prost_types::Timestamp>) -> String {
    at.as_ref().and_then(mnvault_client::from_timestamp).map(rfc3339).unwrap_or_else(|| "-".into())
}

fn write_job(job: &FilingJob, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    let purpose = job.purpose.parse::<Purpose>().map(|p| p.name_ja()).unwrap_or("?");
    writeln!(out, "job\t{}", job.job_id)?;
    writeln!(out, "tenant\t{}", job.tenant)?;
    writeln!(out, "purpose\t{} ({purpose})", job.purpose)?;
    writeln!(out, "state\t{}", state_name(job))?;
    writeln!(out, "created\t{} by {}", when(&job.created_at), job.created_by)?;
    writeln!(out, "expires\t{}", when(&job.expires_at))?;
    if job.approvals_required > 1 {
        writeln!(out, "approvals\t{} of {} given", job.approvals.len(), job.approvals_required)?;
        for approval in &job.approvals {
            writeln!(out, "approval\t{} by {}", when(&approval.approved_at), approval.approved_by)?;
        }
    }
    if !job.approved_by.is_empty() {
        writeln!(out, "approved\t{} by {}", when(&job.approved_at), job.approved_by)?;
    }
    if !job.cancelled_by.is_empty() {
        writeln!(out, "cancelled\t{} by {}", when(&job.cancelled_at), job.cancelled_by)?;
    }
    if !job.note.is_empty() {
        writeln!(out, "note\t{}", job.note)?;
    }
    for token in &job.tokens {
        writeln!(out, "token\t{}\treleased {}/{}", token.token, token.releases, job.max_releases_per_token)?;
    }
    Ok(())
}

/// What only the root key lets `audit verify` check: every entry's MAC
/// (the keyed chain), and the tags of stored records and jobs.
async fn audit_verify_keyed(
    store: &dyn mnvault_core::store::Store,
    provider: &dyn mnvault_keys::RootKeyProvider,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let verdict = async {
        let keys = mnvault_core::keyring::load_system_keys(store, provider).await?;
        let head = store.begin_read().await?.audit_head().await?;
        let bar = progress_bar(head.seq, head.seq > 10_000);
        let chain =
            mnvault_core::vault::verify_chain(store, &keys.audit_chain, |checked| bar.set_position(checked)).await;
        bar.finish_and_clear();
        let chain = chain.map_err(anyhow::Error::from);
        // Then every record and job: edited state is named, not just refused when used.
        let integrity = mnvault_core::integrity::Integrity::new(keys.state);
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} stored objects checked")
                .expect("valid template"),
        );
        let state = mnvault_core::vault::verify_state(store, &keys.audit_chain, &integrity, |checked| {
            bar.set_position(checked)
        })
        .await;
        bar.finish_and_clear();
        anyhow::Ok((chain, state))
    }
    .await;
    // The chain's verdict is printed whatever the state walk says.
    let (chain, state) = verdict?;
    let chain = match chain? {
        Ok(chain) => {
            writeln!(out, "chain MACs intact: {} entries checked with the chain key", chain.entries)?;
            Ok(())
        }
        Err(broken) => {
            writeln!(out, "audit chain BROKEN at {broken} (found with the chain key)")?;
            Err(format!("audit chain broken at {broken}"))
        }
    };
    let state = state?;
    if state.tampered == 0 {
        writeln!(out, "stored state intact: {} records, {} filing jobs", state.records, state.jobs)?;
    } else {
        writeln!(
            out,
            "stored state TAMPERED: {} of {} records and {} filing jobs failed their integrity check:",
            state.tampered, state.records, state.jobs
        )?;
        for named in &state.named {
            writeln!(out, "  {named}")?;
        }
    }
    match (chain, state.tampered) {
        (Ok(()), 0) => Ok(()),
        (Err(broken), _) => bail!("{broken}"),
        (Ok(()), tampered) => bail!("{tampered} stored object(s) failed their integrity check"),
    }
}
