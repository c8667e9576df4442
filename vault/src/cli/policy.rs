//! `mnvault policy`: a tenant's policy, shown, changed by one key-admin and
//! applied when another approves.

use std::io::Write;
use std::path::Path;

use clap::{Args, Subcommand};
use mnvault_client::tenant_policy::{PolicyChange, TenantPolicy, TenantPolicyStatus};

use super::{when, Connection};

/// Tenant policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the tenant's applied policy and its pending change (as a
    /// key-admin or auditor).
    Show {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Propose a change (as a key-admin): the applied policy with the
    /// options given changed. It applies once another key-admin approves
    /// it; prints the change id they name.
    Set(SetArgs),
    /// Approve another key-admin's pending change, which applies it.
    Approve {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The change id `policy set` printed (`policy show` lists it).
        #[arg(long)]
        change: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `mnvault policy set`: each option left out keeps its applied value.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// Distinct persons, none of them the creator, who must approve a filing job (1 to 5).
    #[arg(long)]
    pub approvals: Option<u32>,
    /// Most tokens one filing job may list.
    #[arg(long)]
    pub max_tokens_per_job: Option<u32>,
    /// Longest a filing job may run, in days (at most 90).
    #[arg(long)]
    pub max_job_lifetime_days: Option<u32>,
    /// Purposes the tenant files for, comma-separated (`mnvault job purposes`), or `all`.
    #[arg(long, value_name = "PURPOSES")]
    pub purposes: Option<String>,
    /// Most numbers one filer may release in an hour; 0: no limit.
    #[arg(long)]
    pub max_per_filer_per_hour: Option<u64>,
    /// Most numbers the tenant may release in a day; 0: no limit.
    #[arg(long)]
    pub max_per_tenant_per_day: Option<u64>,
    /// When numbers may be released, e.g. "08:00-20:00 mon-fri +09:00", or `any`.
    #[arg(long, value_name = "HOURS")]
    pub release_hours: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Runs a `policy` command.
pub async fn run(command: PolicyCommand, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Show { tenant, connection } => {
            let status = connection.connect(data_dir).await?.tenant_policy(&tenant).await?;
            show(&status, out)
        }
        PolicyCommand::Set(args) => {
            let client = args.connection.connect(data_dir).await?;
            let status = client.tenant_policy(&args.tenant).await?;
            let mut policy = status.policy.unwrap_or_default();
            edit(&mut policy, &args);
            let change = client.propose_tenant_policy(&args.tenant, policy).await?;
            writeln!(out, "proposed change {} for tenant {}", change.change_id, change.tenant)?;
            write_policy(change.policy.as_ref(), "  ", out)?;
            writeln!(
                out,
                "it applies once another key-admin runs: mnvault policy approve --tenant {} --change {}",
                change.tenant, change.change_id
            )?;
            Ok(())
        }
        PolicyCommand::Approve { tenant, change, connection } => {
            let status = connection.connect(data_dir).await?.approve_tenant_policy(&tenant, &change).await?;
            show(&status, out)
        }
    }
}

fn edit(policy: &mut TenantPolicy, args: &SetArgs) {
    if let Some(approvals) = args.approvals {
        policy.approvals_required = approvals;
    }
    if let Some(max) = args.max_tokens_per_job {
        policy.max_tokens_per_job = max;
    }
    if let Some(days) = args.max_job_lifetime_days {
        policy.max_job_lifetime_days = days;
    }
    if let Some(purposes) = &args.purposes {
        policy.allowed_purposes = match purposes.trim() {
            "all" => Vec::new(),
            list => list.split(',').map(|p| p.trim().to_owned()).collect(),
        };
    }
    if let Some(max) = args.max_per_filer_per_hour {
        policy.max_releases_per_filer_per_hour = max;
    }
    if let Some(max) = args.max_per_tenant_per_day {
        policy.max_releases_per_tenant_per_day = max;
    }
    if let Some(hours) = &args.release_hours {
        policy.release_hours = if hours.trim() == "any" { String::new() } else { hours.clone() };
    }
}

fn show(status: &TenantPolicyStatus, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    writeln!(out, "tenant {}", status.tenant)?;
    if status.change_id.is_empty() {
        writeln!(out, "applied: the default policy (nobody changed it)")?;
    } else {
        writeln!(
            out,
            "applied: change {} proposed by {}, approved by {} at {}",
            status.change_id,
            status.proposed_by,
            status.approved_by,
            when(&status.approved_at)
        )?;
    }
    write_policy(status.policy.as_ref(), "  ", out)?;
    match &status.pending {
        None => writeln!(out, "pending: none")?,
        Some(PolicyChange { change_id, policy, proposed_by, proposed_at, .. }) => {
            writeln!(out, "pending: change {change_id} proposed by {proposed_by} at {}", when(proposed_at))?;
            write_policy(policy.as_ref(), "  ", out)?;
        }
    }
    Ok(())
}

fn write_policy(policy: Option<&TenantPolicy>, indent: &str, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let Some(policy) = policy else { return Ok(()) };
    let limit = |n: u64| if n == 0 { "no limit".to_owned() } else { n.to_string() };
    let purposes =
        if policy.allowed_purposes.is_empty() { "all".to_owned() } else { policy.allowed_purposes.join(",") };
    let hours = if policy.release_hours.is_empty() { "any time" } else { &policy.release_hours };
    writeln!(out, "{indent}approvals_required               {}", policy.approvals_required)?;
    writeln!(out, "{indent}max_tokens_per_job               {}", policy.max_tokens_per_job)?;
    writeln!(out, "{indent}max_job_lifetime_days            {}", policy.max_job_lifetime_days)?;
    writeln!(out, "{indent}allowed_purposes                 {purposes}")?;
    writeln!(out, "{indent}max_releases_per_filer_per_hour  {}", limit(policy.max_releases_per_filer_per_hour))?;
    writeln!(out, "{indent}max_releases_per_tenant_per_day  {}", limit(policy.max_releases_per_tenant_per_day))?;
    writeln!(out, "{indent}release_hours                    {hours}")?;
    Ok(())
}
