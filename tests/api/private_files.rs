//! Everything a vault writes into its data directory is its user's alone:
//! files 0600 (database, WAL and shared memory, configuration, keys,
//! certificates, the dev marker), directories 0700.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mnvault_client::TokenFormat;

use crate::helpers::{spawn_app, valid_number, Backend};

/// Every entry under `dir` (itself included) with its permission bits.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        }
        found.push((path, metadata.is_dir(), metadata.permissions().mode() & 0o777));
    }
    found
}

fn assert_private(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for (path, is_dir, mode) in modes(dir) {
        let expected = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "{} is {mode:03o}", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names
}

on_both_backends! {
    async fn every_file_of_a_data_directory_is_private(backend) {
        let mut app = spawn_app(&backend).await;
        // A write, so that SQLite has its WAL and shared-memory files open.
        app.client("payroll").await.tokenize("demo", &valid_number(), TokenFormat::Opaque).await.unwrap();
        let names = assert_private(app.path());
        for expected in ["mnvault.toml", "root.key", "DEVELOPMENT", "ca.pem", "ca.key", "server.crt", "payroll.key"] {
            assert!(names.iter().any(|name| name == expected), "{expected} not found in {names:?}");
        }
        if let Backend::Sqlite = backend {
            for expected in ["vault.db", "vault.db-wal", "vault.db-shm"] {
                assert!(names.iter().any(|name| name == expected), "{expected} not found in {names:?}");
            }
        }
        app.stop().await;
        assert_private(app.path());
    }
}
