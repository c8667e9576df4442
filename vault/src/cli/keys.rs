//! `mnvault keys`: tenant record keys (rotate, rewrap, status, retire), as a
//! principal with the admin role on the tenant.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use mnvault_client::keys::TenantKeyStatus;
use mnvault_client::VaultClient;

use super::{progress_bar, rfc3339, Connection};

/// Tenant record-key commands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a record-key version; it seals new records from now on. Prints
    /// the tenant and the new version.
    Rotate {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Seal every record under an older version again under the primary,
    /// in batches, while the vault serves. Run it again after an
    /// interruption: it goes on with what is left.
    Rewrap {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Records per call (each its own transaction and audit entry), at most 10000.
        #[arg(long, default_value_t = 1_000)]
        batch: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// Each record-key version, when it was added, its age and how many
    /// records it seals: `tenant version created age records [primary]`.
    Status {
        /// Only this tenant (every tenant otherwise).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a record-key version no record uses, that is not the primary,
    /// and whose successor has been primary for more than a day (the longest
    /// keys.cache_ttl_ms a replica may have).
    Retire {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The version to delete.
        #[arg(long)]
        version: u32,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Walks of a rewrap at most: a walk after the first only picks up records
/// sealed under an older version meanwhile (replicas whose cached keys
/// predate the rotation).
const REWRAP_WALKS: usize = 10;

/// Runs a `keys` command.
pub async fn run(command: KeysCommand, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { tenant, connection } => {
            let rotated = connection.connect(data_dir).await?.rotate_tenant_key(&tenant).await?;
            writeln!(out, "{}\t{}", rotated.tenant, rotated.primary_key_version)?;
            eprintln!(
                "version {} seals new records of {}; run `mnvault keys rewrap --tenant {}` to seal the older ones again",
                rotated.primary_key_version, rotated.tenant, rotated.tenant
            );
        }
        KeysCommand::Rewrap { tenant, batch, connection } => {
            let client = connection.connect(data_dir).await?;
            rewrap(&client, &tenant, batch, out).await?;
        }
        KeysCommand::Status { tenant, connection } => {
            let client = connection.connect(data_dir).await?;
            let mut after = String::new();
            loop {
                let page = client.key_status(tenant.as_deref(), &after, 0).await?;
                for status in &page.tenants {
                    write_status(status, out)?;
                }
                if page.next_after_tenant.is_empty() {
                    break;
                }
                after = page.next_after_tenant;
            }
        }
        KeysCommand::Retire { tenant, version, connection } => {
            let retired = connection.connect(data_dir).await?.retire_key_version(&tenant, version).await?;
            let left: Vec<String> = retired.versions.iter().map(u32::to_string).collect();
            writeln!(out, "{}\tretired {}\tversions {}", retired.tenant, retired.retired_version, left.join(","))?;
        }
    }
    Ok(())
}

/// Records of `tenant` under a version other than the primary, as the
/// vault counts them now.
async fn records_to_rewrap(client: &VaultClient, tenant: &str) -> anyhow::Result<u64> {
    let page = client.key_status(Some(tenant), "", 0).await?;
    let Some(status) = page.tenants.first() else { bail!("the vault reported no status for tenant {tenant}") };
    Ok(status.versions.iter().filter(|v| !v.primary).map(|v| v.records).sum())
}

async fn rewrap(client: &VaultClient, tenant: &str, batch: u32, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let mut left = records_to_rewrap(client, tenant).await?;
    let bar = progress_bar(left, true);
    let (mut rewrapped, mut tampered, mut primary) = (0u64, 0u64, 0u32);
    for _ in 0..REWRAP_WALKS {
        if left == 0 {
            break;
        }
        let mut cursor = String::new();
        let mut walked = 0u64;
        // Each walk meets the same tampered records again: count the last one's.
        tampered = 0;
        loop {
            let answer = client.rewrap_tenant_records(tenant, batch, &cursor).await?;
            bar.inc(answer.rewrapped);
            walked += answer.rewrapped;
            tampered += answer.tampered;
            primary = answer.primary_key_version;
            if answer.next_cursor.is_empty() {
                break;
            }
            cursor = answer.next_cursor;
        }
        rewrapped += walked;
        left = records_to_rewrap(client, tenant).await?;
        bar.set_length(rewrapped + left);
        if walked == 0 {
            // Nothing more this walk could seal: what is left failed its check or keeps changing.
            break;
        }
    }
    bar.finish_and_clear();
    if primary == 0 {
        writeln!(out, "{tenant}\trewrapped 0\tnothing under an older version")?;
        return Ok(());
    }
    writeln!(out, "{tenant}\trewrapped {rewrapped}\tversion {primary}")?;
    if tampered > 0 {
        bail!(
            "{tampered} record(s) of {tenant} failed their integrity check and were left alone; `mnvault audit verify` \
             names them"
        );
    }
    if left > 0 {
        bail!("{left} record(s) of {tenant} are still under an older version; run `mnvault keys rewrap` again");
    }
    Ok(())
}

fn write_status(status: &TenantKeyStatus, out: &mut (dyn Write + Send)) -> std::io::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    for version in &status.versions {
        let created = version.created_at.as_ref().and_then(mnvault_client::from_timestamp);
        let age = created
            .map(|at| {
                let seconds = (now - at).whole_seconds().max(0).unsigned_abs();
                humantime::format_duration(Duration::from_secs(seconds)).to_string().replace(' ', "")
            })
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}{}",
            status.tenant,
            version.version,
            created.map(rfc3339).unwrap_or_else(|| "-".into()),
            age,
            version.records,
            if version.primary { "\tprimary" } else { "" }
        )?;
    }
    Ok(())
}
