//! The file sink: JSON lines appended to a file (created 0600), synced after
//! each batch, rotated by size into `<file>.1` (newest) … `<file>.N`.
//!
//! Its position is its own last complete line: at open, a torn last line
//! (a crash in the middle of a write) is cut off, and a current file that
//! is empty or missing hands over to the newest rotated one. Rotation
//! happens only between lines, after the file was synced, so a rotated
//! file always ends with a complete line. A lock on `.<file>.lock` beside
//! it keeps a second vault from writing the same file.
//!
//! Nothing but an audit log of its own is ever changed: every file is
//! opened without following a symbolic link and without waiting (a FIFO
//! fails at once), and must be a regular file of the vault's user with one
//! link ([`own_file`]); new files are created with O_EXCL. Before a torn
//! tail is cut, the file's first and last complete lines must be audit
//! lines and the tail no longer than one line. If the path stops naming the
//! file being written (moved away, replaced), the sink creates a new file
//! there and goes on from the position it knows; a file it finds there
//! instead is taken over only when it is empty or its last line is exactly
//! the last line the sink wrote, and is otherwise a failure naming it.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mnvault_core::audit::line::{AuditLine, MAX_LINE_BYTES};

use super::own_file::{self, named};
use super::{Cursor, Line, SinkWriter};

/// Bytes read at a time when looking back for a line's start.
const CHUNK: u64 = 64 * 1024;

/// The lock a file sink holds, kept across the writers made for one sink
/// (a writer abandoned in a write that never returned keeps a copy).
pub(crate) type SharedLock = Arc<Mutex<Option<File>>>;

/// A file sink.
pub(crate) struct FileSink {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    lock: SharedLock,
    current: Option<Current>,
    /// The position after the last line the file holds (as opened, then
    /// as written); `None` when it holds none.
    position: Option<Cursor>,
}

/// The file being written.
struct Current {
    file: File,
    size: u64,
    /// Device and inode, to notice the path naming another file.
    id: (u64, u64),
}

/// `<path>.<n>`.
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

/// `.<file>.lock` beside `path`.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".lock");
    path.with_file_name(name)
}

impl FileSink {
    /// A sink writing `path`, rotating past `rotate_bytes` (0: never) and
    /// keeping `keep` rotated files.
    #[cfg(test)]
    pub(crate) fn new(path: PathBuf, rotate_bytes: u64, keep: u32) -> Self {
        Self::with_lock(path, rotate_bytes, keep, SharedLock::default())
    }

    /// [`FileSink::new`], holding its lock in `lock`.
    pub(crate) fn with_lock(path: PathBuf, rotate_bytes: u64, keep: u32, lock: SharedLock) -> Self {
        Self { path, rotate_bytes, keep: keep.max(1), lock, current: None, position: None }
    }

    fn take_lock(&mut self) -> io::Result<()> {
        let mut held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_some() {
            return Ok(());
        }
        let path = lock_path(&self.path);
        let mut options = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::mode(options.write(true).create(true).truncate(false), 0o600);
        let file = own_file::open(&path, &options).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => named(e, "create the lock file", &path),
            _ => e,
        })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another vault writes {} (it holds {}); give each vault a file of its own",
                    self.path.display(),
                    path.display()
                ),
            )
        })?;
        *held = Some(file);
        Ok(())
    }

    /// Opens the file at the path for appending, creating it (O_EXCL) if
    /// there is none; whether it was created.
    fn open_or_create(&self) -> io::Result<(File, bool)> {
        match own_file::open(&self.path, &own_file::append()) {
            Ok(file) => return Ok((file, false)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        match own_file::open(&self.path, &own_file::create_new()) {
            Ok(file) => {
                sync_parent(&self.path)?;
                Ok((file, true))
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} appeared while the audit sink was creating it; trying again", self.path.display()),
            )),
            Err(error) => Err(named(error, "create", &self.path)),
        }
    }

    /// Creates a new current file (O_EXCL).
    fn create_current(&self) -> io::Result<Current> {
        let file = own_file::open(&self.path, &own_file::create_new()).map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} appeared while the audit sink was creating it; trying again", self.path.display()),
            ),
            _ => named(error, "create", &self.path),
        })?;
        sync_parent(&self.path)?;
        current(file, &self.path)
    }

    /// Shifts the rotated files by one, the current file becoming `.1`.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(named(error, "rotate", &rotated(&self.path, n)));
                }
                _ => {}
            }
        }
        self.current = None;
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(|e| named(e, "rotate", &self.path))?;
        self.current = Some(self.create_current()?);
        Ok(())
    }

    /// The file now at the path, which is not the one being written: a new
    /// one if there is none; else it is taken over only when it is empty
    /// or ends exactly with the last line this sink wrote.
    fn take_over(&self) -> io::Result<Current> {
        let (file, created) = self.open_or_create()?;
        if created {
            return current(file, &self.path);
        }
        let tail = last_position(&file, &self.path, false)?;
        if tail.len == 0 || (tail.end == tail.len && tail.cursor == self.position) {
            return current(file, &self.path);
        }
        let held = self.position.map_or_else(|| "nothing yet".to_owned(), |cursor| format!("up to #{}", cursor.seq));
        let found = tail.cursor.map_or_else(|| "no audit line".to_owned(), |cursor| format!("up to #{}", cursor.seq));
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} was replaced by another file while the vault wrote it (it holds {found}{}, the sink wrote {held}); \
                 move it away and the sink goes on in a new file",
                self.path.display(),
                if tail.end == tail.len { "" } else { " and a torn line" },
            ),
        ))
    }
}

/// `file` as the current file.
fn current(file: File, path: &Path) -> io::Result<Current> {
    let metadata = file.metadata().map_err(|e| named(e, "read the size of", path))?;
    Ok(Current { file, size: metadata.len(), id: (metadata.dev(), metadata.ino()) })
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| named(e, "sync the directory of", path))
}

/// Where the last `\n` before `before` is, looking back at most `limit`
/// bytes; `Ok(None)` if the file starts within them without one.
fn last_newline(file: &File, before: u64, limit: u64, path: &Path) -> io::Result<Option<u64>> {
    let floor = before.saturating_sub(limit);
    let mut end = before;
    let mut chunk = vec![0; CHUNK as usize];
    while end > floor {
        let start = end.saturating_sub(CHUNK).max(floor);
        let buffer = &mut chunk[..(end - start) as usize];
        file.read_exact_at(buffer, start).map_err(|e| named(e, "read", path))?;
        if let Some(at) = buffer.iter().rposition(|&byte| byte == b'\n') {
            return Ok(Some(start + at as u64));
        }
        end = start;
    }
    if floor == 0 {
        Ok(None)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} ends with a line longer than {MAX_LINE_BYTES} bytes: not an audit log of this vault, or a torn line \
                 longer than one line; nothing was changed, move the file away",
                path.display()
            ),
        ))
    }
}

/// A file's tail: where its complete lines end and the position they give.
#[derive(Debug)]
struct Tail {
    /// The position after its last complete line; `None` for none.
    cursor: Option<Cursor>,
    /// The offset after its last complete line.
    end: u64,
    /// Its size (more than `end` when it ends with a torn line).
    len: u64,
}

/// The position after the last complete line of `file`, having checked
/// (before anything is changed) that its first and last complete lines are
/// audit lines and that a torn last line is no longer than a line; with
/// `repair`, the torn line is then cut off (without, it is passed over).
fn last_position(file: &File, path: &Path, repair: bool) -> io::Result<Tail> {
    let limit = MAX_LINE_BYTES as u64 + 1;
    let len = own_file::check(file, path)?.len();
    let foreign = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not an audit log of this vault (its first or last line is not an audit line); nothing was \
                 changed, move the file away",
                path.display()
            ),
        )
    };
    if len == 0 {
        return Ok(Tail { cursor: None, end: 0, len });
    }
    // The first line, before anything else.
    let mut head = vec![0; limit.min(len) as usize];
    file.read_exact_at(&mut head, 0).map_err(|e| named(e, "read", path))?;
    let end = match head.iter().position(|&byte| byte == b'\n') {
        Some(first) => {
            audit_line(&head[..first]).ok_or_else(foreign)?;
            let mut last = [0u8];
            file.read_exact_at(&mut last, len - 1).map_err(|e| named(e, "read", path))?;
            if last[0] == b'\n' {
                len
            } else {
                last_newline(file, len, limit, path)?.ok_or_else(foreign)? + 1
            }
        }
        // No complete line: the file is one torn line, the start of one a
        // sink writes, or it is not the sink's.
        None if len < limit && looks_like_a_line_start(&head) => 0,
        None => return Err(foreign()),
    };
    let cursor = if end == 0 {
        None
    } else {
        let start = last_newline(file, end - 1, limit, path)?.map_or(0, |at| at + 1);
        let mut text = vec![0; (end - 1 - start) as usize];
        file.read_exact_at(&mut text, start).map_err(|e| named(e, "read", path))?;
        Some(audit_line(&text).as_ref().and_then(Cursor::after).ok_or_else(foreign)?)
    };
    if repair && end < len {
        tracing::warn!(
            file = %path.display(),
            bytes = len - end,
            "the audit sink's file ends with a torn line (a write was cut short); it is cut off and written again"
        );
        file.set_len(end).and_then(|()| file.sync_all()).map_err(|e| named(e, "cut the torn line of", path))?;
        return Ok(Tail { cursor, end, len: end });
    }
    Ok(Tail { cursor, end, len })
}

/// `bytes` as an audit line, if they are one.
fn audit_line(bytes: &[u8]) -> Option<AuditLine> {
    AuditLine::parse(std::str::from_utf8(bytes).ok()?).ok()
}

/// Whether `bytes` could be the start of a line a sink writes.
fn looks_like_a_line_start(bytes: &[u8]) -> bool {
    const START: &[u8] = b"{\"type\":\"";
    bytes.starts_with(START) || START.starts_with(bytes)
}

impl SinkWriter for FileSink {
    fn open(&mut self) -> io::Result<Option<Cursor>> {
        self.current = None;
        self.take_lock()?;
        let (file, _) = self.open_or_create()?;
        let tail = last_position(&file, &self.path, true)?;
        let mut known = tail.cursor;
        if known.is_none() {
            let newest = rotated(&self.path, 1);
            known = match own_file::open(&newest, &own_file::read()) {
                Ok(file) => last_position(&file, &newest, false)?.cursor,
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(error) => return Err(error),
            };
        }
        self.current = Some(current(file, &self.path)?);
        self.position = known;
        Ok(known)
    }

    fn write(&mut self, lines: &[Line], after: &Cursor) -> io::Result<()> {
        let still_ours = match (&self.current, std::fs::symlink_metadata(&self.path)) {
            (Some(current), Ok(metadata)) => (metadata.dev(), metadata.ino()) == current.id,
            _ => false,
        };
        if !still_ours {
            if self.current.is_some() {
                tracing::warn!(
                    file = %self.path.display(),
                    "the audit sink's file was moved or replaced; writing a new one there"
                );
            }
            self.current = None;
            self.current = Some(self.take_over()?);
        }
        let mut buffer = Vec::new();
        for line in lines {
            let size = self.current.as_ref().map_or(0, |current| current.size) + buffer.len() as u64;
            let length = line.text.len() as u64 + 1;
            if self.rotate_bytes > 0 && size > 0 && size + length > self.rotate_bytes {
                self.append(&buffer)?;
                buffer.clear();
                self.rotate()?;
            }
            buffer.extend_from_slice(line.text.as_bytes());
            buffer.push(b'\n');
        }
        self.append(&buffer)?;
        self.position = Some(*after);
        Ok(())
    }
}

impl FileSink {
    /// Appends `bytes` to the current file and syncs it.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let path = &self.path;
        let current = self.current.as_mut().ok_or_else(|| io::Error::other("the sink's file is not open"))?;
        if !bytes.is_empty() {
            current.file.write_all(bytes).map_err(|e| named(e, "write", path))?;
            current.size += bytes.len() as u64;
        }
        current.file.sync_data().map_err(|e| named(e, "sync", path))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::LineKind;
    use super::*;
    use mnvault_core::audit::{AuditDraft, AuditRecord, Operation};
    use mnvault_core::id::Principal;
    use mnvault_keys::{AuditChainKey, KeyMaterial, GENESIS_HASH};

    /// A bound on a call that must not block, not a speed requirement.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    fn lines(from: u64, count: u64, prev: &mut [u8; 32]) -> Vec<Line> {
        let key = AuditChainKey::new(&KeyMaterial::generate());
        (from..from + count)
            .map(|seq| {
                let draft = AuditDraft::by(&Principal::parse("payroll").unwrap(), Operation::Tokenize, None);
                let entry = AuditRecord::seal(draft, seq, 1_764_000_000_000, *prev, &key);
                *prev = entry.hash;
                Line {
                    seq,
                    kind: LineKind::Entry { ok: true },
                    time_ms: entry.time_ms,
                    text: AuditLine::Entry(entry).to_json(),
                    stub: None,
                }
            })
            .collect()
    }

    fn text_of(lines: &[Line]) -> String {
        lines.iter().map(|line| format!("{}\n", line.text)).collect()
    }

    fn after(lines: &[Line], prev: [u8; 32]) -> Cursor {
        Cursor { seq: lines.last().unwrap().seq, checkpoint: false, hash: prev }
    }

    fn mkfifo(path: &Path) {
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, mode, 0).unwrap();
    }

    /// Runs `call` on a thread; if it has not returned within the hang
    /// guard (it blocks on `fifo`), frees it and fails.
    fn never_blocks<R: Send + 'static>(fifo: &Path, call: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || done.send(call()));
        match result.recv_timeout(HANG_GUARD) {
            Ok(result) => result,
            Err(_) => {
                // A reader (and a writer) frees an open blocked on the FIFO.
                let _reader = std::fs::OpenOptions::new().read(true).write(true).open(fifo);
                panic!("the sink blocked on the FIFO {}", fifo.display());
            }
        }
    }

    #[test]
    fn the_position_survives_a_torn_line_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut prev = GENESIS_HASH;
        let mut sink = FileSink::new(path.clone(), 4_096, 2);
        assert_eq!(sink.open().unwrap(), None);
        let first = lines(1, 30, &mut prev);
        sink.write(&first, &after(&first, prev)).unwrap();
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists(), "rotated twice at least");
        assert!(!rotated(&path, 3).exists(), "keeps two rotated files");
        for n in [1, 2] {
            let text = std::fs::read_to_string(rotated(&path, n)).unwrap();
            assert!(text.len() as u64 <= 4_096 && text.ends_with('\n'));
        }
        drop(sink);

        // A crash in the middle of a line: the torn part goes, the position stays.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"type\":\"entry\",\"seq\":31,\"ti").unwrap();
        let mut sink = FileSink::new(path.clone(), 4_096, 2);
        assert_eq!(sink.open().unwrap().unwrap().seq, 30);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with('\n'));

        // Right after a rotation the current file is empty: the newest rotated one tells.
        sink.rotate().unwrap();
        drop(sink);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let mut sink = FileSink::new(path.clone(), 4_096, 2);
        let cursor = sink.open().unwrap().unwrap();
        assert_eq!((cursor.seq, cursor.checkpoint, cursor.hash), (30, false, prev));

        // A crash in the middle of a new file's first line.
        drop(sink);
        std::fs::write(&path, b"{\"type\":\"en").unwrap();
        assert_eq!(FileSink::new(path.clone(), 4_096, 2).open().unwrap().unwrap().seq, 30);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the torn first line is cut");
    }

    #[test]
    fn a_second_writer_and_a_foreign_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut first = FileSink::new(path.clone(), 0, 1);
        first.open().unwrap();
        let error = FileSink::new(path.clone(), 0, 1).open().unwrap_err().to_string();
        assert!(error.contains("another vault writes"), "{error}");
        drop(first);
        std::fs::write(&path, "hello\n").unwrap();
        let error = FileSink::new(path, 0, 1).open().unwrap_err().to_string();
        assert!(error.contains("not an audit line"), "{error}");
    }

    /// A file that is not the sink's own audit log is never cut: not through
    /// a symbolic link, not through a hard link, not when only its last
    /// complete line or only its first looks like an audit line.
    #[test]
    fn nothing_but_an_audit_log_of_its_own_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("vault.db");
        let mut prev = GENESIS_HASH;
        let audit = text_of(&lines(1, 3, &mut prev));
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.extend((0..20_000u32).map(|i| if i % 97 == 0 { b'\n' } else { (i % 251) as u8 }));
        let path = dir.path().join("audit.jsonl");
        type Place = fn(&Path, &Path);
        let cases: [(&str, Vec<u8>, Place); 5] = [
            ("a link to the database", bytes.clone(), |target, path| std::os::unix::fs::symlink(target, path).unwrap()),
            ("a hard link", format!("{audit}{{\"type\":\"en").into_bytes(), |target, path| {
                std::fs::hard_link(target, path).unwrap()
            }),
            ("the database itself", bytes.clone(), |target, path| std::fs::rename(target, path).unwrap()),
            ("foreign first line", format!("junk\n{audit}{{\"type\":\"en").into_bytes(), |target, path| {
                std::fs::rename(target, path).unwrap()
            }),
            ("foreign text, no line", b"hello world".to_vec(), |target, path| std::fs::rename(target, path).unwrap()),
        ];
        for (case, content, place) in cases {
            std::fs::write(&database, &content).unwrap();
            place(&database, &path);
            let error = FileSink::new(path.clone(), 0, 1).open().unwrap_err().to_string();
            assert!(error.contains("move"), "{case}: {error}");
            let kept = if database.exists() { &database } else { &path };
            assert_eq!(std::fs::read(kept).unwrap(), content, "{case}: nothing was cut");
            for file in [&database, &path] {
                let _ = std::fs::remove_file(file);
            }
        }
        // A torn tail longer than any line is not cut either.
        let content = format!("{audit}{{\"type\":\"entry\"{}", "x".repeat(MAX_LINE_BYTES + 10));
        std::fs::write(&path, &content).unwrap();
        let error = FileSink::new(path.clone(), 0, 1).open().unwrap_err().to_string();
        assert!(error.contains("longer than"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }

    /// A FIFO at the file, at its newest rotated file or at its lock file
    /// makes the sink fail at once instead of blocking a thread for good.
    #[test]
    fn a_fifo_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for fifo in [path.clone(), rotated(&path, 1), lock_path(&path)] {
            let _ = std::fs::remove_file(lock_path(&path));
            mkfifo(&fifo);
            let sink_path = path.clone();
            let result = never_blocks(&fifo, move || FileSink::new(sink_path, 0, 1).open().map_err(|e| e.to_string()));
            let error = result.unwrap_err();
            assert!(error.contains("not a regular file"), "{error}");
            std::fs::remove_file(&fifo).unwrap();
            let _ = std::fs::remove_file(&path);
        }
        // Replaced by a FIFO while the sink writes.
        let mut prev = GENESIS_HASH;
        let mut sink = FileSink::new(path.clone(), 0, 1);
        sink.open().unwrap();
        let first = lines(1, 2, &mut prev);
        sink.write(&first, &after(&first, prev)).unwrap();
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        mkfifo(&path);
        let next = lines(3, 1, &mut prev);
        let cursor = after(&next, prev);
        let error = never_blocks(&path, move || sink.write(&next, &cursor).map_err(|e| e.to_string())).unwrap_err();
        assert!(error.contains("not a regular file"), "{error}");
    }

    /// A file that replaced the one being written is taken over only when
    /// it ends exactly where the sink did; a rewound copy would make it
    /// write lines twice, so it is a failure naming the file.
    #[test]
    fn a_replaced_file_is_taken_over_only_when_it_ends_where_the_sink_did() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut prev = GENESIS_HASH;
        let mut sink = FileSink::new(path.clone(), 0, 1);
        sink.open().unwrap();
        let first = lines(1, 5, &mut prev);
        sink.write(&first, &after(&first, prev)).unwrap();
        let whole = text_of(&first);

        // Rewound: the same file but its last two lines.
        let staged = dir.path().join("staged");
        let rewound = text_of(&first[..3]);
        std::fs::write(&staged, &rewound).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let next = lines(6, 2, &mut prev);
        let error = sink.write(&next, &after(&next, prev)).unwrap_err().to_string();
        assert!(error.contains("was replaced") && error.contains(&*path.to_string_lossy()), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), rewound, "nothing written to it");

        // A copy that ends where the sink did is taken over.
        std::fs::write(&staged, &whole).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        sink.write(&next, &after(&next, prev)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole + &text_of(&next));

        // Moved away: a new file, created, goes on.
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        let last = lines(8, 1, &mut prev);
        sink.write(&last, &after(&last, prev)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text_of(&last));
    }
}
