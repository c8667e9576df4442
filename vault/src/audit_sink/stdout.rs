//! The standard-output sink: JSON lines on the vault's standard output (for
//! a container platform's log collector), its position in a cursor file.
//! At least once: a crash after a batch was written and before the cursor
//! file was, writes that batch again at the next start.

use std::io::{self, Write};

use super::{Cursor, CursorFile, Line, SinkWriter};

/// A sink writing to `out` (the process's standard output).
pub(crate) struct StdoutSink {
    out: Box<dyn Write + Send>,
    cursor: CursorFile,
}

impl StdoutSink {
    /// A sink writing lines to `out`, its position in `cursor`.
    pub(crate) fn new(out: Box<dyn Write + Send>, cursor: CursorFile) -> Self {
        Self { out, cursor }
    }
}

impl SinkWriter for StdoutSink {
    fn open(&mut self) -> io::Result<Option<Cursor>> {
        self.cursor.read()
    }

    fn write(&mut self, lines: &[Line], after: &Cursor) -> io::Result<()> {
        let mut buffer = Vec::new();
        for line in lines {
            buffer.extend_from_slice(line.text.as_bytes());
            buffer.push(b'\n');
        }
        self.out
            .write_all(&buffer)
            .and_then(|()| self.out.flush())
            .map_err(|error| io::Error::new(error.kind(), format!("cannot write to standard output: {error}")))?;
        self.cursor.write(after)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::LineKind;
    use super::*;

    /// Standard output as a test sees it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_go_out_whole_and_the_cursor_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = Captured::default();
        let mut sink = StdoutSink::new(Box::new(out.clone()), CursorFile::new(dir.path(), "stdout"));
        assert_eq!(sink.open().unwrap(), None);
        let line = |seq: u64, text: &str| Line {
            seq,
            kind: LineKind::Entry { ok: true },
            time_ms: 0,
            text: text.into(),
            stub: None,
        };
        let after = Cursor { seq: 2, checkpoint: false, hash: [1; 32] };
        sink.write(&[line(1, "{\"a\":1}"), line(2, "{\"b\":2}")], &after).unwrap();
        assert_eq!(String::from_utf8(out.0.lock().unwrap().clone()).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(sink.open().unwrap(), Some(after));
        let path = dir.path().join("audit-sink-stdout.cursor");
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staged file left behind");
    }
}
