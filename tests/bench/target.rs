//! Where one run keeps its data: a private working directory holding the
//! vault's data directory and the ceiling's, and on PostgreSQL two fresh
//! databases of their own, dropped at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use mnvault::config::Settings;
use mnvault::datadir;
use mnvault::store::{OpenMode, Store};
use rand::Rng as _;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, PgConnection, SqliteConnection};
use tempfile::TempDir;

use super::BackendKind;

/// The data of one run.
pub struct Target {
    /// Holds the two data directories and the vault's log.
    pub work: TempDir,
    /// The vault's database URL on PostgreSQL (`None`: SQLite in its data directory).
    pub vault_database: Option<String>,
    /// The ceiling's database URL on PostgreSQL.
    pub ceiling_database: Option<String>,
    /// The PostgreSQL server and the names of the databases to drop.
    postgres: Option<(String, Vec<String>)>,
}

impl Target {
    /// A fresh working directory and, on PostgreSQL, two fresh databases.
    pub async fn create(backend: &BackendKind) -> anyhow::Result<Target> {
        let work = tempfile::Builder::new().prefix("mnvault-bench-").tempdir().context("working directory")?;
        let BackendKind::Postgres { server_url } = backend else {
            return Ok(Target { work, vault_database: None, ceiling_database: None, postgres: None });
        };
        let mut admin = PgConnection::connect(server_url)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {}", describe(server_url)))?;
        let run = rand::thread_rng().gen::<u64>();
        let names = vec![format!("mnvault_bench_{run}"), format!("mnvault_bench_{run}_ceiling")];
        for name in &names {
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.context("create database")?;
        }
        let _ = admin.close().await;
        let (base, _) = server_url.rsplit_once('/').context("a PostgreSQL URL ends with /DATABASE")?;
        let url = |name: &str| format!("{base}/{name}");
        Ok(Target {
            vault_database: Some(url(&names[0])),
            ceiling_database: Some(url(&names[1])),
            postgres: Some((server_url.clone(), names)),
            work,
        })
    }

    /// The vault's data directory (created by the vault process).
    pub fn vault_dir(&self) -> PathBuf {
        self.work.path().join("vault")
    }

    /// The vault process's standard error.
    pub fn vault_log(&self) -> PathBuf {
        self.work.path().join("vault.log")
    }

    /// A data directory initialised as `mnvault serve --dev` would (tenant
    /// `demo`, audit key, schema) on the ceiling's database, and its store
    /// opened directly, as the vault opens it.
    pub async fn ceiling_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        let dir = self.work.path().join("ceiling");
        let mut settings = datadir::dev_settings(&dir);
        if let Some(url) = &self.ceiling_database {
            settings.database.url = url.clone();
        }
        datadir::initialise(&settings).await.context("initialise the ceiling's data directory")?;
        let settings = Settings::load(&dir).context("the ceiling's settings")?;
        let store = mnvault::store::open(&settings.database(), OpenMode::Serve, settings.database.write_timeout())
            .await
            .context("open the ceiling's store")?;
        Ok(store)
    }

    /// How many bytes the vault's database holds now.
    ///
    /// SQLite: the pages in use, `(page_count - freelist_count) * page_size`,
    /// read on a connection of the benchmark's own; that counts pages still in
    /// the WAL as they will be once checkpointed, and not the WAL file itself.
    /// PostgreSQL: `pg_database_size` (tables, indexes, TOAST; not the WAL).
    pub async fn vault_database_bytes(&self) -> anyhow::Result<u64> {
        match &self.vault_database {
            None => sqlite_bytes(&self.vault_dir().join(mnvault::store::DATABASE_FILE)).await,
            Some(url) => postgres_bytes(url).await,
        }
    }

    /// Drops the PostgreSQL databases (whatever connections remain) and the working directory.
    pub async fn remove(self) {
        if let Some((server, names)) = &self.postgres {
            if let Ok(mut admin) = PgConnection::connect(server).await {
                for name in names {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(error) = sqlx::query(&drop).execute(&mut admin).await {
                        eprintln!("bench: could not drop database {name}: {error}");
                    }
                }
                let _ = admin.close().await;
            }
        }
    }
}

async fn sqlite_bytes(path: &Path) -> anyhow::Result<u64> {
    let options = SqliteConnectOptions::new().filename(path);
    let mut conn = SqliteConnection::connect_with(&options).await.context("open the vault's SQLite file")?;
    let bytes: i64 = sqlx::query_scalar(
        "SELECT (page_count - freelist_count) * page_size \
         FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
    )
    .fetch_one(&mut conn)
    .await
    .context("SQLite page counts")?;
    let _ = conn.close().await;
    Ok(bytes.max(0) as u64)
}

async fn postgres_bytes(url: &str) -> anyhow::Result<u64> {
    let mut conn = PgConnection::connect(url).await.context("connect to the vault's database")?;
    let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await
        .context("pg_database_size")?;
    let _ = conn.close().await;
    Ok(bytes.max(0) as u64)
}

/// A PostgreSQL URL without its credentials, for messages.
pub fn describe(url: &str) -> String {
    mnvault::store::DatabaseLocation::Postgres(url.to_owned()).describe()
}
