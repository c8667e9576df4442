//! `mnvault audit alerts`: the alerts the vault's alarms raised (its own
//! `audit.alert` entries, see `crate::alarms`), listed from a running vault
//! as an auditor, one per line:
//! `seq time rule principal tenant job reason`, tab-separated.

use std::io::Write;
use std::path::Path;

use clap::Args;
use mnvault_client::ListAuditEntriesRequest;
use mnvault_core::audit::Operation;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::{rfc3339, Connection};

/// `mnvault audit alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Only this tenant (an auditor of some tenants only must name one).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only alerts raised at or after this time: RFC 3339, or a date
    /// (YYYY-MM-DD, from midnight in Japan).
    #[arg(long, value_parser = since)]
    pub since: Option<OffsetDateTime>,
    /// Only alerts raised before this time: RFC 3339, or a date
    /// (YYYY-MM-DD, that whole day in Japan).
    #[arg(long, value_parser = until)]
    pub until: Option<OffsetDateTime>,
    #[command(flatten)]
    pub connection: Connection,
}

/// Japan's offset from UTC, in which a bare date is read.
fn japan() -> UtcOffset {
    UtcOffset::from_hms(9, 0, 0).expect("a valid offset")
}

fn parse_time(text: &str, whole_day: bool) -> Result<OffsetDateTime, String> {
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        let midnight = date.midnight().assume_offset(japan());
        return Ok(if whole_day { midnight + Duration::DAY } else { midnight });
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "write a date as YYYY-MM-DD or a time as RFC 3339, e.g. 2026-01-31T09:00:00+09:00".to_owned())
}

fn since(text: &str) -> Result<OffsetDateTime, String> {
    parse_time(text, false)
}

fn until(text: &str) -> Result<OffsetDateTime, String> {
    parse_time(text, true)
}

/// Lists the alerts, page by page; the count goes to standard error.
pub async fn run(args: AlertsArgs, data_dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = args.connection.connect(data_dir).await?;
    let mut request = ListAuditEntriesRequest {
        tenant: args.tenant.unwrap_or_default(),
        operation: Operation::RaiseAlert.id().to_owned(),
        since: args.since.map(mnvault_client::timestamp),
        until: args.until.map(mnvault_client::timestamp),
        ..Default::default()
    };
    let mut listed = 0u64;
    loop {
        let page = client.list_audit_entries(request.clone()).await?;
        for entry in &page.entries {
            let time = entry.time.as_ref().and_then(mnvault_client::from_timestamp).map(rfc3339).unwrap_or_default();
            // The reason starts with the rule's identifier.
            let rule = entry.reason.split_once(':').map_or("", |(rule, _)| rule);
            let job = if entry.job_id.is_empty() { "-" } else { entry.job_id.as_str() };
            writeln!(
                out,
                "{}\t{time}\t{rule}\t{}\t{}\t{job}\t{}",
                entry.seq, entry.principal, entry.tenant, entry.reason
            )?;
            listed += 1;
        }
        if page.next_after_seq == 0 {
            break;
        }
        request.after_seq = page.next_after_seq;
    }
    eprintln!("{listed} alert(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_a_day_in_japan_and_a_time_is_read_as_written() {
        let from = since("2026-01-31").unwrap();
        assert_eq!(from, time::macros::datetime!(2026-01-31 00:00 +09:00));
        assert_eq!(until("2026-01-31").unwrap(), time::macros::datetime!(2026-02-01 00:00 +09:00));
        assert_eq!(since("2026-01-31T09:30:00Z").unwrap(), time::macros::datetime!(2026-01-31 09:30 UTC));
        let refused = since("yesterday").unwrap_err();
        assert!(!refused.contains("yesterday"), "{refused}");
    }
}
