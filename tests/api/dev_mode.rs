//! Dev stays dev: a data directory made by `serve --dev` is never served as
//! a production vault, and nothing turns its loopback-only rule off.

use std::time::Duration;

use clap::Parser as _;
use mnvault::cli::{self, Cli};
use mnvault::config::Settings;
use mnvault::datadir;
use mnvault::startup::{Application, StartupError};

use crate::helpers::{spawn_app, Backend};

/// Runs `mnvault serve ARGS --data-dir DIR` in-process. A refusal returns at
/// once; a vault that starts serves until the bound wait, which is a failure.
async fn serve(dir: &std::path::Path, backend: &Backend, args: &[&str]) -> anyhow::Error {
    let mut argv: Vec<String> = ["mnvault", "serve"].iter().chain(args).map(|a| a.to_string()).collect();
    argv.extend(["--data-dir".to_owned(), dir.display().to_string()]);
    argv.extend(backend.database_url().map(|url| format!("--database-url={url}")));
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), cli::run(cli, &mut out)).await {
        Ok(Err(error)) => error,
        Ok(Ok(())) => panic!("serve stopped without an error"),
        Err(_) => panic!("serve {args:?} started a vault on a dev data directory"),
    }
}

on_both_backends! {
    /// The finding: `MNVAULT__DEV=false mnvault serve` on a dev data
    /// directory served the dev PKI as a production vault.
    async fn a_dev_data_directory_is_not_served_as_production(backend) {
        let app = spawn_app(&backend).await;
        let mut settings = Settings::load(app.path()).unwrap();
        if let Some(url) = backend.database_url() {
            settings.database.url = url;
        }
        // What the environment override did: the same directory, `dev` off,
        // listening beyond loopback.
        settings.dev = false;
        settings.listen = "0.0.0.0:0".parse().unwrap();
        let error = Application::build(&settings).await.err().expect("a dev directory served as production");
        assert!(matches!(error, StartupError::Dev(datadir::DevError::DevDataDir(_))), "{error}");
        assert!(error.to_string().contains("--dev"), "{error}");
        // Without its marker, the dev CA's key beside the data still gives it away.
        std::fs::remove_file(app.path().join(datadir::DEV_MARKER_FILE)).unwrap();
        let error = Application::build(&settings).await.err().expect("a dev directory without its marker");
        assert!(matches!(error, StartupError::Dev(datadir::DevError::DevDataDir(_))), "{error}");
    }

    async fn the_environment_cannot_switch_dev_mode(backend) {
        let app = spawn_app(&backend).await;
        for value in ["false", "true", "0"] {
            for key in ["MNVAULT__DEV", "mnvault__dev"] {
                let environment = [(key.to_owned(), value.to_owned())];
                let error = Settings::load_with_environment(app.path(), environment).expect_err("override refused");
                assert!(error.to_string().contains("MNVAULT__DEV"), "{error}");
            }
        }
        // Other overrides still work.
        let environment = [("MNVAULT__LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
        let settings = Settings::load_with_environment(app.path(), environment).unwrap();
        assert_eq!(settings.listen.port(), 0);
        assert!(settings.dev);
    }

    async fn a_dev_vault_stays_dev_whatever_its_configuration_says(backend) {
        let app = spawn_app(&backend).await;
        assert!(app.path().join(datadir::DEV_MARKER_FILE).exists());
        // Someone edits `dev = false` into the configuration.
        let config = app.path().join(mnvault::config::CONFIG_FILE);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("dev = true"), "{text}");
        std::fs::write(&config, text.replace("dev = true", "dev = false")).unwrap();
        // Loading still says dev, and a production start refuses.
        assert!(Settings::load(app.path()).unwrap().dev);
        let error = serve(app.path(), &backend, &["--listen", "127.0.0.1:0"]).await;
        assert!(error.to_string().contains("--dev"), "{error:#}");
    }

    async fn no_setting_takes_a_dev_vault_off_loopback(backend) {
        let app = spawn_app(&backend).await;
        // The listen address from the environment…
        let environment = [("MNVAULT__LISTEN".to_owned(), "0.0.0.0:0".to_owned())];
        let mut settings = Settings::load_with_environment(app.path(), environment).unwrap();
        if let Some(url) = backend.database_url() {
            settings.database.url = url;
        }
        let error = Application::build(&settings).await.err().expect("refused");
        assert!(matches!(error, StartupError::DevNotLoopback(_)), "{error}");
        // …or from the command line.
        for listen in ["0.0.0.0:0", "[::]:0", "[::ffff:127.0.0.1]:0"] {
            let error = serve(app.path(), &backend, &["--dev", "--listen", listen]).await;
            assert!(error.to_string().contains("loopback"), "{listen}: {error:#}");
        }
    }

    async fn a_production_vault_refuses_the_dev_pki(backend) {
        let dev = spawn_app(&backend).await;
        // A production directory whose operator copied the dev PKI in as its TLS files.
        let dir = tempfile::tempdir().unwrap();
        let mut settings = datadir::production_settings(&dir.path().join("vault"));
        settings.listen = "127.0.0.1:0".parse().unwrap();
        let own_database = match &backend {
            Backend::Sqlite => true,
            // One PostgreSQL database holds one vault: the dev one already does.
            Backend::Postgres(_) => false,
        };
        if own_database {
            datadir::initialise(&settings).await.unwrap();
        } else {
            settings.database.url = backend.database_url().unwrap();
            std::fs::create_dir_all(&settings.data_dir).unwrap();
            std::fs::copy(dev.path().join(datadir::ROOT_KEY_FILE), settings.data_dir.join(datadir::ROOT_KEY_FILE))
                .unwrap();
        }
        std::fs::create_dir_all(settings.data_dir.join("tls")).unwrap();
        let pki = dev.path().join(datadir::DEV_PKI_DIR);
        let copy = |from: &str, to: &std::path::Path| std::fs::copy(pki.join(from), settings.resolve(to)).unwrap();
        copy("server.crt", &settings.tls.cert);
        copy("server.key", &settings.tls.key);
        copy("ca.pem", &settings.tls.client_ca);
        let error = Application::build(&settings).await.err().expect("the dev PKI served in production");
        assert!(matches!(error, StartupError::Dev(datadir::DevError::DevCertificate { .. })), "{error}");
        assert!(error.to_string().contains("server.crt"), "{error}");
    }

    async fn production_init_refuses_a_directory_marked_for_development(backend) {
        let app = spawn_app(&backend).await;
        // A dev initialisation that stopped before writing the configuration
        // leaves the marker; production init does not take such a directory over.
        std::fs::remove_file(app.path().join(mnvault::config::CONFIG_FILE)).unwrap();
        let mut settings = datadir::production_settings(app.path());
        if let Some(url) = backend.database_url() {
            settings.database.url = url;
        }
        let error = datadir::initialise(&settings).await.expect_err("refused");
        assert!(matches!(error, datadir::InitError::DevDataDir(_)), "{error}");
    }
}
