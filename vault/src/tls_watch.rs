//! Reloading when a TLS file changes on disk, without SIGHUP: certificates
//! renewed by cert-manager, step or a cron job take effect by themselves.
//!
//! Every [`POLL_INTERVAL`] the files of `[tls]` in force (`cert`, `key`,
//! `client_ca`, every `crl`) are looked at: device, inode, length and
//! modification time, so a new file renamed into place (the way renewal
//! tools write) is seen as well as one rewritten in place. A change is
//! acted on once the files have stayed the same for one more interval, so a
//! renewal that writes the certificate and then the key is read whole. Then
//! the vault reloads exactly as on SIGHUP ([`crate::reload`]): the
//! configuration file is read too, and a file that does not fit (a key of
//! another certificate, a list that does not parse) is refused, logged at
//! error level naming its key, and the running certificates stay. The files
//! are not tried again until they change again.
//!
//! Polling rather than inotify: it sees files behind symbolic links swapped
//! by Kubernetes, on network file systems, and in directories made after the
//! start, for a few `stat` calls every interval.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::reload::Reloader;
use crate::service::Context;

/// How often the TLS files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What a TLS file looks like on disk; a change of any part is a change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    /// The file (through any symbolic link) is there.
    Present {
        /// Its device: with the inode, what a file renamed into place changes.
        device: u64,
        /// Its inode.
        inode: u64,
        /// Its length in bytes.
        len: u64,
        /// Its modification time, where the file system keeps one.
        modified: Option<SystemTime>,
    },
    /// It cannot be looked at (missing during a swap, or unreadable), with
    /// why, so that a change of reason counts too.
    Unavailable(std::io::ErrorKind),
}

/// The state of every watched file, in the order of [`crate::config::Settings::tls_files`].
type Snapshot = Vec<(PathBuf, FileState)>;

async fn snapshot(files: Vec<PathBuf>) -> Snapshot {
    use std::os::unix::fs::MetadataExt as _;
    let mut states = Vec::with_capacity(files.len());
    for path in files {
        // Follows symbolic links: a swapped link target is a changed file.
        let state = match tokio::fs::metadata(&path).await {
            Ok(meta) => FileState::Present {
                device: meta.dev(),
                inode: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
            },
            Err(error) => FileState::Unavailable(error.kind()),
        };
        states.push((path, state));
    }
    states
}

fn same_files(a: &Snapshot, b: &Snapshot) -> bool {
    a.iter().map(|(path, _)| path).eq(b.iter().map(|(path, _)| path))
}

/// The watcher; dropping it stops it.
pub(crate) struct TlsWatch(tokio::task::JoinHandle<()>);

impl Drop for TlsWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching the TLS files `reloader` has in force, every `interval`,
/// until the vault is stopping.
pub(crate) fn spawn(ctx: Context, reloader: Reloader, interval: Duration) -> TlsWatch {
    TlsWatch(tokio::spawn(async move {
        let mut applied = snapshot(reloader.tls_files().await).await;
        // A change seen once, waiting to be seen unchanged a second time.
        let mut settling: Option<Snapshot> = None;
        loop {
            tokio::select! {
                () = ctx.stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let now = snapshot(reloader.tls_files().await).await;
            if !same_files(&now, &applied) {
                // Other paths: a reload changed `[tls]` and read them already.
                applied = now;
                settling = None;
                continue;
            }
            if now == applied {
                settling = None;
                continue;
            }
            if settling.as_ref() != Some(&now) {
                settling = Some(now);
                continue;
            }
            let changed: Vec<String> = now
                .iter()
                .zip(&applied)
                .filter(|(new, old)| new.1 != old.1)
                .map(|((path, _), _)| path.display().to_string())
                .collect();
            tracing::info!(files = %changed.join(" "), "TLS files changed on disk: reloading the configuration");
            if reloader.reload().await.is_err() {
                // The reload logged why, naming the key.
                tracing::warn!(
                    files = %changed.join(" "),
                    "the changed TLS files were refused; the running certificates stay until the files change again"
                );
            }
            applied = now;
            settling = None;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_renamed_into_place_or_rewritten_or_removed_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        std::fs::write(&cert, "one").unwrap();
        let files = vec![cert.clone()];
        let before = snapshot(files.clone()).await;
        assert_eq!(before, snapshot(files.clone()).await, "nothing changed");

        // Same length, written beside it and renamed over it: a new inode.
        let staged = dir.path().join("server.crt.new");
        std::fs::write(&staged, "two").unwrap();
        std::fs::rename(&staged, &cert).unwrap();
        let renamed = snapshot(files.clone()).await;
        assert_ne!(before, renamed);

        std::fs::write(&cert, "longer").unwrap();
        let rewritten = snapshot(files.clone()).await;
        assert_ne!(renamed, rewritten);

        std::fs::remove_file(&cert).unwrap();
        let removed = snapshot(files.clone()).await;
        assert_eq!(removed, [(cert.clone(), FileState::Unavailable(std::io::ErrorKind::NotFound))]);
        assert!(same_files(&removed, &before));
        assert!(!same_files(&removed, &snapshot(vec![dir.path().join("other.crt")]).await));
    }
}
