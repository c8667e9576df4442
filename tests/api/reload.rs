//! Reloading the configuration while the vault serves: principals, limits
//! and TLS files take effect for what comes after; what needs a restart is
//! named and kept; a reload that fails validation changes nothing; a change
//! of principals is audited; a real SIGHUP does the same in a vault process.

use std::time::Duration;

use mnvault::config::Settings;
use mnvault::datadir::DEV_PKI_DIR;
use mnvault::reload::{ReloadError, RELOAD_PRINCIPAL};
use mnvault_client::{ClientIdentity, Code, ListAuditEntriesRequest, ServingStatus, TokenFormat, VaultClient};
use rustix::process::Signal;

use crate::crash::VaultProcess;
use crate::helpers::{filing_job, new_data_dir, refusal, spawn_app, tokenize_fresh, valid_number, Backend, TestApp};

/// A bound on waiting for a vault process to apply a reload, not a speed requirement.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// Changes the configuration file of `app`'s data directory.
pub(crate) fn edit_configuration(app: &TestApp, change: impl FnOnce(&mut Settings)) {
    let mut settings = Settings::load(app.path()).expect("the configuration");
    change(&mut settings);
    settings.save().expect("write the configuration");
}

on_both_backends! {
    /// Principals and live limits apply to the calls after the reload; a
    /// restart-only limit is named and kept; the principal change is audited.
    async fn a_reload_applies_principals_and_limits_and_audits_the_principal_change(backend) {
        let app = spawn_app(&backend).await;
        let tokens = tokenize_fresh(&app, 3).await;
        let payroll = app.client("payroll").await;
        edit_configuration(&app, |settings| {
            settings.principals.remove("payroll");
            settings.limits.max_job_tokens = 2;
            settings.limits.max_connections = 100;
            settings.server.shutdown_grace_ms = 1_234;
        });
        let report = app.reloader().reload().await.expect("the reload");
        assert_eq!(report.principals.removed, ["payroll"]);
        assert!(report.principals.added.is_empty() && report.principals.changed.is_empty());
        assert_eq!(report.limits, ["limits.max_job_tokens"]);
        assert_eq!(report.restart_needed, ["limits.max_connections"]);
        assert_eq!(report.server, ["server.shutdown_grace_ms"]);

        // An open connection of a removed principal is refused from now on.
        let (code, message) = refusal(payroll.tokenize("demo", &valid_number(), TokenFormat::Opaque).await);
        assert_eq!(code, Code::PermissionDenied, "{message}");
        let too_many = app.client("requester").await.create_filing_job(filing_job(&tokens)).await;
        let (code, message) = refusal(too_many);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("limits.max_job_tokens"), "{message}");

        let request = ListAuditEntriesRequest { operation: "admin.reload-principals".into(), ..Default::default() };
        let entries = app.client("auditor").await.list_audit_entries(request).await.unwrap().entries;
        assert_eq!(entries.len(), 1, "one entry for the one change");
        assert_eq!(entries[0].principal, RELOAD_PRINCIPAL);
        assert_eq!(entries[0].outcome, "ok");
        assert!(entries[0].reason.contains("removed payroll"), "{}", entries[0].reason);

        // The same configuration again changes nothing, and appends nothing.
        let again = app.reloader().reload().await.unwrap();
        assert!(again.principals.is_empty() && again.limits.is_empty() && again.server.is_empty());
        assert_eq!(again.restart_needed, ["limits.max_connections"], "the restart-only value is still the old one");
        let request = ListAuditEntriesRequest { operation: "admin.reload-principals".into(), ..Default::default() };
        assert_eq!(app.client("auditor").await.list_audit_entries(request).await.unwrap().entries.len(), 1);
    }

    /// A reload with a value out of range, or a TLS file that cannot be
    /// read, is refused naming the key, and nothing of it applies.
    async fn a_reload_that_fails_validation_changes_nothing(backend) {
        let app = spawn_app(&backend).await;
        edit_configuration(&app, |settings| {
            settings.principals.remove("payroll");
            settings.limits.max_job_tokens = 0;
        });
        let refused = app.reloader().reload().await.expect_err("a limit of 0");
        assert!(matches!(refused, ReloadError::Invalid(_)), "{refused:?}");
        assert!(refused.to_string().contains("limits.max_job_tokens"), "{refused}");

        edit_configuration(&app, |settings| {
            settings.principals.remove("payroll");
            settings.limits.max_job_tokens = 10;
            settings.tls.cert = "no-such-dir/server.crt".into();
        });
        let refused = app.reloader().reload().await.expect_err("a missing certificate");
        assert!(refused.to_string().contains("tls.cert"), "{refused}");

        // payroll kept its grant, and new connections still get the old certificate.
        app.client("payroll").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
    }

    /// SIGHUP to a vault process reloads it: a principal removed from the
    /// file is refused once the signal is handled; SIGTERM then stops it with
    /// exit status 0.
    async fn sighup_reloads_a_vault_process(backend) {
        let (_, data_dir) = new_data_dir(&backend, |_| {}).await;
        let mut vault = VaultProcess::start(&data_dir, &backend).await;
        let payroll = vault.app.client("payroll").await;
        payroll.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
        edit_configuration(&vault.app, |settings| {
            settings.principals.remove("payroll");
        });
        vault.send(Signal::HUP);
        let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
        loop {
            match payroll.tokenize("demo", &valid_number(), TokenFormat::Opaque).await {
                Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => panic!("payroll was still served {RELOAD_WAIT:?} after SIGHUP; the log:\n{}", vault.log()),
                Err(refused) => {
                    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
                    break;
                }
            }
        }
        // The new principals take effect before the reload is logged as done.
        while !vault.log().contains("configuration reloaded") {
            assert!(tokio::time::Instant::now() < deadline, "no reload logged; the log:\n{}", vault.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        vault.send(Signal::TERM);
        let status = vault.exited().await;
        assert!(status.success(), "the vault exited with {status}; its log:\n{}", vault.log());
    }
}

/// New connections get the TLS files as they are at the reload, even under
/// the same names; connections already open keep theirs. (No database in
/// play: SQLite only.)
#[tokio::test]
async fn a_reload_reads_the_tls_files_again() {
    let app = spawn_app(&Backend::Sqlite).await;
    let connected_before = app.client("auditor").await;
    // A new PKI: another CA, server certificate and client certificate.
    let fresh = app.path().join("pki-2");
    mnvault::dev_pki::create_dev_pki(&fresh, &["auditor"]).unwrap();
    edit_configuration(&app, |settings| {
        settings.tls.cert = fresh.join("server.crt");
        settings.tls.key = fresh.join("server.key");
        settings.tls.client_ca = fresh.join("ca.pem");
    });
    app.reloader().reload().await.expect("the reload");

    let fresh_identity = ClientIdentity::from_dev_pki(&fresh, "auditor").unwrap();
    let fresh_client = VaultClient::connect(&app.endpoint, &fresh_identity).await.expect("the new PKI connects");
    assert_eq!(fresh_client.health("").await.unwrap(), ServingStatus::Serving);
    let old_identity = ClientIdentity::from_dev_pki(&app.path().join(DEV_PKI_DIR), "auditor").unwrap();
    let old = async { VaultClient::connect(&app.endpoint, &old_identity).await?.health("").await };
    assert!(old.await.is_err(), "a new connection with the old PKI was accepted");
    assert_eq!(connected_before.health("").await.unwrap(), ServingStatus::Serving, "an open connection was cut");
}
