//! The TLS files over time: a client certificate on a revocation list of
//! `[tls] crl` is refused at the handshake while others of its CA are not;
//! a list, a certificate or a key replaced on disk of a running vault is
//! read without SIGHUP, and one that does not fit keeps the running
//! certificates.

use std::path::Path;
use std::time::Duration;

use mnvault::datadir::DEV_PKI_DIR;
use mnvault::dev_pki::DEV_TRUST_DOMAIN;
use mnvault::pki::{CertificateAuthority, Issued};
use mnvault_client::{ClientIdentity, ServingStatus, VaultClient};
use mnvault_core::identity::Identity;
use rcgen::{
    CertificateRevocationList, CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustix::process::Signal;
use time::OffsetDateTime;

use crate::crash::VaultProcess;
use crate::helpers::{assert_refused_at_handshake, new_data_dir, spawn_dev_vault, Backend, TestApp};
use crate::reload::edit_configuration;

/// A bound on waiting for a vault to see a changed file, not a speed requirement.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// The pause between two looks while waiting.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// Issues a payroll certificate for `name` from the dev vault's CA; the
/// client identity trusts the vault's server certificate.
fn issue(app: &TestApp, name: &str) -> (Issued, ClientIdentity) {
    let ca = CertificateAuthority::open(&app.path().join(DEV_PKI_DIR)).expect("the dev CA");
    let identity = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/payroll/{name}")).unwrap();
    let out = app.path().join("issued").join(name);
    let issued = ca.issue(&identity, time::Duration::days(1), &out).expect("issued");
    (issued, ClientIdentity::from_dev_pki(&out, name).expect("the issued files"))
}

/// Revocation list number `number` of the dev vault's CA, revoking the
/// certificates of `serials` (hex, as `issue` gives them).
fn revocation_list(app: &TestApp, number: u64, serials: &[&str]) -> CertificateRevocationList {
    let pki = app.path().join(DEV_PKI_DIR);
    let key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.pem")).unwrap(), key).unwrap();
    let now = OffsetDateTime::now_utc();
    let revoked = serials.iter().map(|serial| RevokedCertParams {
        serial_number: SerialNumber::from_slice(&hex::decode(serial).unwrap()),
        revocation_time: now - time::Duration::minutes(1),
        reason_code: Some(RevocationReason::KeyCompromise),
        invalidity_date: None,
    });
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked.collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&issuer).expect("a signed list")
}

/// Writes `contents` beside `path` and renames it over `path`, as renewal tools do.
fn replace_file(path: &Path, contents: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Whether a new connection as `identity` gets a call answered.
async fn served(endpoint: &str, identity: &ClientIdentity) -> bool {
    match VaultClient::connect(endpoint, identity).await {
        Ok(client) => client.health("").await.is_ok_and(|status| status == ServingStatus::Serving),
        Err(_) => false,
    }
}

/// Waits until a new connection as `identity` is served (`wanted`) or not,
/// at most [`WATCH_WAIT`]; `log` tells what the vault said, on failure.
async fn until_served(endpoint: &str, identity: &ClientIdentity, wanted: bool, what: &str, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + WATCH_WAIT;
    while served(endpoint, identity).await != wanted {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not seen within {WATCH_WAIT:?}; the log:\n{}", log());
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

/// A revoked client certificate is refused at the handshake; another of the
/// same CA still gets in; the CA's next list, renamed into place as DER,
/// is read without a reload. (No database in play: SQLite only.)
#[tokio::test]
async fn a_client_certificate_on_a_revocation_list_is_refused_and_others_of_its_ca_are_not() {
    let app = spawn_dev_vault(&Backend::Sqlite).await;
    let (revoked, revoked_identity) = issue(&app, "revoked");
    let (kept, kept_identity) = issue(&app, "kept");
    let crl = app.path().join("client-ca.crl");
    std::fs::write(&crl, revocation_list(&app, 1, &[&revoked.serial]).pem().unwrap()).unwrap();
    edit_configuration(&app, |settings| settings.tls.crl = vec!["client-ca.crl".into()]);
    app.reloader().reload().await.expect("the reload");

    let connected = VaultClient::connect(&app.endpoint, &revoked_identity).await;
    assert_refused_at_handshake("a revoked certificate", connected).await;
    let kept_client = VaultClient::connect(&app.endpoint, &kept_identity).await.unwrap();
    kept_client.list_purposes().await.expect("another certificate of the same CA");
    app.client("payroll").await.list_purposes().await.expect("the dev certificates, on no list");

    // The next list revokes `kept` too: new connections see it, no SIGHUP.
    replace_file(&crl, revocation_list(&app, 2, &[&revoked.serial, &kept.serial]).der());
    until_served(&app.endpoint, &kept_identity, false, "the renewed list", String::new).await;
    let connected = VaultClient::connect(&app.endpoint, &kept_identity).await;
    assert_refused_at_handshake("a certificate on the renewed list", connected).await;
    app.client("payroll").await.list_purposes().await.expect("still on no list");
}

/// `config check` and a reload name a revocation list that is missing or
/// is no list by its key; a good one passes.
#[tokio::test]
async fn a_missing_or_unparseable_revocation_list_is_named_by_its_key() {
    let app = spawn_dev_vault(&Backend::Sqlite).await;
    std::fs::write(app.path().join("good.crl"), revocation_list(&app, 1, &[]).pem().unwrap()).unwrap();
    std::fs::write(app.path().join("garbage.crl"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").unwrap();
    std::fs::write(app.path().join("not-pem.crl"), b"\x30\x03\x02\x01\x01").unwrap();

    edit_configuration(&app, |settings| settings.tls.crl = vec!["good.crl".into(), "missing.crl".into()]);
    let error = format!("{:#}", app.cli(&["config", "check"]).await.unwrap_err());
    let missing = app.path().join("missing.crl");
    let expected = format!("tls.crl[1]: the certificate revocation list {} cannot be read", missing.display());
    assert!(error.contains(&expected), "{error}");
    let refused = app.reloader().reload().await.expect_err("a missing list");
    assert!(refused.to_string().contains("tls.crl[1]"), "{refused}");

    for file in ["garbage.crl", "not-pem.crl"] {
        edit_configuration(&app, |settings| settings.tls.crl = vec![file.into()]);
        let error = format!("{:#}", app.cli(&["config", "check"]).await.unwrap_err());
        assert!(error.contains("tls.crl[0]: the certificate revocation list"), "{file}: {error}");
        assert!(error.contains("is not a certificate revocation list"), "{file}: {error}");
        let refused = app.reloader().reload().await.expect_err("no list");
        assert!(refused.to_string().contains("tls.crl[0]"), "{file}: {refused}");
    }

    edit_configuration(&app, |settings| settings.tls.crl = vec!["good.crl".into()]);
    let out = app.cli(&["config", "check"]).await.unwrap();
    assert!(out.ends_with("no problems found\n") && out.contains("crl = ["), "{out}");
    app.reloader().reload().await.expect("a good list");
}

/// A vault process, sent no signal, serves the server certificate renewed on
/// disk: a certificate without its key is refused and the running one kept;
/// once the key follows, a client that trusts only the new CA gets in.
#[tokio::test]
async fn a_server_certificate_renewed_on_disk_is_served_without_sighup() {
    let (_, data_dir) = new_data_dir(&Backend::Sqlite, |_| {}).await;
    let pki = data_dir.path().join(DEV_PKI_DIR);
    let renewed = data_dir.path().join("renewed");
    mnvault::dev_pki::create_dev_pki(&renewed, &[]).unwrap();
    let mut vault = VaultProcess::start(&data_dir, &Backend::Sqlite).await;
    let endpoint = vault.app.endpoint.clone();
    // The same client certificate, trusting the old server CA or only the new one.
    let old_trust = ClientIdentity::from_dev_pki(&pki, "auditor").unwrap();
    let new_trust =
        ClientIdentity::from_files(&pki.join("auditor.crt"), &pki.join("auditor.key"), &renewed.join("ca.pem"))
            .unwrap();
    assert!(served(&endpoint, &old_trust).await);
    assert!(!served(&endpoint, &new_trust).await, "the new CA signed nothing the vault serves yet");

    // The certificate alone: its key is not the running key, so it is refused.
    replace_file(&pki.join("server.crt"), &std::fs::read(renewed.join("server.crt")).unwrap());
    let deadline = tokio::time::Instant::now() + WATCH_WAIT;
    while !vault.log().contains("the changed TLS files were refused") {
        assert!(tokio::time::Instant::now() < deadline, "no refusal logged; the log:\n{}", vault.log());
        tokio::time::sleep(LOOK_AGAIN).await;
    }
    assert!(vault.log().contains("do not fit"), "the refusal says why; the log:\n{}", vault.log());
    assert!(served(&endpoint, &old_trust).await, "the running certificate was dropped");
    assert!(!served(&endpoint, &new_trust).await);

    // Then its key: the renewed certificate is served to new connections.
    replace_file(&pki.join("server.key"), &std::fs::read(renewed.join("server.key")).unwrap());
    until_served(&endpoint, &new_trust, true, "the renewed certificate", || vault.log()).await;
    assert!(!served(&endpoint, &old_trust).await, "a new connection got the old certificate");

    vault.send(Signal::TERM);
    let status = vault.exited().await;
    assert!(status.success(), "the vault exited with {status}; its log:\n{}", vault.log());
}
