//! The chain watermark on this host: the furthest audit-chain position this
//! vault has verified, kept in the data directory, outside the database (see
//! [`mnvault_core::vault::Watermark`]).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

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
}

impl Watermark for FileWatermark {
    fn load(&self) -> Option<ChainHead> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot read the chain watermark");
                return None;
            }
        };
        let parsed = text.strip_prefix(HEADER).and_then(|rest| {
            let (seq, hash) = rest.trim().split_once(' ')?;
            let hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
            Some(ChainHead { seq: seq.parse().ok()?, hash })
        });
        if parsed.is_none() {
            tracing::error!(path = %self.path.display(), "the chain watermark is not in its format; ignored");
        }
        parsed
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
        std::fs::write(dir.path().join(WATERMARK_FILE), "something else").unwrap();
        assert_eq!(mark.load(), None);
    }
}
