//! `mnvault pki init`, `issue` and `list` as an office without a PKI runs
//! them: a CA whose key is encrypted under a passphrase given by file,
//! certificates from it that a vault accepts, and the record of every
//! certificate it signed.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use mnvault::datadir::DEV_PKI_DIR;
use mnvault::dev_pki::DEV_TRUST_DOMAIN;
use mnvault::pki::CertificateAuthority;
use mnvault_client::{ClientIdentity, VaultClient};
use mnvault_core::identity::Identity;
use secrecy::SecretString;
use time::{Duration, OffsetDateTime};

use crate::config_check::mnvault;
use crate::helpers::{spawn_dev_vault_with, Backend};

/// Writes `passphrase` to a new file of mode 0600, as an operator would.
fn passphrase_file(path: &Path, passphrase: &str) {
    let mut options = std::fs::OpenOptions::new();
    let file = options.write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut &file, format!("{passphrase}\n").as_bytes()).unwrap();
}

#[tokio::test]
async fn an_office_ca_made_by_init_issues_certificates_a_vault_accepts_and_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("office-ca");
    let (right, wrong) = (tmp.path().join("passphrase"), tmp.path().join("wrong-passphrase"));
    passphrase_file(&right, "a long passphrase for the office CA");
    passphrase_file(&wrong, "not the passphrase");
    let ca = ca_dir.to_str().unwrap();
    let init = ["pki", "init", "--ca-dir", ca, "--trust-domain", DEV_TRUST_DOMAIN];

    // No passphrase, no CA: the key is never written in the clear.
    let error = mnvault(&init).await.unwrap_err();
    assert!(error.contains("--passphrase-file") && error.contains("MNVAULT_CA_PASSPHRASE"), "{error}");
    assert!(!ca_dir.exists());

    let made = mnvault(&[&init[..], &["--passphrase-file", right.to_str().unwrap()]].concat()).await.unwrap();
    assert!(made.starts_with(&format!("spiffe://{DEV_TRUST_DOMAIN}\tserial ")), "{made}");
    let key_pem = std::fs::read_to_string(ca_dir.join("ca.key")).unwrap();
    assert!(key_pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{key_pem}");
    assert!(rcgen::KeyPair::from_pem(&key_pem).is_err(), "the CA key parses as a plain key");
    // Never twice into the same directory.
    let again = mnvault(&[&init[..], &["--passphrase-file", right.to_str().unwrap()]].concat()).await.unwrap_err();
    assert!(again.contains("already exists"), "{again}");

    let out = tmp.path().join("office-payroll");
    let issue = [
        "pki",
        "issue",
        "--ca-dir",
        ca,
        "--tenant",
        "demo",
        "--role",
        "payroll",
        "--name",
        "office-payroll",
        "--out",
        out.to_str().unwrap(),
    ];
    let error = mnvault(&issue).await.unwrap_err();
    assert!(error.contains("is encrypted") && error.contains("--passphrase-file"), "{error}");
    let error = mnvault(&[&issue[..], &["--passphrase-file", wrong.to_str().unwrap()]].concat()).await.unwrap_err();
    assert!(error.contains("wrong passphrase"), "{error}");
    assert!(!out.exists(), "a refused issue writes nothing");
    let issued = mnvault(&[&issue[..], &["--passphrase-file", right.to_str().unwrap()]].concat()).await.unwrap();
    let spiffe_id = format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/payroll/office-payroll");
    assert!(issued.starts_with(&format!("{spiffe_id}\tserial ")), "{issued}");
    let serial = issued.split('\t').nth(1).unwrap().strip_prefix("serial ").unwrap();

    // One already expired, issued through the library with the same passphrase.
    let secret = SecretString::from("a long passphrase for the office CA".to_owned());
    let authority = CertificateAuthority::open_with(&ca_dir, Some(&secret)).unwrap();
    let old = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/payroll/former")).unwrap();
    let now = OffsetDateTime::now_utc();
    authority
        .issue_valid(&old, now - Duration::days(40), now - Duration::days(10), &tmp.path().join("former"))
        .unwrap();

    let listed = mnvault(&["pki", "list", "--ca-dir", ca]).await.unwrap();
    let lines: Vec<Vec<&str>> = listed.lines().skip(1).map(|line| line.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!((lines[0][0], lines[0][1], lines[0][4]), (spiffe_id.as_str(), serial, "valid"), "{listed}");
    assert_eq!((lines[1][0], lines[1][4]), (old.to_string().as_str(), "expired"), "{listed}");
    for line in &lines {
        OffsetDateTime::parse(line[2], &time::format_description::well_known::Rfc3339).expect("not-before");
        OffsetDateTime::parse(line[3], &time::format_description::well_known::Rfc3339).expect("not-after");
    }

    // A vault whose client CA is the office CA accepts the certificate.
    let client_ca = ca_dir.join("ca.pem");
    let app = spawn_dev_vault_with(&Backend::Sqlite, |settings| settings.tls.client_ca = client_ca).await;
    let server_ca = app.path().join(DEV_PKI_DIR).join("ca.pem");
    let identity =
        ClientIdentity::from_files(&out.join("office-payroll.crt"), &out.join("office-payroll.key"), &server_ca)
            .unwrap();
    let client = VaultClient::connect(&app.endpoint, &identity).await.unwrap();
    client.list_purposes().await.expect("a certificate of the office CA");
}
