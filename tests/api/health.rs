//! Health: `grpc.health.v1` reports the whole vault and each service,
//! NOT_SERVING while the database does not answer and SERVING again when it
//! does; `mnvault health` is the probe that speaks mutual TLS.
//!
//! Losing the database means, on PostgreSQL, losing the network to it: a
//! TCP proxy between the vault and the server is cut (its connections
//! closed, new ones refused) and restored. On SQLite, an embedded file, it
//! means the file at `database.url` is gone (deleted, moved, its volume
//! lost): the file is moved away and back. The vault's open connections
//! still reach the moved file, so calls still succeed there; the health
//! check says what a restart would find.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mnvault::datadir::DEV_PKI_DIR;
use mnvault::health::REPORTED_SERVICES;
use mnvault_client::{Code, ServingStatus, TokenFormat, VaultClient};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::helpers::{refusal, spawn_app, spawn_app_with, valid_number, Backend, TestApp};

/// A bound on waiting for the health check to see a change, not a speed requirement.
const CHANGE_WAIT: Duration = Duration::from_secs(60);

on_both_backends! {
    /// Every vault service and the whole vault are SERVING; the CLI probe
    /// says so with a dev identity or certificate files, and fails for a
    /// service the vault does not serve.
    async fn health_reports_every_service_and_the_probe_agrees(backend) {
        let app = spawn_app(&backend).await;
        let client = app.client("auditor").await;
        for service in REPORTED_SERVICES {
            assert_eq!(client.health(service).await.unwrap(), ServingStatus::Serving, "{service:?}");
        }
        assert_eq!(app.cli(&["health", "--as", "payroll"]).await.unwrap(), "SERVING\n");
        let pki = app.path().join(DEV_PKI_DIR);
        let file = |name: &str| pki.join(name).display().to_string();
        let (cert, key, ca) = (file("auditor.crt"), file("auditor.key"), file("ca.pem"));
        let probe = [
            "health", "--service", "mynumber.vault.v1.FilingService", "--endpoint", &app.endpoint, "--cert", &cert,
            "--key", &key, "--ca", &ca,
        ];
        assert_eq!(app.cli(&probe).await.unwrap(), "SERVING\n");
        let unknown = app.cli(&["health", "--service", "no.such.Service", "--as", "auditor"]).await.unwrap_err();
        assert!(unknown.to_string().contains("reports no service named"), "{unknown:#}");
    }

    /// The database goes away: every status goes NOT_SERVING and the probe
    /// fails; it comes back: every status is SERVING again and calls work.
    async fn health_follows_the_database(backend) {
        let outage = Outage::prepare(&backend).await;
        let app = spawn_app_with(&backend, |settings| {
            settings.server.health_check_interval_ms = 100;
            settings.database.write_timeout_ms = 1_000;
            if let Outage::Network(proxy) = &outage {
                settings.database.url = proxy.url.clone();
            }
        })
        .await;
        let client = app.client("payroll").await;
        wait_for_all(&client, ServingStatus::Serving).await;
        client.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();

        outage.begin(&app);
        wait_for_all(&client, ServingStatus::NotServing).await;
        let probe = app.cli(&["health", "--as", "payroll"]).await.unwrap_err();
        assert!(probe.to_string().contains("NOT_SERVING"), "{probe:#}");
        let during = match &outage {
            Outage::Network(_) => {
                // Calls fail promptly with UNAVAILABLE: within the write timeout, not hanging.
                let number = valid_number();
                let call = client.tokenize("demo", &number, TokenFormat::Opaque);
                let (code, message) = refusal(tokio::time::timeout(CHANGE_WAIT, call).await.expect("a prompt answer"));
                assert_eq!(code, Code::Unavailable, "{message}");
                None
            }
            // The open file still takes the call.
            Outage::File => Some(client.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap()),
        };

        outage.end(&app);
        wait_for_all(&client, ServingStatus::Serving).await;
        assert_eq!(app.cli(&["health", "--as", "payroll"]).await.unwrap(), "SERVING\n");
        client.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
        if let Some(token) = during {
            client.describe_token("demo", &token).await.expect("what was written during the outage is kept");
        }
    }
}

/// Waits until every reported status is `wanted` (bounded by [`CHANGE_WAIT`]).
async fn wait_for_all(client: &VaultClient, wanted: ServingStatus) {
    let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        let mut statuses = Vec::new();
        for service in REPORTED_SERVICES {
            statuses.push(client.health(service).await.unwrap());
        }
        if statuses.iter().all(|status| *status == wanted) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {statuses:?}, waiting for {wanted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a test takes the database away.
enum Outage {
    /// PostgreSQL behind a proxy that is cut.
    Network(Proxy),
    /// The SQLite file, moved away.
    File,
}

impl Outage {
    async fn prepare(backend: &Backend) -> Outage {
        match backend.database_url() {
            Some(url) => Outage::Network(Proxy::start(&url).await),
            None => Outage::File,
        }
    }

    fn moved(app: &TestApp) -> (PathBuf, PathBuf) {
        let file = app.database_path();
        let mut moved = file.clone().into_os_string();
        moved.push(".moved");
        (file, moved.into())
    }

    fn begin(&self, app: &TestApp) {
        match self {
            Outage::Network(proxy) => proxy.cut(),
            Outage::File => {
                let (file, moved) = Self::moved(app);
                std::fs::rename(file, moved).unwrap();
            }
        }
    }

    fn end(&self, app: &TestApp) {
        match self {
            Outage::Network(proxy) => proxy.restore(),
            Outage::File => {
                let (file, moved) = Self::moved(app);
                std::fs::rename(moved, file).unwrap();
            }
        }
    }
}

/// A TCP proxy in front of the PostgreSQL server: `cut` closes every
/// connection through it and refuses new ones until `restore`.
struct Proxy {
    /// The test database's URL, through the proxy.
    url: String,
    cut: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    async fn start(database_url: &str) -> Proxy {
        // postgres://user@host:port/database: the host and port go through the proxy.
        let (scheme, rest) = database_url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a database in the URL");
        let (credentials, server) = match authority.rsplit_once('@') {
            Some((credentials, server)) => (format!("{credentials}@"), server),
            None => (String::new(), authority),
        };
        let upstream: SocketAddr = tokio::net::lookup_host(server).await.unwrap().next().expect("the server's address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://{credentials}{}/{path}", listener.local_addr().unwrap());
        let (cut, is_cut) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *is_cut.borrow() {
                    continue; // dropped: refused
                }
                let mut is_cut = is_cut.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = is_cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { url, cut, accepting }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accepting.abort();
    }
}
