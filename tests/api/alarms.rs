//! Alarms (`[alarms]`): release patterns that do not fit a filing job raise
//! one `audit.alert` entry per rule and key and window, counted in
//! `mnvault_alerts_total`, and listed by `mnvault audit alerts`; they
//! refuse nothing, and nothing is raised under the thresholds.

use std::time::Duration;

use futures::StreamExt as _;
use mnvault::alarms::AlarmSettings;
use mnvault::config::Settings;
use mnvault_client::{ListAuditEntriesRequest, NewFilingJob};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{approved_job, filing_job, spawn_app_with, tokenize_fresh, Backend, TestApp};

/// Every rule off; a test turns on the one it shows.
fn all_off() -> AlarmSettings {
    AlarmSettings {
        burst_max_numbers: 0,
        requester_max_jobs_per_day: 0,
        release_hours: "off".into(),
        tenant_max_numbers_per_hour: 0,
        ..AlarmSettings::default()
    }
}

/// A vault with `alarms` and its metrics on a free loopback port.
async fn spawn_alarmed(backend: &Backend, alarms: AlarmSettings) -> TestApp {
    spawn_app_with(backend, |settings: &mut Settings| {
        settings.alarms = alarms;
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// `mnvault audit alerts ARGS` as the auditor: one line per alert, split at tabs.
async fn alerts(app: &TestApp, args: &[&str]) -> Vec<Vec<String>> {
    let out = app.cli(&[&["audit", "alerts"][..], args, &["--as", "auditor"][..]].concat()).await.unwrap();
    out.lines().map(|line| line.split('\t').map(str::to_owned).collect()).collect()
}

/// The `audit.alert` entries, as the API lists them.
async fn alert_entries(app: &TestApp) -> Vec<mnvault_client::AuditEntry> {
    let request = ListAuditEntriesRequest { operation: "audit.alert".into(), ..Default::default() };
    app.client("auditor").await.list_audit_entries(request).await.unwrap().entries
}

/// `mnvault_alerts_total{rule="RULE"}` as the metrics listener serves it.
pub(crate) async fn alerts_counted(app: &TestApp, rule: &str) -> f64 {
    let exchange = async {
        let address = app.metrics_addr.expect("a metrics listener");
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to the metrics listener");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("the listener answered");
    let series = format!("mnvault_alerts_total{{rule=\"{rule}\"}} ");
    let line =
        answer.lines().find(|line| line.starts_with(&series)).unwrap_or_else(|| panic!("no {series}in:\n{answer}"));
    line[series.len()..].trim().parse().expect("a number")
}

/// Release hours that exclude the present: an hour, starting two hours
/// from now (UTC).
pub(crate) fn hours_excluding_now() -> String {
    let hour = time::OffsetDateTime::now_utc().hour();
    format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24)
}

on_both_backends! {
    /// One filer releasing more than the burst threshold raises one alert,
    /// however many releases follow within the window; the releases are
    /// not refused; the entry names the filer, tenant and job, and the
    /// threshold, and is listed by `audit alerts` and counted.
    async fn a_burst_of_releases_by_one_filer_raises_one_alert(backend) {
        let app = spawn_alarmed(&backend, AlarmSettings {
            burst_max_numbers: 3,
            burst_window_seconds: 86_400,
            ..all_off()
        })
        .await;
        let tokens = tokenize_fresh(&app, 6).await;
        let job = approved_job(&app, &tokens, 1).await;
        let filer = app.client("filer").await;
        assert_eq!(filer.detokenize(&job, tokens[..3].to_vec()).await.unwrap().len(), 3);
        assert!(alert_entries(&app).await.is_empty(), "3 is not more than 3");
        assert_eq!(alerts_counted(&app, "burst").await, 0.0);
        // The fourth number crosses it, and is released all the same.
        assert_eq!(filer.detokenize(&job, tokens[3..4].to_vec()).await.unwrap().len(), 1);
        assert_eq!(filer.detokenize(&job, tokens[4..].to_vec()).await.unwrap().len(), 2);

        let entries = alert_entries(&app).await;
        assert_eq!(entries.len(), 1, "one alert for the whole burst: {entries:?}");
        let entry = &entries[0];
        assert_eq!((entry.principal.as_str(), entry.tenant.as_str()), ("filer", "demo"));
        assert_eq!((entry.outcome.as_str(), entry.job_id.as_str()), ("ok", job.as_str()));
        assert_eq!(entry.purpose, "withholding-slip");
        assert!(entry.tokens.is_empty() && entry.request_id.is_empty(), "the vault's own entry names no tokens");
        assert!(entry.reason.starts_with("burst: 4 numbers released"), "{}", entry.reason);
        assert!(entry.reason.contains("alarms.burst_max_numbers (3)"), "{}", entry.reason);

        let listed = alerts(&app, &[]).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0][0], entry.seq.to_string());
        assert_eq!(&listed[0][2..6], ["burst", "filer", "demo", job.as_str()]);
        assert_eq!(listed[0][6], entry.reason);
        assert_eq!(alerts_counted(&app, "burst").await, 1.0);
        assert_eq!(alerts_counted(&app, "outside-hours").await, 0.0);

        // The filters: another tenant, or a window that ends before it, lists none.
        assert!(alerts(&app, &["--tenant", "acme"]).await.is_empty());
        assert!(alerts(&app, &["--until", "2020-01-01"]).await.is_empty());
        assert_eq!(alerts(&app, &["--tenant", "demo", "--since", "2020-01-01T00:00:00Z"]).await.len(), 1);
    }

    /// Releases outside the release hours raise one alert for the filer and
    /// tenant, not one per release.
    async fn releases_outside_hours_raise_one_alert(backend) {
        let app = spawn_alarmed(&backend, AlarmSettings {
            release_hours: hours_excluding_now(),
            utc_offset: "+00:00".into(),
            ..all_off()
        })
        .await;
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 1).await;
        let filer = app.client("filer").await;
        filer.detokenize(&job, tokens[..1].to_vec()).await.unwrap();
        filer.detokenize(&job, tokens[1..].to_vec()).await.unwrap();

        let listed = alerts(&app, &[]).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(&listed[0][2..6], ["outside-hours", "filer", "demo", job.as_str()]);
        assert!(listed[0][6].contains("outside the release hours"), "{}", listed[0][6]);
        assert_eq!(alerts_counted(&app, "outside-hours").await, 1.0);
        assert_eq!(alerts_counted(&app, "burst").await, 0.0);
    }

    /// More jobs than allowed by one requester within a day raise one alert.
    async fn many_jobs_by_one_requester_raise_one_alert(backend) {
        let app = spawn_alarmed(&backend, AlarmSettings { requester_max_jobs_per_day: 2, ..all_off() }).await;
        let tokens = tokenize_fresh(&app, 1).await;
        let requester = app.client("requester").await;
        let mut jobs = Vec::new();
        for _ in 0..4 {
            jobs.push(requester.create_filing_job(filing_job(&tokens)).await.unwrap().job_id);
        }
        let listed = alerts(&app, &[]).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(&listed[0][2..6], ["requester-jobs", "requester", "demo", jobs[2].as_str()], "the third job crossed it");
        assert!(listed[0][6].contains("3 filing jobs") && listed[0][6].contains("24 h"), "{}", listed[0][6]);
        assert_eq!(alerts_counted(&app, "requester-jobs").await, 1.0);
    }

    /// With the default rules (and hours that hold now), ordinary filing work
    /// raises nothing.
    async fn nothing_is_raised_under_the_thresholds(backend) {
        let app = spawn_alarmed(&backend, AlarmSettings { release_hours: "00:00-24:00".into(), ..Default::default() }).await;
        let tokens = tokenize_fresh(&app, 5).await;
        for _ in 0..3 {
            let job = approved_job(&app, &tokens, 1).await;
            assert_eq!(app.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 5);
        }
        assert!(alerts(&app, &[]).await.is_empty());
        assert!(alert_entries(&app).await.is_empty());
        for rule in ["burst", "requester-jobs", "outside-hours", "tenant-rate"] {
            assert_eq!(alerts_counted(&app, rule).await, 0.0, "{rule}");
        }
    }

    /// The pages of a tenant export count as releases: crossing the
    /// tenant's hourly rate raises one alert naming the exporting filer.
    async fn an_export_counts_toward_the_tenant_rate(backend) {
        let app = spawn_alarmed(&backend, AlarmSettings { tenant_max_numbers_per_hour: 3, ..all_off() }).await;
        tokenize_fresh(&app, 5).await;
        let job = NewFilingJob { purpose: "tenant-export".into(), ..filing_job(&[]) };
        let created = app.client("requester").await.create_filing_job(job).await.unwrap();
        app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let chunks: Vec<_> =
            app.client("filer").await.export_tenant(&created.job_id, &recipient).await.unwrap().collect().await;
        assert_eq!(chunks.into_iter().map(Result::unwrap).next_back().unwrap().records, 5);

        let listed = alerts(&app, &[]).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(&listed[0][2..6], ["tenant-rate", "filer", "demo", created.job_id.as_str()]);
        assert!(listed[0][6].contains("5 numbers released in this tenant"), "{}", listed[0][6]);
        assert_eq!(alerts_counted(&app, "tenant-rate").await, 1.0);
    }

    /// A reload (SIGHUP) applies new alarm settings to the releases after it,
    /// and refuses settings that do not parse, naming the key.
    async fn a_reload_applies_alarm_settings(backend) {
        let app = spawn_alarmed(&backend, all_off()).await;
        let tokens = tokenize_fresh(&app, 4).await;
        let job = approved_job(&app, &tokens, 1).await;
        let filer = app.client("filer").await;
        filer.detokenize(&job, tokens[..2].to_vec()).await.unwrap();
        assert!(alerts(&app, &[]).await.is_empty(), "every rule is off");

        let mut settings = Settings::load(app.path()).expect("the configuration");
        settings.alarms.release_days = "weekdays".into();
        let refused = app.reloader().apply(settings.clone()).await.expect_err("days that do not parse");
        assert!(refused.to_string().contains("alarms.release_days"), "{refused}");

        settings.alarms = AlarmSettings { burst_max_numbers: 1, burst_window_seconds: 86_400, ..all_off() };
        app.reloader().apply(settings).await.expect("the reload");
        filer.detokenize(&job, tokens[2..].to_vec()).await.unwrap();
        let listed = alerts(&app, &[]).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0][2], "burst");
    }
}
