//! Identity and transport: mutual TLS only, dev mode on loopback only,
//! standard health and reflection services.

use mnvault::datadir;
use mnvault::startup::{Application, StartupError};
use mnvault_client::{connect_channel, ClientIdentity, VaultClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{spawn_app, Backend};

on_both_backends! {
    async fn health_and_reflection_answer_over_mutual_tls(backend) {
        let app = spawn_app(&backend).await;
        let identity = ClientIdentity::from_dev_pki(&app.path().join(datadir::DEV_PKI_DIR), "auditor").unwrap();
        let channel = connect_channel(&app.endpoint, &identity).await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        let status = health
            .check(HealthCheckRequest { service: "mynumber.vault.v1.TokenService".into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);

        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        for service in [
            "mynumber.vault.v1.TokenService",
            "mynumber.vault.v1.FilingService",
            "mynumber.vault.v1.AuditService",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
        }
    }
}

on_both_backends! {
    async fn a_client_without_a_certificate_is_turned_away(backend) {
        let app = spawn_app(&backend).await;
        let ca = std::fs::read(app.path().join(datadir::DEV_PKI_DIR).join("ca.pem")).unwrap();
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        let connected = async {
            let channel = Channel::from_shared(app.endpoint.clone()).unwrap().tls_config(tls)?.connect().await?;
            HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.map_err(|s| s.into())
        };
        let result: Result<_, Box<dyn std::error::Error>> = connected.await;
        assert!(result.is_err(), "a call without a client certificate succeeded");
        // The same call with a certificate goes through: the refusal above was the missing certificate.
        let identity = ClientIdentity::from_dev_pki(&app.path().join(datadir::DEV_PKI_DIR), "auditor").unwrap();
        let mut health = HealthClient::new(connect_channel(&app.endpoint, &identity).await.unwrap());
        health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    }
}

on_both_backends! {
    async fn a_certificate_from_another_ca_is_turned_away(backend) {
        let app = spawn_app(&backend).await;
        // Another vault with its own CA; where it keeps its data does not matter.
        let stranger = spawn_app(&Backend::Sqlite).await;
        // The stranger's payroll certificate, trusting our vault's CA for the server.
        let pki = stranger.path().join(datadir::DEV_PKI_DIR);
        let identity = ClientIdentity::from_files(
            &pki.join("payroll.crt"),
            &pki.join("payroll.key"),
            &app.path().join("dev-pki/ca.pem"),
        )
        .unwrap();
        let result = async { VaultClient::connect(&app.endpoint, &identity).await?.list_purposes().await }.await;
        assert!(result.is_err(), "a foreign certificate was accepted");
        // The same call with our own CA's certificate goes through.
        let own = app.path().join(datadir::DEV_PKI_DIR);
        let identity =
            ClientIdentity::from_files(&own.join("payroll.crt"), &own.join("payroll.key"), &own.join("ca.pem")).unwrap();
        VaultClient::connect(&app.endpoint, &identity).await.unwrap().list_purposes().await.unwrap();
    }
}

on_both_backends! {
    async fn a_dev_vault_refuses_to_listen_beyond_loopback(backend) {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = datadir::dev_settings(dir.path());
        settings.listen = "0.0.0.0:0".parse().unwrap();
        if let Some(url) = backend.database_url() {
            settings.database.url = url;
        }
        datadir::initialise(&settings).await.unwrap();
        let error = Application::build(&settings).await.err().expect("refused");
        assert!(matches!(error, StartupError::DevNotLoopback(_)), "{error}");
    }
}

on_both_backends! {
    async fn the_data_directory_and_its_secrets_are_private(backend) {
        use std::os::unix::fs::PermissionsExt;
        let app = spawn_app(&backend).await;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(app.path()), 0o700);
        assert_eq!(mode(&app.path().join(datadir::ROOT_KEY_FILE)), 0o600);
        assert_eq!(mode(&app.path().join("dev-pki/payroll.key")), 0o600);
        // Initialising twice is refused rather than overwriting the root key.
        let settings = mnvault::config::Settings::load(app.path()).unwrap();
        assert!(matches!(datadir::initialise(&settings).await, Err(datadir::InitError::AlreadyInitialised(_))));
    }
}

on_both_backends! {
    async fn init_prepares_a_production_directory_that_waits_for_its_tls_files(backend) {
        let dir = tempfile::tempdir().unwrap();
        let init = |data_dir: &std::path::Path| {
            let mut argv = vec!["mnvault".to_owned(), "init".into(), "--data-dir".into(), data_dir.display().to_string()];
            argv.extend(backend.database_url().map(|url| format!("--database-url={url}")));
            async move {
                let mut out = Vec::new();
                let cli = <mnvault::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
                mnvault::cli::run(cli, &mut out).await.map(|()| String::from_utf8(out).unwrap())
            }
        };
        let data_dir = dir.path().join("vault");
        assert!(init(&data_dir).await.unwrap().contains("put the TLS files and principals"));
        if let Backend::Postgres(_) = backend {
            // The database is initialised once: another data directory cannot take it over.
            let error = init(&dir.path().join("other")).await.unwrap_err().to_string();
            assert!(error.contains("already holds a vault"), "{error}");
        }
        let settings = mnvault::config::Settings::load(&data_dir).unwrap();
        assert!(!settings.dev && settings.principals.is_empty());
        assert!(data_dir.join(datadir::ROOT_KEY_FILE).exists() && !data_dir.join(datadir::DEV_PKI_DIR).exists());
        // Until the operator provides certificates, it refuses to start and says which file is missing.
        let error = Application::build(&settings).await.err().expect("refused");
        assert!(matches!(error, StartupError::TlsFile { .. }), "{error}");
        assert!(error.to_string().contains("tls/server.crt"), "{error}");
    }
}

on_both_backends! {
    async fn tokenize_reports_whether_it_created_the_token(backend) {
        use mnvault_proto::v1::token_service_client::TokenServiceClient;
        use mnvault_proto::v1::TokenizeRequest;
        let app = spawn_app(&backend).await;
        let identity = ClientIdentity::from_dev_pki(&app.path().join(datadir::DEV_PKI_DIR), "payroll").unwrap();
        let mut tokens = TokenServiceClient::new(connect_channel(&app.endpoint, &identity).await.unwrap());
        let request = || TokenizeRequest { tenant: "demo".into(), number: "465281266333".into(), format: 0 };
        let first = tokens.tokenize(request()).await.unwrap().into_inner();
        let second = tokens.tokenize(request()).await.unwrap().into_inner();
        assert!(first.created && !second.created);
        assert_eq!(first.token, second.token);
    }
}
