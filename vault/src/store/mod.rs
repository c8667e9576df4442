//! The two backends of the core's [`Store`] contract: SQLite, the embedded
//! default (one file in the data directory), and PostgreSQL, for production
//! and several replicas on one database.
//!
//! A backend only offers the simple steps of [`mnvault_core::store::WriteTx`]
//! inside a transaction; every rule runs in [`mnvault_core::VaultCore`]. Each
//! backend has its own migrations (`vault/migrations/<backend>/`).

mod postgres;
mod report_sql;
mod rows;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use mnvault_core::store::{Store, StoreError};
pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, DATABASE_FILE};

/// How a process opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the schema (`mnvault init`, first `serve --dev`).
    Initialise,
    /// Open an existing database and bring its schema up to date (`mnvault serve`).
    Serve,
    /// Read an existing database, changing nothing, while a vault may be
    /// running on it (`mnvault audit verify`).
    Review,
}

/// Where the data lives, from `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// A SQLite file (a path, relative to the data directory, or `sqlite://PATH`).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL).
    Postgres(String),
}

impl DatabaseLocation {
    /// Reads a `database.url` setting; relative SQLite paths are resolved
    /// against `data_dir`.
    pub fn parse(url: &str, data_dir: &Path) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return DatabaseLocation::Postgres(url.to_owned());
        }
        let path = Path::new(url.strip_prefix("sqlite://").unwrap_or(url));
        DatabaseLocation::Sqlite(if path.is_absolute() { path.to_owned() } else { data_dir.join(path) })
    }

    /// Whether a database exists there (a PostgreSQL database is always
    /// asked, not guessed).
    pub fn may_exist(&self) -> bool {
        match self {
            DatabaseLocation::Sqlite(path) => path.exists(),
            DatabaseLocation::Postgres(_) => true,
        }
    }

    /// For logs and messages: the SQLite path, or the PostgreSQL host and
    /// database without credentials.
    pub fn describe(&self) -> String {
        match self {
            DatabaseLocation::Sqlite(path) => format!("SQLite {}", path.display()),
            DatabaseLocation::Postgres(url) => {
                // Credentials may sit before the host or in the query; show neither.
                let without_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                let without_query = without_scheme.split('?').next().unwrap_or(without_scheme);
                let host = without_query.rsplit_once('@').map_or(without_query, |(_, host)| host);
                format!("PostgreSQL {host}")
            }
        }
    }
}

/// Opens the store at `location`. A SQLite database is private to the
/// vault's user: created 0600 before SQLite opens it (SQLite gives its WAL
/// and shared-memory files the database file's mode), and tightened to 0600
/// if an older one is looser.
pub async fn open(
    location: &DatabaseLocation,
    mode: OpenMode,
    write_timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        DatabaseLocation::Sqlite(path) => {
            if mode != OpenMode::Review {
                make_private(path, mode == OpenMode::Initialise).map_err(|e| StoreError::Database(Box::new(e)))?;
            }
            Arc::new(SqliteStore::open(path, mode, write_timeout).await?)
        }
        DatabaseLocation::Postgres(url) => Arc::new(PostgresStore::connect(url, mode, write_timeout).await?),
    })
}

/// The SQLite database at `path` and its WAL and shared-memory files: mode
/// 0600, the database created (empty, which SQLite takes as new) if `create`.
fn make_private(path: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create {
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        let Ok(metadata) = std::fs::metadata(file) else { continue };
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(file = %file.display(), "database file was readable by others; now 0600");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_are_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vault.db");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        make_private(&db, true).unwrap();
        assert_eq!(mode(&db), 0o600);
        // Older files, from before this rule, are tightened; contents stay.
        std::fs::write(&db, b"kept").unwrap();
        let wal = dir.path().join("vault.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for path in [&db, &wal] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        make_private(&db, false).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        assert_eq!(std::fs::read(&db).unwrap(), b"kept");
        // Without `create`, a missing database is not made.
        make_private(&dir.path().join("absent.db"), false).unwrap();
        assert!(!dir.path().join("absent.db").exists());
    }

    #[test]
    fn urls_name_their_backend_and_descriptions_hide_credentials() {
        let dir = Path::new("/data");
        assert_eq!(DatabaseLocation::parse("vault.db", dir), DatabaseLocation::Sqlite("/data/vault.db".into()));
        assert_eq!(DatabaseLocation::parse("sqlite:///x/v.db", dir), DatabaseLocation::Sqlite("/x/v.db".into()));
        let pg = DatabaseLocation::parse("postgres://vault:secret@db.internal:5432/mnvault?sslmode=require", dir);
        assert_eq!(pg.describe(), "PostgreSQL db.internal:5432/mnvault");
        let in_query = DatabaseLocation::parse("postgres://db/x?user=a&password=p@ss", dir);
        assert_eq!(in_query.describe(), "PostgreSQL db/x");
    }
}
