//! `mnvault pki`: a CA and client certificates for offices without a PKI of
//! their own.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mnvault_client::revocation::CertificateRevocation;
use mnvault_core::authz::Role;
use mnvault_core::id::TenantId;
use mnvault_core::identity::{Identity, Scope, TrustDomain};
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;

use mnvault_keys::Pkcs11Config;

use super::{when, Connection};
use crate::pki::{
    CaKeyForm, CertificateAuthority, DEFAULT_CA_LIFETIME_DAYS, DEFAULT_LIFETIME_DAYS, PASSPHRASE_VARIABLE,
};

/// `mnvault pki` commands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA in a new directory: ca.pem (URI SAN spiffe://<trust-domain>)
    /// and ca.key, encrypted under a passphrase from --passphrase-file or
    /// MNVAULT_CA_PASSPHRASE; or, with --hsm, the key made on the vault's
    /// PKCS#11 token and ca-key.toml naming it.
    Init(InitArgs),
    /// Issue a short-lived client certificate whose URI SAN is the SPIFFE ID
    /// spiffe://<trust-domain>/tenant/<T>/<R>/<N> (or /operator/<R>/<N>).
    Issue(IssueArgs),
    /// List every certificate `issue` has issued from a CA directory: SPIFFE
    /// ID, serial, not-before, not-after, and whether it has expired.
    List(ListArgs),
    /// Revoke a client certificate in the running vault (as a key-admin):
    /// every replica refuses it within a second, without a restart. For a
    /// certificate from another CA, a CRL file (tls.crl) does the same.
    Revoke {
        /// The certificate's serial, as `issue` and `list` print it.
        #[arg(long)]
        serial: String,
        /// Why, kept in the audit log (no number).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the certificates the running vault has revoked (as a key-admin
    /// or auditor).
    Revoked {
        #[command(flatten)]
        connection: Connection,
    },
}

/// `mnvault pki init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The CA directory to create (0700); no file there is overwritten.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// The SPIFFE trust domain the CA issues identities in, as the vault's
    /// `identity.trust_domain`, e.g. vault.example.jp.
    #[arg(long)]
    pub trust_domain: String,
    /// Days the CA certificate is valid.
    #[arg(long, default_value_t = DEFAULT_CA_LIFETIME_DAYS)]
    pub days: i64,
    /// A file (mode 0600) holding the passphrase that encrypts ca.key;
    /// without it, the environment variable MNVAULT_CA_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Make the CA key on the PKCS#11 token of the vault configuration
    /// (--data-dir or --config; [root_key] provider = "pkcs11"), logged in
    /// with its PIN; the key never leaves the token. ca-key.toml names it.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub hsm: bool,
}

/// `mnvault pki issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The CA directory (`ca.pem`, and `ca.key` or `ca-key.toml`), e.g. a dev
    /// vault's `dev-pki`. With ca-key.toml, the PIN of its token comes from
    /// the vault configuration (--data-dir or --config).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// The tenant the identity acts for.
    #[arg(long, required_unless_present = "operator", conflicts_with = "operator")]
    pub tenant: Option<String>,
    /// An operator identity, on every tenant (roles key-admin and auditor).
    #[arg(long)]
    pub operator: bool,
    /// payroll, requester, approver, filer (tenant roles), key-admin
    /// (operator), auditor (either).
    #[arg(long)]
    pub role: String,
    /// The person or service: one name per person, whatever the role.
    #[arg(long)]
    pub name: String,
    /// Where `<name>.crt`, `<name>.key` (0600) and `ca.pem` go; no file
    /// there is overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = DEFAULT_LIFETIME_DAYS)]
    pub days: i64,
    /// A file (mode 0600) holding the passphrase of an encrypted ca.key;
    /// without it, the environment variable MNVAULT_CA_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `mnvault pki list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    pub ca_dir: PathBuf,
}

/// Runs a `pki` command; the vault configuration (`data_dir`, `config`)
/// is read only for a CA key on a token.
pub async fn pki(
    command: PkiCommand,
    data_dir: &Path,
    config: Option<&Path>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let vault = VaultConfig { data_dir, config };
    match command {
        PkiCommand::Init(args) => init(args, vault, out),
        PkiCommand::Issue(args) => issue(args, vault, out),
        PkiCommand::List(args) => list(args, out),
        PkiCommand::Revoke { serial, reason, connection } => {
            let revoked = connection.connect(data_dir).await?.revoke_certificate(&serial, &reason).await?;
            writeln!(out, "# serial\trevoked_at\trevoked_by\taudit_seq\treason")?;
            write_revocation(&revoked, out)
        }
        PkiCommand::Revoked { connection } => {
            let revocations = connection.connect(data_dir).await?.revoked_certificates().await?;
            writeln!(out, "# serial\trevoked_at\trevoked_by\taudit_seq\treason")?;
            revocations.iter().try_for_each(|revoked| write_revocation(revoked, out))
        }
    }
}

fn write_revocation(revoked: &CertificateRevocation, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let at = when(&revoked.revoked_at);
    writeln!(out, "{}\t{at}\t{}\t{}\t{}", revoked.serial, revoked.revoked_by, revoked.audit_seq, revoked.reason)?;
    Ok(())
}

/// Where the vault configuration is, for a CA key on its token.
#[derive(Clone, Copy)]
struct VaultConfig<'a> {
    data_dir: &'a Path,
    config: Option<&'a Path>,
}

impl VaultConfig<'_> {
    /// `[root_key]`'s token and PIN, read as the vault reads them.
    fn token(self) -> anyhow::Result<Pkcs11Config> {
        let file = self.config.map_or_else(|| self.data_dir.join(crate::config::CONFIG_FILE), Path::to_owned);
        let settings = super::load_settings(self.data_dir, self.config, None)
            .with_context(|| format!("the vault configuration {}", file.display()))?;
        crate::root_key::pkcs11_token(&settings)?.with_context(|| {
            format!(
                "the CA key goes on the PKCS#11 token of the vault configuration, but {}'s [root_key] does not name \
                 one: it needs provider = \"pkcs11\", module, token_label and pin_file or pin_credential (give \
                 the vault's configuration with --data-dir or --config)",
                file.display()
            )
        })
    }
}

/// The passphrase `--passphrase-file` or the environment gives, if any.
fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<SecretString>> {
    let environment = std::env::var(PASSPHRASE_VARIABLE).ok();
    Ok(crate::pki::passphrase(file, environment)?)
}

fn init(args: InitArgs, vault: VaultConfig<'_>, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if !(1..=crate::pki::MAX_CA_LIFETIME_DAYS).contains(&args.days) {
        anyhow::bail!("--days must be between 1 and {}", crate::pki::MAX_CA_LIFETIME_DAYS);
    }
    let trust_domain = TrustDomain::parse(&args.trust_domain).context("--trust-domain")?;
    let lifetime = time::Duration::days(args.days);
    let ca = if args.hsm {
        crate::pki::init_ca_on_token(&args.ca_dir, &trust_domain, lifetime, vault.token()?)?
    } else {
        let passphrase = passphrase(args.passphrase_file.as_deref())?.with_context(|| {
            format!(
                "the CA key is encrypted under a passphrase: give it with --passphrase-file FILE (mode 0600) or the \
                 environment variable {PASSPHRASE_VARIABLE}; or make it on the vault's PKCS#11 token with --hsm"
            )
        })?;
        crate::pki::init_ca(&args.ca_dir, &trust_domain, lifetime, &passphrase)?
    };
    let until = ca.not_after.format(&Rfc3339)?;
    writeln!(out, "spiffe://{trust_domain}\tserial {}\tvalid until {until}\t{}", ca.serial, ca.cert.display())?;
    Ok(())
}

fn issue(args: IssueArgs, vault: VaultConfig<'_>, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if !(1..=crate::pki::MAX_LIFETIME_DAYS).contains(&args.days) {
        anyhow::bail!("--days must be between 1 and {}", crate::pki::MAX_LIFETIME_DAYS);
    }
    let ca = match crate::pki::ca_key_form(&args.ca_dir)? {
        CaKeyForm::Token(reference) => {
            if args.passphrase_file.is_some() {
                anyhow::bail!(
                    "the CA key is on token \"{}\" (ca-key.toml), not encrypted: drop --passphrase-file; its PIN \
                     comes from the vault configuration",
                    reference.token_label
                );
            }
            CertificateAuthority::open_on_token(&args.ca_dir, vault.token()?)?
        }
        CaKeyForm::File => {
            let passphrase = passphrase(args.passphrase_file.as_deref())?;
            CertificateAuthority::open_with(&args.ca_dir, passphrase.as_ref())?
        }
    };
    let scope = match &args.tenant {
        Some(tenant) => Scope::Tenant(TenantId::parse(tenant)?),
        None => Scope::Operator,
    };
    let role = Role::from_id(&args.role).with_context(|| {
        let roles: Vec<_> = Role::ALL.iter().map(|role| role.id()).collect();
        format!("--role must be one of {}", roles.join(", "))
    })?;
    let identity = Identity::new(ca.trust_domain().clone(), scope, role, &args.name)?;
    let issued = ca.issue(&identity, time::Duration::days(args.days), &args.out)?;
    let until = issued.not_after.format(&Rfc3339)?;
    writeln!(out, "{identity}\tserial {}\tvalid until {until}\t{}", issued.serial, issued.cert.display())?;
    Ok(())
}

fn list(args: ListArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    writeln!(out, "# spiffe_id\tserial\tnot_before\tnot_after\tstatus")?;
    for record in crate::pki::list_issued(&args.ca_dir)? {
        let status = match record {
            _ if record.is_expired(now) => "expired",
            _ if now < record.not_before => "not yet valid",
            _ => "valid",
        };
        let (not_before, not_after) = (record.not_before.format(&Rfc3339)?, record.not_after.format(&Rfc3339)?);
        writeln!(out, "{}\t{}\t{not_before}\t{not_after}\t{status}", record.spiffe_id, record.serial)?;
    }
    Ok(())
}
