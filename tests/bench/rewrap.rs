//! Phase 6: the tenant's record key is rotated (`RotateTenantKey`, not
//! timed), then every record is sealed again under the new version by
//! `RewrapTenantRecords`, walking the tenant with the cursor each call
//! returns, `rewrap_batch` records per call, one call after another as
//! `mnvault keys rewrap` does. The rate counts records rewrapped per second
//! of the walk.
//!
//! Checked: the calls rewrapped every stored record (none changed or
//! tampered), `GetKeyStatus` counts no record under an older version
//! afterwards, and tokens of phase 2 then release, in a new approved job,
//! the numbers sent for them (through the new version's key).

use std::time::Instant;

use anyhow::{bail, Context as _};
use mnvault_client::VaultClient;

use super::report::{group, Latency, Row};
use super::server::VaultProcess;
use super::Plan;

/// The tenant every phase uses.
const TENANT: &str = "demo";

/// What one round's walk did, before its checks and ceiling are added.
pub struct Walk {
    /// The row, without ceiling and checks.
    pub row: Row,
    /// The version every record is under now.
    pub primary: u32,
}

/// Rotates the tenant's key and rewraps its `stored` records, timing the walk.
pub async fn rotate_and_rewrap(plan: &Plan, vault: &VaultProcess, stored: u64) -> anyhow::Result<Walk> {
    let admin = vault.client("admin").await?;
    let rotated = admin.rotate_tenant_key(TENANT).await.context("RotateTenantKey")?;
    let primary = rotated.primary_key_version;
    let before = under_older_versions(&admin).await?;
    let what = format!("rewrap to v{primary}, {} per call", group(u64::from(plan.rewrap_batch)));
    let bar = super::scenarios::progress(plan, &what, before);
    let (mut rewrapped, mut changed, mut tampered) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut cursor = String::new();
    let started = Instant::now();
    loop {
        let sent = Instant::now();
        let answer =
            admin.rewrap_tenant_records(TENANT, plan.rewrap_batch, &cursor).await.context("RewrapTenantRecords")?;
        latencies.push(sent.elapsed());
        if answer.primary_key_version != primary {
            bail!("a rewrap call sealed under version {} instead of {primary}", answer.primary_key_version);
        }
        (rewrapped, changed, tampered) =
            (rewrapped + answer.rewrapped, changed + answer.changed, tampered + answer.tampered);
        bar.inc(answer.rewrapped);
        if answer.next_cursor.is_empty() {
            break;
        }
        cursor = answer.next_cursor;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let calls = latencies.len() as u64;
    let row = Row {
        what,
        unit: "records",
        // Every stored record was under the old version; the answer checks count against it.
        count: stored,
        elapsed: Some(elapsed),
        latency: Latency::of(latencies),
        answered_ok: rewrapped,
        calls: Some(calls),
        left_on_old_versions: Some(under_older_versions(&admin).await?),
        ..Row::default()
    };
    if before != stored || changed > 0 || tampered > 0 {
        // `problems` shows it (answered_ok != count); this says why.
        eprintln!(
            "bench rewrap: {before} records under older versions before the walk for {stored} stored; \
             {changed} changed meanwhile, {tampered} tampered"
        );
    }
    Ok(Walk { row, primary })
}

/// Records of the tenant under a version other than the primary, as `GetKeyStatus` counts them.
async fn under_older_versions(admin: &VaultClient) -> anyhow::Result<u64> {
    let page = admin.key_status(Some(TENANT), "", 0).await.context("GetKeyStatus")?;
    let Some(status) = page.tenants.first() else { bail!("GetKeyStatus named no tenant {TENANT}") };
    Ok(status.versions.iter().filter(|version| !version.primary).map(|version| version.records).sum())
}
