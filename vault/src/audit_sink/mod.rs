//! `[[audit.sinks]]`: the audit log streamed, besides the database, to a
//! file (with rotation), to standard output or to syslog, so that a SIEM
//! and a witness outside the server keep a copy.
//!
//! Every line a sink gets is one [`AuditLine`] as `to_json()` writes it
//! (the format of exports, `mnvault audit verify --from FILE` reads it):
//! each entry, and right after the entry it signs, each signed checkpoint.
//!
//! **The database is the source of truth.** A sink is fed by a tailer task
//! that reads the log by sequence number, in pages, from the sink's own
//! position (its [`Cursor`]): a file sink finds it in its last complete line
//! (a torn last line is cut off first; after a rotation, in the newest
//! rotated file); standard output and syslog keep it in a cursor file in
//! the data directory (`audit-sink-<name>.cursor`, 0600), written after
//! each acknowledged batch. After any failure the tailer reopens the sink,
//! finds its position again and catches up, so the file sink neither loses
//! nor repeats a line. Standard output and syslog are at least once: a
//! crash between sending a batch and writing the cursor file sends that
//! batch again at the next start (a SIEM deduplicates by `type` and `seq`).
//! A sink whose position does not link to the database's log (its last
//! entry's hash differs, or it is ahead of the head: a restored or another
//! vault's database) stops, named in the log, until it is moved away. A
//! sink reopened behind what this run already wrote to it (its file or
//! cursor file replaced or rewound) fails rather than write lines twice.
//!
//! **Nothing unverified is shipped.** Each batch read from the database is
//! checked as the vault checks its own chain (links, hashes, MACs under the
//! chain key) and each checkpoint's signature must verify over the entry it
//! follows; on a break the sink stops for good (until a restart), logged at
//! error and named in its failure, and a required sink refuses calls.
//!
//! The tailer wakes when a call of this vault appended an entry
//! ([`SinkGate::appended`]) and every `poll_interval_ms` (entries of other
//! replicas and of the background tasks).
//!
//! **Required sinks.** A sink with `required = true` that fails (a write
//! error, a write that outlived `write_timeout_ms`), or whose acknowledged
//! position lags the chain head by more than `max_lag_entries`, or has not
//! moved for `max_lag_ms` while behind, makes every call refuse with
//! `UNAVAILABLE`, naming the sink ([`SinkGate::check`], at the start of each
//! call, and before each page of an export and each batch of a tokenize
//! stream); the refusal is still written to the database's log. Writes run
//! on a blocking thread under a timeout, so no call ever waits on a sink; a
//! write that never returns (a pipe nobody reads) is abandoned after a few
//! more timeouts for a new writer ([`Slot`]), and files are opened without
//! waiting or following links (`own_file`). A sink added as required to a
//! long log refuses calls until it has caught up (more than
//! `max_lag_entries` behind): add it as not required first. The
//! tailer retries with a backoff (doubling up to `retry_max_ms`) and calls
//! succeed again by themselves once the sink has caught up. A sink that is
//! not required only logs its failures.
//!
//! **Replicas.** Every replica's tailers read the same database, so each
//! sink of each replica gets the whole log, whichever replica wrote it.
//! Configure a sink on one replica only (or give each replica a file of its
//! own: each is a complete copy). Two vaults never write one file: a file
//! sink holds a lock (`<file>.lock`) and a second writer fails, named.

mod file;
mod own_file;
mod stdout;
mod syslog;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use mnvault_core::audit::checkpoint::SignedCheckpoint;
use mnvault_core::audit::line::AuditLine;
use mnvault_core::audit::AuditRecord;
use mnvault_core::store::AuditFilter;
use mnvault_keys::{entry_hash, GENESIS_HASH};

use crate::config::Settings;
use crate::service::Context;

pub use syslog::SyslogAddress;

/// Sinks one vault feeds at most.
pub const MAX_SINKS: usize = 8;
/// Entries one batch (one read, one acknowledged write) holds at most.
const BATCH_ENTRIES: u32 = mnvault_core::vault::AUDIT_PAGE;
/// The first wait after a failure; it doubles up to `retry_max_ms`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// `kind` of an audit sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines appended to a file, rotated by size.
    File,
    /// JSON lines on the vault's standard output.
    Stdout,
    /// RFC 5424 messages to a syslog receiver.
    Syslog,
}

impl SinkKind {
    fn id(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Stdout => "stdout",
            SinkKind::Syslog => "syslog",
        }
    }
}

/// One `[[audit.sinks]]` entry.
///
/// | key | for | default | what it does |
/// |---|---|---|---|
/// | `kind` | all | (required) | `"file"`, `"stdout"` or `"syslog"` |
/// | `name` | all | the kind | names the sink in refusals, logs and its cursor file; `[a-z0-9-]`, a letter first, at most 32, no My Number, unique |
/// | `required` | all | false | calls refuse with `UNAVAILABLE` while the sink fails or lags |
/// | `write_timeout_ms` | all | 5000 | longest a write (or open, connect) may take, at most 30000; past it the sink has failed |
/// | `max_lag_entries` | all | 10000 | a required sink this many entries behind the head refuses calls |
/// | `max_lag_ms` | all | 30000 | a required sink behind the head that has not moved for this long refuses calls |
/// | `poll_interval_ms` | all | 1000 | how often the log is read for entries of other replicas and background tasks |
/// | `retry_max_ms` | all | 10000 | longest wait between retries of a failed sink |
/// | `path` | file | (required) | the file; relative to the data directory; never one of the vault's own files |
/// | `rotate_bytes` | file | 104857600 | rotate before the file would pass this size (0: never; else at least 4096) |
/// | `rotate_keep` | file | 10 | rotated files kept (`<file>.1` newest … `<file>.N`), 1 to 1000 |
/// | `address` | syslog | `unix:/dev/log` | `unix:<path>`, `udp://host:port` or `tcp://host:port` |
/// | `facility` | syslog | `authpriv` | `auth`, `authpriv`, `daemon`, `user`, `audit`, `local0` … `local7` |
/// | `max_message_bytes` | syslog | 8192 | longest message; a longer entry is sent as its `stub` line (480 to 65000 over UDP or a Unix socket, to 16 MiB over TCP) |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// What the sink writes to.
    pub kind: SinkKind,
    /// Its name; the kind when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether calls refuse while it fails or lags.
    #[serde(default)]
    pub required: bool,
    /// Longest write, open or connect, in milliseconds.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Entries a required sink may lag behind the head.
    #[serde(default = "default_max_lag_entries")]
    pub max_lag_entries: u64,
    /// Milliseconds a required sink may stay behind without moving.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    /// Milliseconds between reads of the log when nothing woke the tailer.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest wait between retries, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// The file (`file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Size that rotates the file (`file`); 0 never rotates.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated files kept (`file`).
    #[serde(default = "default_rotate_keep")]
    pub rotate_keep: u32,
    /// The syslog receiver (`syslog`); `unix:/dev/log` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The syslog facility (`syslog`); `authpriv` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    /// Longest syslog message (`syslog`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
}

fn default_write_timeout_ms() -> u64 {
    5_000
}
fn default_max_lag_entries() -> u64 {
    10_000
}
fn default_max_lag_ms() -> u64 {
    30_000
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    10_000
}
fn default_rotate_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_rotate_keep() -> u32 {
    10
}
fn default_max_message_bytes() -> u32 {
    8_192
}

/// The longest `write_timeout_ms`: a shutdown waits for at most two.
const MAX_WRITE_TIMEOUT_MS: u64 = 30_000;

/// Whether `name` may name a sink: 1 to 32 of `a-z`, `0-9` and `-`, a
/// letter first, and no run of digits that could be a My Number (it goes
/// into refusals, logs, health and a file name).
fn valid_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !mnvault_core::number::contains_number(name)
}

/// The names of the data directory's own files (`crate::datadir`).
fn vault_file_names() -> [&'static str; 10] {
    [
        crate::store::DATABASE_FILE,
        "vault.db-wal",
        "vault.db-shm",
        "vault.db-journal",
        crate::datadir::ROOT_KEY_FILE,
        crate::datadir::DEV_MARKER_FILE,
        crate::config::CONFIG_FILE,
        crate::watermark::WATERMARK_FILE,
        crate::backup::SERVING_LOCK_FILE,
        crate::backup::RESTORE_PENDING_FILE,
    ]
}

/// Whether a sink file at `path` (relative to the data directory, or
/// absolute) would be one of the vault's own files: named as one (in any
/// directory: the database may be configured elsewhere), ending as keys,
/// certificates, databases, configurations and cursor files do, or in the
/// data directory's `tls/` or `dev-pki/`. The file sink checks at run time
/// too that what it cuts or appends to is an audit log of its own.
fn names_a_vault_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    let suffixes = [".db", ".key", ".crt", ".pem", ".toml", ".cursor", ".cursor.new", ".lock"];
    let in_vault_dir = path
        .components()
        .any(|part| matches!(part, std::path::Component::Normal(part) if part == crate::datadir::DEV_PKI_DIR))
        || (path.is_relative() && path.components().next().is_some_and(|first| first.as_os_str() == "tls"));
    vault_file_names().contains(&name) || suffixes.iter().any(|suffix| name.ends_with(suffix)) || in_vault_dir
}

/// The smallest size that rotates a file.
const MIN_ROTATE_BYTES: u64 = 4_096;
/// The largest: a tebibyte.
const MAX_ROTATE_BYTES: u64 = 1 << 40;
/// Rotated files kept at most.
const MAX_ROTATE_KEEP: u32 = 1_000;
/// The smallest syslog message every receiver must accept (RFC 5424, 6.1).
const MIN_MESSAGE_BYTES: u32 = 480;
/// The largest message in one datagram (UDP, a Unix socket).
const MAX_DATAGRAM_BYTES: u32 = 65_000;
/// The largest message over TCP.
const MAX_MESSAGE_BYTES: u32 = 16 * 1024 * 1024;

impl SinkSettings {
    /// A sink of `kind` with every default (a file sink still needs `path`).
    pub fn new(kind: SinkKind) -> Self {
        Self {
            kind,
            name: None,
            required: false,
            write_timeout_ms: default_write_timeout_ms(),
            max_lag_entries: default_max_lag_entries(),
            max_lag_ms: default_max_lag_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            retry_max_ms: default_retry_max_ms(),
            path: None,
            rotate_bytes: default_rotate_bytes(),
            rotate_keep: default_rotate_keep(),
            address: None,
            facility: None,
            max_message_bytes: default_max_message_bytes(),
        }
    }

    /// A file sink writing `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: Some(path.into()), ..Self::new(SinkKind::File) }
    }

    /// Its name: `name`, or the kind.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.id())
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    fn syslog_address(&self) -> Result<SyslogAddress, String> {
        SyslogAddress::parse(self.address.as_deref().unwrap_or(syslog::DEFAULT_ADDRESS))
    }

    fn problems_at(&self, at: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| problems.push((format!("{at}.{key}"), reason));
        if let Some(name) = &self.name {
            if !valid_name(name) {
                problem(
                    "name",
                    "must be 1 to 32 of a-z, 0-9 and '-', starting with a letter, with no run of digits a My Number \
                     could be"
                        .into(),
                );
            }
        }
        for (key, value, low, high) in [
            ("write_timeout_ms", self.write_timeout_ms, 10, MAX_WRITE_TIMEOUT_MS),
            ("max_lag_entries", self.max_lag_entries, 1, 100_000_000),
            ("max_lag_ms", self.max_lag_ms, 100, 86_400_000),
            ("poll_interval_ms", self.poll_interval_ms, 10, 600_000),
            ("retry_max_ms", self.retry_max_ms, 10, 600_000),
        ] {
            if !(low..=high).contains(&value) {
                problem(key, format!("must be from {low} to {high}"));
            }
        }
        let only = |kind: SinkKind| format!("is for kind \"{}\" only, not \"{}\"", kind.id(), self.kind.id());
        let file = self.kind == SinkKind::File;
        let syslog = self.kind == SinkKind::Syslog;
        if file {
            match &self.path {
                None => problem("path", "is needed by a file sink".into()),
                Some(path) if path.file_name().is_none() || path.to_str().is_none_or(|p| p.ends_with('/')) => {
                    problem("path", "must name a file (UTF-8, not ending in / or ..)".into())
                }
                Some(path) if names_a_vault_file(path) => problem(
                    "path",
                    "names one of the vault's own files (its database, keys, TLS or dev PKI files, configuration, \
                     watermark, lock or cursor files); give the audit log a file of its own, e.g. \"audit/audit.jsonl\""
                        .into(),
                ),
                Some(_) => {}
            }
            if self.rotate_bytes != 0 && !(MIN_ROTATE_BYTES..=MAX_ROTATE_BYTES).contains(&self.rotate_bytes) {
                problem(
                    "rotate_bytes",
                    format!("must be 0 (never rotate) or from {MIN_ROTATE_BYTES} to {MAX_ROTATE_BYTES}"),
                );
            }
            if !(1..=MAX_ROTATE_KEEP).contains(&self.rotate_keep) {
                problem("rotate_keep", format!("must be from 1 to {MAX_ROTATE_KEEP}"));
            }
        } else {
            if self.path.is_some() {
                problem("path", only(SinkKind::File));
            }
            if self.rotate_bytes != default_rotate_bytes() {
                problem("rotate_bytes", only(SinkKind::File));
            }
            if self.rotate_keep != default_rotate_keep() {
                problem("rotate_keep", only(SinkKind::File));
            }
        }
        if syslog {
            let address = self.syslog_address();
            if let Err(reason) = &address {
                problem("address", reason.clone());
            }
            if let Some(facility) = &self.facility {
                if syslog::facility_code(facility).is_none() {
                    problem("facility", format!("must be one of {}", syslog::FACILITIES.join(", ")));
                }
            }
            let high = match address {
                Ok(SyslogAddress::Udp(_) | SyslogAddress::Unix(_)) => MAX_DATAGRAM_BYTES,
                _ => MAX_MESSAGE_BYTES,
            };
            if !(MIN_MESSAGE_BYTES..=high).contains(&self.max_message_bytes) {
                problem("max_message_bytes", format!("must be from {MIN_MESSAGE_BYTES} to {high} for this address"));
            }
        } else {
            if self.address.is_some() {
                problem("address", only(SinkKind::Syslog));
            }
            if self.facility.is_some() {
                problem("facility", only(SinkKind::Syslog));
            }
            if self.max_message_bytes != default_max_message_bytes() {
                problem("max_message_bytes", only(SinkKind::Syslog));
            }
        }
        problems
    }
}

/// Every problem of `sinks` (`audit.sinks`), as (key, reason).
pub fn problems(sinks: &[SinkSettings]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if sinks.len() > MAX_SINKS {
        problems.push(("audit.sinks".into(), format!("at most {MAX_SINKS} sinks")));
    }
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut stdout = false;
    for (index, sink) in sinks.iter().enumerate() {
        let at = format!("audit.sinks[{index}]");
        problems.extend(sink.problems_at(&at));
        if !names.insert(sink.display_name()) {
            problems.push((format!("{at}.name"), "another sink has this name".into()));
        }
        if let (SinkKind::File, Some(path)) = (sink.kind, &sink.path) {
            if !paths.insert(path.clone()) {
                problems.push((format!("{at}.path"), "another sink writes this file".into()));
            }
        }
        if sink.kind == SinkKind::Stdout && std::mem::replace(&mut stdout, true) {
            problems.push((format!("{at}.kind"), "only one sink may write to standard output".into()));
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Positions and lines.

/// Where a sink stands: the last entry it holds, whether the checkpoint
/// signing that entry follows it already, and that entry's hash (what the
/// next entry must link to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The last entry held; 0 for none.
    pub seq: u64,
    /// Whether nothing more may follow at `seq` (its checkpoint was written,
    /// or there is no entry yet).
    pub checkpoint: bool,
    /// The hash of entry `seq`.
    pub hash: [u8; 32],
}

impl Cursor {
    /// A sink that holds nothing.
    pub const START: Cursor = Cursor { seq: 0, checkpoint: true, hash: GENESIS_HASH };

    /// The position after `line`, if it is a line a sink writes.
    pub fn after(line: &AuditLine) -> Option<Cursor> {
        Some(match line {
            AuditLine::Entry(entry) => Cursor { seq: entry.seq, checkpoint: false, hash: entry.hash },
            AuditLine::Checkpoint(checkpoint) => {
                Cursor { seq: checkpoint.seq, checkpoint: true, hash: checkpoint.hash }
            }
            AuditLine::Stub { seq, prev_hash, digest } => {
                Cursor { seq: *seq, checkpoint: false, hash: entry_hash(prev_hash, digest) }
            }
            AuditLine::LegacyStub { seq, hash, .. } => Cursor { seq: *seq, checkpoint: false, hash: *hash },
            AuditLine::SigningKey(_) => return None,
        })
    }

    /// The text of a cursor file.
    pub fn to_text(self) -> String {
        format!(
            "seq={} checkpoint={} hash={}\n",
            self.seq,
            u8::from(self.checkpoint),
            BASE64URL_NOPAD.encode(&self.hash)
        )
    }

    /// Reads [`Cursor::to_text`] back.
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut fields = text.trim_end_matches('\n').split(' ');
        let seq = fields.next()?.strip_prefix("seq=")?.parse().ok()?;
        let checkpoint = match fields.next()?.strip_prefix("checkpoint=")? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let hash = BASE64URL_NOPAD.decode(fields.next()?.strip_prefix("hash=")?.as_bytes()).ok()?.try_into().ok()?;
        fields.next().is_none().then_some(Cursor { seq, checkpoint, hash })
    }
}

/// What a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    /// An entry; `ok` when its outcome is.
    Entry {
        /// Whether the call succeeded.
        ok: bool,
    },
    /// A signed checkpoint.
    Checkpoint,
}

/// One line to write, and what a sink may need to know of it.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The entry's (or the signed) position.
    pub seq: u64,
    /// Entry or checkpoint.
    pub kind: LineKind,
    /// When it happened (Unix ms).
    pub time_ms: i64,
    /// `AuditLine::to_json()`, without a newline.
    pub text: String,
    /// For an entry, its stub line (for transports that bound a message).
    pub stub: Option<String>,
}

/// Why lines cannot follow a sink's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The log does not continue what the sink holds (a restored or
    /// another vault's database).
    Elsewhere(String),
    /// A checkpoint of the log is not what the vault signed.
    Tampered(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Elsewhere(reason) | Refused::Tampered(reason) => f.write_str(reason),
        }
    }
}

/// Checks that `checkpoint` signs the entry at its position whose hash is
/// `hash`, with a signature that verifies.
fn check_checkpoint(checkpoint: &SignedCheckpoint, hash: &[u8; 32]) -> Result<(), Refused> {
    if !checkpoint.signature_valid() {
        return Err(Refused::Tampered(format!(
            "the database's checkpoint at #{} carries a signature that does not verify (forged or edited); nothing \
             from there on is shipped",
            checkpoint.seq
        )));
    }
    if &checkpoint.hash != hash {
        return Err(Refused::Tampered(format!(
            "the database's checkpoint at #{} signs another entry than the log's #{}; nothing from there on is shipped",
            checkpoint.seq, checkpoint.seq
        )));
    }
    Ok(())
}

/// Builds the lines that follow `cursor`: `entries` (read after it) and
/// `checkpoints` (read after it, or after the entry before when its
/// checkpoint may still come), each checkpoint right after the entry it
/// signs, its signature checked. Refuses a log that does not continue what
/// the sink holds.
pub(crate) fn lines_after(
    cursor: &Cursor,
    entries: Vec<AuditRecord>,
    checkpoints: Vec<SignedCheckpoint>,
    with_stubs: bool,
) -> Result<Vec<Line>, Refused> {
    let mut checkpoints = checkpoints.into_iter().peekable();
    let mut lines = Vec::with_capacity(entries.len() * 2);
    let checkpoint_line = |checkpoint: SignedCheckpoint| Line {
        seq: checkpoint.seq,
        kind: LineKind::Checkpoint,
        time_ms: checkpoint.time_ms,
        text: AuditLine::Checkpoint(checkpoint).to_json(),
        stub: None,
    };
    if let Some(checkpoint) = checkpoints.next_if(|c| c.seq <= cursor.seq) {
        if cursor.checkpoint || checkpoint.seq != cursor.seq {
            return Err(Refused::Elsewhere(format!(
                "the log has a checkpoint at #{} the sink did not expect",
                checkpoint.seq
            )));
        }
        if checkpoint.hash != cursor.hash {
            return Err(Refused::Elsewhere(format!(
                "the database's checkpoint at #{} signs another entry than the one this sink holds (a restored or \
                 another vault's database?)",
                checkpoint.seq
            )));
        }
        check_checkpoint(&checkpoint, &cursor.hash)?;
        lines.push(checkpoint_line(checkpoint));
    }
    let mut before = (cursor.seq, cursor.hash);
    for entry in entries {
        if entry.seq != before.0 + 1 {
            return Err(Refused::Elsewhere(format!(
                "the log has no entry #{} (it goes from #{} to #{})",
                before.0 + 1,
                before.0,
                entry.seq
            )));
        }
        if before.0 == cursor.seq && entry.prev_hash != before.1 {
            return Err(Refused::Elsewhere(format!(
                "the database's entry #{} does not link to the entry #{} this sink holds (a restored or another \
                 vault's database?)",
                entry.seq, before.0
            )));
        }
        before = (entry.seq, entry.hash);
        let ok = entry.outcome == mnvault_core::audit::Outcome::Ok.id();
        let (seq, time_ms, hash) = (entry.seq, entry.time_ms, entry.hash);
        let stub = with_stubs.then(|| mnvault_core::audit::export::entry_line(entry.clone(), false).to_json());
        lines.push(Line { seq, kind: LineKind::Entry { ok }, time_ms, text: AuditLine::Entry(entry).to_json(), stub });
        while let Some(checkpoint) = checkpoints.next_if(|c| c.seq <= seq) {
            if checkpoint.seq == seq {
                check_checkpoint(&checkpoint, &hash)?;
                lines.push(checkpoint_line(checkpoint));
            }
        }
    }
    Ok(lines)
}

/// The position after the last of `lines`, from `cursor`.
fn cursor_after(cursor: &Cursor, lines: &[Line], last_hash: Option<[u8; 32]>) -> Cursor {
    match lines.last() {
        None => *cursor,
        Some(line) => Cursor {
            seq: line.seq,
            checkpoint: line.kind == LineKind::Checkpoint,
            hash: last_hash.unwrap_or(cursor.hash),
        },
    }
}

// ---------------------------------------------------------------------------
// What a sink is.

/// A sink's writing side. Its methods block (files, sockets) and run on a
/// blocking thread, under the sink's write timeout.
pub(crate) trait SinkWriter: Send + 'static {
    /// Opens (or reopens, after a failure) the sink; where it stands, if it
    /// knows.
    fn open(&mut self) -> io::Result<Option<Cursor>>;
    /// Writes `lines` in order and returns once they are acknowledged
    /// (written and synced, or sent); `after` is the position after them.
    fn write(&mut self, lines: &[Line], after: &Cursor) -> io::Result<()>;
}

/// A cursor file in the data directory (standard output, syslog): written
/// whole (0600) to a new file (O_EXCL, never through a link), synced, then
/// renamed over the old one; read (at most [`MAX_CURSOR_BYTES`]) only from
/// a regular file of the vault's user, never through a link or a FIFO.
pub(crate) struct CursorFile {
    path: PathBuf,
}

/// The longest cursor file read.
const MAX_CURSOR_BYTES: u64 = 256;

impl CursorFile {
    /// The cursor file of sink `name` in `data_dir`.
    pub fn new(data_dir: &Path, name: &str) -> Self {
        Self { path: data_dir.join(format!("audit-sink-{name}.cursor")) }
    }

    /// The position it records; `None` when there is no file yet.
    pub fn read(&self) -> io::Result<Option<Cursor>> {
        use std::io::Read as _;
        let file = match own_file::open(&self.path, &own_file::read()) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut bytes = Vec::new();
        file.take(MAX_CURSOR_BYTES + 1).read_to_end(&mut bytes).map_err(|e| own_file::named(e, "read", &self.path))?;
        let cursor = (bytes.len() as u64 <= MAX_CURSOR_BYTES)
            .then(|| std::str::from_utf8(&bytes).ok().and_then(Cursor::parse))
            .flatten();
        cursor.map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a cursor file; remove it to send the whole log again", self.path.display()),
            )
        })
    }

    /// Records `cursor`.
    pub fn write(&self, cursor: &Cursor) -> io::Result<()> {
        use std::io::Write as _;
        let staged = self.path.with_extension("cursor.new");
        let result = (|| {
            // A file left by a crash (or anything else put there) goes; the
            // new one is created, never opened through a link.
            match std::fs::remove_file(&staged) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            let mut options = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create_new(true), 0o600);
            let mut file = own_file::open(&staged, &options)?;
            file.write_all(cursor.to_text().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&staged, &self.path)
        })();
        result.map_err(|error| io::Error::new(error.kind(), format!("cannot write {}: {error}", self.path.display())))
    }
}

/// The writer of `sink`, as the settings describe it; a file sink holds
/// its lock in `lock` (shared by the writers made for one sink).
fn make_writer(sink: &SinkSettings, settings: &Settings, lock: &file::SharedLock) -> Box<dyn SinkWriter> {
    let name = sink.display_name();
    match sink.kind {
        SinkKind::File => {
            let path = settings.resolve(sink.path.as_deref().unwrap_or(Path::new("audit.jsonl")));
            Box::new(file::FileSink::with_lock(path, sink.rotate_bytes, sink.rotate_keep, lock.clone()))
        }
        SinkKind::Stdout => {
            Box::new(stdout::StdoutSink::new(Box::new(io::stdout()), CursorFile::new(&settings.data_dir, name)))
        }
        SinkKind::Syslog => Box::new(syslog::SyslogSink::new(
            sink.syslog_address().unwrap_or_else(|_| SyslogAddress::Unix(PathBuf::from("/dev/log"))),
            sink.facility.as_deref().and_then(syslog::facility_code).unwrap_or(syslog::AUTHPRIV),
            sink.max_message_bytes as usize,
            sink.write_timeout(),
            CursorFile::new(&settings.data_dir, name),
        )),
    }
}

// ---------------------------------------------------------------------------
// The gate: what calls ask before they start.

/// What every call asks before it starts ([`SinkGate::check`]), and what
/// wakes the tailers when this vault appended ([`SinkGate::appended`]).
/// Cheap to clone.
#[derive(Clone)]
pub struct SinkGate(Arc<GateInner>);

struct GateInner {
    sinks: RwLock<Vec<Arc<SinkState>>>,
    appended: watch::Sender<u64>,
}

impl Default for SinkGate {
    fn default() -> Self {
        Self(Arc::new(GateInner { sinks: RwLock::default(), appended: watch::Sender::new(0) }))
    }
}

impl std::fmt::Debug for SinkGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkGate").finish_non_exhaustive()
    }
}

/// Why a required sink refuses calls now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkRefusal {
    /// What the caller is told: the sink named, no path or cause.
    pub message: String,
    /// What the log and the health check say.
    pub detail: String,
}

impl SinkGate {
    /// Wakes the tailers: an entry was appended.
    pub fn appended(&self) {
        self.0.appended.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// `Ok` while every required sink keeps up; else why the first that
    /// does not refuses calls.
    pub fn check(&self) -> Result<(), SinkRefusal> {
        let sinks = self.0.sinks.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match sinks.iter().filter(|sink| sink.required).find_map(|sink| sink.refusal(now)) {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// The position each sink acknowledged, by name (for tests and checks).
    pub fn positions(&self) -> Vec<(String, u64)> {
        let sinks = self.0.sinks.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        sinks.iter().map(|sink| (sink.name.clone(), sink.progress().acked)).collect()
    }

    fn register(&self, state: Arc<SinkState>) {
        let mut sinks = self.0.sinks.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        sinks.retain(|sink| sink.name != state.name);
        sinks.push(state);
    }

    fn unregister(&self, name: &str) {
        let mut sinks = self.0.sinks.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        sinks.retain(|sink| sink.name != name);
    }
}

/// One sink's standing, as its tailer last saw it.
struct SinkState {
    name: String,
    required: bool,
    max_lag_entries: u64,
    max_lag: Duration,
    progress: Mutex<Progress>,
}

#[derive(Debug, Clone)]
struct Progress {
    /// Why the sink failed, until a write succeeds.
    failure: Option<String>,
    /// The last position the sink acknowledged.
    acked: u64,
    /// The furthest head the tailer read.
    head: u64,
    /// Since when the sink is behind without having moved.
    behind_since: Option<Instant>,
}

impl SinkState {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refusal(&self, now: Instant) -> Option<SinkRefusal> {
        let progress = self.progress().clone();
        let name = &self.name;
        let resume = "calls resume by themselves once it has caught up";
        if let Some(failure) = progress.failure {
            return Some(SinkRefusal {
                message: format!(
                    "the required audit sink \"{name}\" is failing, so the vault takes no calls (the vault's log says \
                     why); {resume}"
                ),
                detail: format!("the required audit sink \"{name}\" is failing: {failure}"),
            });
        }
        let lag = progress.head.saturating_sub(progress.acked);
        if lag > self.max_lag_entries {
            let message = format!(
                "the required audit sink \"{name}\" is {lag} entries behind the audit log (more than its \
                 max_lag_entries, {}); {resume}",
                self.max_lag_entries
            );
            return Some(SinkRefusal { detail: message.clone(), message });
        }
        let stalled = progress.behind_since.map(|since| now.saturating_duration_since(since)).unwrap_or_default();
        if stalled > self.max_lag {
            let message = format!(
                "the required audit sink \"{name}\" has not taken an entry for {} ms while behind the audit log (more \
                 than its max_lag_ms, {}); {resume}",
                stalled.as_millis(),
                self.max_lag.as_millis()
            );
            return Some(SinkRefusal { detail: message.clone(), message });
        }
        None
    }
}

// ---------------------------------------------------------------------------
// The tailers.

/// The running tailers; [`Tailers::finish`] lets them write what is left,
/// dropping them stops them at once.
pub(crate) struct Tailers {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
    gate: SinkGate,
    names: Vec<String>,
}

impl Tailers {
    /// Asks every tailer to write what the log holds now and stop, and
    /// waits for them (at most their longest write timeout, and a second).
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(self.grace, futures::future::join_all(tasks)).await;
    }
}

impl Drop for Tailers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for name in &self.names {
            self.gate.unregister(name);
        }
    }
}

/// Starts one tailer per configured sink, registered in the context's gate.
pub(crate) fn spawn(ctx: Context, settings: &Settings) -> Tailers {
    let gate = ctx.audit_sinks.clone();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut names = Vec::new();
    let mut grace = Duration::ZERO;
    for sink in &settings.audit.sinks {
        let name = sink.display_name().to_owned();
        let state = Arc::new(SinkState {
            name: name.clone(),
            required: sink.required,
            max_lag_entries: sink.max_lag_entries,
            max_lag: Duration::from_millis(sink.max_lag_ms),
            progress: Mutex::new(Progress { failure: None, acked: 0, head: 0, behind_since: Some(Instant::now()) }),
        });
        gate.register(state.clone());
        names.push(name);
        grace = grace.max(sink.write_timeout() * 2);
        let (sink, settings_for_writer) = (sink.clone(), settings.clone());
        let (sink_for_writer, lock) = (sink.clone(), file::SharedLock::default());
        let make = move || make_writer(&sink_for_writer, &settings_for_writer, &lock);
        let tailer = Tailer {
            writer: Slot::new(Box::new(make)),
            with_stubs: sink.kind == SinkKind::Syslog,
            sink,
            state,
            ctx: ctx.clone(),
            appended: gate.0.appended.subscribe(),
            stop: stop.clone(),
            cursor: None,
            open: false,
            failing: false,
        };
        tasks.push(tokio::spawn(tailer.run()));
    }
    Tailers { stop, tasks, grace: grace + Duration::from_secs(1), gate, names }
}

/// Times a call that outlived its timeout is waited for again (each time
/// for the write timeout) before its writer is abandoned for a new one.
const ABANDON_AFTER: u32 = 3;

/// Holds a sink's writer, which a blocking call takes with it: a call that
/// outlived its timeout keeps it until it returns. One that has not after
/// [`ABANDON_AFTER`] more waits (a FIFO, a pipe or a socket nobody reads)
/// is abandoned, its thread left to return when it can, and a new writer
/// made; at most one is abandoned at a time, so a sink holds at most two
/// threads however long its output stays stuck.
struct Slot {
    make: MakeWriter,
    idle: Option<Box<dyn SinkWriter>>,
    stuck: Option<Stuck>,
    abandoned: Option<oneshot::Receiver<Box<dyn SinkWriter>>>,
}

/// A call that outlived its timeout.
struct Stuck {
    /// Gives the writer back when the call returns.
    back: oneshot::Receiver<Box<dyn SinkWriter>>,
    /// Times it was waited for again.
    waits: u32,
}

/// Why a blocking call on a sink did not succeed.
enum CallError {
    /// The writer failed, or its previous call still runs.
    Failed(String),
    /// The writer was lost (its call panicked); a new one is made.
    Lost,
}

impl Slot {
    fn new(make: MakeWriter) -> Self {
        Self { idle: Some(make()), make, stuck: None, abandoned: None }
    }

    /// Runs `call` on the writer on a blocking thread, for at most `timeout`.
    async fn call<R: Send + 'static>(
        &mut self,
        timeout: Duration,
        call: impl FnOnce(&mut dyn SinkWriter) -> io::Result<R> + Send + 'static,
    ) -> Result<R, CallError> {
        if let Some(abandoned) = &mut self.abandoned {
            if !matches!(abandoned.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                self.abandoned = None; // Its call returned at last.
            }
        }
        if let Some(mut stuck) = self.stuck.take() {
            match tokio::time::timeout(timeout, &mut stuck.back).await {
                Ok(Ok(writer)) => self.idle = Some(writer),
                Ok(Err(_)) => {
                    self.idle = Some((self.make)());
                    return Err(CallError::Lost);
                }
                Err(_) => {
                    stuck.waits += 1;
                    let waited = timeout.as_millis() * u128::from(stuck.waits + 1);
                    if stuck.waits < ABANDON_AFTER || self.abandoned.is_some() {
                        self.stuck = Some(stuck);
                        return Err(CallError::Failed(format!(
                            "a write has not returned for {waited} ms (write_timeout_ms {}): its output does not take \
                             what is written",
                            timeout.as_millis()
                        )));
                    }
                    tracing::warn!(
                        waited_ms = waited as u64,
                        "an audit sink's write has not returned; it is abandoned (its thread ends when the write \
                         does) and the sink opened anew"
                    );
                    self.abandoned = Some(stuck.back);
                    self.idle = Some((self.make)());
                }
            }
        }
        let mut writer = self.idle.take().unwrap_or_else(|| (self.make)());
        let (give_back, back) = oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let result = call(writer.as_mut());
            let _ = give_back.send(writer);
            result
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => {
                self.idle = back.await.ok();
                result.map_err(|error| CallError::Failed(error.to_string()))
            }
            Ok(Err(_)) => Err(CallError::Lost),
            Err(_) => {
                self.stuck = Some(Stuck { back, waits: 0 });
                Err(CallError::Failed(format!("no answer within {} ms (write_timeout_ms)", timeout.as_millis())))
            }
        }
    }
}

/// Why a round of the tailer stopped.
enum RoundError {
    /// The database did not answer: the sink is not at fault.
    Store(String),
    /// The sink failed.
    Sink(String),
    /// The database's log does not verify: the sink stops for good.
    Tampered(String),
}

/// Makes a sink's writer (again, after its call panicked or was abandoned).
type MakeWriter = Box<dyn Fn() -> Box<dyn SinkWriter> + Send>;

/// Feeds one sink from the log.
struct Tailer {
    sink: SinkSettings,
    state: Arc<SinkState>,
    /// For the store, and the chain key that checks what is shipped.
    ctx: Context,
    writer: Slot,
    with_stubs: bool,
    appended: watch::Receiver<u64>,
    stop: CancellationToken,
    /// Where the sink stands, as last acknowledged in this run.
    cursor: Option<Cursor>,
    /// Whether the writer is open (and `cursor` what it holds).
    open: bool,
    /// Whether the sink is failing now (its failure was logged).
    failing: bool,
}

impl Tailer {
    async fn run(mut self) {
        let poll = Duration::from_millis(self.sink.poll_interval_ms);
        let retry_max = Duration::from_millis(self.sink.retry_max_ms);
        let mut retry = FIRST_RETRY.min(retry_max);
        loop {
            let (caught_up, wait) = match self.round().await {
                Ok(()) => {
                    retry = FIRST_RETRY.min(retry_max);
                    (true, poll)
                }
                Err(RoundError::Tampered(reason)) => {
                    self.stopped(reason);
                    return;
                }
                Err(error) => {
                    self.failed(error);
                    let wait = retry;
                    retry = (retry * 2).min(retry_max);
                    (false, wait)
                }
            };
            if self.stop.is_cancelled() {
                return;
            }
            tokio::select! {
                () = self.stop.cancelled() => {
                    // A last round for what the final calls appended.
                    if !self.failing {
                        let timeout = self.sink.write_timeout() * 2;
                        match tokio::time::timeout(timeout, self.round()).await {
                            Ok(Err(RoundError::Tampered(reason))) => self.stopped(reason),
                            Ok(Err(error)) => self.failed(error),
                            _ => {}
                        }
                    }
                    return;
                }
                changed = self.appended.changed(), if caught_up => {
                    if changed.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Opens the sink if needed, then writes batches until it holds the
    /// whole log.
    async fn round(&mut self) -> Result<(), RoundError> {
        let timeout = self.sink.write_timeout();
        if !self.open {
            let opened = match self.writer.call(timeout, |writer| writer.open()).await {
                Ok(cursor) => cursor,
                Err(error) => return Err(self.call_failed(error)),
            };
            self.cursor = Some(reopened(opened, self.cursor).map_err(RoundError::Sink)?);
            self.open = true;
        }
        loop {
            let cursor = self.cursor.unwrap_or(Cursor::START);
            let (head, lines, last_hash) = read_after(&self.ctx, cursor, self.with_stubs).await?;
            {
                let mut progress = self.state.progress();
                progress.head = progress.head.max(head);
                if progress.head > progress.acked && progress.behind_since.is_none() {
                    progress.behind_since = Some(Instant::now());
                }
            }
            if lines.is_empty() {
                self.acknowledged(cursor, head);
                return Ok(());
            }
            let after = cursor_after(&cursor, &lines, last_hash);
            match self.writer.call(timeout, move |writer| writer.write(&lines, &after)).await {
                Ok(()) => {
                    self.cursor = Some(after);
                    self.acknowledged(after, head);
                }
                Err(error) => return Err(self.call_failed(error)),
            }
        }
    }
}

/// One batch: the head read, the lines after the cursor, and the hash of
/// the last entry among them.
type Batch = (u64, Vec<Line>, Option<[u8; 32]>);

/// Where a sink stands once (re)opened: where it says, unless that is
/// behind what this run wrote to it (`known`): its file or cursor file was
/// replaced or rewound, and going on from it would write lines twice.
fn reopened(opened: Option<Cursor>, known: Option<Cursor>) -> Result<Cursor, String> {
    match (opened, known) {
        (Some(opened), Some(known)) if (opened.seq, opened.checkpoint) < (known.seq, known.checkpoint) => Err(format!(
            "the sink holds the log up to #{}{} but this vault already wrote it up to #{}{}: its file or cursor \
                 file was replaced or rewound, and going on would write lines twice; move it away to start afresh",
            opened.seq,
            if opened.checkpoint { " and its checkpoint" } else { "" },
            known.seq,
            if known.checkpoint { " and its checkpoint" } else { "" },
        )),
        (Some(opened), Some(known)) if opened.seq == known.seq && opened.hash != known.hash => Err(format!(
            "the sink's entry #{} is not the one this vault wrote to it: its file or cursor file was replaced; move \
             it away to start afresh",
            opened.seq
        )),
        (opened, known) => Ok(opened.or(known).unwrap_or(Cursor::START)),
    }
}

/// The head, and the lines after `cursor` (one batch) with the hash of the
/// last entry among them. Every entry is checked as the vault checks its
/// own chain (links, hashes, MACs under the chain key) and every checkpoint
/// must carry a valid signature over the entry it follows: nothing a
/// database writer slipped in is shipped as genuine.
async fn read_after(ctx: &Context, cursor: Cursor, with_stubs: bool) -> Result<Batch, RoundError> {
    let store = ctx.core.store().clone();
    let cursor = &cursor;
    let store_error = |error: mnvault_core::store::StoreError| RoundError::Store(error.to_string());
    let mut read = store.begin_read().await.map_err(store_error)?;
    let head = read.audit_head().await.map_err(store_error)?;
    if head.seq < cursor.seq {
        return Err(RoundError::Sink(format!(
            "the sink holds entries up to #{} but the audit log ends at #{} (a restored or another vault's \
             database?); move the sink's file or cursor file away to start it afresh",
            cursor.seq, head.seq
        )));
    }
    let filter = AuditFilter { after_seq: cursor.seq, limit: BATCH_ENTRIES, ..AuditFilter::default() };
    let entries = read.audit_entries(&filter).await.map_err(store_error)?;
    let upto = entries.last().map_or(cursor.seq, |entry| entry.seq);
    let checkpoints_after = if cursor.checkpoint { cursor.seq } else { cursor.seq.saturating_sub(1) };
    let checkpoints = if upto > checkpoints_after {
        let limit = u32::try_from(upto - checkpoints_after).unwrap_or(u32::MAX);
        let mut checkpoints = read.audit_checkpoints(checkpoints_after, limit).await.map_err(store_error)?;
        checkpoints.retain(|checkpoint| checkpoint.seq <= upto);
        checkpoints
    } else {
        Vec::new()
    };
    drop(read);
    // Each entry's own hash and MAC, and the links within the batch; the
    // link to what the sink holds is `lines_after`'s (a sink of another
    // database is not a tampered log).
    if let Some(first) = entries.first() {
        if let Err(broken) = ctx.core.check_entries(first.seq.saturating_sub(1), first.prev_hash, &entries) {
            return Err(RoundError::Tampered(format!(
                "the database's audit log does not verify at {broken}; nothing from there on is shipped (`mnvault \
                 audit verify` tells more)"
            )));
        }
    }
    let last_hash = entries.last().map(|entry| entry.hash);
    let lines = lines_after(cursor, entries, checkpoints, with_stubs).map_err(|refused| match refused {
        Refused::Tampered(reason) => RoundError::Tampered(reason),
        Refused::Elsewhere(reason) => {
            RoundError::Sink(format!("{reason}; move the sink's file or cursor file away to start it afresh"))
        }
    })?;
    Ok((head.seq.max(upto), lines, last_hash))
}

impl Tailer {
    fn call_failed(&mut self, error: CallError) -> RoundError {
        self.open = false;
        match error {
            CallError::Failed(reason) => RoundError::Sink(reason),
            CallError::Lost => {
                RoundError::Sink("the sink's writer stopped unexpectedly (see the log); it was made again".into())
            }
        }
    }

    /// The log does not verify: the sink ships nothing more (a required
    /// one refuses calls) until the vault is restarted.
    fn stopped(&mut self, reason: String) {
        tracing::error!(
            sink = %self.state.name,
            required = self.state.required,
            %reason,
            "audit sink stopped: the audit log in the database does not verify (a required sink refuses calls until \
             the log is repaired and the vault restarted)"
        );
        self.failing = true;
        self.state.progress().failure = Some(reason);
    }

    /// The sink holds everything up to `cursor`; the log's head is `head`.
    fn acknowledged(&mut self, cursor: Cursor, head: u64) {
        {
            let mut progress = self.state.progress();
            progress.failure = None;
            progress.acked = cursor.seq;
            progress.head = progress.head.max(head);
            progress.behind_since = (progress.head > cursor.seq).then(Instant::now);
        }
        if std::mem::replace(&mut self.failing, false) {
            tracing::info!(sink = %self.state.name, seq = cursor.seq, "audit sink writes again");
        }
    }

    fn failed(&mut self, error: RoundError) {
        match error {
            RoundError::Store(reason) => {
                tracing::warn!(sink = %self.state.name, %reason, "audit sink cannot read the log; trying again");
            }
            RoundError::Tampered(reason) => self.stopped(reason),
            RoundError::Sink(reason) => {
                if !std::mem::replace(&mut self.failing, true) {
                    let required = self.state.required;
                    tracing::warn!(
                        sink = %self.state.name,
                        required,
                        %reason,
                        "audit sink failed; retrying (a required sink refuses calls until it is back)"
                    );
                } else {
                    tracing::debug!(sink = %self.state.name, %reason, "audit sink still failing");
                }
                self.state.progress().failure = Some(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnvault_core::audit::{AuditDraft, Operation};
    use mnvault_core::id::Principal;
    use mnvault_core::store::ChainHead;
    use mnvault_keys::{AuditChainKey, KeyMaterial, VaultSigningKey};

    fn chain(count: u64) -> Vec<AuditRecord> {
        chain_of("payroll", count)
    }

    fn chain_of(principal: &str, count: u64) -> Vec<AuditRecord> {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        let mut prev = GENESIS_HASH;
        (1..=count)
            .map(|seq| {
                let draft = AuditDraft::by(&Principal::parse(principal).unwrap(), Operation::Tokenize, None);
                let entry = AuditRecord::seal(draft, seq, 1_764_000_000_000 + seq as i64, prev, &key);
                prev = entry.hash;
                entry
            })
            .collect()
    }

    fn sign(entry: &AuditRecord) -> SignedCheckpoint {
        let key = VaultSigningKey::new(&KeyMaterial::generate());
        SignedCheckpoint::sign(&key, &ChainHead { seq: entry.seq, hash: entry.hash }, entry.time_ms)
    }

    fn kinds(lines: &[Line]) -> Vec<(u64, bool)> {
        lines.iter().map(|line| (line.seq, line.kind == LineKind::Checkpoint)).collect()
    }

    #[test]
    fn checkpoints_follow_the_entries_they_sign_even_when_signed_later() {
        let entries = chain(4);
        let (c2, c4) = (sign(&entries[1]), sign(&entries[3]));
        let lines = lines_after(&Cursor::START, entries[..2].to_vec(), vec![], false).unwrap();
        assert_eq!(kinds(&lines), [(1, false), (2, false)]);
        let cursor = cursor_after(&Cursor::START, &lines, Some(entries[1].hash));
        assert_eq!(cursor, Cursor { seq: 2, checkpoint: false, hash: entries[1].hash });
        // The checkpoint of #2 was stored after #2 was written: it comes first.
        let lines = lines_after(&cursor, entries[2..].to_vec(), vec![c2, c4], false).unwrap();
        assert_eq!(kinds(&lines), [(2, true), (3, false), (4, false), (4, true)]);
        for line in &lines {
            assert!(Cursor::after(&AuditLine::parse(&line.text).unwrap()).is_some());
        }
    }

    #[test]
    fn a_log_that_does_not_continue_the_sink_is_refused() {
        let (ours, theirs) = (chain(3), chain_of("other", 3));
        let cursor = Cursor { seq: 2, checkpoint: false, hash: ours[1].hash };
        let error = lines_after(&cursor, theirs[2..].to_vec(), vec![], false).unwrap_err().to_string();
        assert!(error.contains("does not link"), "{error}");
        let error = lines_after(&cursor, vec![], vec![sign(&theirs[1])], false).unwrap_err().to_string();
        assert!(error.contains("signs another entry"), "{error}");
        let error =
            lines_after(&Cursor::START, vec![ours[0].clone(), ours[2].clone()], vec![], false).unwrap_err().to_string();
        assert!(error.contains("no entry #2"), "{error}");
    }

    /// A checkpoint a database writer forged or edited, or one that signs
    /// another entry than the one it follows, is never shipped.
    #[test]
    fn a_checkpoint_that_does_not_verify_is_not_shipped() {
        let entries = chain(3);
        let mut forged = sign(&entries[1]);
        forged.time_ms += 1;
        let error = lines_after(&Cursor::START, entries.clone(), vec![forged.clone()], false).unwrap_err();
        assert!(matches!(&error, Refused::Tampered(reason) if reason.contains("#2")), "{error}");
        // At the sink's own position too.
        let cursor = Cursor { seq: 2, checkpoint: false, hash: entries[1].hash };
        let error = lines_after(&cursor, entries[2..].to_vec(), vec![forged], false).unwrap_err();
        assert!(matches!(error, Refused::Tampered(_)), "{error}");
        // Validly signed, but over another hash than the log's entry #3.
        let mut elsewhere = entries[2].clone();
        elsewhere.hash = [9; 32];
        let error = lines_after(&Cursor::START, entries.clone(), vec![sign(&elsewhere)], false).unwrap_err();
        assert!(matches!(&error, Refused::Tampered(reason) if reason.contains("signs another entry")), "{error}");
        assert_eq!(lines_after(&Cursor::START, entries.clone(), vec![sign(&entries[2])], false).unwrap().len(), 4);
    }

    /// Reopened behind what this run wrote (its file or cursor file replaced
    /// or rewound), a sink fails instead of writing lines twice.
    #[test]
    fn a_sink_reopened_behind_what_was_written_fails() {
        let at = |seq: u64, checkpoint: bool| Cursor { seq, checkpoint, hash: [seq as u8; 32] };
        assert_eq!(reopened(None, None), Ok(Cursor::START));
        assert_eq!(reopened(Some(at(3, false)), None), Ok(at(3, false)));
        assert_eq!(reopened(None, Some(at(3, false))), Ok(at(3, false)), "a file moved away: a new one goes on");
        assert_eq!(reopened(Some(at(5, false)), Some(at(3, true))), Ok(at(5, false)), "a write that did land");
        let error = reopened(Some(at(2, true)), Some(at(3, false))).unwrap_err();
        assert!(error.contains("up to #2") && error.contains("rewound"), "{error}");
        assert!(reopened(Some(at(3, false)), Some(at(3, true))).is_err(), "its checkpoint line lost");
        let other = Cursor { hash: [0; 32], ..at(3, false) };
        assert!(reopened(Some(other), Some(at(3, false))).unwrap_err().contains("not the one"));
    }

    #[test]
    fn stubs_carry_the_position_of_their_entry() {
        let entries = chain(1);
        let lines = lines_after(&Cursor::START, entries.clone(), vec![], true).unwrap();
        let stub = AuditLine::parse(lines[0].stub.as_deref().unwrap()).unwrap();
        assert!(matches!(stub, AuditLine::Stub { .. }));
        assert_eq!(Cursor::after(&stub).unwrap().hash, entries[0].hash);
    }

    #[test]
    fn a_cursor_reads_back_and_junk_does_not() {
        let cursor = Cursor { seq: 42, checkpoint: false, hash: [7; 32] };
        assert_eq!(Cursor::parse(&cursor.to_text()), Some(cursor));
        assert_eq!(Cursor::parse(&Cursor::START.to_text()), Some(Cursor::START));
        for junk in
            ["", "seq=1", "seq=1 checkpoint=2 hash=AA", "seq=x checkpoint=1 hash=", "seq=1 checkpoint=1 hash=AA"]
        {
            assert_eq!(Cursor::parse(junk), None, "{junk}");
        }
    }

    /// A cursor file is never written through a link put in its staged
    /// file's place, never read through a link or from a FIFO, and read
    /// only so far.
    #[test]
    fn cursor_files_follow_no_link_and_read_a_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor { seq: 7, checkpoint: true, hash: [5; 32] };
        let file = CursorFile::new(dir.path(), "siem");
        let victim = dir.path().join("vault.db");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("audit-sink-siem.cursor.new")).unwrap();
        file.write(&cursor).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the link's target is untouched");
        assert_eq!(file.read().unwrap(), Some(cursor));

        let path = dir.path().join("audit-sink-siem.cursor");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(file.read().unwrap_err().to_string().contains("symbolic link"));
        std::fs::remove_file(&path).unwrap();

        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, mode, 0).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        let reader = CursorFile::new(dir.path(), "siem");
        std::thread::spawn(move || done.send(reader.read().map_err(|e| e.to_string())));
        let Ok(read) = result.recv_timeout(Duration::from_secs(60)) else {
            let _writer = std::fs::OpenOptions::new().write(true).open(&path);
            panic!("reading a FIFO cursor file blocked");
        };
        assert!(read.unwrap_err().contains("not a regular file"));
        std::fs::remove_file(&path).unwrap();

        std::fs::write(&path, format!("{}{}", cursor.to_text(), " ".repeat(MAX_CURSOR_BYTES as usize))).unwrap();
        assert!(file.read().unwrap_err().to_string().contains("not a cursor file"));
    }

    /// A writer whose output takes nothing (a FIFO, a pipe nobody reads):
    /// its call blocks until `release` is dropped.
    struct Blocked {
        release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        made: u32,
    }

    impl SinkWriter for Blocked {
        fn open(&mut self) -> io::Result<Option<Cursor>> {
            if self.made == 1 {
                let _ = self.release.lock().unwrap().recv();
            }
            Ok(None)
        }
        fn write(&mut self, _: &[Line], _: &Cursor) -> io::Result<()> {
            Ok(())
        }
    }

    /// A call that never returns does not hold the sink for good: after a
    /// few more timeouts its writer is abandoned for a new one, and never
    /// more than one is abandoned at a time.
    #[tokio::test]
    async fn a_writer_stuck_for_good_is_abandoned_for_a_new_one() {
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let release = Arc::new(Mutex::new(release));
        let made = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = made.clone();
        let mut slot = Slot::new(Box::new(move || {
            let made = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Box::new(Blocked { release: release.clone(), made }) as Box<dyn SinkWriter>
        }));
        let timeout = Duration::from_millis(20);
        let failure = |result: Result<Option<Cursor>, CallError>| match result {
            Err(CallError::Failed(reason)) => reason,
            _ => panic!("the call should fail"),
        };
        assert!(failure(slot.call(timeout, |writer| writer.open()).await).contains("no answer within"));
        for _ in 1..ABANDON_AFTER {
            assert!(failure(slot.call(timeout, |writer| writer.open()).await).contains("has not returned"));
        }
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1, "still waiting for the first writer");
        assert_eq!(slot.call(timeout, |writer| writer.open()).await.ok(), Some(None), "a new writer answers");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(slot.abandoned.is_some());
        drop(hold);
    }

    #[test]
    fn sink_names_and_paths_are_checked() {
        let named = |name: &str| SinkSettings { name: Some(name.into()), ..SinkSettings::new(SinkKind::Stdout) };
        for good in ["siem", "siem-2", "a", "file-0123"] {
            assert!(problems(&[named(good)]).is_empty(), "{good}");
        }
        for bad in ["123456789018", "siem-123456789018", "1siem", "-siem", "siem_2", "", &"a".repeat(33)] {
            let found = problems(&[named(bad)]);
            assert_eq!(found.len(), 1, "{bad}");
            assert!(!found[0].1.contains(bad) || bad.is_empty(), "the name is not repeated");
        }
        let twice = problems(&[named("123456789018"), named("123456789018")]);
        assert!(twice.iter().all(|(_, reason)| !reason.contains("123456789018")), "{twice:?}");

        for good in ["audit.jsonl", "audit/audit.jsonl", "/var/log/mnvault/audit.jsonl", "../logs/audit"] {
            assert!(problems(&[SinkSettings::file(good)]).is_empty(), "{good}");
        }
        for bad in [
            "vault.db",
            "./vault.db",
            "/srv/vault/vault.db-wal",
            "root.key",
            "mnvault.toml",
            "chain-watermark",
            "serving.lock",
            "tls/server.crt",
            "tls/audit.jsonl",
            "dev-pki/audit.jsonl",
            "audit-sink-stdout.cursor",
            "keys/other.key",
            "data.db",
        ] {
            let keys: Vec<_> = problems(&[SinkSettings::file(bad)]).into_iter().map(|(key, _)| key).collect();
            assert_eq!(keys, ["audit.sinks[0].path"], "{bad}");
        }
        let slow = SinkSettings { write_timeout_ms: 600_000, ..SinkSettings::file("audit.jsonl") };
        assert_eq!(problems(&[slow])[0].0, "audit.sinks[0].write_timeout_ms", "a shutdown waits for it");
    }

    #[test]
    fn settings_are_checked_by_key() {
        let keys = |sinks: &[SinkSettings]| problems(sinks).into_iter().map(|(key, _)| key).collect::<Vec<_>>();
        assert!(keys(&[SinkSettings::file("audit.jsonl")]).is_empty());
        assert!(keys(&[SinkSettings::new(SinkKind::Stdout), SinkSettings::new(SinkKind::Syslog)]).is_empty());
        assert_eq!(keys(&[SinkSettings::new(SinkKind::File)]), ["audit.sinks[0].path"]);
        let bad = SinkSettings {
            name: Some("Bad Name".into()),
            rotate_bytes: 10,
            rotate_keep: 0,
            write_timeout_ms: 0,
            address: Some("udp://h:1".into()),
            ..SinkSettings::file("a")
        };
        assert_eq!(
            keys(&[bad]),
            [
                "audit.sinks[0].name",
                "audit.sinks[0].write_timeout_ms",
                "audit.sinks[0].rotate_bytes",
                "audit.sinks[0].rotate_keep",
                "audit.sinks[0].address"
            ]
        );
        let syslog = |address: &str, max: u32| SinkSettings {
            address: Some(address.into()),
            max_message_bytes: max,
            ..SinkSettings::new(SinkKind::Syslog)
        };
        assert!(keys(&[syslog("tcp://siem.example:6514", 1 << 20)]).is_empty());
        assert_eq!(keys(&[syslog("udp://127.0.0.1:514", 1 << 20)]), ["audit.sinks[0].max_message_bytes"]);
        assert_eq!(keys(&[syslog("http://x", 8192)]), ["audit.sinks[0].address"]);
        let twice = [SinkSettings::file("a"), SinkSettings::file("a")];
        assert_eq!(keys(&twice), ["audit.sinks[1].name", "audit.sinks[1].path"]);
    }

    #[test]
    fn sinks_load_from_the_configuration_file_with_their_problems_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
listen = "127.0.0.1:50051"
[root_key]
file = "root.key"
[tls]
cert = "tls/server.crt"
key = "tls/server.key"
client_ca = "tls/ca.pem"
[identity]
trust_domain = "vault.example.jp"
[[audit.sinks]]
kind = "file"
name = "siem"
path = "/var/log/mnvault/audit.jsonl"
rotate_bytes = 1048576
required = true
[[audit.sinks]]
kind = "syslog"
address = "tcp://siem.example:601"
facility = "local3"
rotate_keep = 0
"#;
        std::fs::write(dir.path().join(crate::config::CONFIG_FILE), text).unwrap();
        let loaded = crate::config::Loaded::load(dir.path(), None, Vec::new()).unwrap();
        let sinks = &loaded.settings.audit.sinks;
        assert_eq!(sinks.len(), 2);
        assert_eq!((sinks[0].display_name(), sinks[0].required, sinks[0].rotate_bytes), ("siem", true, 1 << 20));
        assert_eq!(sinks[1].syslog_address(), Ok(SyslogAddress::Tcp("siem.example:601".into())));
        let keys: Vec<_> = loaded.value_problems().into_iter().filter_map(|problem| problem.key).collect();
        assert_eq!(keys, ["audit.sinks[1].rotate_keep"]);
    }

    #[test]
    fn a_required_sink_refuses_while_failing_or_lagging_and_names_itself() {
        let state = SinkState {
            name: "siem".into(),
            required: true,
            max_lag_entries: 10,
            max_lag: Duration::from_secs(60),
            progress: Mutex::new(Progress { failure: None, acked: 5, head: 5, behind_since: None }),
        };
        let now = Instant::now();
        assert_eq!(state.refusal(now), None);
        state.progress().failure = Some("cannot write /secret/path: denied".into());
        let refusal = state.refusal(now).unwrap();
        assert!(refusal.message.contains("\"siem\"") && !refusal.message.contains("/secret"), "{refusal:?}");
        assert!(refusal.detail.contains("/secret/path"));
        state.progress().failure = None;
        state.progress().head = 16;
        assert!(state.refusal(now).unwrap().message.contains("11 entries behind"));
        state.progress().head = 6;
        state.progress().behind_since = Some(now);
        assert_eq!(state.refusal(now + Duration::from_secs(30)), None);
        assert!(state.refusal(now + Duration::from_secs(61)).unwrap().message.contains("max_lag_ms"));
    }
}
