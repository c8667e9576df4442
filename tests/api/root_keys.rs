//! Root key providers (key file, passphrase-sealed file, SoftHSM2 over
//! PKCS#11) and root key rotation, as the README tells an operator.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use mnvault::config::{RootKeyProviderKind, RootKeySettings, Settings};
use mnvault::startup::Application;
use mnvault_client::{Code, ServingStatus, TokenFormat};
use mnvault_keys::{KeyError, KeyMaterial, RootKeyProvider, WrapContext, WrappedKey};
use secrecy::ExposeSecret as _;

use crate::helpers::{
    approved_job, new_data_dir, refusal, spawn_app, spawn_app_with, spawn_replica, tokenize_fresh, valid_numbers,
    wait_for_health, TestApp,
};

/// Writes `text` to `path` with mode 0600, replacing what is there.
pub(crate) fn write_private(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
}

/// SoftHSM2's module, as Debian's `softhsm2` package installs it.
pub(crate) const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token: (label, user PIN). `None` (skipped) when SoftHSM2
/// is missing on a local run; under CI its absence fails the test. The token
/// directory is one per test process (SOFTHSM2_CONF is read once, when the
/// library is initialised); each test gets its own token by label.
pub(crate) fn softhsm_token() -> Option<(String, String)> {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::session::UserType;
    use secrecy::SecretString;

    static SETUP: OnceLock<Option<(tempfile::TempDir, Pkcs11)>> = OnceLock::new();
    static CREATED: Mutex<u32> = Mutex::new(0);
    let setup = SETUP.get_or_init(|| {
        if !Path::new(SOFTHSM2_MODULE).is_file() {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run the PKCS#11 tests, but SoftHSM2 is not installed ({SOFTHSM2_MODULE})");
            }
            eprintln!("\nSKIPPED: the PKCS#11 root key tests (no {SOFTHSM2_MODULE}; apt-get install softhsm2)\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\n", dir.path().display()),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let context = Pkcs11::new(SOFTHSM2_MODULE).unwrap();
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(error) => panic!("initialise SoftHSM2: {error}"),
        }
        Some((dir, context))
    });
    let (_, context) = setup.as_ref()?;
    let mut created = CREATED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *created += 1;
    let label = format!("mnvault-e2e-{}", *created);
    let (so_pin, pin) = (SecretString::from("87654321".to_owned()), "12345678".to_owned());
    let free = context
        .get_all_slots()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).is_ok_and(|info| !info.token_initialized()))
        .expect("SoftHSM2 offers a free slot");
    context.init_token(free, &so_pin, &label).unwrap();
    let session = context.open_rw_session(softhsm_slot(context, &label)).unwrap();
    session.login(UserType::So, Some(&so_pin)).unwrap();
    session.init_pin(&SecretString::from(pin.clone())).unwrap();
    session.logout().unwrap();
    Some((label, pin))
}

/// The slot of the SoftHSM2 token labelled `label`.
pub(crate) fn softhsm_slot(context: &cryptoki::context::Pkcs11, label: &str) -> cryptoki::slot::Slot {
    let slots = context.get_slots_with_token().unwrap();
    let mut ours =
        slots.into_iter().filter(|slot| context.get_token_info(*slot).is_ok_and(|t| t.label().trim_end() == label));
    ours.next().expect("the test's token")
}

/// `[root_key]` in SoftHSM2's token `label`, its PIN in a file of the data directory.
pub(crate) fn use_softhsm(settings: &mut Settings, (label, pin): &(String, String)) {
    write_private(&settings.data_dir.join("hsm.pin"), &format!("{pin}\n"));
    settings.root_key = RootKeySettings {
        provider: RootKeyProviderKind::Pkcs11,
        module: Some(PathBuf::from(SOFTHSM2_MODULE)),
        token_label: Some(label.clone()),
        key_label: Some("mnvault-root".into()),
        pin_file: Some(PathBuf::from("hsm.pin")),
        ..RootKeySettings::default()
    };
}

/// The count of stored keys `root-key status` says `role` opens.
fn opened_by(status: &str, role: &str) -> Vec<u64> {
    status
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{role}\t")))
        .map(|rest| rest.split('\t').next().unwrap().parse().unwrap())
        .collect()
}

on_both_backends! {
    async fn the_walkthrough_works_with_the_root_key_in_softhsm2(backend) {
        let Some(token) = softhsm_token() else { return };
        let app = spawn_app_with(&backend, |settings| use_softhsm(settings, &token)).await;
        let numbers = valid_numbers(2);
        let tokens = app.cli(&["tokenize", "--as", "payroll", "--tenant", "demo", &numbers[0], &numbers[1]]).await.unwrap();
        let tokens: Vec<&str> = tokens.lines().collect();
        let job = app
            .cli(&["job", "create", "--as", "requester", "--tenant", "demo", "--purpose", "withholding-slip", tokens[0], tokens[1]])
            .await
            .unwrap();
        let job = job.trim();
        app.cli(&["job", "approve", "--as", "approver", job]).await.unwrap();
        let released = app.cli(&["detokenize", "--as", "filer", "--job", job]).await.unwrap();
        assert_eq!(released, format!("{}\t{}\n{}\t{}\n", tokens[0], numbers[0], tokens[1], numbers[1]));

        // Every stored key is wrapped inside the token, none by a file.
        let status = app.cli(&["root-key", "status"]).await.unwrap();
        let primary = status.lines().next().unwrap();
        assert!(primary.contains(&format!("PKCS#11 key \"mnvault-root\" on token \"{}\"", token.0)), "{status}");
        let keys = opened_by(&status, "primary");
        // The vault's system keys, demo's index and record keys at least.
        assert!(keys.len() == 1 && keys[0] >= 3, "{status}");
        assert!(opened_by(&status, "previous").is_empty(), "{status}");
        assert_eq!(opened_by(&status, "none"), [0]);
        assert!(!app.path().join(mnvault::datadir::ROOT_KEY_FILE).exists());
        // The key cannot be created twice.
        let again = app.cli(&["root-key", "init"]).await.unwrap_err();
        assert!(again.to_string().contains("already holds a key with that label"), "{again}");
    }
}

on_both_backends! {
    async fn a_vault_refuses_to_start_when_its_root_key_provider_does_not_answer(backend) {
        let Some(token) = softhsm_token() else { return };
        let mut app = spawn_app_with(&backend, |settings| use_softhsm(settings, &token)).await;
        app.stop().await;
        let mut settings = Settings::load(app.path()).unwrap();
        settings.root_key.token_label = Some("unplugged-token".into());
        settings.save().unwrap();
        let error = Application::build(&Settings::load(app.path()).unwrap()).await.err().expect("refused");
        let message = error.to_string();
        assert!(message.contains("does not answer"), "{message}");
        assert!(message.contains("PKCS#11 key \"mnvault-root\" on token \"unplugged-token\""), "{message}");
        // So do the offline commands.
        let status = app.cli(&["root-key", "status"]).await.unwrap_err();
        assert!(status.to_string().contains("does not answer"), "{status}");
    }
}

on_both_backends! {
    async fn a_passphrase_sealed_root_key_opens_with_the_passphrase_from_a_file(backend) {
        let mut app = spawn_app_with(&backend, |settings| {
            write_private(&settings.data_dir.join("passphrase"), "correct horse battery staple\n");
            settings.root_key = RootKeySettings {
                provider: RootKeyProviderKind::Passphrase,
                file: PathBuf::from("root.sealed"),
                passphrase_file: Some(PathBuf::from("passphrase")),
                ..RootKeySettings::default()
            };
        })
        .await;
        let sealed = app.path().join("root.sealed");
        assert_eq!(std::fs::metadata(&sealed).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&sealed).unwrap().starts_with("mnvault-sealed-root-key v1\n"));
        let tokens = tokenize_fresh(&app, 2).await;
        let job = approved_job(&app, &tokens, 2).await;
        assert_eq!(app.client("filer").await.detokenize(&job, vec![]).await.unwrap().len(), 2);
        app.stop().await;

        // A wrong passphrase, or one readable by others, keeps the vault from starting.
        let passphrase = app.path().join("passphrase");
        write_private(&passphrase, "correct horse battery stapler\n");
        let error = Application::build(&Settings::load(app.path()).unwrap()).await.err().expect("refused");
        assert!(error.to_string().contains("passphrase does not open"), "{error}");
        write_private(&passphrase, "correct horse battery staple\n");
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Application::build(&Settings::load(app.path()).unwrap()).await.err().expect("refused");
        assert!(error.to_string().contains("accessible by group or others"), "{error}");
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();

        let app = spawn_replica(&app).await;
        let released = app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        assert_eq!(released.len(), 2);
    }
}

on_both_backends! {
    async fn a_root_key_rotation_interrupted_halfway_serves_and_resumes_then_the_old_key_goes(backend) {
        let mut app = spawn_app(&backend).await;
        for tenant in ["acme", "globex"] {
            app.client("admin").await.create_tenant(tenant, tenant).await.unwrap();
        }
        let numbers = valid_numbers(3);
        let payroll = app.client("payroll").await;
        let mut tokens = Vec::new();
        for number in &numbers {
            tokens.push(payroll.tokenize("demo", number, TokenFormat::Opaque).await.unwrap());
        }
        let job = approved_job(&app, &tokens, 3).await;
        app.stop().await;

        // The README's procedure: the new key as [root_key], the old one as previous.
        let mut settings = Settings::load(app.path()).unwrap();
        let old = settings.root_key.clone();
        settings.root_key = RootKeySettings { previous: vec![old.clone()], ..RootKeySettings::file(PathBuf::from("root-2.key")) };
        settings.save().unwrap();
        let created = app.cli(&["root-key", "init"]).await.unwrap();
        assert!(created.contains("root-2.key"), "{created}");
        let before = app.cli(&["root-key", "status"]).await.unwrap();
        let stored = opened_by(&before, "previous")[0];
        assert_eq!(opened_by(&before, "primary"), [0], "{before}");
        assert!(stored >= 7, "the vault's system keys, and an index and a record key per tenant: {before}");

        // Interrupted after 3 keys: the vault starts and serves with both keys configured.
        let first = app.cli(&["root-key", "rotate", "--limit", "3"]).await.unwrap();
        assert!(first.contains("re-wrapped 3 stored key(s)") && first.contains("stopped at --limit"), "{first}");
        let halfway = app.cli(&["root-key", "status"]).await.unwrap();
        assert_eq!((opened_by(&halfway, "primary"), opened_by(&halfway, "previous")), (vec![3], vec![stored - 3]), "{halfway}");
        let mut app = spawn_replica(&app).await;
        let released = app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        let released: Vec<&str> = released.iter().map(|r| r.number.expose_secret()).collect();
        assert_eq!(released, numbers.iter().map(String::as_str).collect::<Vec<_>>());
        for tenant in ["acme", "globex"] {
            app.client("payroll").await.tokenize(tenant, &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();
        }

        // Resumed while the vault serves: only what is left is re-wrapped.
        let second = app.cli(&["root-key", "rotate"]).await.unwrap();
        assert!(second.contains(&format!("re-wrapped {} stored key(s)", stored - 3)), "{second}");
        assert!(second.contains("already under it: 3"), "{second}");
        let done = app.cli(&["root-key", "status"]).await.unwrap();
        assert_eq!((opened_by(&done, "primary"), opened_by(&done, "previous")), (vec![stored], vec![0]), "{done}");
        assert!(done.contains("no stored key needs a previous root key"), "{done}");
        let entries = app.audit_entries().await;
        let rotations: Vec<(&str, u64)> = entries
            .iter()
            .filter(|entry| entry.operation == "keys.rotate-root")
            .map(|entry| (entry.principal.as_str(), entry.record_count))
            .collect();
        assert_eq!(rotations, [("mnvault-root-key", 3), ("mnvault-root-key", stored - 3)]);
        app.stop().await;

        // Without the previous key, and with its file destroyed, the vault starts and releases.
        let mut settings = Settings::load(app.path()).unwrap();
        settings.root_key.previous.clear();
        settings.save().unwrap();
        std::fs::remove_file(settings.resolve(&old.file)).unwrap();
        let app = spawn_replica(&app).await;
        let released = app.client("filer").await.detokenize(&job, vec![]).await.unwrap();
        assert_eq!(released.len(), 3);
        let verified = app.cli(&["audit", "verify"]).await.unwrap();
        assert!(verified.starts_with("audit chain intact"), "{verified}");
    }
}

/// The configured provider behind a switch: unplugged, it answers nothing.
struct Unpluggable {
    inner: Arc<dyn RootKeyProvider>,
    plugged: Arc<AtomicBool>,
}

impl RootKeyProvider for Unpluggable {
    fn describe(&self) -> String {
        format!("unpluggable {}", self.inner.describe())
    }
    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        self.check()?;
        self.inner.wrap(key, context)
    }
    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        self.check()?;
        self.inner.unwrap(wrapped, context)
    }
    fn check(&self) -> Result<(), KeyError> {
        if !self.plugged.load(Ordering::SeqCst) {
            return Err(KeyError::ProviderUnreachable { provider: self.describe() });
        }
        self.inner.check()
    }
}

on_both_backends! {
    async fn a_root_key_provider_lost_and_back_turns_health_and_calls_unavailable_then_recovers(backend) {
        let (settings, data_dir) = new_data_dir(&backend, |settings| {
            settings.server.health_check_interval_ms = 50;
            // Every call unwraps its tenant's keys afresh.
            settings.keys.cache_ttl_ms = 1;
        })
        .await;
        let plugged = Arc::new(AtomicBool::new(true));
        let switch = plugged.clone();
        let application = Application::build_with_root_key(&settings, move |settings| {
            let inner = mnvault::startup::root_key_provider(settings)?;
            Ok(Arc::new(Unpluggable { inner, plugged: switch }))
        })
        .await
        .unwrap();
        let endpoint = format!("https://127.0.0.1:{}", application.local_addr().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let app = TestApp::serving_elsewhere(endpoint, data_dir, backend.clone());
        let payroll = app.client("payroll").await;
        wait_for_health(&app.client("auditor").await, ServingStatus::Serving).await;
        payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();

        plugged.store(false, Ordering::SeqCst);
        wait_for_health(&app.client("auditor").await, ServingStatus::NotServing).await;
        let (code, message) = refusal(payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await);
        assert_eq!(code, Code::Unavailable, "{message}");
        assert!(message.contains("root key provider does not answer") && message.contains("retry later"), "{message}");

        plugged.store(true, Ordering::SeqCst);
        wait_for_health(&app.client("auditor").await, ServingStatus::Serving).await;
        payroll.tokenize("demo", &valid_numbers(1)[0], TokenFormat::Opaque).await.unwrap();

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
