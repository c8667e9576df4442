//! Opening the files a sink writes or reads (its file, rotated files, lock
//! and cursor files) so that nothing else can be passed off as one: the
//! last component is never followed if it is a symbolic link (O_NOFOLLOW),
//! no open waits (O_NONBLOCK: a FIFO without a reader or writer fails or
//! returns at once instead of blocking a thread for good), and what was
//! opened must be a regular file of the vault's user with a single link
//! (not a hard link to the database or a key). O_NONBLOCK is cleared once
//! the file is known to be a regular file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use rustix::fs::OFlags;
use rustix::io::Errno;

/// `error`, naming what was done to `path`.
pub(crate) fn named(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("cannot {what} {}: {error}", path.display()))
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} {why}; an audit sink writes and reads only regular files of its own (the vault's user, one link): \
             move it away",
            path.display()
        ),
    )
}

/// Opens `path` with `options` (never following a symbolic link there,
/// never waiting) and checks it is a regular file the vault's user owns
/// with one link. `NotFound` is passed on as it is.
pub(crate) fn open(path: &Path, options: &OpenOptions) -> io::Result<File> {
    let mut options = options.clone();
    options.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC).bits() as i32);
    let file = options.open(path).map_err(|error| match error.raw_os_error() {
        Some(code) if code == Errno::LOOP.raw_os_error() => refused(path, "is a symbolic link"),
        // A FIFO opened for writing without a reader.
        Some(code) if code == Errno::NXIO.raw_os_error() => refused(path, "is not a regular file"),
        _ if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists) => error,
        _ => named(error, "open", path),
    })?;
    check(&file, path)?;
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| named(e.into(), "open", path))?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(|e| named(e.into(), "open", path))?;
    Ok(file)
}

/// Checks that `file` (at `path`) is a regular file of the vault's user
/// with one link.
pub(crate) fn check(file: &File, path: &Path) -> io::Result<std::fs::Metadata> {
    let metadata = file.metadata().map_err(|e| named(e, "read the metadata of", path))?;
    if !metadata.file_type().is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if metadata.uid() != rustix::process::geteuid().as_raw() {
        return Err(refused(path, "belongs to another user"));
    }
    if metadata.nlink() != 1 {
        return Err(refused(path, "has other names (hard links)"));
    }
    Ok(metadata)
}

/// Options for reading.
pub(crate) fn read() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    options
}

/// Options for reading and appending to an existing file.
pub(crate) fn append() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    options
}

/// Options for creating a new file (0600, O_EXCL) to read and append to.
pub(crate) fn create_new() -> OpenOptions {
    let mut options = append();
    options.create_new(true).mode(0o600);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_hard_links_are_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vault.db");
        std::fs::write(&target, "data\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = open(&link, &append()).unwrap_err().to_string();
        assert!(error.contains("is a symbolic link"), "{error}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, 0o600.into(), 0).unwrap();
        for options in [read(), append()] {
            let error = open(&fifo, &options).unwrap_err().to_string();
            assert!(error.contains("is not a regular file"), "{error}");
        }
        let hard = dir.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        let error = open(&hard, &append()).unwrap_err().to_string();
        assert!(error.contains("hard links"), "{error}");
        std::fs::remove_file(&hard).unwrap();
        let file = open(&target, &append()).unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(flags.contains(OFlags::APPEND) && !flags.contains(OFlags::NONBLOCK), "{flags:?}");
        assert_eq!(open(&dir.path().join("none"), &read()).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(open(&target, &create_new()).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }
}
