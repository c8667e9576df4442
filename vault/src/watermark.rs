//! The chain watermark on this host: the furthest audit-chain position this
//! vault has verified, kept in the data directory, outside the database (see
//! [`mnvault_core::vault::Watermark`]).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use mnvault_core::store::ChainHead;
use mnvault_core::vault::Watermark;

/// Name of the watermark file inside the data directory.
pub const WATERMARK_FILE: &str = "chain-watermark";

const HEADER: &str = "mnvault-chain-watermark v1";

/// The watermark as a small text file: a header line, then `seq hash-hex`.
#[derive(Debug)]
pub struct FileWatermark {
    path: PathBuf,
}

impl FileWatermark {
    /// The watermark kept at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Writes `head` as the watermark, saying whether it was written (a
    /// restore must know; a serving vault only logs, see [`Watermark::save`]).
    pub fn write(&self, head: &ChainHead) -> std::io::Result<()> {
        // Written aside and renamed, so a crash leaves the old or the new one.
        let aside = self.path.with_extension("new");
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&aside)?;
        writeln!(file, "{HEADER}\n{} {}", head.seq, hex::encode(head.hash))?;
        file.sync_all()?;
        std::fs::rename(&aside, &self.path)
    }

    /// The watermark, `None` when there is no file. A file that exists but
    /// does not read or parse is an error: taking it as absent would let a
    /// rolled-back database pass for one this host never saw.
    pub fn read(&self) -> Result<Option<ChainHead>, WatermarkError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(WatermarkError::Unreadable { path: self.path.clone(), source }),
        };
        let parsed = text.strip_prefix(HEADER).and_then(|rest| {
            let (seq, hash) = rest.trim().split_once(' ')?;
            let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
            Some(ChainHead { seq: seq.parse().ok()?, hash })
        });
        parsed.map(Some).ok_or_else(|| WatermarkError::Malformed { path: self.path.clone() })
    }

    /// Where the watermark is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why this host's watermark cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatermarkError {
    /// The file exists but cannot be read (permissions, I/O).
    #[error(
        "cannot read the chain watermark {path}: {source}; make it readable by the vault's user (it is 0600, owned \
         by that user)"
    )]
    Unreadable {
        /// The watermark file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but does not hold a watermark.
    #[error(
        "the chain watermark {path} is not in its format, so this host cannot tell whether the database was rolled \
         back; put back a good copy of the file, or, once you have checked the audit head against the one you keep \
         elsewhere, remove it and run `mnvault restore --adopt`"
    )]
    Malformed {
        /// The watermark file.
        path: PathBuf,
    },
}

impl Watermark for FileWatermark {
    fn load(&self) -> Option<ChainHead> {
        // Startup, restore and adoption call `read` first and refuse what
        // it refuses; this only sees a file that changed since.
        self.read().unwrap_or_else(|error| {
            tracing::error!(%error, "the chain watermark is unusable; ignored");
            None
        })
    }

    fn save(&self, head: &ChainHead) {
        if let Err(error) = self.write(head) {
            tracing::error!(path = %self.path.display(), %error, "cannot save the chain watermark");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_watermark_loads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let mark = FileWatermark::new(dir.path().join(WATERMARK_FILE));
        assert_eq!(mark.load(), None);
        mark.save(&ChainHead { seq: 42, hash: [7; 32] });
        assert_eq!(mark.load(), Some(ChainHead { seq: 42, hash: [7; 32] }));
        let mode = std::fs::metadata(dir.path().join(WATERMARK_FILE)).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn a_watermark_that_exists_but_does_not_parse_is_an_error_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WATERMARK_FILE);
        let mark = FileWatermark::new(path.clone());
        assert!(matches!(mark.read(), Ok(None)));
        let good = format!("{HEADER}\n42 {}\n", "07".repeat(32));
        let cut = good[..good.len() - 10].to_owned();
        for text in ["something else".to_owned(), String::new(), cut, good.replace("42", "x")] {
            std::fs::write(&path, &text).unwrap();
            let error = mark.read().expect_err(&text);
            assert!(matches!(error, WatermarkError::Malformed { .. }), "{text:?}: {error}");
            assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        }
        // A directory where the file should be does not read.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(mark.read(), Err(WatermarkError::Unreadable { .. })));
    }
}
