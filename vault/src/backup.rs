//! Backup and restore: `mnvault backup` and `mnvault restore`.
//!
//! A backup of the embedded store (SQLite) is one tar file, written 0600:
//!
//! ```text
//! manifest.toml   format and version, creation time, the vault's id, the audit
//!                 head the copy holds (sequence number and hash), the copy's
//!                 size and SHA-256, and a tag over all of these
//! vault.db        a transactionally consistent copy of the database
//! ```
//!
//! The copy is made with `VACUUM INTO` on a read connection of its own, so
//! the vault keeps serving (WAL: writers are not blocked) and the copy is
//! one snapshot. It holds what the database holds and nothing else: sealed
//! records, keyed blind indexes, keys wrapped by the root key, filing jobs
//! and the audit log. Never the root key, the configuration, TLS keys, the
//! dev PKI or the host's chain watermark.
//!
//! What ties a backup to its vault: its system key unwraps only under the
//! root key of that vault, so a backup of another vault is refused as
//! foreign; and the manifest's tag is an HMAC under the state-tag key derived
//! from that system key, so the head and checksum it records cannot be
//! rewritten without the root key. The SHA-256 catches damage to the
//! database bytes. The vault id is the SHA-256 of the *wrapped* system key,
//! a name for the vault that reveals nothing.
//!
//! Both `backup` and `restore` verify what they copy as `mnvault audit
//! verify` does (the audit chain, then every record's and filing job's state
//! tag); a copy that does not verify is never written nor installed.
//!
//! A restore is a deliberate rollback, which the host's chain watermark
//! ([`crate::watermark`]) exists to refuse: after verifying, restore moves
//! the watermark to the restored head, and says how many audit entries this
//! host had verified beyond it (they are lost). A database restored by other
//! means (`pg_restore`, point-in-time recovery, a file copied back) is taken
//! on the same way by [`adopt`]. Both cancel every open filing job first: the
//! restored release counts miss what was released after the backup, so an
//! open job would release the same numbers again.
//!
//! A backup's database is untrusted until verified: before anything queries
//! it, it must hold only tables and indexes (checked with `trusted_schema`
//! off), and no message repeats what the database said.
//!
//! A vault holds a shared lock on `<data-dir>/serving.lock` while it serves
//! ([`ServingLock`]); restore and adopt take it exclusively, so neither runs
//! under a vault of this data directory, and no vault starts during one.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mnvault_core::audit::{AuditRecord, Operation};
use mnvault_core::authz::Policy;
use mnvault_core::id::{JobId, Principal};
use mnvault_core::integrity::Integrity;
use mnvault_core::keyring::{load_system_keys, AuditKeyError, SystemKeys, AUDIT_CHAIN_KEY_NAME};
use mnvault_core::store::{AuditFilter, ChainHead, Store, StoreError};
use mnvault_core::vault::{verify_chain, verify_state};
use mnvault_core::VaultCore;
use mnvault_keys::{RootKeyProvider, StateKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection};
use time::OffsetDateTime;

use crate::config::Settings;
use crate::store::{DatabaseLocation, OpenMode};
use crate::watermark::{FileWatermark, WatermarkError, WATERMARK_FILE};

/// What the manifest's `format` says.
pub const FORMAT: &str = "mnvault-backup";
/// The backup format this mnvault writes and reads.
pub const VERSION: u32 = 1;
/// Name of the manifest inside a backup.
pub const MANIFEST_ENTRY: &str = "manifest.toml";
/// Name of the database copy inside a backup.
pub const DATABASE_ENTRY: &str = "vault.db";
/// The lock a serving vault holds (shared) and a restore takes (exclusive).
pub const SERVING_LOCK_FILE: &str = "serving.lock";
/// Marks a data directory whose restore or adoption has begun to change it
/// and not yet finished: no vault starts while it is there.
pub const RESTORE_PENDING_FILE: &str = "restore-pending";
/// The principal the audit entries of a restore's or adoption's job
/// cancellations name: the vault cannot tell who ran the command.
pub const RESTORE_PRINCIPAL: &str = "mnvault-restore";
/// Why a restore or adoption cancels every open filing job (audited).
pub const RESTORE_CANCEL_REASON: &str =
    "restored from a backup: releases made after it are not counted; create and approve a new job";

/// State-tag kind of a manifest: no tag of a record or job verifies as one.
const MANIFEST_TAG_KIND: &[u8] = b"mnvault/v1/backup-manifest";
/// A manifest is a few hundred bytes; anything much larger is not one.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Why a backup, restore or adoption did not happen. Nothing was changed
/// unless the variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// `mnvault backup` on PostgreSQL, whose backups are PostgreSQL's own.
    #[error(
        "the database is {0}: back it up with pg_dump -Fc, or with continuous archiving for point-in-time recovery \
         (README, \"Backup and restore\"); after restoring it, run `mnvault restore --adopt` on every vault host"
    )]
    UsePgDump(String),
    /// `mnvault restore --from` on PostgreSQL.
    #[error(
        "the database is {0}: restore it with pg_restore or point-in-time recovery (README, \"Backup and \
         restore\"), then run `mnvault restore --adopt` on every vault host"
    )]
    UsePgRestore(String),
    /// There is no database to back up or adopt.
    #[error("no database at {0}")]
    NoDatabase(String),
    /// The backup file already exists.
    #[error("{0} already exists; a backup never overwrites a file: choose another name")]
    OutputExists(PathBuf),
    /// The file is not an intact mnvault backup.
    #[error("{path} is damaged or not an mnvault backup: {why}; nothing was restored")]
    Damaged {
        /// The backup file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The backup's (or database's) system key does not unwrap with this
    /// data directory's root key.
    #[error(
        "{what} belongs to another vault: its system key does not unwrap with {provider} (or this data directory \
         holds another vault's root key); nothing was changed"
    )]
    Foreign {
        /// The backup file or the database.
        what: String,
        /// The root key provider tried.
        provider: String,
    },
    /// The copy does not verify as `mnvault audit verify` would.
    #[error("{what} does not verify: {why}; nothing was changed (`mnvault audit verify` names every failure)")]
    Unverified {
        /// The database, backup file or copy checked.
        what: String,
        /// The first failure.
        why: String,
    },
    /// The chain holds another entry where this host's watermark says which
    /// entry it verified: it is not this vault's history.
    #[error(
        "{what} holds another audit entry #{seq} than the one this host verified (see {watermark}): it is not a \
         copy of the history this host served; nothing was changed. If this host should take it anyway, remove \
         {watermark} and run again"
    )]
    ForksFromWatermark {
        /// The database or backup file.
        what: String,
        /// The position where they differ.
        seq: u64,
        /// The watermark file.
        watermark: PathBuf,
    },
    /// A restore would replace a database and `--force` was not given.
    #[error(
        "{0} already holds a database; a restore would replace it. Stop every vault on it and run again with \
         --force (the replaced database is kept beside it)"
    )]
    DatabaseExists(PathBuf),
    /// A vault serves this data directory.
    #[error("a vault is serving {0}; stop it before restoring or adopting a database")]
    VaultServing(PathBuf),
    /// Another process has the database open.
    #[error("another process has {0} open; stop whatever uses it (a vault?) before restoring")]
    DatabaseInUse(PathBuf),
    /// A restore or adoption holds the data directory (seen by a starting vault).
    #[error("a restore is under way in {0}; start the vault once it has finished")]
    RestoreUnderWay(PathBuf),
    /// The root key file could not be opened.
    #[error(transparent)]
    RootKey(#[from] mnvault_keys::KeyError),
    /// The vault's own system key could not be loaded (backup).
    #[error(transparent)]
    AuditKey(#[from] AuditKeyError),
    /// The database failed. Not a `source`: the store error already
    /// carries its cause, and a chain would repeat it.
    #[error("the database failed: {0}")]
    Store(StoreError),
    /// The database to adopt does not open or read as an mnvault database.
    /// What the database said is not repeated: it may hold anything.
    #[error("{what} {why}; nothing was changed")]
    Unreadable {
        /// The database.
        what: String,
        /// What is wrong, in a fixed sentence.
        why: &'static str,
    },
    /// This host's chain watermark exists but cannot be used.
    #[error(transparent)]
    Watermark(#[from] WatermarkError),
    /// The data directory belongs to another user than the one running.
    #[error(
        "{data_dir} belongs to user id {owner}, and this runs as user id {euid}: run it as the vault's user (e.g. \
         `sudo -u <the vault's user> mnvault restore ...`), so that no file of the data directory ends up owned by \
         another user; nothing was changed"
    )]
    NotOwner {
        /// The data directory.
        data_dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user id of this process.
        euid: u32,
    },
    /// The verified copy's open filing jobs could not be cancelled; it was
    /// not put in place.
    #[error(
        "the open filing jobs of {what} could not be cancelled in the verified copy ({why}), so it was not put in \
         place; nothing was changed"
    )]
    CopyJobsNotCancelled {
        /// The backup file.
        what: String,
        /// Why.
        why: String,
    },
    /// The database is in place and verified, but its open filing jobs
    /// could not all be cancelled; this host's watermark was not moved.
    #[error(
        "{database} is in place and verifies, but its open filing jobs could not all be cancelled ({why}); a job \
         left open could release numbers again whose releases after the backup are not counted. This host's chain \
         watermark was not moved. Do not serve the database until `mnvault restore --adopt` has succeeded"
    )]
    JobsNotCancelled {
        /// The database.
        database: String,
        /// Why.
        why: String,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<StoreError> for BackupError {
    fn from(error: StoreError) -> Self {
        BackupError::Store(error)
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io { action, path: path.to_owned(), source }
}

/// The manifest of a backup. Every field but `tag` is covered by `tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The backup format's version ([`VERSION`]).
    pub version: u32,
    /// When the copy was taken (RFC 3339, UTC).
    pub created_at: String,
    /// The vault's id: SHA-256 of its wrapped system key, in hex.
    pub vault: String,
    /// Sequence number of the last audit entry the copy holds.
    pub audit_head_seq: u64,
    /// Its hash, in hex.
    pub audit_head_hash: String,
    /// Size of the database copy in bytes.
    pub database_bytes: u64,
    /// SHA-256 of the database copy, in hex.
    pub database_sha256: String,
    /// HMAC-SHA-256 of the fields above under the vault's state-tag key, in hex.
    pub tag: String,
}

impl Manifest {
    fn tagged_fields(&self) -> [String; 8] {
        [
            self.format.clone(),
            self.version.to_string(),
            self.created_at.clone(),
            self.vault.clone(),
            self.audit_head_seq.to_string(),
            self.audit_head_hash.clone(),
            self.database_bytes.to_string(),
            self.database_sha256.clone(),
        ]
    }

    fn compute_tag(&self, key: &StateKey) -> [u8; 32] {
        let fields = self.tagged_fields();
        key.tag(MANIFEST_TAG_KIND, fields.iter().map(|field| field.as_bytes()))
    }

    fn tag_verifies(&self, key: &StateKey) -> bool {
        let fields = self.tagged_fields();
        hex::decode(&self.tag)
            .is_ok_and(|tag| key.verify(MANIFEST_TAG_KIND, fields.iter().map(|field| field.as_bytes()), &tag))
    }
}

/// What `mnvault backup` wrote.
#[derive(Debug)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its manifest.
    pub manifest: Manifest,
    /// Record rows verified in the copy.
    pub records: u64,
    /// Filing jobs verified in the copy.
    pub jobs: u64,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(f, "backup written: {} ({} bytes), taken {}", self.path.display(), self.bytes, m.created_at)?;
        writeln!(f, "vault {}", m.vault)?;
        writeln!(f, "audit chain intact: {} entries, head {}", m.audit_head_seq, m.audit_head_hash)?;
        writeln!(f, "stored state intact: {} records, {} filing jobs", self.records, self.jobs)?;
        writeln!(
            f,
            "it holds no root key: keep the root key's own backup apart from it (README, \"Backup and restore\")"
        )
    }
}

/// What a restore or an adoption verified and changed.
#[derive(Debug)]
pub struct RestoreReport {
    /// The database now in place, described without credentials.
    pub database: String,
    /// The backup restored from (none when adopting).
    pub backup: Option<(PathBuf, Manifest)>,
    /// Where the database it replaced was kept (`--force`).
    pub replaced: Option<PathBuf>,
    /// The audit head of the database now in place.
    pub head: ChainHead,
    /// Record rows verified.
    pub records: u64,
    /// Filing jobs verified.
    pub jobs: u64,
    /// How far this host had verified the chain before (its watermark).
    pub previous_watermark: Option<ChainHead>,
    /// The audit head sequence number of the database it replaced, when
    /// that database could be read.
    pub replaced_head_seq: Option<u64>,
    /// The open filing jobs cancelled (see [`RESTORE_CANCEL_REASON`]).
    pub cancelled: Vec<JobId>,
    /// Where this host's chain watermark is now: the head after the
    /// cancellations.
    pub watermark: ChainHead,
}

/// How many audit entries a restore lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostEntries {
    /// Counted from the chain head of the database it replaced.
    Exactly(u64),
    /// Counted from this host's watermark, which moves only on decisions:
    /// entries after the last decision (tokens issued) are not counted.
    AtLeast(u64),
}

impl RestoreReport {
    /// Audit entries newer than the restored head: what the restore lost.
    /// `None` when neither a replaced database nor a watermark tells.
    pub fn lost_entries(&self) -> Option<LostEntries> {
        let lost = |seq: u64| seq.saturating_sub(self.head.seq);
        match (self.replaced_head_seq, self.previous_watermark) {
            (Some(seq), _) => Some(LostEntries::Exactly(lost(seq))),
            (None, Some(mark)) => Some(LostEntries::AtLeast(lost(mark.seq))),
            (None, None) => None,
        }
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backup {
            Some((path, manifest)) => writeln!(
                f,
                "restored {} from {} (taken {}, vault {})",
                self.database,
                path.display(),
                manifest.created_at,
                manifest.vault
            )?,
            None => writeln!(f, "adopted {} as it is now", self.database)?,
        }
        if let Some(replaced) = &self.replaced {
            writeln!(f, "the database it replaced is kept as {}", replaced.display())?;
        }
        writeln!(f, "audit chain intact: {} entries, head {}", self.head.seq, hex::encode(self.head.hash))?;
        writeln!(f, "stored state intact: {} records, {} filing jobs", self.records, self.jobs)?;
        const GONE: &str = "the calls they record happened, and what they changed (tokens, jobs, releases) is gone";
        match (self.lost_entries(), self.previous_watermark) {
            (Some(LostEntries::Exactly(lost)), _) if lost > 0 => writeln!(
                f,
                "LOST: {lost} audit entries of the database it replaced are newer than the restored head; {GONE}"
            )?,
            (Some(LostEntries::Exactly(_)), _) => {
                writeln!(f, "nothing of the database it replaced is lost (its head was not newer)")?
            }
            (Some(LostEntries::AtLeast(lost)), Some(mark)) if lost > 0 => writeln!(
                f,
                "LOST: at least {lost} audit entries newer than the restored head (this host had verified up to #{} \
                 at its last decision); {GONE}. Tokens issued after the backup may also be missing: they move no \
                 watermark, so they are not counted",
                mark.seq
            )?,
            (_, Some(mark)) => writeln!(
                f,
                "nothing this host verified is lost (it had verified up to #{} at its last decision); tokens issued \
                 after the backup may still be missing: they move no watermark",
                mark.seq
            )?,
            (_, None) => writeln!(
                f,
                "this host kept no chain watermark, so it cannot tell what was lost: compare the head above with \
                 the head hash you keep elsewhere"
            )?,
        }
        if self.cancelled.is_empty() {
            writeln!(f, "no open filing jobs to cancel")?;
        } else {
            let ids: Vec<&str> = self.cancelled.iter().map(JobId::as_str).collect();
            writeln!(
                f,
                "cancelled {} open filing jobs: {} (their release counts are the backup's; create and approve new \
                 jobs)",
                ids.len(),
                ids.join(", ")
            )?;
        }
        writeln!(f, "chain watermark of this host now at #{}", self.watermark.seq)
    }
}

/// Held by every vault while it serves a data directory (shared), and by a
/// restore or adoption (exclusive): neither runs under the other. An
/// advisory `flock`, released when the holder ends, however it ends.
#[derive(Debug)]
pub struct ServingLock {
    _file: File,
}

impl ServingLock {
    /// The shared lock of a vault about to serve `data_dir`. A restore under
    /// way refuses the start; a lock file that cannot be opened only warns.
    pub fn serving(data_dir: &Path) -> Result<Option<Self>, BackupError> {
        let path = data_dir.join(SERVING_LOCK_FILE);
        let file = match open_lock_file(&path) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(
                    path = %path.display(), %error,
                    "cannot open the serving lock; a restore would not see this vault"
                );
                return Ok(None);
            }
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(BackupError::RestoreUnderWay(data_dir.to_owned())),
            Err(error) => {
                tracing::warn!(
                    path = %path.display(), %error,
                    "cannot take the serving lock; a restore would not see this vault"
                );
                Ok(None)
            }
        }
    }

    /// The exclusive lock of a restore or adoption; refused while a vault
    /// serves `data_dir`.
    fn exclusive(data_dir: &Path) -> Result<Self, BackupError> {
        let path = data_dir.join(SERVING_LOCK_FILE);
        let file = open_lock_file(&path).map_err(io_error("open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(BackupError::VaultServing(data_dir.to_owned())),
            Err(error) => Err(BackupError::Io { action: "lock", path, source: error.into() }),
        }
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// Writes a backup of the SQLite database of `settings` to `out` while the
/// vault may be serving it.
pub async fn backup(settings: &Settings, out: &Path) -> Result<BackupReport, BackupError> {
    let database = match settings.database() {
        DatabaseLocation::Sqlite(path) => path,
        postgres @ DatabaseLocation::Postgres(_) => return Err(BackupError::UsePgDump(postgres.describe())),
    };
    if !database.exists() {
        return Err(BackupError::NoDatabase(settings.database().describe()));
    }
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(BackupError::OutputExists(out.to_owned()));
    }
    let provider = root_key(settings)?;
    let directory = parent_of(out);
    // Beside the output, so nothing of the copy lands on another file system.
    let staging = tempfile::Builder::new()
        .prefix(".mnvault-backup-")
        .tempdir_in(directory)
        .map_err(io_error("create a staging directory in", directory))?;
    let snapshot = staging.path().join(DATABASE_ENTRY);
    snapshot_sqlite(&database, &snapshot, settings.database.write_timeout()).await?;

    let write_timeout = settings.database.write_timeout();
    let store =
        crate::store::open(&DatabaseLocation::Sqlite(snapshot.clone()), OpenMode::Review, write_timeout).await?;
    let checked = async {
        let keys = load_system_keys(store.as_ref(), provider.as_ref()).await?;
        // Verifying consumes one copy of the keys; the manifest is tagged with another.
        let tag_key = load_system_keys(store.as_ref(), provider.as_ref()).await?.state;
        let vault = vault_id(store.as_ref()).await?;
        let verified = verify(store.as_ref(), keys, "the database".into(), None).await?;
        Ok::<_, BackupError>((vault, verified, tag_key))
    }
    .await;
    store.close().await;
    let (vault, verified, tag_key) = checked?;

    let hashed = snapshot.clone();
    let (database_bytes, sha) = blocking(move || hash_file(&hashed)).await?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_at: rfc3339(OffsetDateTime::now_utc()),
        vault,
        audit_head_seq: verified.head.seq,
        audit_head_hash: hex::encode(verified.head.hash),
        database_bytes,
        database_sha256: hex::encode(sha),
        tag: String::new(),
    };
    manifest.tag = hex::encode(manifest.compute_tag(&tag_key));

    let (out_owned, written_manifest) = (out.to_owned(), manifest.clone());
    let bytes = blocking(move || write_archive(&out_owned, &written_manifest, &snapshot)).await?;
    Ok(BackupReport { path: out.to_owned(), bytes, manifest, records: verified.records, jobs: verified.jobs })
}

/// Restores the SQLite database of `settings` from the backup `from`: checks
/// it, verifies it, puts it in place (the database there is kept aside, and
/// only with `force`), cancels its open filing jobs and moves this host's
/// chain watermark to its head.
pub async fn restore(settings: &Settings, from: &Path, force: bool) -> Result<RestoreReport, BackupError> {
    let database = match settings.database() {
        DatabaseLocation::Sqlite(path) => path,
        postgres @ DatabaseLocation::Postgres(_) => return Err(BackupError::UsePgRestore(postgres.describe())),
    };
    let exists = sqlite_files(&database).iter().any(|file| std::fs::symlink_metadata(file).is_ok());
    if exists && !force {
        return Err(BackupError::DatabaseExists(database));
    }
    check_owner(&settings.data_dir)?;
    let _lock = ServingLock::exclusive(&settings.data_dir)?;
    let watermark = FileWatermark::new(watermark_path(settings));
    let previous = watermark.read()?;
    let provider = root_key(settings)?;
    let timeout = settings.database.write_timeout();
    let directory = parent_of(&database);
    // Beside the database, so that putting it in place is one rename.
    let staging = tempfile::Builder::new()
        .prefix(".vault.db.restore-")
        .tempfile_in(directory)
        .map_err(io_error("create a staging file in", directory))?;
    let (source, copy) = (from.to_owned(), staging.reopen().map_err(io_error("open", staging.path()))?);
    let manifest = blocking(move || unpack(&source, copy)).await?;

    let what = format!("the backup {}", from.display());
    let damaged = |why: &str| BackupError::Damaged { path: from.to_owned(), why: why.to_owned() };
    check_untrusted_sqlite(staging.path()).await.map_err(damaged)?;
    // Brought to this mnvault's schema as `serve` would, so an older backup restores.
    let location = DatabaseLocation::Sqlite(staging.path().to_owned());
    let store =
        crate::store::open(&location, OpenMode::Serve, timeout).await.map_err(|error| damaged(unopened(&error)))?;
    let checked = async {
        let keys = match load_system_keys(store.as_ref(), provider.as_ref()).await {
            Ok(keys) => keys,
            Err(AuditKeyError::Unwrap { provider }) => {
                return Err(BackupError::Foreign { what: what.clone(), provider })
            }
            Err(AuditKeyError::Missing) => return Err(damaged("its database holds no vault (no system key)")),
            Err(_) => return Err(damaged(UNREADABLE)),
        };
        if !manifest.tag_verifies(&keys.state) {
            return Err(damaged("its manifest's tag does not verify: it was altered"));
        }
        let head = store.begin_read().await?.audit_head().await?;
        if (head.seq, hex::encode(head.hash)) != (manifest.audit_head_seq, manifest.audit_head_hash.clone()) {
            return Err(damaged("its database does not hold the audit head its manifest records"));
        }
        let verified =
            verify(store.as_ref(), keys, what.clone(), previous.map(|mark| (mark, watermark_path(settings)))).await?;
        // Cancelled in the copy, so the file that lands in the data
        // directory has no open job, however the restore ends after.
        let (cancelled, now) = cancel_open_jobs(&store, provider.clone(), &what)
            .await
            .map_err(|error| BackupError::CopyJobsNotCancelled { what: what.clone(), why: error.to_string() })?;
        Ok((verified, cancelled, now))
    }
    .await;
    store.close().await;
    // The cancellations go into the copy's file itself, not a WAL beside it.
    let checked = match checked {
        Ok(done) => fold_wal(staging.path(), timeout)
            .await
            .map(|()| done)
            .map_err(|why| BackupError::CopyJobsNotCancelled { what: what.clone(), why }),
        Err(error) => Err(error),
    };
    remove_side_files(staging.path());
    // What the copy's database said is never repeated: it may hold anything.
    let (verified, cancelled, now) = checked.map_err(|error| match error {
        BackupError::Store(_) => damaged(UNREADABLE),
        other => other,
    })?;

    let pending = mark_restore_pending(settings)?;

    let (replaced, replaced_head_seq) = if exists {
        let aside = move_aside(&database, timeout).await?;
        let seq = audit_head_seq(&aside).await;
        (Some(aside), seq)
    } else {
        (None, None)
    };
    staging.persist(&database).map_err(|error| BackupError::Io {
        action: "put the restored database in place at",
        path: database.clone(),
        source: error.error,
    })?;
    sync_directory(directory)?;
    accept_head(&watermark, &now, settings)?;
    clear_restore_pending(&pending, settings)?;
    Ok(RestoreReport {
        database: settings.database().describe(),
        backup: Some((from.to_owned(), manifest)),
        replaced,
        head: verified.head,
        records: verified.records,
        jobs: verified.jobs,
        previous_watermark: previous,
        replaced_head_seq,
        cancelled,
        watermark: now,
    })
}

/// Takes on a database restored by other means (`pg_restore`,
/// point-in-time recovery, a SQLite file copied back): brings it to this
/// mnvault's schema as `serve` would, verifies it as `mnvault audit verify`
/// does, cancels its open filing jobs and moves this host's chain watermark
/// to its head, so that the vault serves it instead of refusing it as
/// rolled back.
pub async fn adopt(settings: &Settings) -> Result<RestoreReport, BackupError> {
    let location = settings.database();
    if !location.may_exist() {
        return Err(BackupError::NoDatabase(location.describe()));
    }
    check_owner(&settings.data_dir)?;
    let _lock = ServingLock::exclusive(&settings.data_dir)?;
    let watermark = FileWatermark::new(watermark_path(settings));
    let previous = watermark.read()?;
    let provider = root_key(settings)?;
    let described = location.describe();
    let what = format!("the database ({described})");
    let unreadable = |why: &'static str| BackupError::Unreadable { what: what.clone(), why };
    if let DatabaseLocation::Sqlite(path) = &location {
        check_untrusted_sqlite(path).await.map_err(unreadable)?;
    }
    // From here the database may change. Once its cancellations have begun,
    // the mark stays until the watermark has moved, whatever fails; a
    // refusal before them leaves the database's jobs as they were, and the
    // mark as it was.
    let unfinished_before = std::fs::symlink_metadata(restore_pending_path(&settings.data_dir)).is_ok();
    let pending = mark_restore_pending(settings)?;
    let refused = |error: BackupError| {
        if !unfinished_before {
            if let Err(error) = clear_restore_pending(&pending, settings) {
                tracing::warn!(%error, "cannot remove the mark of a refused adoption");
            }
        }
        error
    };
    let store = match crate::store::open(&location, OpenMode::Serve, settings.database.write_timeout()).await {
        Ok(store) => store,
        Err(error) => return Err(refused(unreadable(unopened(&error)))),
    };
    let checked = async {
        let keys = match load_system_keys(store.as_ref(), provider.as_ref()).await {
            Ok(keys) => keys,
            Err(AuditKeyError::Unwrap { provider }) => {
                return Err((BackupError::Foreign { what: what.clone(), provider }, false))
            }
            Err(AuditKeyError::Missing) => return Err((unreadable("holds no vault (no system key)"), false)),
            Err(_) => return Err((unreadable(UNREADABLE), false)),
        };
        let verified =
            verify(store.as_ref(), keys, what.clone(), previous.map(|mark| (mark, watermark_path(settings)))).await;
        // What the database said is never repeated: it may have been put back by anyone.
        let verified = verified.map_err(|error| match error {
            BackupError::Store(_) => unreadable(UNREADABLE),
            other => other,
        });
        let verified = verified.map_err(|error| (error, false))?;
        let (cancelled, now) =
            cancel_open_jobs(&store, provider.clone(), &described).await.map_err(|error| (error, true))?;
        Ok((verified, cancelled, now))
    }
    .await;
    store.close().await;
    let (verified, cancelled, now) = match checked {
        Ok(done) => done,
        Err((error, true)) => return Err(error),
        Err((error, false)) => return Err(refused(error)),
    };
    accept_head(&watermark, &now, settings)?;
    clear_restore_pending(&pending, settings)?;
    Ok(RestoreReport {
        database: described,
        backup: None,
        replaced: None,
        head: verified.head,
        records: verified.records,
        jobs: verified.jobs,
        previous_watermark: previous,
        replaced_head_seq: None,
        cancelled,
        watermark: now,
    })
}

/// What a database that does not read as an mnvault database is said to be.
const UNREADABLE: &str = "does not read as an mnvault database";

/// A fixed sentence for a store that did not open: the database's own error
/// text is not repeated (it may hold anything, even a number).
fn unopened(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable(_) => "cannot be reached, or stays busy: check that it runs and nothing else holds it",
        StoreError::Migration(_) => {
            "cannot be brought to this mnvault's schema (is it from a newer mnvault, or changed by hand?)"
        }
        _ => UNREADABLE,
    }
}

/// Refuses a restore or adoption by another user than the data directory's
/// owner: files it writes (the database, the watermark) would end up owned
/// by that user, and the vault could not open them.
fn check_owner(data_dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(data_dir).map_err(io_error("read", data_dir))?.uid();
    let euid = rustix::process::geteuid().as_raw();
    if owner != euid {
        return Err(BackupError::NotOwner { data_dir: data_dir.to_owned(), owner, euid });
    }
    Ok(())
}

/// Cancels, as [`RESTORE_PRINCIPAL`], every filing job of the restored
/// database still pending or approved: its release counts are the backup's,
/// so a job left open would release again what it released after the
/// backup. Always, not only when this host saw entries lost: on PostgreSQL
/// other replicas' releases never moved this host's watermark. Returns the
/// jobs cancelled and the audit head after.
async fn cancel_open_jobs(
    store: &Arc<dyn Store>,
    provider: Arc<dyn RootKeyProvider>,
    database: &str,
) -> Result<(Vec<JobId>, ChainHead), BackupError> {
    let failed = |why: String| BackupError::JobsNotCancelled { database: database.to_owned(), why };
    let by = Principal::parse(RESTORE_PRINCIPAL).expect("the restore principal is a valid name");
    let core =
        VaultCore::open(store.clone(), provider, Policy::none()).await.map_err(|error| failed(error.to_string()))?;
    let cancelled =
        core.cancel_open_jobs(&by, RESTORE_CANCEL_REASON).await.map_err(|error| failed(error.to_string()))?;
    let head =
        async { store.begin_read().await?.audit_head().await }.await.map_err(|error| failed(error.to_string()))?;
    Ok((cancelled, head))
}

/// Connection options for a SQLite file this vault did not just write (a
/// backup's copy, a file put back by hand): nothing its schema names runs
/// with more than innocuous functions, nothing is written, and damaged pages
/// are caught.
fn untrusted_sqlite(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .pragma("trusted_schema", "OFF")
        .pragma("query_only", "ON")
        .pragma("cell_size_check", "ON")
}

/// Checks, before any other query runs on it, that the SQLite file at `path`
/// is whole and holds only what an mnvault database holds: tables and
/// indexes; no view, trigger or virtual table, whose code would run on the
/// vault's reads. The reason is a fixed sentence: what the file says is
/// never repeated.
async fn check_untrusted_sqlite(path: &Path) -> Result<(), &'static str> {
    let mut connection =
        SqliteConnection::connect_with(&untrusted_sqlite(path)).await.map_err(|_| "its database does not open")?;
    let checked = async {
        let quick: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&mut connection)
            .await
            .map_err(|_| "its database does not read as SQLite")?;
        if quick != ["ok"] {
            return Err("its database is damaged (SQLite's quick check fails)");
        }
        let objects: Vec<(String, String)> = sqlx::query_as("SELECT type, COALESCE(sql, '') FROM sqlite_master")
            .fetch_all(&mut connection)
            .await
            .map_err(|_| "its database does not read as SQLite")?;
        let expected = |(kind, sql): &(String, String)| {
            kind == "index" || (kind == "table" && !sql.trim_start().to_ascii_uppercase().starts_with("CREATE VIRTUAL"))
        };
        if !objects.iter().all(expected) {
            return Err("its database holds views, triggers or virtual tables, which no mnvault database has");
        }
        Ok(())
    }
    .await;
    let _ = connection.close().await;
    checked
}

/// The audit head's sequence number in the SQLite file at `path`, if it reads.
async fn audit_head_seq(path: &Path) -> Option<u64> {
    check_untrusted_sqlite(path).await.ok()?;
    let mut connection = SqliteConnection::connect_with(&untrusted_sqlite(path)).await.ok()?;
    let seq: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT MAX(seq) FROM audit_entries").fetch_one(&mut connection).await;
    let _ = connection.close().await;
    seq.ok().map(|seq| seq.map_or(0, |seq| u64::try_from(seq).unwrap_or_default()))
}

/// What [`verify`] found in a database that verifies.
struct Verified {
    head: ChainHead,
    records: u64,
    jobs: u64,
}

/// The audit chain, then every record and filing job, as `mnvault audit
/// verify` checks them; and, given this host's watermark, that the chain
/// does not fork from it.
async fn verify(
    store: &dyn Store,
    keys: SystemKeys,
    what: String,
    watermark: Option<(ChainHead, PathBuf)>,
) -> Result<Verified, BackupError> {
    let unverified = |why: String| BackupError::Unverified { what: what.clone(), why };
    let head = store.begin_read().await?.audit_head().await?;
    let chain = verify_chain(store, &keys.audit_chain, |_| {}).await?;
    match chain {
        Ok(chain) if chain.head_hash == head.hash => {}
        Ok(_) => return Err(unverified("its audit head moved while it was verified".into())),
        Err(broken) => return Err(unverified(format!("its audit chain is broken at {broken}"))),
    }
    if let Some((mark, path)) = watermark {
        if mark.seq <= head.seq {
            let filter = AuditFilter { after_seq: mark.seq.saturating_sub(1), limit: 1, ..AuditFilter::default() };
            let entry = store.begin_read().await?.audit_entries(&filter).await?.pop();
            // Another host's restore or adoption of this database (PostgreSQL)
            // may have appended its cancellations where this host's watermark
            // points; the chain verified, so that entry is the vault's own.
            // No configured principal or certificate may take that name.
            let adopted_elsewhere = |entry: &AuditRecord| {
                entry.principal == RESTORE_PRINCIPAL
                    && entry.operation == Operation::CancelFilingJob.id()
                    && entry.reason == RESTORE_CANCEL_REASON
            };
            if entry
                .is_none_or(|entry| (entry.seq != mark.seq || entry.hash != mark.hash) && !adopted_elsewhere(&entry))
            {
                return Err(BackupError::ForksFromWatermark { what, seq: mark.seq, watermark: path });
            }
        }
    }
    let integrity = Integrity::new(keys.state);
    let state = verify_state(store, &keys.audit_chain, &integrity, |_| {}).await?;
    if state.tampered > 0 {
        let first = state.named.first().cloned().unwrap_or_default();
        return Err(unverified(format!(
            "{} of {} records and {} filing jobs fail their integrity check, the first: {first}",
            state.tampered, state.records, state.jobs
        )));
    }
    Ok(Verified { head, records: state.records, jobs: state.jobs })
}

/// Where the mark of an unfinished restore or adoption of `data_dir` is.
pub fn restore_pending_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RESTORE_PENDING_FILE)
}

/// Writes (durably) the mark that a restore or adoption is changing the
/// data directory; returns where.
fn mark_restore_pending(settings: &Settings) -> Result<PathBuf, BackupError> {
    let path = restore_pending_path(&settings.data_dir);
    let written = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).and_then(
        |mut file| {
            let at = rfc3339(OffsetDateTime::now_utc());
            writeln!(file, "a restore or adoption began at {at}; run `mnvault restore --adopt` to finish it")?;
            file.sync_all()
        },
    );
    written.map_err(io_error("write", &path))?;
    sync_directory(&settings.data_dir)?;
    Ok(path)
}

/// Removes the mark once the cancellations and the watermark move are done.
fn clear_restore_pending(path: &Path, settings: &Settings) -> Result<(), BackupError> {
    std::fs::remove_file(path).map_err(io_error("remove", path))?;
    sync_directory(&settings.data_dir)
}

/// Folds the WAL of the closed SQLite file at `path` into it; a pool that
/// is letting go of the file gets up to `timeout`.
async fn fold_wal(path: &Path, timeout: Duration) -> Result<(), String> {
    let options = SqliteConnectOptions::new().filename(path).busy_timeout(timeout);
    let mut connection = SqliteConnection::connect_with(&options).await.map_err(|error| error.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let folded = loop {
        // A TRUNCATE checkpoint copies every frame into the file and empties
        // the WAL; unlike leaving WAL mode it does not need the only
        // connection, so a pool connection still closing does not stop it.
        let checkpoint: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut connection).await;
        match checkpoint {
            Ok((0, _, _)) => break Ok(()),
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {}
            Ok(_) => break Err("its WAL could not be checkpointed: the file stays in use".into()),
            Err(error) => break Err(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = connection.close().await;
    folded
}

fn watermark_path(settings: &Settings) -> PathBuf {
    settings.data_dir.join(WATERMARK_FILE)
}

/// Moves this host's watermark to `head` (or removes it for an empty chain,
/// which no watermark may name).
fn accept_head(watermark: &FileWatermark, head: &ChainHead, settings: &Settings) -> Result<(), BackupError> {
    let path = watermark_path(settings);
    if head.seq == 0 {
        return match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(BackupError::Io { action: "remove", path, source: error })
            }
            _ => Ok(()),
        };
    }
    watermark.write(head).map_err(io_error("write the chain watermark", &path))
}

fn root_key(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, BackupError> {
    Ok(crate::root_key::open(settings)?)
}

/// The vault's id: SHA-256 of its wrapped system key.
async fn vault_id(store: &dyn Store) -> Result<String, BackupError> {
    let wrapped = store.begin_read().await?.system_key(AUDIT_CHAIN_KEY_NAME).await?.ok_or(AuditKeyError::Missing)?;
    Ok(hex::encode(Sha256::digest(wrapped.as_bytes())))
}

/// A transactionally consistent copy of the database at `database`, made on
/// a read-only connection of its own while writers go on.
async fn snapshot_sqlite(database: &Path, snapshot: &Path, timeout: Duration) -> Result<(), BackupError> {
    // VACUUM INTO writes into an empty file; made here so it is 0600 whatever the umask.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(snapshot)
        .map_err(io_error("create", snapshot))?;
    let target = snapshot.to_str().ok_or_else(|| BackupError::Io {
        action: "use",
        path: snapshot.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
    })?;
    let options = SqliteConnectOptions::new().filename(database).read_only(true).busy_timeout(timeout);
    let database_error = |error: sqlx::Error| BackupError::Store(StoreError::Database(Box::new(error)));
    let mut connection = SqliteConnection::connect_with(&options).await.map_err(database_error)?;
    let copied = sqlx::query("VACUUM INTO ?").bind(target).execute(&mut connection).await;
    let _ = connection.close().await;
    copied.map_err(database_error)?;
    Ok(())
}

/// The database file and the files SQLite keeps beside it.
fn sqlite_files(database: &Path) -> [PathBuf; 4] {
    ["", "-wal", "-shm", "-journal"].map(|suffix| with_suffix(database, suffix))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes what SQLite may have left beside a closed copy.
fn remove_side_files(database: &Path) {
    for file in &sqlite_files(database)[1..] {
        let _ = std::fs::remove_file(file);
    }
}

/// Moves the database at `database` (and its WAL) aside, once no other
/// connection has it open; returns where it went.
async fn move_aside(database: &Path, timeout: Duration) -> Result<PathBuf, BackupError> {
    let held = take_over(database, timeout).await?;
    let stamp = OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_default();
    let mut aside = with_suffix(database, &format!(".replaced-{stamp}"));
    for n in 2.. {
        if sqlite_files(&aside).iter().all(|file| std::fs::symlink_metadata(file).is_err()) {
            break;
        }
        aside = with_suffix(database, &format!(".replaced-{stamp}-{n}"));
    }
    for (from, to) in sqlite_files(database).iter().zip(sqlite_files(&aside).iter()) {
        if std::fs::symlink_metadata(from).is_ok() {
            std::fs::rename(from, to).map_err(io_error("move aside", from))?;
        }
    }
    if let Some(held) = held {
        let _ = held.close().await;
    }
    Ok(aside)
}

/// A connection that alone has the database at `database` open, in an
/// exclusive transaction; `None` if SQLite cannot read the file (it is moved
/// aside as it is). Leaving WAL mode needs the only connection and folds the
/// WAL into the file, so the copy kept aside is whole; the exclusive
/// transaction then keeps everyone else out until the new file is in place.
/// A process that is letting go of the file gets up to `timeout`.
async fn take_over(database: &Path, timeout: Duration) -> Result<Option<SqliteConnection>, BackupError> {
    let in_use = || BackupError::DatabaseInUse(database.to_owned());
    let options = SqliteConnectOptions::new().filename(database).busy_timeout(timeout);
    let Ok(mut connection) = SqliteConnection::connect_with(&options).await else { return Ok(None) };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mode: Result<String, _> =
            sqlx::query_scalar("PRAGMA journal_mode = DELETE").fetch_one(&mut connection).await;
        match mode {
            Ok(mode) if mode.eq_ignore_ascii_case("delete") => break,
            Ok(_) => {}
            Err(error) if is_busy(&error) => {}
            Err(_) => return Ok(None),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(in_use());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::raw_sql("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE")
        .execute(&mut connection)
        .await
        .map_err(|_| in_use())?;
    Ok(Some(connection))
}

fn is_busy(error: &sqlx::Error) -> bool {
    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
    matches!(error, sqlx::Error::Database(db)
        if db.code().and_then(|code| code.parse::<i64>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6)))
}

/// Size and SHA-256 of a file.
fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), BackupError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer).map_err(io_error("read", path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        total += read as u64;
    }
    Ok((total, hasher.finalize().into()))
}

/// Writes the backup file: manifest, then the database copy; aside first,
/// then linked to `out` only if nothing is there, so a failed backup leaves
/// no partial file and never replaces one. Returns its size.
fn write_archive(out: &Path, manifest: &Manifest, snapshot: &Path) -> Result<u64, BackupError> {
    let directory = parent_of(out);
    let mut file = tempfile::Builder::new()
        .prefix(".mnvault-backup-")
        .tempfile_in(directory)
        .map_err(io_error("create a file in", directory))?;
    let text = toml::to_string(manifest).expect("a manifest serialises");
    let mtime = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or_default();
    let written = (|| {
        let mut builder = tar::Builder::new(file.as_file_mut());
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(text.len() as u64);
        builder.append_data(&mut header.clone(), MANIFEST_ENTRY, text.as_bytes())?;
        let database = File::open(snapshot)?;
        header.set_size(database.metadata()?.len());
        builder.append_data(&mut header, DATABASE_ENTRY, database)?;
        builder.into_inner()?.sync_all()
    })();
    written.map_err(io_error("write", file.path()))?;
    let bytes = file.as_file().metadata().map_err(io_error("read", file.path()))?.len();
    file.persist_noclobber(out).map_err(|error| {
        if error.error.kind() == std::io::ErrorKind::AlreadyExists {
            BackupError::OutputExists(out.to_owned())
        } else {
            BackupError::Io { action: "write", path: out.to_owned(), source: error.error }
        }
    })?;
    sync_directory(directory)?;
    Ok(bytes)
}

/// Reads the backup at `from` into `copy`: its manifest must be one this
/// mnvault reads, and the database must have the size and SHA-256 it records.
fn unpack(from: &Path, mut copy: File) -> Result<Manifest, BackupError> {
    let damaged = |why: String| BackupError::Damaged { path: from.to_owned(), why };
    let file = File::open(from).map_err(io_error("open", from))?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries().map_err(|_| damaged("it is not a tar archive".into()))?;

    let mut manifest_entry = next_entry(&mut entries, MANIFEST_ENTRY, &damaged)?;
    let mut text = Vec::new();
    manifest_entry
        .by_ref()
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|_| damaged("its manifest is cut short".into()))?;
    drop(manifest_entry);
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(damaged("its manifest is too large to be one".into()));
    }
    // The file may hold anything: what it says is never repeated.
    let manifest: Manifest = std::str::from_utf8(&text)
        .ok()
        .and_then(|text| toml::from_str(text).ok())
        .ok_or_else(|| damaged("its manifest does not read as an mnvault backup manifest".into()))?;
    if manifest.format != FORMAT {
        return Err(damaged("its manifest names another format".into()));
    }
    if manifest.version != VERSION {
        return Err(damaged(format!(
            "it is of backup format version {}, and this mnvault reads version {VERSION}",
            manifest.version
        )));
    }

    let mut database = next_entry(&mut entries, DATABASE_ENTRY, &damaged)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let read = database.read(&mut buffer).map_err(|_| damaged("its database is cut short".into()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        copy.write_all(&buffer[..read]).map_err(|source| BackupError::Io {
            action: "write the restored database beside",
            path: from.to_owned(),
            source,
        })?;
        total += read as u64;
    }
    drop(database);
    if total != manifest.database_bytes {
        return Err(damaged(format!(
            "its database is cut short or grew: {total} bytes where its manifest records {}",
            manifest.database_bytes
        )));
    }
    if hex::encode(hasher.finalize()) != manifest.database_sha256 {
        return Err(damaged(
            "its database does not match the SHA-256 its manifest records: it changed after the backup was taken"
                .into(),
        ));
    }
    if entries.next().is_some() {
        return Err(damaged(format!("it holds more than {MANIFEST_ENTRY} and {DATABASE_ENTRY}")));
    }
    copy.sync_all().map_err(|source| BackupError::Io {
        action: "write the restored database beside",
        path: from.to_owned(),
        source,
    })?;
    Ok(manifest)
}

/// The next entry of a backup, which must be the regular file `name`.
fn next_entry<'a>(
    entries: &mut tar::Entries<'a, File>,
    name: &str,
    damaged: &impl Fn(String) -> BackupError,
) -> Result<tar::Entry<'a, File>, BackupError> {
    let entry = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(_)) => return Err(damaged(format!("the header of {name} does not read (its checksum fails)"))),
        None => return Err(damaged(format!("it ends before {name}"))),
    };
    let named = entry.path().is_ok_and(|path| path == Path::new(name));
    if !named || !entry.header().entry_type().is_file() {
        return Err(damaged(format!("{name} is not where a backup has it")));
    }
    Ok(entry)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes a rename in `directory` durable.
fn sync_directory(directory: &Path) -> Result<(), BackupError> {
    File::open(directory).and_then(|dir| dir.sync_all()).map_err(io_error("sync", directory))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| BackupError::Io {
        action: "finish",
        path: PathBuf::from("the backup task"),
        source: std::io::Error::other(error),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_vault_keeps_restores_out_and_a_restore_keeps_vaults_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServingLock::serving(dir.path()).unwrap().expect("a lock");
        let second = ServingLock::serving(dir.path()).unwrap().expect("replicas share it");
        assert!(matches!(ServingLock::exclusive(dir.path()), Err(BackupError::VaultServing(_))));
        drop((first, second));
        let restoring = ServingLock::exclusive(dir.path()).unwrap();
        assert!(matches!(ServingLock::serving(dir.path()), Err(BackupError::RestoreUnderWay(_))));
        drop(restoring);
        assert!(ServingLock::serving(dir.path()).unwrap().is_some());
        let mode = std::fs::metadata(dir.path().join(SERVING_LOCK_FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn the_restore_principal_is_a_valid_name() {
        assert!(Principal::parse(RESTORE_PRINCIPAL).is_ok());
    }

    #[test]
    fn a_manifest_tag_covers_every_field() {
        let key = StateKey::new(&mnvault_keys::KeyMaterial::generate());
        let mut manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            created_at: "2025-01-01T00:00:00Z".into(),
            vault: "ab".repeat(32),
            audit_head_seq: 7,
            audit_head_hash: "cd".repeat(32),
            database_bytes: 4096,
            database_sha256: "ef".repeat(32),
            tag: String::new(),
        };
        manifest.tag = hex::encode(manifest.compute_tag(&key));
        assert!(manifest.tag_verifies(&key));
        let other = StateKey::new(&mnvault_keys::KeyMaterial::generate());
        assert!(!manifest.tag_verifies(&other));
        let edits: [fn(&mut Manifest); 8] = [
            |m| m.format.push('x'),
            |m| m.version += 1,
            |m| m.created_at.push('x'),
            |m| m.vault.push('0'),
            |m| m.audit_head_seq -= 1,
            |m| m.audit_head_hash.push('0'),
            |m| m.database_bytes += 1,
            |m| m.database_sha256.push('0'),
        ];
        for edit in edits {
            let mut edited = manifest.clone();
            edit(&mut edited);
            assert!(!edited.tag_verifies(&key), "{edited:?}");
        }
    }
}
