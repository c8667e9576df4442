//! `mnvault pki`: client certificates for offices without a PKI of their own.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mnvault_core::authz::Role;
use mnvault_core::id::TenantId;
use mnvault_core::identity::{Identity, Scope};

use crate::pki::{CertificateAuthority, DEFAULT_LIFETIME_DAYS};

/// `mnvault pki` commands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Issue a short-lived client certificate whose URI SAN is the SPIFFE ID
    /// spiffe://<trust-domain>/tenant/<T>/<R>/<N> (or /operator/<R>/<N>).
    Issue(IssueArgs),
}

/// `mnvault pki issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The CA directory (`ca.pem`, `ca.key`), e.g. a dev vault's `dev-pki`.
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
}

/// Runs a `pki` command.
pub fn pki(command: PkiCommand, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        PkiCommand::Issue(args) => issue(args, out),
    }
}

fn issue(args: IssueArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if !(1..=crate::pki::MAX_LIFETIME_DAYS).contains(&args.days) {
        anyhow::bail!("--days must be between 1 and {}", crate::pki::MAX_LIFETIME_DAYS);
    }
    let ca = CertificateAuthority::open(&args.ca_dir)?;
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
    let until = issued.not_after.format(&time::format_description::well_known::Rfc3339)?;
    writeln!(out, "{identity}\tserial {}\tvalid until {until}\t{}", issued.serial, issued.cert.display())?;
    Ok(())
}
