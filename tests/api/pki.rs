//! `mnvault pki init`, `issue` and `list` as an office without a PKI runs
//! them: a CA whose key is encrypted under a passphrase given by file, or
//! made on the vault's PKCS#11 token (SoftHSM2, a token per test),
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
use crate::helpers::{new_data_dir, spawn_dev_vault_with, Backend};
use crate::root_keys::{softhsm_slot, softhsm_token, use_softhsm, write_private, SOFTHSM2_MODULE};

/// Writes `passphrase` to a new file of mode 0600, as an operator would.
fn passphrase_file(path: &Path, passphrase: &str) {
    let mut options = std::fs::OpenOptions::new();
    let file = options.write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut &file, format!("{passphrase}\n").as_bytes()).unwrap();
}

/// `pki issue` from the CA in `ca` of demo's payroll service `office-payroll`, into `out`.
fn issue_office_payroll<'a>(ca: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = vec!["pki", "issue", "--ca-dir", ca, "--tenant", "demo", "--role", "payroll"];
    args.extend(["--name", "office-payroll", "--out", out]);
    args
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
    let issue = issue_office_payroll(ca, out.to_str().unwrap());
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

    assert_a_vault_trusting_the_ca_accepts(&ca_dir, &out).await;
}

/// A vault whose client CA is the CA in `ca_dir` accepts `office-payroll`'s
/// certificate in `out`.
async fn assert_a_vault_trusting_the_ca_accepts(ca_dir: &Path, out: &Path) {
    let client_ca = ca_dir.join("ca.pem");
    let app = spawn_dev_vault_with(&Backend::Sqlite, |settings| settings.tls.client_ca = client_ca).await;
    let server_ca = app.path().join(DEV_PKI_DIR).join("ca.pem");
    let identity =
        ClientIdentity::from_files(&out.join("office-payroll.crt"), &out.join("office-payroll.key"), &server_ca)
            .unwrap();
    let client = VaultClient::connect(&app.endpoint, &identity).await.unwrap();
    client.list_purposes().await.expect("a certificate of the CA");
}

/// A vault's data directory whose root key is on a fresh SoftHSM2 token,
/// and a CA `pki init --hsm` made with it.
struct CaOnToken {
    /// The token's label and user PIN.
    token: (String, String),
    data_dir: std::sync::Arc<tempfile::TempDir>,
    tmp: tempfile::TempDir,
    ca_dir: std::path::PathBuf,
    /// What `init` printed.
    made: String,
}

impl CaOnToken {
    /// `None` (skipped) where SoftHSM2 is missing, as `softhsm_token` says.
    async fn new() -> Option<Self> {
        let token = softhsm_token()?;
        let (_, data_dir) = new_data_dir(&Backend::Sqlite, |settings| use_softhsm(settings, &token)).await;
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("office-ca");
        let made = mnvault(&CaOnToken::init_args(data_dir.path(), &ca_dir)).await.unwrap();
        Some(Self { token, data_dir, tmp, ca_dir, made })
    }

    /// `pki init --hsm` into `ca_dir` with the vault configuration of `data_dir`.
    fn init_args<'a>(data_dir: &'a Path, ca_dir: &'a Path) -> Vec<&'a str> {
        let mut args = vec!["--data-dir", data_dir.to_str().unwrap(), "pki", "init", "--hsm"];
        args.extend(["--ca-dir", ca_dir.to_str().unwrap(), "--trust-domain", DEV_TRUST_DOMAIN]);
        args
    }

    fn data(&self) -> &str {
        self.data_dir.path().to_str().unwrap()
    }

    fn ca(&self) -> &str {
        self.ca_dir.to_str().unwrap()
    }
}

/// The certificate in the PEM file `path`, as DER.
fn certificate_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
}

/// The attributes of the private key labelled `key_label` on the SoftHSM2
/// token `token`, and its public key's point, read through PKCS#11 as any
/// other program on the host could.
fn key_on_token((token_label, pin): &(String, String), key_label: &str) -> (Vec<cryptoki::object::Attribute>, Vec<u8>) {
    use cryptoki::context::Pkcs11;
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;

    // The library is initialised already, by `softhsm_token`.
    let context = Pkcs11::new(SOFTHSM2_MODULE).unwrap();
    let session = context.open_ro_session(softhsm_slot(&context, token_label)).unwrap();
    match session.login(UserType::User, Some(&SecretString::from(pin.clone()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(error) => panic!("log in: {error}"),
    }
    let find = |class| {
        let template = [Attribute::Class(class), Attribute::Label(key_label.as_bytes().to_vec())];
        let found = session.find_objects(&template).unwrap();
        assert_eq!(found.len(), 1, "one {class:?} labelled {key_label}");
        found[0]
    };
    let private = find(ObjectClass::PRIVATE_KEY);
    let wanted = [
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::AlwaysSensitive,
        AttributeType::Extractable,
        AttributeType::NeverExtractable,
        AttributeType::Sign,
        AttributeType::Decrypt,
        AttributeType::Unwrap,
        AttributeType::Derive,
    ];
    let attributes = session.get_attributes(private, &wanted).unwrap();
    // Its value is not to be had.
    let value = session.get_attributes(private, &[AttributeType::Value]);
    assert!(
        !matches!(&value, Ok(found) if found.iter().any(|a| matches!(a, Attribute::Value(_)))),
        "the device handed out the CA's private key: {value:?}"
    );
    let point = match &session.get_attributes(find(ObjectClass::PUBLIC_KEY), &[AttributeType::EcPoint]).unwrap()[..] {
        [Attribute::EcPoint(point)] => point.clone(),
        other => panic!("no EC point: {other:?}"),
    };
    (attributes, point)
}

#[tokio::test]
async fn a_ca_made_on_the_vaults_token_keeps_its_key_there_and_signs_certificates_a_vault_accepts() {
    use cryptoki::object::Attribute;

    // The vault's own data directory, its root key on the token; the CA's key beside it.
    let Some(setup) = CaOnToken::new().await else { return };
    let CaOnToken { token, data_dir, tmp, ca_dir, made } = &setup;
    let (data, ca) = (setup.data(), setup.ca());
    assert!(made.starts_with(&format!("spiffe://{DEV_TRUST_DOMAIN}\tserial ")), "{made}");
    let ca_serial = made.split('\t').nth(1).unwrap().strip_prefix("serial ").unwrap();

    // No private key in the directory: the certificate, where the key is, the index.
    let mut names: Vec<String> =
        std::fs::read_dir(ca_dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["ca-key.toml", "ca.pem", "issued.tsv"]);
    for name in &names {
        let text = std::fs::read_to_string(ca_dir.join(name)).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{name}: {text}");
    }
    let reference = std::fs::read_to_string(ca_dir.join("ca-key.toml")).unwrap();
    let key_label = format!("mnvault-ca-{ca_serial}");
    for line in [
        "provider = \"pkcs11\"".to_owned(),
        format!("module = \"{SOFTHSM2_MODULE}\""),
        format!("token_label = \"{}\"", token.0),
        format!("key_label = \"{key_label}\""),
    ] {
        assert!(reference.lines().any(|l| l == line), "{line} in {reference}");
    }
    assert!(!reference.contains(&token.1), "the PIN is in ca-key.toml: {reference}");

    // On the token: sensitive, never extractable, for signing only; ca.pem holds its public key.
    let (attributes, point) = key_on_token(token, &key_label);
    assert_eq!(attributes.len(), 10, "{attributes:?}");
    for attribute in &attributes {
        match attribute {
            Attribute::Token(yes)
            | Attribute::Private(yes)
            | Attribute::Sensitive(yes)
            | Attribute::AlwaysSensitive(yes)
            | Attribute::NeverExtractable(yes)
            | Attribute::Sign(yes) => assert!(yes, "{attribute:?}"),
            Attribute::Extractable(no) | Attribute::Decrypt(no) | Attribute::Unwrap(no) | Attribute::Derive(no) => {
                assert!(!no, "{attribute:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let ca_der = certificate_der(&ca_dir.join("ca.pem"));
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let ca_point = ca_cert.public_key().subject_public_key.data.to_vec();
    assert!(point.ends_with(&ca_point) && ca_point.len() == 65, "the token's key is not ca.pem's");
    assert!(ca_cert.is_ca());
    assert_eq!(hex::encode(ca_cert.raw_serial()), ca_serial);
    ca_cert.verify_signature(None).expect("ca.pem is signed by the key on the token");

    // `issue` signs on the token, logged in with the PIN of the vault's configuration.
    let out = tmp.path().join("office-payroll");
    let issue = [&["--data-dir", data][..], &issue_office_payroll(ca, out.to_str().unwrap())].concat();
    let issued = mnvault(&issue).await.unwrap();
    let spiffe_id = format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/demo/payroll/office-payroll");
    assert!(issued.starts_with(&format!("{spiffe_id}\tserial ")), "{issued}");
    let client_der = certificate_der(&out.join("office-payroll.crt"));
    let (_, client_cert) = x509_parser::parse_x509_certificate(&client_der).unwrap();
    client_cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA's key");
    assert_eq!(client_cert.issuer(), ca_cert.subject());
    // Checked against any other key, it does not verify.
    let other_ca = certificate_der(&data_dir.path().join(DEV_PKI_DIR).join("ca.pem"));
    let (_, other_ca) = x509_parser::parse_x509_certificate(&other_ca).unwrap();
    assert!(client_cert.verify_signature(Some(other_ca.public_key())).is_err());
    let listed = mnvault(&["pki", "list", "--ca-dir", ca]).await.unwrap();
    assert!(listed.lines().nth(1).is_some_and(|line| line.starts_with(&format!("{spiffe_id}\t"))), "{listed}");

    assert_a_vault_trusting_the_ca_accepts(ca_dir, &out).await;
}

#[tokio::test]
async fn a_ca_on_a_token_refuses_a_second_key_a_wrong_pin_and_a_vault_without_a_token() {
    let Some(setup) = CaOnToken::new().await else { return };
    let CaOnToken { token, data_dir, tmp, ca_dir, .. } = &setup;
    let (data, ca) = (setup.data(), setup.ca());
    let out = tmp.path().join("auditor");
    let issue = |out: &Path| {
        let out = out.to_str().unwrap().to_owned();
        let data = data.to_owned();
        let ca = ca.to_owned();
        async move {
            let args = [
                "--data-dir",
                &data,
                "pki",
                "issue",
                "--ca-dir",
                &ca,
                "--operator",
                "--role",
                "auditor",
                "--name",
                "kato",
                "--out",
                &out,
            ];
            mnvault(&args).await
        }
    };

    // A wrong PIN in the vault's configuration: named, never shown, nothing issued.
    let pin_file = data_dir.path().join("hsm.pin");
    write_private(&pin_file, "99999999\n");
    let error = issue(&out).await.unwrap_err();
    assert!(error.contains("refused the user PIN") && error.contains("root_key.pin_file"), "{error}");
    assert!(!error.contains("99999999"), "{error}");
    assert!(!out.exists(), "a refused issue writes nothing");
    let elsewhere = tmp.path().join("elsewhere-ca");
    let error = mnvault(&CaOnToken::init_args(data_dir.path(), &elsewhere)).await.unwrap_err();
    assert!(error.contains("refused the user PIN"), "{error}");
    assert!(!elsewhere.exists(), "a refused init writes nothing");
    write_private(&pin_file, &format!("{}\n", token.1));
    issue(&out).await.unwrap();

    // A passphrase is not its key's; nor does the library open it without the token.
    let with_passphrase = tmp.path().join("passphrase");
    passphrase_file(&with_passphrase, "a passphrase");
    let mut args = vec!["--data-dir", data, "pki", "issue", "--ca-dir", ca, "--operator", "--role", "auditor"];
    args.extend(["--name", "sato", "--out", out.to_str().unwrap(), "--passphrase-file"]);
    args.push(with_passphrase.to_str().unwrap());
    let error = mnvault(&args).await.unwrap_err();
    assert!(error.contains("drop --passphrase-file"), "{error}");
    let error = CertificateAuthority::open_with(ca_dir, None).unwrap_err().to_string();
    assert!(error.contains("is on a PKCS#11 token"), "{error}");

    // A vault whose root key is a file names no token: refused, nothing written.
    let (_, plain) = new_data_dir(&Backend::Sqlite, |_| {}).await;
    let other = tmp.path().join("other-ca");
    let args = ["--data-dir", plain.path().to_str().unwrap(), "pki", "init", "--ca-dir", other.to_str().unwrap()];
    let error = mnvault(&[&args[..], &["--trust-domain", DEV_TRUST_DOMAIN, "--hsm"]].concat()).await.unwrap_err();
    assert!(error.contains("provider = \"pkcs11\""), "{error}");
    assert!(!other.exists());
    let error =
        mnvault(&[&args[..], &["--trust-domain", DEV_TRUST_DOMAIN, "--hsm", "--passphrase-file", "x"]].concat())
            .await
            .unwrap_err();
    assert!(error.contains("cannot be used with"), "{error}");

    // Both key forms in one directory: which key signs is never a guess.
    let file_ca = tmp.path().join("file-ca");
    let made = ["pki", "init", "--ca-dir", file_ca.to_str().unwrap(), "--trust-domain", DEV_TRUST_DOMAIN];
    mnvault(&[&made[..], &["--passphrase-file", with_passphrase.to_str().unwrap()]].concat()).await.unwrap();
    std::fs::copy(file_ca.join("ca.key"), ca_dir.join("ca.key")).unwrap();
    let error = issue(&tmp.path().join("both")).await.unwrap_err();
    assert!(error.contains("holds both ca.key") && error.contains("ca-key.toml"), "{error}");
    let error = CertificateAuthority::open_with(ca_dir, Some(&SecretString::from("a passphrase".to_owned())));
    assert!(error.unwrap_err().to_string().contains("holds both"));
    // And neither.
    std::fs::remove_file(ca_dir.join("ca.key")).unwrap();
    std::fs::remove_file(ca_dir.join("ca-key.toml")).unwrap();
    let error = issue(&tmp.path().join("neither")).await.unwrap_err();
    assert!(error.contains("holds neither ca.key nor ca-key.toml"), "{error}");
}
