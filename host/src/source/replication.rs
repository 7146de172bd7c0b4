//! A thin client for PostgreSQL's streaming replication protocol.
//!
//! Mainline tokio-postgres cannot enter logical replication (CopyBoth), so this
//! speaks the protocol directly, with `postgres-protocol` (the rust-postgres
//! project's wire-format crate) doing all message framing and authentication
//! (SCRAM-SHA-256, MD5, cleartext). It does only what the capture needs: TLS
//! as `sslmode` asks, the startup handshake, simple queries,
//! `START_REPLICATION`, reading XLogData/keepalive frames, and sending standby
//! status updates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::PgTarget;
use crate::change::Lsn;

/// Why talking to PostgreSQL over the replication protocol failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The TCP connection could not be made or broke.
    #[error("cannot reach PostgreSQL at {addr}: {source}; check that the server is running and --pg-url is right")]
    Io {
        /// host:port
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Server {
        /// SQLSTATE code.
        code: String,
        /// The server's message, with advice where the code is known.
        message: String,
    },
    /// The server sent something this client does not understand.
    #[error("unexpected reply from PostgreSQL: {0}")]
    Protocol(String),
    /// TLS was asked for and could not be set up; the message says what to do.
    #[error("{0}")]
    Tls(String),
}

impl ReplicationError {
    /// SQLSTATE of a server error, if that is what this is.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One frame read from a replication stream.
#[derive(Debug)]
pub enum Frame {
    /// Decoded output: `start` is the LSN the server tagged it with.
    XLogData {
        /// WAL position of this output.
        start: Lsn,
        /// The output plugin's bytes (one wal2json line).
        data: Bytes,
    },
    /// A keepalive: `wal_end` is where the server's decoding stands.
    Keepalive {
        /// Server's current WAL end.
        wal_end: Lsn,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// The connection's byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A connection opened with `replication=database`.
pub struct ReplicationClient {
    stream: Box<dyn Io>,
    read_buf: BytesMut,
    addr: String,
}

/// A backend message, or the CopyBothResponse that postgres-protocol does not parse.
enum Incoming {
    Message(backend::Message),
    CopyBoth,
}

type Rows = Vec<Vec<Option<String>>>;

impl ReplicationClient {
    /// Connects and authenticates. Session time zone is UTC so that wal2json
    /// prints timestamptz values in UTC.
    pub async fn connect(target: &PgTarget) -> Result<Self, ReplicationError> {
        let addr = target.addr();
        let io = |source| ReplicationError::Io {
            addr: addr.clone(),
            source,
        };
        let timed_out = |what: &str| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what} timed out"),
            ))
        };
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let stream = tokio::time::timeout(Duration::from_secs(10), start_tls(tcp, target, &addr))
            .await
            .map_err(|_| timed_out("TLS negotiation"))??;
        let mut client = ReplicationClient {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            addr: addr.clone(),
        };
        let mut buf = BytesMut::new();
        let params = [
            ("user", target.user.as_str()),
            ("database", target.dbname.as_str()),
            ("replication", "database"),
            ("application_name", "wasmcdc"),
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, YMD"),
            // wal2json prints values with the session's output functions: pin the settings
            // a database or role default could change (bytea as escape would garble bytes).
            ("bytea_output", "hex"),
            ("IntervalStyle", "postgres"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(|e| client.io(e))?;
        client.send(&buf).await?;
        client.authenticate(target).await?;
        // Drain ParameterStatus/BackendKeyData up to ReadyForQuery.
        loop {
            match client.next_message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(client),
                backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                _ => {}
            }
        }
    }

    fn io(&self, source: std::io::Error) -> ReplicationError {
        ReplicationError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    async fn authenticate(&mut self, target: &PgTarget) -> Result<(), ReplicationError> {
        let password = || {
            target.password.clone().ok_or_else(|| ReplicationError::Server {
                code: "28P01".into(),
                message: format!(
                    "PostgreSQL asks for a password for user \"{}\" and --pg-url has none; add it to the URL",
                    target.user
                ),
            })
        };
        let mut buf = BytesMut::new();
        loop {
            buf.clear();
            match self.next_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut buf).map_err(|e| self.io(e))?;
                    self.send(&buf).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(target.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf).map_err(|e| self.io(e))?;
                    self.send(&buf).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechanisms.next().map_err(|e| self.io(e))? {
                        scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(ReplicationError::Protocol(
                            "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)".into(),
                        ));
                    }
                    let mut state = sasl::ScramSha256::new(password()?.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut buf)
                        .map_err(|e| self.io(e))?;
                    self.send(&buf).await?;
                    let cont = match self.next_message().await? {
                        backend::Message::AuthenticationSaslContinue(b) => b,
                        backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                        _ => return Err(ReplicationError::Protocol("expected SASL continue".into())),
                    };
                    state.update(cont.data()).map_err(|e| self.io(e))?;
                    buf.clear();
                    frontend::sasl_response(state.message(), &mut buf).map_err(|e| self.io(e))?;
                    self.send(&buf).await?;
                    let fin = match self.next_message().await? {
                        backend::Message::AuthenticationSaslFinal(b) => b,
                        backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                        _ => return Err(ReplicationError::Protocol("expected SASL final".into())),
                    };
                    state.finish(fin.data()).map_err(|e| self.io(e))?;
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                _ => {
                    return Err(ReplicationError::Protocol(
                        "the server asks for an authentication method this client does not support; use scram-sha-256, md5 or trust in pg_hba.conf".into(),
                    ));
                }
            }
        }
    }

    /// Runs one simple query and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, ReplicationError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf).map_err(|e| self.io(e))?;
        self.send(&buf).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                backend::Message::DataRow(row) => {
                    let data = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(range) = ranges.next().map_err(|e| self.io(e))? {
                        values.push(range.map(|r| String::from_utf8_lossy(&data[r]).into_owned()));
                    }
                    rows.push(values);
                }
                backend::Message::ErrorResponse(e) => error = Some(server_error(&e)),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    /// Enters the logical replication stream of `slot` with the plugin options given.
    pub async fn start_replication(
        mut self,
        slot: &str,
        from: Lsn,
        options: &[(&str, String)],
    ) -> Result<ReplicationStream, ReplicationError> {
        let opts = options
            .iter()
            .map(|(k, v)| format!("\"{}\" '{}'", k, v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_ident(slot),
            from,
            opts
        );
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf).map_err(|e| self.io(e))?;
        self.send(&buf).await?;
        loop {
            match self.next_incoming().await? {
                Incoming::CopyBoth => return Ok(ReplicationStream { client: self }),
                Incoming::Message(backend::Message::ErrorResponse(e)) => return Err(server_error(&e)),
                Incoming::Message(backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_)) => {}
                Incoming::Message(_) => {
                    return Err(ReplicationError::Protocol(
                        "START_REPLICATION did not enter the replication stream".into(),
                    ));
                }
            }
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), ReplicationError> {
        self.stream.write_all(buf).await.map_err(|e| self.io(e))
    }

    async fn next_message(&mut self) -> Result<backend::Message, ReplicationError> {
        match self.next_incoming().await? {
            Incoming::Message(m) => Ok(m),
            Incoming::CopyBoth => Err(ReplicationError::Protocol("unexpected CopyBothResponse".into())),
        }
    }

    async fn next_incoming(&mut self) -> Result<Incoming, ReplicationError> {
        loop {
            if self.read_buf.len() >= 5 && self.read_buf[0] == b'W' {
                let len = u32::from_be_bytes([self.read_buf[1], self.read_buf[2], self.read_buf[3], self.read_buf[4]]);
                let total = len as usize + 1;
                if self.read_buf.len() >= total {
                    self.read_buf.advance(total);
                    return Ok(Incoming::CopyBoth);
                }
            } else {
                match backend::Message::parse(&mut self.read_buf) {
                    Ok(Some(message)) => return Ok(Incoming::Message(message)),
                    Ok(None) => {}
                    Err(e) => return Err(ReplicationError::Protocol(e.to_string())),
                }
            }
            let n = self.stream.read_buf(&mut self.read_buf).await.map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }
}

/// Asks for TLS as the policy says and returns the stream the startup runs over.
async fn start_tls(mut tcp: TcpStream, target: &PgTarget, addr: &str) -> Result<Box<dyn Io>, ReplicationError> {
    let policy = &target.tls;
    if !policy.wants_tls() {
        return Ok(Box::new(tcp));
    }
    let io = |source| ReplicationError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await.map_err(io)?;
    // Exactly one byte: anything after it must come from inside the TLS session.
    let answer = tcp.read_u8().await.map_err(io)?;
    match answer {
        b'S' => {
            let config = policy.client_config().map_err(ReplicationError::Tls)?;
            let name = policy.server_name(&target.host).map_err(ReplicationError::Tls)?;
            let tls = TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| match super::rustls_error(&e) {
                    Some(tls) => ReplicationError::Tls(policy.handshake_error(addr, tls)),
                    None => io(e),
                })?;
            Ok(Box::new(tls))
        }
        b'N' if policy.allows_plain() => Ok(Box::new(tcp)),
        b'N' => Err(ReplicationError::Tls(policy.refused(addr))),
        other => Err(ReplicationError::Protocol(format!(
            "the server answered the TLS request with '{}'",
            other.escape_ascii()
        ))),
    }
}

/// An open logical replication stream.
pub struct ReplicationStream {
    client: ReplicationClient,
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

impl ReplicationStream {
    /// Reads the next frame. Cancel-safe: a partially read frame stays buffered.
    pub async fn recv(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            match self.client.next_message().await? {
                backend::Message::CopyData(body) => {
                    let mut data = body.into_bytes();
                    if data.is_empty() {
                        continue;
                    }
                    match data.get_u8() {
                        b'w' if data.len() >= 24 => {
                            let start = Lsn(data.get_u64());
                            let _end = data.get_u64();
                            let _time = data.get_i64();
                            return Ok(Frame::XLogData { start, data });
                        }
                        b'k' if data.len() >= 17 => {
                            let wal_end = Lsn(data.get_u64());
                            let _time = data.get_i64();
                            let reply_requested = data.get_u8() == 1;
                            return Ok(Frame::Keepalive {
                                wal_end,
                                reply_requested,
                            });
                        }
                        other => {
                            return Err(ReplicationError::Protocol(format!(
                                "unknown replication frame '{}'",
                                other as char
                            )));
                        }
                    }
                }
                backend::Message::ErrorResponse(e) => return Err(server_error(&e)),
                backend::Message::CopyDone => {
                    return Err(ReplicationError::Protocol(
                        "the server ended the replication stream".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Sends a standby status update. Only `flush` moves the slot's `confirmed_flush_lsn`.
    pub async fn send_status(&mut self, write: Lsn, flush: Lsn, reply: bool) -> Result<(), ReplicationError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default()
            - PG_EPOCH_OFFSET_MICROS;
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(write.0);
        payload.put_u64(flush.0);
        payload.put_u64(flush.0);
        payload.put_i64(now);
        payload.put_u8(u8::from(reply));
        let mut buf = BytesMut::new();
        frontend::CopyData::new(&payload[..])
            .map_err(|e| self.client.io(e))?
            .write(&mut buf);
        self.client.send(&buf).await
    }

    /// Ends the stream politely; the server then closes the connection.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        frontend::terminate(&mut buf);
        let _ = self.client.send(&buf).await;
        let _ = self.client.stream.shutdown().await;
    }
}

/// Quotes an identifier for a replication command.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn server_error(body: &backend::ErrorResponseBody) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            _ => {}
        }
    }
    ReplicationError::Server { code, message }
}
