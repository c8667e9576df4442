//! `--config FILE` and `mnvault config check`: the file given is the one
//! read, problems name their key and file, secrets never show, and the
//! example configurations in `deploy/examples/` load through the same code.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use mnvault::cli::{self, Cli};
use mnvault::config::{Settings, CONFIG_FILE};
use mnvault::datadir;

use crate::helpers::spawn_app;

/// Runs `mnvault ARGS` in-process; standard output, or the error as one text.
pub(crate) async fn mnvault(args: &[&str]) -> Result<String, String> {
    let cli = Cli::try_parse_from(std::iter::once("mnvault").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match cli::run(cli, &mut out).await {
        Ok(()) => Ok(String::from_utf8(out).expect("UTF-8 output")),
        Err(error) => Err(format!("{error:#}")),
    }
}

/// The keys that have no default.
const REQUIRED: &str = r#"listen = "0.0.0.0:50051"
[root_key]
file = "root.key"
[identity]
trust_domain = "vault.example.jp"
[tls]
cert = "a"
key = "b"
client_ca = "c"
"#;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/examples")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_deploy_examples_pass_the_check_without_their_files() {
    let files = examples();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"single-box-sqlite.toml".to_owned()), "{names:?}");
    assert!(names.contains(&"replicas-postgres.toml".to_owned()), "{names:?}");
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    for file in &files {
        let path = file.to_str().unwrap();
        let out = mnvault(&["config", "check", "--no-files", "--config", path, "--data-dir", data])
            .await
            .unwrap_or_else(|error| panic!("{path}: {error}"));
        assert!(out.ends_with("no problems found\n"), "{path}: {out}");
        // What it prints is the configuration serve would run with: loaded
        // back, it is the same.
        let printed = data_dir.path().join("printed.toml");
        std::fs::write(&printed, &out).unwrap();
        let reloaded = Settings::load_from(data_dir.path(), Some(&printed)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let loaded = Settings::load_from(data_dir.path(), Some(file)).unwrap();
        assert_eq!(format!("{reloaded:?}"), format!("{loaded:?}"), "{path}");
        assert!(!loaded.dev && loaded.identity.trust_domain == "vault.example.jp", "{path}");
    }
}

#[tokio::test]
async fn problems_are_listed_with_their_keys_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.toml");
    let path = file.to_str().unwrap();
    let data = dir.path().to_str().unwrap();
    // Keys and types: every one named, with the file.
    std::fs::write(&file, format!("listen_port = 1\n{REQUIRED}[limits]\nmax_connections = \"many\"\n")).unwrap();
    let error = mnvault(&["config", "check", "--no-files", "--config", path, "--data-dir", data]).await.unwrap_err();
    assert!(error.contains(&format!("{path}: limits.max_connections: expected an integer")), "{error}");
    assert!(error.contains(&format!("{path}: listen_port: unknown key")), "{error}");
    assert!(error.starts_with("2 problem(s)"), "{error}");
    // serve refuses the same file, naming the same key, before it opens anything.
    let error = mnvault(&["serve", "--config", path, "--data-dir", data]).await.unwrap_err();
    assert!(error.contains(&format!("{path}: limits.max_connections")), "{error}");
}

#[tokio::test]
async fn a_production_directory_with_problems_gets_each_named() {
    let dir = tempfile::tempdir().unwrap();
    let settings = datadir::production_settings(&dir.path().join("vault"));
    datadir::initialise(&settings).await.unwrap();
    let data = settings.data_dir.to_str().unwrap();
    let file = settings.data_dir.join(CONFIG_FILE);
    // As `init` leaves it: the TLS files and the trust domain are the operator's to give.
    let error = mnvault(&["config", "check", "--data-dir", data]).await.unwrap_err();
    assert!(error.starts_with("2 problem(s)"), "{error}");
    assert!(error.contains(&format!("{}: tls: cannot read TLS file", file.display())), "{error}");
    assert!(error.contains(&format!("{}: identity.trust_domain: missing", file.display())), "{error}");
    // Without the files, and with a trust domain, the values alone are fine.
    let text =
        std::fs::read_to_string(&file).unwrap().replace("trust_domain = \"\"", "trust_domain = \"vault.example.jp\"");
    std::fs::write(&file, text).unwrap();
    let out = mnvault(&["config", "check", "--no-files", "--data-dir", data]).await.unwrap();
    assert!(out.contains("no problems found"), "{out}");
    // A limit out of range, a root key others can read, a tenant that is no tenant.
    let text = std::fs::read_to_string(&file).unwrap().replace("max_connections = 512", "max_connections = 0")
        + "\n[principals.sato]\nroles = [\"requester\"]\ntenants = [\"Acme Corp\"]\n";
    std::fs::write(&file, text).unwrap();
    let root_key = settings.data_dir.join(datadir::ROOT_KEY_FILE);
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = mnvault(&["config", "check", "--data-dir", data]).await.unwrap_err();
    for expected in [
        "limits.max_connections: must be greater than 0",
        "principals: grants roles by certificate Common Name, which a vault with identity.source = \"spiffe\"",
        "principals.sato.tenants[0]: the tenant identifier is not valid",
        "root_key.file: root key file",
        "tls: cannot read TLS file",
    ] {
        assert!(error.contains(&format!("{}: {expected}", file.display())), "{expected}: {error}");
    }
    assert!(error.starts_with("5 problem(s)"), "{error}");
    // Without the files, only the values' problems.
    let error = mnvault(&["config", "check", "--no-files", "--data-dir", data]).await.unwrap_err();
    assert!(error.starts_with("3 problem(s)") && !error.contains("root_key"), "{error}");
}

#[tokio::test]
async fn secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.toml");
    let (path, data) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
    let url = "postgres://vault:s3cret-pw@db.internal:5432/mnvault?sslmode=disable&password=other-pw";
    std::fs::write(&file, format!("{REQUIRED}[database]\nurl = \"{url}\"\n")).unwrap();
    let out = mnvault(&["config", "check", "--no-files", "--config", path, "--data-dir", data]).await.unwrap();
    assert!(!out.contains("s3cret-pw") && !out.contains("other-pw"), "{out}");
    assert!(
        out.contains("url = \"postgres://vault:REDACTED@db.internal:5432/mnvault?sslmode=disable&password=REDACTED\"")
    );
    // Nor in a problem that quotes the value.
    std::fs::write(&file, format!("database = \"{url}\"\n{REQUIRED}")).unwrap();
    let error = mnvault(&["config", "check", "--no-files", "--config", path, "--data-dir", data]).await.unwrap_err();
    assert!(error.contains(&format!("{path}: database: invalid type")), "{error}");
    assert!(!error.contains("s3cret-pw") && !error.contains("other-pw"), "{error}");
}

#[tokio::test]
async fn the_vaults_own_principal_names_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vault.toml");
    let (path, data) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
    let mut text = REQUIRED.replace("[identity]\n", "[identity]\nsource = \"common-name\"\n");
    for name in mnvault::identity::RESERVED_PRINCIPALS {
        text += &format!("[principals.{name}]\nroles = [\"key-admin\"]\ntenants = [\"*\"]\n");
    }
    text += "[principals.sato]\nroles = [\"requester\"]\ntenants = [\"*\"]\n";
    std::fs::write(&file, text).unwrap();
    let error = mnvault(&["config", "check", "--no-files", "--config", path, "--data-dir", data]).await.unwrap_err();
    for name in ["mnvault-init", "mnvault-restore", "mnvault-reload"] {
        let expected = format!("{path}: principals.{name}: is a name the vault keeps for its own audit entries");
        assert!(error.contains(&expected), "{name}: {error}");
    }
    let count = format!("{} problem(s)", mnvault::identity::RESERVED_PRINCIPALS.len());
    assert!(error.starts_with(&count) && !error.contains("principals.sato"), "{error}");
}

on_both_backends! {
    async fn a_vault_passes_its_own_check(backend) {
        let app = spawn_app(&backend).await;
        let out = app.cli(&["config", "check"]).await.unwrap();
        assert!(out.contains("\ndev = true\n"), "{out}");
        assert!(out.ends_with("no problems found\n"), "{out}");
    }

    async fn the_file_given_is_the_one_read_and_paths_stay_in_the_data_directory(backend) {
        let app = spawn_app(&backend).await;
        let elsewhere = tempfile::tempdir().unwrap();
        let copy = elsewhere.path().join("mnvault.toml");
        std::fs::copy(app.path().join(CONFIG_FILE), &copy).unwrap();
        // The copy names the root key and the SQLite file relatively: they are found in the data directory.
        let out = app.cli(&["audit", "verify", "--config", copy.to_str().unwrap()]).await.unwrap();
        assert!(out.contains("audit chain intact"), "{out}");
        // A broken copy is what is read, and named; the data directory's own file is not.
        let text = std::fs::read_to_string(&copy).unwrap().replace("max_connections = 512", "max_connections = 0");
        std::fs::write(&copy, text).unwrap();
        let error = app.cli(&["audit", "verify", "--config", copy.to_str().unwrap()]).await.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains(&format!("{}: limits.max_connections", copy.display())), "{message}");
        // A dev directory stays dev whatever file is given: no production start…
        std::fs::copy(app.path().join(CONFIG_FILE), &copy).unwrap();
        let error = app.cli(&["serve", "--config", copy.to_str().unwrap()]).await.unwrap_err();
        assert!(format!("{error:#}").contains("--dev"), "{error:#}");
        // …and a dev vault reads only its own configuration.
        let error = app.cli(&["serve", "--dev", "--config", copy.to_str().unwrap()]).await.unwrap_err();
        assert!(format!("{error:#}").contains("drop --config"), "{error:#}");
    }
}
