//! The metrics listener: each vault counts its own calls, numbers and
//! failures, serves them only at `GET /metrics` on the address
//! `[metrics] listen` names, and never puts a number or a token in them; the
//! Grafana dashboard queries only metrics a vault exports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use mnvault::config::Settings;
use mnvault::metrics::code_name;
use mnvault::startup::{Application, StartupError};
use mnvault_client::{Code, TokenFormat};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{approved_job, new_data_dir, refusal, spawn_app_with, valid_numbers, Backend, TestApp};

/// How long one exchange with the metrics listener may take before the test fails.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A vault with its metrics on a free loopback port.
async fn spawn_metered(backend: &Backend) -> TestApp {
    spawn_app_with(backend, |settings: &mut Settings| {
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// Another database on the same kind of backend, for a second vault.
async fn another(backend: &Backend) -> Backend {
    match backend {
        Backend::Sqlite => Backend::Sqlite,
        Backend::Postgres(_) => Backend::postgres().await.expect("a second PostgreSQL database"),
    }
}

/// Sends `request` as it is and reads the whole answer (the listener closes
/// the connection after one): its status code and its body. `None` when the
/// listener closed the connection without answering.
async fn exchange(address: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.expect("connect to the metrics listener");
        // The listener may close before reading a request it will not serve.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await.expect("the metrics listener answered in time");
    if answer.is_empty() {
        return None;
    }
    let answer = String::from_utf8(answer).expect("the answer is UTF-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    Some((status, body.to_owned()))
}

/// `GET path` on the metrics listener of `app`.
async fn get(app: &TestApp, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n");
    exchange(app.metrics_addr.expect("a metrics listener"), request.as_bytes()).await
}

/// The metrics of `app`, scraped.
async fn scrape(app: &TestApp) -> String {
    let (status, body) = get(app, "/metrics").await.expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "a complete OpenMetrics answer");
    body
}

/// The value of the sample `name{labels}` (exactly those labels, in any
/// order), if the scrape has it.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeSet<String> = labels.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
    scrape.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (sample_name, sample_labels) = match series.split_once('{') {
            Some((sample_name, rest)) => (sample_name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let found: BTreeSet<String> =
            sample_labels.split(',').filter(|label| !label.is_empty()).map(str::to_owned).collect();
        (sample_name == name && found == wanted).then(|| value.parse().expect("a number"))
    })
}

/// The value of `name{labels}`, which the scrape must have.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{scrape}"))
}

/// The names of every sample in the scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split([' ', '{']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `mnvault_…` name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/mnvault-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 15, "the dashboard has its queries: {queries:?}");
    let mut names = BTreeSet::new();
    for query in queries {
        for (start, _) in query.match_indices("mnvault_") {
            let name: String = query[start..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

/// Every `expr` (a panel's PromQL) and variable query in `value`.
fn collect_queries(value: &serde_json::Value, queries: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("expr" | "definition", serde_json::Value::String(query)) => queries.push(query.clone()),
                    _ => collect_queries(field, queries),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_queries(item, queries)),
        _ => {}
    }
}

on_both_backends! {
    /// Calls by method and code, their durations, tokenized records,
    /// released numbers and refusals, exactly as this vault saw them; a
    /// second vault in the same process counts only its own.
    async fn each_vault_counts_its_own_calls_numbers_and_refusals(backend) {
        let app = spawn_metered(&backend).await;
        let other = spawn_metered(&another(&backend).await).await;
        let numbers = valid_numbers(3);
        let payroll = app.client("payroll").await;
        let mut tokens = Vec::new();
        for number in &numbers {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
        }
        // The same number again: its existing token.
        assert_eq!(payroll.tokenize("demo", &numbers[0], TokenFormat::Opaque).await.unwrap(), tokens[0]);
        // A filer may not tokenize.
        let (denied, _) = refusal(app.client("filer").await.tokenize("demo", &numbers[1], TokenFormat::Opaque).await);
        assert_eq!(denied, Code::PermissionDenied);
        let job = approved_job(&app, &tokens, 1).await;
        let filer = app.client("filer").await;
        assert_eq!(filer.detokenize(&job, vec![]).await.unwrap().len(), 3);
        // Each token is released once: the second release is refused.
        let (spent, _) = refusal(filer.detokenize(&job, vec![]).await);
        other.client("payroll").await.tokenize("demo", &numbers[2], TokenFormat::Opaque).await.unwrap();

        let metrics = scrape(&app).await;
        let calls = |method: &str, code: &str| value(&metrics, "mnvault_calls_total", &[("method", method), ("code", code)]);
        assert_eq!(calls("token.tokenize", "OK"), 4.0);
        assert_eq!(calls("token.tokenize", "PERMISSION_DENIED"), 1.0);
        assert_eq!(calls("filing.create-job", "OK"), 1.0);
        assert_eq!(calls("filing.approve-job", "OK"), 1.0);
        assert_eq!(calls("filing.detokenize", "OK"), 1.0);
        assert_eq!(calls("filing.detokenize", code_name(spent)), 1.0);
        let duration = |method: &str| value(&metrics, "mnvault_call_duration_seconds_count", &[("method", method)]);
        assert_eq!(duration("token.tokenize"), 5.0);
        assert_eq!(duration("filing.detokenize"), 2.0);
        let bucket = [("method", "token.tokenize"), ("le", "+Inf")];
        assert_eq!(value(&metrics, "mnvault_call_duration_seconds_bucket", &bucket), 5.0);
        let tokenized = |record: &str| {
            value(&metrics, "mnvault_records_tokenized_total", &[("method", "token.tokenize"), ("record", record)])
        };
        assert_eq!((tokenized("new"), tokenized("existing")), (3.0, 1.0));
        assert_eq!(value(&metrics, "mnvault_numbers_released_total", &[]), 3.0);
        let refusals = |method: &str, code: &str| {
            value(&metrics, "mnvault_refusals_total", &[("method", method), ("code", code)])
        };
        assert_eq!(refusals("token.tokenize", "PERMISSION_DENIED"), 1.0);
        assert_eq!(refusals("filing.detokenize", code_name(spent)), 1.0);
        assert_eq!(sample(&metrics, "mnvault_refusals_total", &[("method", "token.tokenize"), ("code", "OK")]), None);
        // Nothing failed.
        assert_eq!(value(&metrics, "mnvault_integrity_failures_total", &[]), 0.0);
        for kind in ["unavailable", "corrupt", "migration", "database", "other"] {
            assert_eq!(value(&metrics, "mnvault_store_errors_total", &[("kind", kind)]), 0.0, "{kind}");
            assert_eq!(value(&metrics, "mnvault_audit_write_failures_total", &[("kind", kind)]), 0.0, "{kind}");
        }
        for operation in ["wrap", "unwrap"] {
            assert_eq!(value(&metrics, "mnvault_key_provider_errors_total", &[("operation", operation)]), 0.0);
        }
        for reason in ["tls_handshake_failed", "tls_handshake_timeout", "connection_limit", "accept_failed"] {
            assert_eq!(value(&metrics, "mnvault_transport_refusals_total", &[("reason", reason)]), 0.0, "{reason}");
        }
        // The database pools, as the backend has them.
        let pools: &[(&str, f64)] = match backend {
            Backend::Sqlite => &[("sqlite-writer", 1.0), ("sqlite-reader", 4.0)],
            Backend::Postgres(_) => &[("postgres", 16.0)],
        };
        for (pool, max) in pools {
            assert_eq!(value(&metrics, "mnvault_db_pool_max_connections", &[("pool", pool)]), *max, "{pool}");
            let open = value(&metrics, "mnvault_db_pool_connections", &[("pool", pool), ("state", "idle")])
                + value(&metrics, "mnvault_db_pool_connections", &[("pool", pool), ("state", "in_use")]);
            assert!((1.0..=*max).contains(&open), "{pool}: {open} connections open");
        }
        // The scrape is not a call of the vault: a second one counts the same.
        let again = scrape(&app).await;
        assert_eq!(value(&again, "mnvault_calls_total", &[("method", "token.tokenize"), ("code", "OK")]), 4.0);

        // The other vault saw one call, and none of these.
        let theirs = scrape(&other).await;
        let other_calls = |method: &str, code: &str| {
            sample(&theirs, "mnvault_calls_total", &[("method", method), ("code", code)])
        };
        assert_eq!(other_calls("token.tokenize", "OK"), Some(1.0));
        assert_eq!(other_calls("token.tokenize", "PERMISSION_DENIED"), None);
        assert_eq!(other_calls("filing.detokenize", "OK"), None);
        assert_eq!(value(&theirs, "mnvault_numbers_released_total", &[]), 0.0);
    }

    /// Labels are fixed words: no number, mistyped number or token a caller
    /// sent, and no path it made up, appears in a scrape.
    async fn a_scrape_holds_no_number_and_no_token(backend) {
        let app = spawn_metered(&backend).await;
        let numbers = valid_numbers(4);
        let payroll = app.client("payroll").await;
        let mut tokens = Vec::new();
        for number in &numbers[..2] {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
            tokens.push(payroll.tokenize("demo", number, TokenFormat::LegacyDigits).await.unwrap());
        }
        // Numbers where identifiers belong, and a mistyped number, are refused.
        refusal(payroll.tokenize(&numbers[2], &numbers[3], TokenFormat::Opaque).await);
        refusal(payroll.describe_token("demo", &numbers[3]).await);
        let mistyped = format!("{}{}", &numbers[3][..11], (numbers[3].as_bytes()[11] - b'0' + 1) % 10);
        refusal(payroll.tokenize("demo", &mistyped, TokenFormat::Opaque).await);
        let job = approved_job(&app, &tokens, 1).await;
        app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        // Paths of the metrics listener with a number in them.
        assert_eq!(get(&app, &format!("/{}", numbers[0])).await.map(|(status, _)| status), Some(404));
        assert_eq!(get(&app, &format!("/metrics/{}", numbers[1])).await.map(|(status, _)| status), Some(404));

        let metrics = scrape(&app).await;
        assert_eq!(value(&metrics, "mnvault_numbers_released_total", &[]), 4.0);
        for secret in numbers.iter().chain([&mistyped]).chain(&tokens).chain([&job]) {
            assert!(!metrics.contains(secret.as_str()), "the scrape holds {secret}");
        }
        assert!(!metrics.contains("mnt_"), "the scrape holds a token");
        // Not even the first eleven digits of a number, in any form.
        let digits: String = metrics.chars().map(|c| if c.is_ascii_digit() { c } else { ' ' }).collect();
        for number in numbers.iter().chain([&mistyped]) {
            assert!(!digits.contains(&number[..11]), "the scrape holds part of a number");
        }
    }

    /// Failed audit writes and store errors are counted by kind, and so are
    /// the root key provider's failures.
    async fn audit_store_and_key_failures_are_counted(backend) {
        let app = spawn_metered(&backend).await;
        let numbers = valid_numbers(2);
        app.client("admin").await.create_tenant("acme", "Acme").await.unwrap();
        let mut db = app.database().await;
        db.break_audit_writes().await;
        let payroll = app.client("payroll").await;
        // Fails with its entry; so does the entry of the refusal.
        let (code, _) = refusal(payroll.tokenize("acme", &numbers[0], TokenFormat::Opaque).await);
        assert_eq!(code, Code::Unavailable);
        db.repair_audit_writes().await;
        let metrics = scrape(&app).await;
        let failures = value(&metrics, "mnvault_audit_write_failures_total", &[("kind", "database")]);
        assert_eq!(failures, 2.0);
        // Every failed audit write is a store error too.
        assert_eq!(value(&metrics, "mnvault_store_errors_total", &[("kind", "database")]), failures);
        assert_eq!(value(&metrics, "mnvault_calls_total", &[("method", "token.tokenize"), ("code", "UNAVAILABLE")]), 1.0);

        // The tenant `demo`, not used since the vault started, gets `acme`'s
        // wrapped index key: it does not unwrap in demo's slot.
        db.exec("UPDATE tenants SET index_key_wrapped = (SELECT index_key_wrapped FROM tenants WHERE tenant = 'acme') \
                 WHERE tenant = 'demo'")
            .await;
        refusal(payroll.tokenize("demo", &numbers[1], TokenFormat::Opaque).await);
        let metrics = scrape(&app).await;
        assert_eq!(value(&metrics, "mnvault_key_provider_errors_total", &[("operation", "unwrap")]), 1.0);
        assert_eq!(value(&metrics, "mnvault_key_provider_errors_total", &[("operation", "wrap")]), 0.0);
    }

    /// Only `GET /metrics` is answered; anything else is 404 or 405 and
    /// changes nothing; a request head too large is refused.
    async fn the_listener_serves_only_get_metrics_and_stays_bounded(backend) {
        let app = spawn_metered(&backend).await;
        let address = app.metrics_addr.unwrap();
        app.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        let before = scrape(&app).await;
        let refused = [
            ("POST /metrics HTTP/1.1\r\nHost: vault\r\nContent-Length: 2\r\n\r\n{}", 405),
            ("DELETE /metrics HTTP/1.1\r\nHost: vault\r\n\r\n", 405),
            ("HEAD /metrics HTTP/1.1\r\nHost: vault\r\n\r\n", 405),
            ("GET / HTTP/1.1\r\nHost: vault\r\n\r\n", 404),
            ("GET /metricsx HTTP/1.1\r\nHost: vault\r\n\r\n", 404),
            ("POST /mynumber.vault.v1.TokenService/Tokenize HTTP/1.1\r\nHost: vault\r\n\r\n", 404),
        ];
        for (request, expected) in refused {
            let (status, body) = exchange(address, request.as_bytes()).await.expect("an answer");
            assert_eq!(status, expected, "{request}");
            assert!(!body.contains("mnvault_"), "{request}");
        }
        // A head larger than the listener reads is refused, never served.
        let large = format!("GET /metrics HTTP/1.1\r\nHost: vault\r\nX-Filler: {}\r\n\r\n", "a".repeat(16 * 1024));
        if let Some((status, _)) = exchange(address, large.as_bytes()).await {
            assert_eq!(status, 431);
        }
        let after = scrape(&app).await;
        let calls = |scrape: &str| {
            scrape.lines().filter(|line| line.starts_with("mnvault_calls_total")).map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(calls(&after), calls(&before));
        assert!(!calls(&after).is_empty());

    }

    /// Connections that never send a request cannot lock a scraper out: the
    /// listener drops the oldest of them to make room, however many there are.
    async fn silent_connections_do_not_lock_out_a_scrape(backend) {
        let app = spawn_metered(&backend).await;
        let address = app.metrics_addr.unwrap();
        // The listener serves 4 connections at once; these are three times as many.
        let mut silent = Vec::new();
        for round in 0..3 {
            for _ in 0..12 {
                silent.push(TcpStream::connect(address).await.unwrap());
            }
            let metrics = scrape(&app).await;
            assert_eq!(value(&metrics, "mnvault_integrity_failures_total", &[]), 0.0, "round {round}");
        }
        // The oldest silent connection was dropped unanswered.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(EXCHANGE_TIMEOUT, silent[0].read_to_end(&mut answer)).await;
        assert!(read.expect("the listener dropped it").is_ok_and(|bytes| bytes == 0), "{answer:?}");
    }

    /// Without `[metrics]`, no metrics listener; a dev vault refuses a
    /// metrics address beyond loopback, as it does for `listen`.
    async fn metrics_are_off_by_default_and_loopback_only_in_dev(backend) {
        let app = crate::helpers::spawn_app(&backend).await;
        assert_eq!(app.metrics_addr, None);
        let written = std::fs::read_to_string(app.path().join("mnvault.toml")).unwrap();
        assert!(!written.contains("[metrics]"), "{written}");
        let loaded = Settings::load(app.path()).unwrap();
        assert_eq!(loaded.metrics.listen, None);

        let second = another(&backend).await;
        let (mut settings, _dir) = new_data_dir(&second, |_| {}).await;
        settings.metrics.listen = Some("0.0.0.0:0".parse().unwrap());
        let error = Application::build(&settings).await.err().expect("a dev vault with public metrics");
        assert!(matches!(error, StartupError::DevNotLoopback(address) if address.port() == 0), "{error}");
        settings.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        let application = Application::build(&settings).await.expect("loopback metrics");
        assert!(application.metrics_addr().is_some_and(|address| address.ip().is_loopback() && address.port() != 0));
    }

    /// Every metric the Grafana dashboard queries is one the vault exports.
    async fn the_dashboard_queries_only_exported_metrics(backend) {
        let app = spawn_metered(&backend).await;
        let tokens = vec![app.client("payroll").await.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap()];
        let job = approved_job(&app, &tokens, 1).await;
        app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        refusal(app.client("filer").await.detokenize(&job, vec![]).await);
        let exported = sample_names(&scrape(&app).await);
        let queried = dashboard_metrics();
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(missing.is_empty(), "the dashboard queries {missing:?}, which the vault does not export: {exported:?}");
        // And it shows every metric the vault exports.
        let family = |name: &str| {
            ["_bucket", "_count", "_sum"].iter().fold(name.to_owned(), |name, suffix| {
                name.strip_suffix(suffix).map_or(name.clone(), str::to_owned)
            })
        };
        let shown: BTreeSet<_> = queried.iter().map(|name| family(name)).collect();
        let unshown: Vec<_> = exported.iter().filter(|name| !shown.contains(&family(name))).collect();
        assert!(unshown.is_empty(), "the dashboard does not show {unshown:?}");
    }
}
