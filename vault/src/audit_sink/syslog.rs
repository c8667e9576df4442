//! The syslog sink: one RFC 5424 message per line, to a Unix socket
//! (`unix:/dev/log`, datagrams, or a stream socket with newline framing),
//! over UDP (one datagram each) or over TCP (octet-counting framing, RFC
//! 6587), its position in a cursor file.
//!
//! A message is `<PRI>1 TIME HOST mnvault PID MSGID - LINE`: the facility
//! configured, severity info (notice for an entry whose call did not
//! succeed), the time of the entry or checkpoint, MSGID `entry`,
//! `checkpoint` or `stub`, no structured data, and the line exactly as
//! `AuditLine::to_json()` writes it (no BOM). An entry whose message would
//! pass `max_message_bytes` is sent as its stub line (position, link and
//! digest: the chain stays verifiable; the entry whole is in the database
//! and in any file sink), with a warning in the vault's log.
//!
//! At least once up to the receiver's socket: a crash between a send and
//! the cursor file's write sends the batch again. Plain syslog has no
//! acknowledgement: over TCP the connection is checked before each batch
//! (a receiver that closed it is noticed, and the batch waits), but
//! messages the kernel accepted just before the receiver went away are
//! lost to it, and UDP loses silently. Where nothing may be lost, use a
//! file sink and a shipper that acknowledges.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::{Cursor, CursorFile, Line, LineKind, SinkWriter};

/// Where syslog listens when `address` is not given.
pub(crate) const DEFAULT_ADDRESS: &str = "unix:/dev/log";
/// `authpriv`, the default facility.
pub(crate) const AUTHPRIV: u8 = 10;
/// Every facility name `facility` accepts.
pub(crate) const FACILITIES: [&str; 13] = [
    "auth", "authpriv", "daemon", "user", "audit", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
];

/// The code of facility `name`.
pub(crate) fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "authpriv" => AUTHPRIV,
        "audit" => 13,
        _ => 16 + name.strip_prefix("local")?.parse::<u8>().ok().filter(|n| *n <= 7)?,
    })
}

/// A syslog receiver's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    /// A Unix socket (`unix:/dev/log`).
    Unix(PathBuf),
    /// `udp://host:port`.
    Udp(String),
    /// `tcp://host:port`.
    Tcp(String),
}

impl SyslogAddress {
    /// Parses `unix:<absolute path>`, `udp://host:port` or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let form = "must be unix:<absolute path>, udp://host:port or tcp://host:port";
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            return if path.is_absolute() { Ok(SyslogAddress::Unix(path)) } else { Err(form.into()) };
        }
        let (make, rest): (fn(String) -> Self, _) = if let Some(rest) = text.strip_prefix("udp://") {
            (SyslogAddress::Udp, rest)
        } else if let Some(rest) = text.strip_prefix("tcp://") {
            (SyslogAddress::Tcp, rest)
        } else {
            return Err(form.into());
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| form.to_owned())?;
        let port_ok = port.parse::<u16>().is_ok_and(|port| port > 0);
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host.len() <= 253
                    && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }
        };
        if port_ok && host_ok {
            Ok(make(rest.to_owned()))
        } else {
            Err(form.into())
        }
    }
}

impl std::fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            SyslogAddress::Udp(host) => write!(f, "udp://{host}"),
            SyslogAddress::Tcp(host) => write!(f, "tcp://{host}"),
        }
    }
}

/// An open connection to the receiver.
enum Connection {
    UnixDatagram(UnixDatagram),
    UnixStream(UnixStream),
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// A syslog sink.
pub(crate) struct SyslogSink {
    address: SyslogAddress,
    facility: u8,
    max_message_bytes: usize,
    timeout: Duration,
    cursor: CursorFile,
    connection: Option<Connection>,
    hostname: String,
    pid: u32,
}

/// This host's name as RFC 5424 allows it (printable US-ASCII), or `-`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

fn resolve(host: &str) -> io::Result<Vec<SocketAddr>> {
    let addresses: Vec<SocketAddr> = host.to_socket_addrs()?.collect();
    if addresses.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address"));
    }
    Ok(addresses)
}

impl SyslogSink {
    /// A sink sending to `address`.
    pub(crate) fn new(
        address: SyslogAddress,
        facility: u8,
        max_message_bytes: usize,
        timeout: Duration,
        cursor: CursorFile,
    ) -> Self {
        Self {
            address,
            facility,
            max_message_bytes,
            timeout,
            cursor,
            connection: None,
            hostname: hostname(),
            pid: std::process::id(),
        }
    }

    fn connect(&self) -> io::Result<Connection> {
        let timeout = Some(self.timeout);
        Ok(match &self.address {
            SyslogAddress::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                match socket.connect(path) {
                    Ok(()) => {
                        socket.set_write_timeout(timeout)?;
                        Connection::UnixDatagram(socket)
                    }
                    // A stream socket (syslog-ng's unix-stream()).
                    Err(error) if error.raw_os_error() == Some(rustix::io::Errno::PROTOTYPE.raw_os_error()) => {
                        let stream = UnixStream::connect(path)?;
                        stream.set_write_timeout(timeout)?;
                        Connection::UnixStream(stream)
                    }
                    Err(error) => return Err(error),
                }
            }
            SyslogAddress::Udp(host) => {
                let target = resolve(host)?[0];
                let local: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
                let socket = UdpSocket::bind(local)?;
                socket.connect(target)?;
                socket.set_write_timeout(timeout)?;
                Connection::Udp(socket)
            }
            SyslogAddress::Tcp(host) => {
                let mut last = None;
                let mut connected = None;
                for target in resolve(host)? {
                    match TcpStream::connect_timeout(&target, self.timeout) {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(error) => last = Some(error),
                    }
                }
                let stream = connected.ok_or_else(|| last.unwrap_or_else(|| io::Error::other("no address")))?;
                stream.set_write_timeout(timeout)?;
                stream.set_nodelay(true)?;
                Connection::Tcp(stream)
            }
        })
    }

    /// The message of `line`, or of its stub when it would be too long.
    fn message(&self, line: &Line) -> Vec<u8> {
        let severity = match line.kind {
            LineKind::Entry { ok: false } => 5,
            LineKind::Entry { ok: true } | LineKind::Checkpoint => 6,
        };
        let time = mnvault_core::clock::rfc3339(line.time_ms);
        let time = if time.starts_with(|c: char| c.is_ascii_digit()) { time } else { "-".into() };
        let header = |msgid: &str| {
            format!("<{}>1 {time} {} mnvault {} {msgid} - ", self.facility * 8 + severity, self.hostname, self.pid)
        };
        let msgid = if line.kind == LineKind::Checkpoint { "checkpoint" } else { "entry" };
        let mut message = header(msgid).into_bytes();
        if message.len() + line.text.len() > self.max_message_bytes {
            if let Some(stub) = &line.stub {
                tracing::warn!(
                    seq = line.seq,
                    bytes = line.text.len(),
                    max = self.max_message_bytes,
                    "an audit entry is longer than the syslog sink's max_message_bytes; sent as its stub (the entry \
                     whole is in the database and any file sink)"
                );
                let mut message = header("stub").into_bytes();
                message.extend_from_slice(stub.as_bytes());
                return message;
            }
        }
        message.extend_from_slice(line.text.as_bytes());
        message
    }

    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let whole = |sent: usize| {
            if sent == message.len() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::WriteZero, "the receiver took part of a message"))
            }
        };
        match self.connection.as_mut().ok_or_else(|| io::Error::other("not connected"))? {
            Connection::UnixDatagram(socket) => whole(socket.send(message)?),
            Connection::Udp(socket) => whole(socket.send(message)?),
            Connection::UnixStream(stream) => {
                stream.write_all(message)?;
                stream.write_all(b"\n")
            }
            Connection::Tcp(stream) => {
                stream.write_all(format!("{} ", message.len()).as_bytes())?;
                stream.write_all(message)
            }
        }
    }

    /// Whether a TCP receiver closed the connection since the last batch.
    fn check_connection(&mut self) -> io::Result<()> {
        if let Some(Connection::Tcp(stream)) = &self.connection {
            stream.set_nonblocking(true)?;
            let mut byte = [0u8];
            let peeked = stream.peek(&mut byte);
            stream.set_nonblocking(false)?;
            match peeked {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "the receiver closed the connection"))
                }
                Err(error) if error.kind() != io::ErrorKind::WouldBlock => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }
}

impl SinkWriter for SyslogSink {
    fn open(&mut self) -> io::Result<Option<Cursor>> {
        self.connection = None;
        let cursor = self.cursor.read()?;
        self.connection = Some(
            self.connect()
                .map_err(|error| io::Error::new(error.kind(), format!("cannot reach {}: {error}", self.address)))?,
        );
        Ok(cursor)
    }

    fn write(&mut self, lines: &[Line], after: &Cursor) -> io::Result<()> {
        let sent = self.check_connection().and_then(|()| {
            for line in lines {
                let message = self.message(line);
                self.send(&message)?;
            }
            if let Some(Connection::Tcp(stream)) = &mut self.connection {
                stream.flush()?;
            }
            Ok(())
        });
        if let Err(error) = sent {
            self.connection = None;
            return Err(io::Error::new(error.kind(), format!("cannot send to {}: {error}", self.address)));
        }
        self.cursor.write(after)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::TcpListener;

    use mnvault_core::audit::line::AuditLine;

    use super::*;

    fn line(seq: u64, kind: LineKind, text: &str, stub: Option<&str>) -> Line {
        Line { seq, kind, time_ms: 1_764_000_000_123, text: text.into(), stub: stub.map(Into::into) }
    }

    #[test]
    fn addresses_and_facilities_parse_strictly() {
        assert_eq!(SyslogAddress::parse("unix:/dev/log"), Ok(SyslogAddress::Unix("/dev/log".into())));
        assert_eq!(SyslogAddress::parse("tcp://siem.example:6514"), Ok(SyslogAddress::Tcp("siem.example:6514".into())));
        assert_eq!(SyslogAddress::parse("udp://[::1]:514"), Ok(SyslogAddress::Udp("[::1]:514".into())));
        for bad in
            ["unix:dev/log", "tcp://host", "tcp://:514", "udp://h:0", "udp://h:70000", "http://h:1", "tcp://a b:1"]
        {
            assert!(SyslogAddress::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("authpriv"), Some(10));
        assert_eq!(facility_code("local8"), None);
        assert!(FACILITIES.iter().all(|name| facility_code(name).is_some()));
    }

    #[test]
    fn tcp_messages_are_octet_counted_rfc_5424_with_the_line_exact() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = SyslogAddress::Tcp(listener.local_addr().unwrap().to_string());
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            SyslogSink::new(address, AUTHPRIV, 480, Duration::from_secs(5), CursorFile::new(dir.path(), "s"));
        assert_eq!(sink.open().unwrap(), None);
        let (mut received, _) = listener.accept().unwrap();
        let long = format!("{{\"type\":\"entry\",\"pad\":\"{}\"}}", "x".repeat(600));
        let lines = [
            line(1, LineKind::Entry { ok: true }, "{\"type\":\"entry\",\"seq\":1}", Some("{\"type\":\"stub\"}")),
            line(1, LineKind::Checkpoint, "{\"type\":\"checkpoint\",\"seq\":1}", None),
            line(2, LineKind::Entry { ok: false }, &long, Some("{\"type\":\"stub\",\"seq\":2}")),
        ];
        let after = Cursor { seq: 2, checkpoint: false, hash: [3; 32] };
        sink.write(&lines, &after).unwrap();
        drop(sink);
        let mut bytes = Vec::new();
        received.read_to_end(&mut bytes).unwrap();
        let mut messages = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let space = rest.iter().position(|&b| b == b' ').unwrap();
            let length: usize = std::str::from_utf8(&rest[..space]).unwrap().parse().unwrap();
            messages.push(String::from_utf8(rest[space + 1..space + 1 + length].to_vec()).unwrap());
            rest = &rest[space + 1 + length..];
        }
        let host = hostname();
        let pid = std::process::id();
        assert_eq!(
            messages,
            [
                format!("<86>1 2025-11-24T16:00:00.123Z {host} mnvault {pid} entry - {{\"type\":\"entry\",\"seq\":1}}"),
                format!(
                    "<86>1 2025-11-24T16:00:00.123Z {host} mnvault {pid} checkpoint - {{\"type\":\"checkpoint\",\"seq\":1}}"
                ),
                format!("<85>1 2025-11-24T16:00:00.123Z {host} mnvault {pid} stub - {{\"type\":\"stub\",\"seq\":2}}"),
            ]
        );
        let mut reopened = SyslogSink::new(
            SyslogAddress::Tcp(listener.local_addr().unwrap().to_string()),
            AUTHPRIV,
            480,
            Duration::from_secs(5),
            CursorFile::new(dir.path(), "s"),
        );
        assert_eq!(reopened.open().unwrap(), Some(after), "the position is kept");
    }

    #[test]
    fn a_closed_receiver_fails_the_batch_and_a_datagram_socket_gets_one_message_each() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SyslogSink::new(
            SyslogAddress::Tcp(listener.local_addr().unwrap().to_string()),
            AUTHPRIV,
            8192,
            Duration::from_secs(5),
            CursorFile::new(dir.path(), "tcp"),
        );
        sink.open().unwrap();
        let (received, _) = listener.accept().unwrap();
        drop(received);
        drop(listener);
        std::thread::sleep(Duration::from_millis(50));
        let lines = [line(1, LineKind::Entry { ok: true }, "{}", None)];
        let after = Cursor { seq: 1, checkpoint: false, hash: [0; 32] };
        assert!(sink.write(&lines, &after).is_err());
        assert_eq!(sink.open().map_err(|e| e.kind()).unwrap_err(), io::ErrorKind::ConnectionRefused);
        assert_eq!(CursorFile::new(dir.path(), "tcp").read().unwrap(), None, "nothing acknowledged");

        let socket_path = dir.path().join("log.sock");
        let receiver = UnixDatagram::bind(&socket_path).unwrap();
        let address = SyslogAddress::Unix(socket_path);
        let mut sink = SyslogSink::new(address, 16, 8192, Duration::from_secs(5), CursorFile::new(dir.path(), "unix"));
        sink.open().unwrap();
        let stub = AuditLine::parse(
            "{\"type\":\"stub\",\"seq\":1,\"prev_hash\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"digest\":\
             \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
        )
        .unwrap()
        .to_json();
        sink.write(&[line(1, LineKind::Entry { ok: true }, &stub, None)], &after).unwrap();
        let mut buffer = [0u8; 1024];
        let length = receiver.recv(&mut buffer).unwrap();
        let message = std::str::from_utf8(&buffer[..length]).unwrap();
        assert!(message.starts_with("<134>1 ") && message.ends_with(&stub), "{message}");
    }
}
