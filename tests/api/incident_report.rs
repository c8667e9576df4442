//! `mnvault audit report`: a scripted scenario (two tenants, two filers,
//! four jobs, releases repeated and overlapping, refusals of three kinds,
//! changes of tenants and keys, an alert) whose report numbers are checked
//! exactly; a window without releases says no number left the vault, with
//! the evidence; `--tenant` keeps to one tenant; the JSON parses and says
//! the same; the HTML and Markdown escape what the log holds.

use mnvault::config::PrincipalSettings;
use mnvault_client::{NewFilingJob, TokenFormat};
use mnvault_core::audit::report::japan_time;
use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::authz::Role;
use mnvault_core::clock::now_ms;
use mnvault_core::id::{Principal, TenantId};
use serde_json::Value;

use crate::helpers::{refusal, spawn_app_with, valid_numbers, TestApp};

/// A reason no report may show as it is.
const HOSTILE_REASON: &str = "<script>alert(\"x\")</script> & | *not* a [link](x)";

/// What the scenario did, as the report must count it.
struct Scenario {
    /// When it started and ended (Unix ms): the window around it.
    since: i64,
    until: i64,
    /// Tokens of tenant demo (6) and other (4), in the order tokenized.
    demo: Vec<String>,
    other: Vec<String>,
    /// The jobs released: A (demo, filer), B (demo, payroll), C (other,
    /// filer), D (other, payroll).
    jobs: [String; 4],
}

/// A dev vault where `payroll` may also file: the second filer.
async fn spawn(backend: &crate::helpers::Backend) -> TestApp {
    spawn_app_with(backend, |settings| {
        settings.principals.insert(
            "payroll".into(),
            PrincipalSettings { roles: vec![Role::Payroll, Role::Filer], tenants: vec!["*".into()] },
        );
    })
    .await
}

async fn tokenize(app: &TestApp, tenant: &str, count: usize) -> Vec<String> {
    let payroll = app.client("payroll").await;
    let mut tokens = Vec::new();
    for number in valid_numbers(count) {
        tokens.push(payroll.tokenize(tenant, &number, TokenFormat::Opaque).await.unwrap());
    }
    tokens
}

async fn job(app: &TestApp, tenant: &str, purpose: &str, tokens: &[String], max: u32) -> String {
    let job = NewFilingJob {
        tenant: tenant.into(),
        purpose: purpose.into(),
        tokens: tokens.to_vec(),
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        max_releases_per_token: max,
        note: String::new(),
    };
    let created = app.client("requester").await.create_filing_job(job).await.unwrap();
    app.client("approver").await.approve_filing_job(&created.job_id).await.unwrap();
    created.job_id
}

async fn scenario(app: &TestApp) -> Scenario {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let since = now_ms();
    let admin = app.client("admin").await;
    admin.create_tenant("other", "Other").await.unwrap();
    let demo = tokenize(app, "demo", 6).await;
    let other = tokenize(app, "other", 4).await;
    let (filer, payroll) = (app.client("filer").await, app.client("payroll").await);

    // A: d1-d4, twice each at most; all once, then d1 and d2 again.
    let a = job(app, "demo", "withholding-slip", &demo[..4], 2).await;
    assert_eq!(filer.detokenize(&a, vec![]).await.unwrap().len(), 4);
    assert_eq!(filer.detokenize(&a, demo[..2].to_vec()).await.unwrap().len(), 2);
    // B: d3-d6, released by the second filer (d3 and d4 again, other job).
    let b = job(app, "demo", "salary-payment-report", &demo[2..], 1).await;
    assert_eq!(payroll.detokenize(&b, vec![]).await.unwrap().len(), 4);
    // C: o1-o4, of which the filer releases o1 and o2.
    let c = job(app, "other", "withholding-slip", &other, 1).await;
    assert_eq!(filer.detokenize(&c, other[..2].to_vec()).await.unwrap().len(), 2);
    // D: o2-o4 by the second filer (o2 a second time, another job).
    let d = job(app, "other", "withholding-slip", &other[1..], 1).await;
    assert_eq!(payroll.detokenize(&d, vec![]).await.unwrap().len(), 3);

    // Refused: a job not approved, a requester releasing, d1 a third time,
    // o1 a second time within C, a job id that does not parse.
    let unapproved = NewFilingJob {
        tenant: "demo".into(),
        purpose: "withholding-slip".into(),
        tokens: demo[..1].to_vec(),
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        max_releases_per_token: 1,
        note: String::new(),
    };
    let unapproved = app.client("requester").await.create_filing_job(unapproved).await.unwrap().job_id;
    refusal(filer.detokenize(&unapproved, vec![]).await);
    refusal(app.client("requester").await.detokenize(&a, vec![]).await);
    refusal(filer.detokenize(&a, demo[..1].to_vec()).await);
    refusal(payroll.detokenize(&c, other[..1].to_vec()).await);
    refusal(filer.detokenize("not a job", vec![]).await);

    // Changes: a tenant created (above) and a key rotated; an alert.
    admin.rotate_tenant_key("demo").await.unwrap();
    let alert = AuditDraft {
        reason: HOSTILE_REASON.into(),
        ..AuditDraft::by(
            &Principal::parse("filer").unwrap(),
            Operation::RaiseAlert,
            Some(&TenantId::parse("demo").unwrap()),
        )
    };
    app.core().record(alert).await.unwrap();
    let until = now_ms() + 1;
    Scenario { since, until, demo, other, jobs: [a, b, c, d] }
}

async fn report(app: &TestApp, since: i64, until: i64, extra: &[&str]) -> String {
    let (since, until) = (japan_time(since), japan_time(until));
    let mut args = vec!["audit", "report", "--since", &since, "--until", &until];
    args.extend_from_slice(extra);
    app.cli(&args).await.unwrap()
}

async fn json(app: &TestApp, since: i64, until: i64, extra: &[&str]) -> Value {
    let text = report(app, since, until, &[&["--format", "json"], extra].concat()).await;
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// Rows of a breakdown as (the named columns joined by `/`, persons, numbers, entries).
fn rows(value: &Value, columns: &[&str]) -> Vec<(String, u64, u64, u64)> {
    let mut rows: Vec<_> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let key: Vec<&str> = columns.iter().map(|c| row[*c].as_str().unwrap()).collect();
            let n = |field: &str| row[field].as_u64().unwrap_or(0);
            (key.join("/"), n("persons"), n("numbers"), n("entries"))
        })
        .collect();
    rows.sort();
    rows
}

fn owned(rows: &[(&str, u64, u64, u64)]) -> Vec<(String, u64, u64, u64)> {
    let mut rows: Vec<_> = rows.iter().map(|(k, p, n, e)| (k.to_string(), *p, *n, *e)).collect();
    rows.sort();
    rows
}

/// The affected tokens, as (tenant, token, releases), in the report's order.
fn affected(value: &Value) -> Vec<(String, String, u64)> {
    value["affected_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (t["tenant"].as_str().unwrap().into(), t["token"].as_str().unwrap().into(), t["releases"].as_u64().unwrap())
        })
        .collect()
}

on_both_backends! {
    async fn the_report_counts_a_scripted_incident_exactly(backend) {
        let app = spawn(&backend).await;
        let s = scenario(&app).await;
        let [a, b, c, d] = &s.jobs;
        let report = json(&app, s.since, s.until, &[]).await;

        assert_eq!(report["version"], 1);
        assert_eq!(report["nothing_released"], false);
        assert_eq!(report["tenant"], Value::Null);
        let releases = &report["releases"];
        assert_eq!((releases["persons"].as_u64(), releases["numbers"].as_u64(), releases["entries"].as_u64()),
            (Some(10), Some(15), Some(5)));
        assert_eq!(rows(&releases["by_tenant"], &["tenant"]), owned(&[("demo", 6, 10, 3), ("other", 4, 5, 2)]));
        assert_eq!(
            rows(&releases["by_principal"], &["tenant", "principal"]),
            owned(&[("demo/filer", 4, 6, 2), ("demo/payroll", 4, 4, 1), ("other/filer", 2, 2, 1), ("other/payroll", 3, 3, 1)])
        );
        assert_eq!(
            rows(&releases["by_purpose"], &["tenant", "purpose"]),
            owned(&[("demo/salary-payment-report", 4, 4, 1), ("demo/withholding-slip", 4, 6, 2), ("other/withholding-slip", 4, 5, 2)])
        );
        let job_key = |tenant: &str, job: &str, purpose: &str, principal: &str| format!("{tenant}/{job}/{purpose}/{principal}");
        assert_eq!(
            rows(&releases["by_job"], &["tenant", "job_id", "purpose", "principal"]),
            {
                let mut expected = vec![
                    (job_key("demo", a, "withholding-slip", "filer"), 4, 6, 2),
                    (job_key("demo", b, "salary-payment-report", "payroll"), 4, 4, 1),
                    (job_key("other", c, "withholding-slip", "filer"), 2, 2, 1),
                    (job_key("other", d, "withholding-slip", "payroll"), 3, 3, 1),
                ];
                expected.sort();
                expected
            }
        );

        // Every affected token once, sorted by tenant then token, with how often it left.
        let mut tokens: Vec<(String, String, u64)> = s.demo.iter().enumerate()
            .map(|(i, t)| ("demo".to_owned(), t.clone(), [2, 2, 2, 2, 1, 1][i]))
            .chain(s.other.iter().enumerate().map(|(i, t)| ("other".to_owned(), t.clone(), [1, 2, 1, 1][i])))
            .collect();
        tokens.sort();
        assert_eq!(affected(&report), tokens);
        assert_eq!(report["affected_tokens_written"], 10);

        // Refused: by tenant, operation, principal and outcome; the malformed job id names no tenant.
        let refused = &report["refused"];
        assert_eq!(refused["entries"], 5);
        let groups: Vec<(String, u64)> = {
            let mut groups: Vec<_> = refused["groups"].as_array().unwrap().iter().map(|g| {
                let key = ["tenant", "operation", "principal", "outcome"].map(|c| g[c].as_str().unwrap().to_owned()).join("/");
                (key, g["entries"].as_u64().unwrap())
            }).collect();
            groups.sort();
            groups
        };
        assert_eq!(groups, vec![
            ("/filing.detokenize/filer/invalid".to_owned(), 1),
            ("demo/filing.detokenize/filer/denied".to_owned(), 2),
            ("demo/filing.detokenize/requester/denied".to_owned(), 1),
            ("other/filing.detokenize/payroll/denied".to_owned(), 1),
        ]);

        // Changes: the tenant created and the key rotated, by whom.
        let changes = &report["changes"];
        assert_eq!(changes["entries"], 2);
        let by_operation: Vec<String> = changes["by_operation"].as_array().unwrap().iter()
            .map(|g| format!("{} {} {} {}", g["operation"].as_str().unwrap(), g["principal"].as_str().unwrap(),
                g["tenant"].as_str().unwrap(), g["entries"]))
            .collect();
        assert_eq!(by_operation, ["keys.rotate admin demo 1", "admin.create-tenant admin other 1"]);
        let listed: Vec<&str> = changes["listed"].as_array().unwrap().iter().map(|e| e["operation"].as_str().unwrap()).collect();
        assert_eq!(listed, ["admin.create-tenant", "keys.rotate"]);

        // The alert, listed with its reason as written.
        assert_eq!(report["alerts"]["entries"], 1);
        assert_eq!(report["alerts"]["listed"][0]["reason"], HOSTILE_REASON);

        // The evidence: verified, releases signed, keys from the database said so.
        let evidence = &report["evidence"];
        assert_eq!(evidence["verified"], true);
        assert_eq!(evidence["broken"], Value::Null);
        assert!(evidence["checkpoints_verified"].as_u64().unwrap() >= 5, "{evidence}");
        assert_eq!(evidence["anchors_from_database"], true);
        assert!(evidence["anchored_by"].as_str().unwrap().starts_with("UNPINNED"), "{evidence}");
        assert_eq!(evidence["entries"], report["up_to_seq"]);

        // The Markdown says the same along the leak report's items.
        let markdown = report_text(&app, &s, &[]).await;
        for expected in [
            "## 3. How many people (本人の数)",
            "10 distinct persons whose numbers were released",
            "| `demo` | 6 | 10 | 3 |",
            "| `other` | 4 | 5 | 2 |",
            "## 4. Cause (原因)",
            "*to be completed by the office*",
            "Numbers of 10 persons left the vault",
            "Caution: the trusted signing keys were read from the database itself",
            &format!("| 1 | `demo` | `{}` | {} |", tokens[0].1, tokens[0].2),
        ] {
            assert!(markdown.contains(expected), "{expected}\n{markdown}");
        }
        assert_eq!(markdown.matches("| `other` | `mnt_").count(), 4, "{markdown}");
    }

    async fn a_window_without_releases_says_no_number_left_the_vault_with_the_evidence(backend) {
        let app = spawn(&backend).await;
        let s = scenario(&app).await;
        // Before the scenario: the vault's own start, no release; the
        // releases' checkpoints were signed after the window closed. With
        // the keys read from the database (nothing pinned), no claim.
        let (since, until) = (s.since - 3_600_000, s.since);
        let text = report(&app, since, until, &[]).await;
        let doubtful = format!(
            "The audit log records no release between {} and {}, but this is not conclusive evidence that no number \
             left the vault: the keys it was verified with were read from the database itself (UNPINNED)",
            japan_time(since),
            japan_time(until)
        );
        assert!(text.contains(&doubtful), "{text}");
        assert!(!text.contains("No number left the vault"), "{text}");
        assert!(text.contains("That signature was made after the window closed, so it covers every entry"), "{text}");
        assert!(text.contains("Evidence: the log verifies with public keys only from entry #1 to #"), "{text}");
        assert!(!text.contains("| `mnt_"), "{text}");

        // Pinned, the same window: no caution about the keys, and the JSON agrees.
        let key = app.core().signing_key_public().to_string();
        let value = json(&app, since, until, &["--public-key", &key]).await;
        assert_eq!(value["nothing_released"], true);
        assert_eq!(value["releases"]["persons"], 0);
        assert_eq!(value["affected_tokens"].as_array().unwrap().len(), 0);
        assert_eq!(value["evidence"]["anchors_from_database"], false);
        assert_eq!(value["evidence"]["window_signed"], true);
        assert_eq!(value["evidence"]["conclusive"], true);
        assert_eq!(value["evidence"]["doubts"].as_array().unwrap().len(), 0);
        let statement = value["statement"][0].as_str().unwrap();
        let proven = format!(
            "No number left the vault between {} and {}, according to its audit log",
            japan_time(since),
            japan_time(until)
        );
        assert!(statement.starts_with(&proven), "{value}");

        // After the scenario, nothing was released either, but no signature
        // made after that window covers it: the report says so.
        let later = report(&app, s.until, s.until + 3_600_000, &["--public-key", &key]).await;
        assert!(
            later.contains("not conclusive evidence that no number left the vault: no signature made after the window"),
            "{later}"
        );
        assert!(!later.contains("No number left the vault"), "{later}");
        assert!(later.contains("Caution: no signature made after the window closed covers it"), "{later}");

        // A checkpoint saved outside the server: the log is shown to extend
        // it, and its signer is the anchor.
        let saved = app.path().join("checkpoint.json");
        let saved_text = saved.display().to_string();
        app.cli(&["audit", "checkpoint", "--out", &saved_text, "--as", "auditor"]).await.unwrap();
        let value = json(&app, since, until, &["--checkpoint", &saved_text]).await;
        let evidence = &value["evidence"];
        assert_eq!(evidence["verified"], true);
        assert!(evidence["external_checkpoint"]["seq"].as_u64().unwrap() > 0, "{evidence}");
        assert!(evidence["anchored_by"].as_str().unwrap().starts_with("the saved checkpoint's signer"), "{evidence}");
        assert_eq!(evidence["anchors_from_database"], false);
        let statement = value["statement"].to_string();
        assert!(statement.contains("The log extends the saved checkpoint at entry #"), "{statement}");
    }

    async fn back_dating_the_releases_out_of_the_window_is_caught(backend) {
        let app = spawn(&backend).await;
        let s = scenario(&app).await;
        // Whoever holds the database moves every entry up to the last
        // release to long before the window: the first entry dated near the
        // window now comes after the releases, and so does the checkpoint
        // before it. The report must reach back to a checkpoint signed
        // before the window, not trust the entries' dates.
        let back = s.since - 10 * 3_600_000;
        app.database()
            .await
            .exec(&format!(
                "UPDATE audit_entries SET time = {back} WHERE seq <= \
                 (SELECT MAX(seq) FROM audit_entries WHERE operation = 'filing.detokenize' AND outcome = 'ok')"
            ))
            .await;
        // The report is written, says so, and the command fails.
        let key = app.core().signing_key_public().to_string();
        let (since, until) = (japan_time(s.since), japan_time(s.until));
        let written = |format: &str| {
            let path = app.path().join(format!("report.{format}"));
            (path.clone(), path.display().to_string())
        };
        let (json_path, json_out) = written("json");
        let (text_path, text_out) = written("md");
        for (format, out) in [("json", &json_out), ("markdown", &text_out)] {
            let args = ["audit", "report", "--since", &since, "--until", &until, "--public-key", &key];
            let error = app.cli(&[&args[..], &["--format", format, "--out", out]].concat()).await.unwrap_err();
            assert!(error.to_string().contains("the audit log does not verify"), "{error}");
        }
        let value: Value = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
        assert_eq!(value["evidence"]["verified"], false, "{value}");
        // The moved releases are out of the window as the log now stands;
        // the report says that is no evidence.
        assert_eq!(value["nothing_released"], true, "{value}");
        let text = std::fs::read_to_string(text_path).unwrap();
        assert!(text.contains("WARNING: the audit log does NOT verify"), "{text}");
        assert!(text.contains("but since it does not verify this is not evidence"), "{text}");
        assert!(!text.contains("No number left the vault between"), "{text}");
    }

    async fn a_tenant_report_keeps_to_its_tenant(backend) {
        let app = spawn(&backend).await;
        let s = scenario(&app).await;
        let value = json(&app, s.since, s.until, &["--tenant", "other"]).await;
        assert_eq!(value["tenant"], "other");
        assert_eq!(rows(&value["releases"]["by_tenant"], &["tenant"]), owned(&[("other", 4, 5, 2)]));
        assert_eq!(value["releases"]["persons"], 4);
        let mut expected: Vec<_> =
            s.other.iter().enumerate().map(|(i, t)| ("other".to_owned(), t.clone(), [1, 2, 1, 1][i])).collect();
        expected.sort();
        assert_eq!(affected(&value), expected);
        let refused = &value["refused"];
        assert_eq!(refused["entries"], 1);
        assert_eq!(refused["groups"][0]["principal"], "payroll");
        // The malformed call named no tenant: counted, not shown.
        assert_eq!(refused["without_tenant"], 1);
        assert_eq!(value["changes"]["entries"], 1);
        assert_eq!(value["changes"]["listed"][0]["operation"], "admin.create-tenant");
        assert_eq!(value["alerts"]["entries"], 0);
        let text = value.to_string();
        assert!(!s.demo.iter().any(|t| text.contains(t.as_str())), "a demo token in other's report");
        assert!(!text.contains("\"demo\""), "{text}");

        let refused = app.cli(&["audit", "report", "--since", "2026-11-01", "--until", "2026-11-02", "--tenant", "Not A Tenant"]).await;
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("--tenant is not a tenant id") && !message.contains("Not A"), "{message}");
    }

    async fn html_and_markdown_escape_what_the_log_holds_and_a_file_is_written_once(backend) {
        let app = spawn(&backend).await;
        let s = scenario(&app).await;
        let html = report(&app, s.since, s.until, &["--format", "html"]).await;
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; | *not* a [link](x)"), "{html}");
        assert!(html.contains("default-src 'none'"), "no external resource may load");
        for token in s.demo.iter().chain(&s.other) {
            assert!(html.contains(&format!("<code>{token}</code>")), "{token}");
        }

        let markdown = report_text(&app, &s, &[]).await;
        assert!(markdown.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; \\| \\*not\\* a \\[link\\](x)"), "{markdown}");

        let path = app.path().join("incident.json");
        let path_text = path.display().to_string();
        let (since, until) = (japan_time(s.since), japan_time(s.until));
        let args = ["audit", "report", "--since", &since, "--until", &until, "--format", "json", "--out", &path_text];
        let said = app.cli(&args).await.unwrap();
        assert!(said.contains("10 person(s) released, 10 token(s) listed; log verified"), "{said}");
        let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["releases"]["persons"], 10);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = app.cli(&args).await.unwrap_err().to_string();
        assert!(again.contains("must not exist yet"), "{again}");
        assert_eq!(serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap()).unwrap(), written);
    }
}

async fn report_text(app: &TestApp, s: &Scenario, extra: &[&str]) -> String {
    report(app, s.since, s.until, extra).await
}
