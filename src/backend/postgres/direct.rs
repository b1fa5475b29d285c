//! Synchronous request/response connections for callers that do their own
//! I/O (issue 14), as the Redis backend has: the calling thread checks a
//! connection out, writes the statement and reads the answer itself, with no
//! hop to a runtime worker.
//!
//! The wire protocol is `postgres-protocol`'s (the crate under
//! tokio-postgres): its frontend encoders, its backend message parser, its
//! binary encodings of the values and its md5/SCRAM-SHA-256 authentication.
//! This file owns the socket (non-blocking, so that waiting for an answer is
//! a `poll(2)` loop that looks at the caller's interrupt flag) and the
//! statements: the same SQL as the async path (`sql.rs`), extended protocol,
//! each statement prepared (Parse) once per connection, together with its
//! first use; a call is then one Bind/Execute/Sync and one round trip.
//!
//! Only plain TCP or Unix-socket targets with one host and no TLS: anything
//! else takes the async path. Connections live in a pid-tagged per-process
//! pool (a forked child opens its own): up to `MAX_READERS` for the reads,
//! and one for publishes, which go direct only while no publish of the
//! process is in flight or queued on the async side (`batch::claim`), so the
//! process still has one publish statement in flight at a time, in order.
//!
//! What a failure means, by what was received before it:
//! * the connection was found closed before sending (a server that ended
//!   the session while the connection was idle, `pg_terminate_backend`):
//!   a new connection is opened and the statement sent there;
//! * connecting failed, or nothing was sent: [`DirectResult::Fallback`], the
//!   async path then does the call (and reports its errors);
//! * an SQL error (ReadyForQuery follows): the statement was rolled back; a
//!   missing table falls back (the async path creates it), others are
//!   returned as the async path returns them;
//! * the server ended the session (a FATAL error) before the statement
//!   completed: nothing was committed (the implicit transaction commits at
//!   Sync, after CommandComplete), so it falls back too;
//! * any other break after sending: a read falls back (reads are
//!   idempotent); a publish fails with a connection error (it may have been
//!   stored: it is never sent again).

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message as Reply};
use postgres_protocol::message::frontend;
use postgres_protocol::types::{self as pgtypes, ArrayDimension};
use postgres_protocol::IsNull;
use tokio_postgres::config::{ChannelBinding, Host, SslMode, TargetSessionAttrs};
use tokio_postgres::Config;

use super::sql::{self, NOTIFY_PAYLOAD_LIMIT};
use super::{batch, Inner};
use crate::backend::caller_socket::CallerSocket;
use crate::backend::direct::{wait_ready, IdleConns, Wait};
use crate::backend::per_process::{PerProcess, ProcessLocal};
use crate::backend::{DirectCall, DirectReply, DirectResult, DirectRun, Settings};
use crate::error::Error;
use crate::message::{escape_channel, Message};

/// Read connections kept per process. A caller finding none idle and the
/// pool full takes the async path (its pool of 4).
const MAX_READERS: usize = 4;

const TEXT: u32 = 25;
const INT8: u32 = 20;
const TEXT_ARRAY: u32 = 1009;
/// Binary, for every parameter and every column.
const BINARY: i16 = 1;

/// The statements of the direct path (their SQL is the async path's).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stmt {
    LastId,
    LastIds,
    Backlog,
    Publish,
}

impl Stmt {
    fn name(self) -> &'static str {
        match self {
            Stmt::LastId => "mb_direct_last_id",
            Stmt::LastIds => "mb_direct_last_ids",
            Stmt::Backlog => "mb_direct_backlog",
            Stmt::Publish => "mb_direct_publish",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Stmt::LastId => sql::MAX_CHANNEL_ID,
            Stmt::LastIds => sql::MAX_CHANNEL_IDS,
            Stmt::Backlog => sql::CHANNEL_BACKLOG,
            Stmt::Publish => sql::PUBLISH_ALL,
        }
    }

    fn types(self) -> &'static [u32] {
        match self {
            Stmt::LastId => &[TEXT],
            Stmt::LastIds => &[TEXT_ARRAY],
            Stmt::Backlog => &[TEXT, INT8],
            Stmt::Publish => &[TEXT, TEXT, TEXT, TEXT, INT8, INT8, TEXT, INT8, INT8],
        }
    }

    /// Its bit in [`Conn::prepared`].
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A statement parameter.
enum Param<'a> {
    Text(&'a str),
    Int8(i64),
    TextArray(&'a [String]),
}

enum Addr {
    Tcp {
        host: String,
        port: u16,
        hostaddr: Option<IpAddr>,
    },
    Unix(PathBuf),
}

/// Where and how the direct connections connect, and their pool.
pub(super) struct Direct {
    addr: Addr,
    user: String,
    password: Option<Vec<u8>>,
    /// The startup parameters (as tokio-postgres sends them).
    params: Vec<(&'static str, String)>,
    connect_timeout: Duration,
    pool: PerProcess<Pool>,
}

impl Direct {
    /// `None` (the async path for everything) for TLS, several hosts or
    /// addresses, a required channel binding or session attributes, or when
    /// turned off with `MESSAGE_BUS_POSTGRES_DIRECT=0`.
    pub(super) fn new(config: &Config) -> Option<Direct> {
        if std::env::var("MESSAGE_BUS_POSTGRES_DIRECT").as_deref() == Ok("0") {
            return None;
        }
        // The async path connects with `NoTls`: `prefer` is plain there too.
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer)
            || config.get_channel_binding() == ChannelBinding::Require
            || config.get_target_session_attrs() != TargetSessionAttrs::Any
        {
            return None;
        }
        let [host] = config.get_hosts() else {
            return None;
        };
        let port = match config.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return None,
        };
        let hostaddr = match config.get_hostaddrs() {
            [] => None,
            [addr] => Some(*addr),
            _ => return None,
        };
        let addr = match host {
            Host::Tcp(host) => Addr::Tcp {
                host: host.clone(),
                port,
                hostaddr,
            },
            #[cfg(unix)]
            Host::Unix(dir) => Addr::Unix(dir.join(format!(".s.PGSQL.{port}"))),
        };
        let user = config.get_user()?.to_string();
        let mut params = vec![("client_encoding", "UTF8".to_string())];
        params.push(("user", user.clone()));
        if let Some(dbname) = config.get_dbname() {
            params.push(("database", dbname.to_string()));
        }
        if let Some(options) = config.get_options() {
            params.push(("options", options.to_string()));
        }
        if let Some(name) = config.get_application_name() {
            params.push(("application_name", name.to_string()));
        }
        Some(Direct {
            addr,
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            params,
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5)),
            pool: PerProcess::default(),
        })
    }

    /// Closes this process's idle connections (`destroy`).
    pub(super) fn clear(&self) {
        self.pool.shut_down_current();
    }

    /// Starts `call` on a connection of the caller's, or `None`: the async
    /// path (a publish that needs more than one statement, a publish of the
    /// process in flight or queued, a full pool).
    pub(super) fn start<'a>(
        &'a self,
        inner: &'a Arc<Inner>,
        call: DirectCall<'a>,
    ) -> Option<Box<dyn DirectRun + 'a>> {
        let pool = self.pool.current();
        let mut command = BytesMut::new();
        let (stmt, claim) = match &call {
            DirectCall::Publish {
                channel,
                data,
                opts,
            } => {
                let s = &inner.settings;
                let escaped = escape_channel(channel);
                let tail = format!("{escaped}|{data}");
                let trim = batch::Trim {
                    clear_every: s.clear_every(),
                    global_size: Settings::get(&s.max_global_backlog_size),
                    age: opts
                        .max_backlog_age
                        .unwrap_or_else(|| Settings::get(&s.max_backlog_age)),
                    size: opts
                        .max_backlog_size
                        .unwrap_or_else(|| Settings::get(&s.max_backlog_size)),
                };
                // As `publish`: the payload is "<id>|<id>|<tail>".
                if tail.len() + 2 * 20 >= NOTIFY_PAYLOAD_LIMIT || trim.size < 1 {
                    return None;
                }
                let queue = Arc::clone(&inner.proc().publishes);
                if !batch::claim(&queue) {
                    return None;
                }
                let claim = Claim { queue, trim };
                let interval = trim.interval();
                let params = [
                    Param::Text(channel),
                    Param::Text(data),
                    Param::Text(&inner.notify_channel),
                    Param::Text(&tail),
                    Param::Int8(trim.clear_every),
                    Param::Int8(trim.global_size),
                    Param::Text(&interval),
                    Param::Int8(trim.size),
                    Param::Int8(inner.trim_floor(1)),
                ];
                if encode(Stmt::Publish, &params, &mut command).is_err() {
                    batch::hand_over(inner, &claim.queue);
                    return None;
                }
                (Stmt::Publish, Some(claim))
            }
            DirectCall::LastId(channel) => {
                encode(Stmt::LastId, &[Param::Text(channel)], &mut command).ok()?;
                (Stmt::LastId, None)
            }
            DirectCall::LastIds(channels) => {
                if channels.is_empty() {
                    return None;
                }
                encode(Stmt::LastIds, &[Param::TextArray(channels)], &mut command).ok()?;
                (Stmt::LastIds, None)
            }
            DirectCall::Backlog(channel, last_id) => {
                let params = [Param::Text(channel), Param::Int8(*last_id)];
                encode(Stmt::Backlog, &params, &mut command).ok()?;
                (Stmt::Backlog, None)
            }
        };
        let stage = if claim.is_some() {
            match pool.publisher.lock().take() {
                Some(conn) => Stage::Ready(conn, true),
                None => Stage::Unconnected,
            }
        } else {
            match pool.readers.checkout(MAX_READERS)? {
                Some(conn) => Stage::Ready(conn, true),
                None => Stage::Unconnected,
            }
        };
        Some(Box::new(PgRun {
            inner,
            direct: self,
            pool,
            call,
            stmt,
            command,
            publisher: claim.is_some(),
            claim,
            stage,
        }))
    }

    fn open(&self, deadline: Instant) -> io::Result<CallerSocket> {
        match &self.addr {
            Addr::Unix(path) => Ok(CallerSocket::Unix(UnixStream::connect(path)?)),
            Addr::Tcp {
                host,
                port,
                hostaddr,
            } => {
                let addrs: Vec<SocketAddr> = match hostaddr {
                    Some(ip) => vec![SocketAddr::new(*ip, *port)],
                    None => (host.as_str(), *port).to_socket_addrs()?.collect(),
                };
                let mut last = None;
                for addr in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&addr, left) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            set_keepalive(s.as_raw_fd());
                            return Ok(CallerSocket::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} resolves to no address"),
                    )
                }))
            }
        }
    }

    /// Opens a connection: startup, authentication, and for the publisher
    /// generic plans (as the async path's publisher connection).
    fn connect(&self, publisher: bool, interrupted: &dyn Fn() -> bool) -> Result<Conn, Stop> {
        let deadline = Instant::now() + self.connect_timeout;
        let stream = self.open(deadline).map_err(Stop::Broken)?;
        stream.set_nonblocking().map_err(Stop::Broken)?;
        let mut conn = Conn::new(stream);
        let mut out = BytesMut::new();
        frontend::startup_message(self.params.iter().map(|(k, v)| (*k, v.as_str())), &mut out)
            .map_err(Stop::Broken)?;
        conn.send(&out, deadline).map_err(Stop::Broken)?;
        let mut scram: Option<sasl::ScramSha256> = None;
        let password = || {
            self.password
                .as_deref()
                .ok_or_else(|| Stop::Refused("the server asks for a password, none given".into()))
        };
        loop {
            out.clear();
            match conn.next(Some(deadline), interrupted)? {
                Reply::AuthenticationOk
                | Reply::ParameterStatus(_)
                | Reply::BackendKeyData(_)
                | Reply::NoticeResponse(_) => continue,
                Reply::ReadyForQuery(_) => break,
                Reply::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut out).map_err(Stop::Broken)?;
                }
                Reply::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(self.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(Stop::Broken)?;
                }
                Reply::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms.next().map_err(Stop::Broken)? {
                        offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(Stop::Refused("no supported SASL mechanism".into()));
                    }
                    // No TLS, so no channel binding (as tokio-postgres).
                    let s =
                        sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                        .map_err(Stop::Broken)?;
                    scram = Some(s);
                }
                Reply::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Stop::Refused("unexpected SASL message".into()))?;
                    s.update(body.data()).map_err(Stop::Broken)?;
                    frontend::sasl_response(s.message(), &mut out).map_err(Stop::Broken)?;
                }
                Reply::AuthenticationSaslFinal(body) => {
                    scram
                        .as_mut()
                        .ok_or_else(|| Stop::Refused("unexpected SASL message".into()))?
                        .finish(body.data())
                        .map_err(Stop::Broken)?;
                }
                Reply::ErrorResponse(body) => {
                    return Err(Stop::Refused(DbError::from(&body).message))
                }
                _ => {
                    return Err(Stop::Refused(
                        "unsupported authentication or message".into(),
                    ))
                }
            }
            if !out.is_empty() {
                conn.send(&out, deadline).map_err(Stop::Broken)?;
            }
        }
        if publisher {
            // Since PostgreSQL 12; older servers keep their default.
            out.clear();
            frontend::query("SET plan_cache_mode = force_generic_plan", &mut out)
                .map_err(Stop::Broken)?;
            conn.send(&out, deadline).map_err(Stop::Broken)?;
            while !matches!(
                conn.next(Some(deadline), interrupted)?,
                Reply::ReadyForQuery(_)
            ) {}
        }
        Ok(conn)
    }
}

/// Encodes one execution of `stmt` (Bind, Execute, Sync).
fn encode(stmt: Stmt, params: &[Param], out: &mut BytesMut) -> Result<(), ()> {
    let serialize = |p: &Param, buf: &mut BytesMut| {
        match p {
            Param::Text(s) => pgtypes::text_to_sql(s, buf),
            Param::Int8(v) => pgtypes::int8_to_sql(*v, buf),
            Param::TextArray(items) => {
                let dimension = ArrayDimension {
                    len: i32::try_from(items.len())?,
                    lower_bound: 1,
                };
                pgtypes::array_to_sql(
                    Some(dimension),
                    TEXT,
                    items.iter(),
                    |s, buf| {
                        pgtypes::text_to_sql(s, buf);
                        Ok(IsNull::No)
                    },
                    buf,
                )?
            }
        }
        Ok(IsNull::No)
    };
    frontend::bind(
        "",
        stmt.name(),
        Some(BINARY),
        params.iter(),
        serialize,
        Some(BINARY),
        out,
    )
    .map_err(|_| ())?;
    frontend::execute("", 0, out).map_err(|_| ())?;
    frontend::sync(out);
    Ok(())
}

fn set_keepalive(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value; a failure only leaves the
    // default (tokio-postgres turns keepalives on too).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Why an exchange with the server stopped.
enum Stop {
    Interrupted,
    /// The connection failed or closed (or a malformed message).
    Broken(io::Error),
    /// The server refused the connection (authentication, no such database).
    Refused(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Interrupted => f.write_str("interrupted"),
            Stop::Broken(e) => write!(f, "{e}"),
            Stop::Refused(e) => f.write_str(e),
        }
    }
}

/// One synchronous connection (non-blocking socket), with nothing
/// outstanding when idle.
struct Conn {
    stream: CallerSocket,
    /// Bytes received and not parsed yet.
    received: BytesMut,
    scratch: Box<[u8]>,
    /// The statements prepared on it ([`Stmt::bit`]).
    prepared: u8,
    /// The process that opened it (a forked child never writes to it).
    pid: u32,
}

impl Conn {
    fn new(stream: CallerSocket) -> Conn {
        Conn {
            stream,
            received: BytesMut::with_capacity(8192),
            scratch: vec![0; 16384].into_boxed_slice(),
            prepared: 0,
            pid: std::process::id(),
        }
    }

    /// Writes all of `bytes` (waiting for room until `deadline`).
    fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.stream.send(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match wait_ready(self.stream.fd(), libc::POLLOUT, Some(deadline), &|| false) {
                        Wait::Ready => {}
                        Wait::Failed(e) => return Err(e),
                        Wait::TimedOut | Wait::Interrupted => {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the server takes no data",
                            ))
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message from the server, waiting (until `deadline`, or
    /// `interrupted()`) for its bytes. Interrupted, the bytes read so far
    /// stay: the next call goes on from them.
    fn next(
        &mut self,
        deadline: Option<Instant>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Reply, Stop> {
        loop {
            if let Some(message) = Reply::parse(&mut self.received).map_err(Stop::Broken)? {
                return Ok(message);
            }
            match wait_ready(self.stream.fd(), libc::POLLIN, deadline, interrupted) {
                Wait::Ready => {}
                Wait::Interrupted => return Err(Stop::Interrupted),
                Wait::TimedOut => {
                    return Err(Stop::Broken(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from the server in time",
                    )))
                }
                Wait::Failed(e) => return Err(Stop::Broken(e)),
            }
            self.fill().map_err(Stop::Broken)?;
        }
    }

    /// Reads what has arrived. `Ok(false)`: nothing yet.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            match self.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ))
                }
                Ok(n) => {
                    self.received.extend_from_slice(&self.scratch[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// An idle connection is still open: the server has sent nothing but
    /// asynchronous notices since (a session it ended sent an error, then
    /// closed).
    fn is_alive(&mut self) -> bool {
        loop {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return true,
                Err(_) => return false,
            }
            loop {
                match Reply::parse(&mut self.received) {
                    Ok(None) => break,
                    Ok(Some(
                        Reply::NoticeResponse(_)
                        | Reply::ParameterStatus(_)
                        | Reply::NotificationResponse(_),
                    )) => {}
                    Ok(Some(_)) | Err(_) => return false,
                }
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            let mut out = BytesMut::new();
            frontend::terminate(&mut out);
            let _ = self.stream.send(&out);
        }
    }
}

/// The direct connections of one process.
#[derive(Default)]
pub(super) struct Pool {
    readers: IdleConns<Conn>,
    /// The publish connection, when idle (only the holder of `batch::claim`
    /// takes it).
    publisher: Mutex<Option<Conn>>,
}

impl ProcessLocal for Pool {
    fn fresh() -> Self {
        Pool::default()
    }

    fn shut_down(&self) {
        self.readers.clear();
        self.publisher.lock().take();
    }
}

/// An error the server sent.
struct DbError {
    severity: String,
    code: String,
    message: String,
}

impl From<&ErrorResponseBody> for DbError {
    fn from(body: &ErrorResponseBody) -> DbError {
        let mut e = DbError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
        };
        let mut localized = String::new();
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = || String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => e.severity = value(),
                b'S' => localized = value(),
                b'C' => e.code = value(),
                b'M' => e.message = value(),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized;
        }
        e
    }
}

/// The publish claimed the process's publish slot (`batch::claim`).
struct Claim {
    queue: Arc<Mutex<batch::Queue>>,
    trim: batch::Trim,
}

enum Stage {
    /// To connect (a fresh connection, or one found closed).
    Unconnected,
    /// A connection (`true`: from the pool, to check first), nothing sent.
    Ready(Conn, bool),
    /// Sent; the answer so far.
    Sent(Conn, Answer),
    Done,
}

#[derive(Default)]
struct Answer {
    rows: Vec<DataRowBody>,
    error: Option<DbError>,
    /// CommandComplete came (the statement ran; it commits at Sync).
    completed: bool,
}

impl Answer {
    /// The server ended the session before the statement completed, so its
    /// transaction was not committed.
    fn ended_before_completion(&self) -> bool {
        !self.completed && self.error.as_ref().is_some_and(|e| e.severity == "FATAL")
    }
}

/// What became of a statement.
enum Outcome {
    Rows(Vec<DataRowBody>),
    /// An SQL error: the statement was rolled back.
    Failed(DbError),
    /// Nothing of it ran.
    NotRun,
    /// Sent, and the connection broke before the answer: it may have run.
    Lost(String),
}

/// A call of [`Direct::start`] in progress.
struct PgRun<'a> {
    inner: &'a Arc<Inner>,
    direct: &'a Direct,
    pool: Arc<Pool>,
    call: DirectCall<'a>,
    stmt: Stmt,
    /// Bind, Execute, Sync (a Parse goes before them if needed).
    command: BytesMut,
    /// A publish: on the publish connection, holding the publish slot
    /// until `finish` or drop hands it over.
    publisher: bool,
    claim: Option<Claim>,
    stage: Stage,
}

impl DirectRun for PgRun<'_> {
    fn run(&mut self, interrupted: &dyn Fn() -> bool) -> Option<DirectResult> {
        let outcome = self.drive(interrupted)?;
        Some(self.finish(outcome))
    }
}

impl PgRun<'_> {
    /// Connects if needed, sends the statement once, reads the answer.
    /// `None`: interrupted (resumable).
    fn drive(&mut self, interrupted: &dyn Fn() -> bool) -> Option<Outcome> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Unconnected => {
                    if interrupted() {
                        self.stage = Stage::Unconnected;
                        return None;
                    }
                    match self.direct.connect(self.publisher, interrupted) {
                        Ok(conn) => self.stage = Stage::Ready(conn, false),
                        Err(Stop::Interrupted) => {
                            self.stage = Stage::Unconnected;
                            return None;
                        }
                        Err(_) => return Some(self.lose(Outcome::NotRun)),
                    }
                }
                Stage::Ready(mut conn, pooled) => {
                    if interrupted() {
                        self.stage = Stage::Ready(conn, pooled);
                        return None;
                    }
                    if pooled && !conn.is_alive() {
                        drop(conn);
                        self.stage = Stage::Unconnected;
                        continue;
                    }
                    let mut out = BytesMut::new();
                    let command: &[u8] = if conn.prepared & self.stmt.bit() == 0 {
                        let types = self.stmt.types().iter().copied();
                        if frontend::parse(self.stmt.name(), self.stmt.sql(), types, &mut out)
                            .is_err()
                        {
                            return Some(self.lose(Outcome::NotRun));
                        }
                        out.extend_from_slice(&self.command);
                        &out
                    } else {
                        &self.command
                    };
                    let deadline = Instant::now() + self.direct.connect_timeout;
                    match conn.send(command, deadline) {
                        // The Sync is last: a statement whose Sync did not
                        // arrive is rolled back when the connection closes.
                        Err(_) => return Some(self.lose(Outcome::NotRun)),
                        Ok(()) => self.stage = Stage::Sent(conn, Answer::default()),
                    }
                }
                Stage::Sent(mut conn, mut answer) => loop {
                    let message = match conn.next(None, interrupted) {
                        Ok(message) => message,
                        Err(Stop::Interrupted) => {
                            self.stage = Stage::Sent(conn, answer);
                            return None;
                        }
                        Err(e) => {
                            drop(conn);
                            let outcome = if answer.ended_before_completion() {
                                Outcome::NotRun
                            } else {
                                Outcome::Lost(e.to_string())
                            };
                            return Some(self.lose(outcome));
                        }
                    };
                    match message {
                        Reply::ParseComplete => conn.prepared |= self.stmt.bit(),
                        Reply::DataRow(row) => answer.rows.push(row),
                        Reply::CommandComplete(_) => answer.completed = true,
                        Reply::ErrorResponse(body) => answer.error = Some(DbError::from(&body)),
                        Reply::ReadyForQuery(status) => {
                            let outcome = match answer.error.take() {
                                Some(e) => Outcome::Failed(e),
                                None => Outcome::Rows(std::mem::take(&mut answer.rows)),
                            };
                            if status.status() == b'I' {
                                self.give_back(conn);
                                return Some(outcome);
                            }
                            // Not idle (cannot be after Sync): do not reuse.
                            drop(conn);
                            return Some(self.lose(outcome));
                        }
                        Reply::BindComplete
                        | Reply::NoData
                        | Reply::EmptyQueryResponse
                        | Reply::NoticeResponse(_)
                        | Reply::ParameterStatus(_)
                        | Reply::NotificationResponse(_) => {}
                        _ => {
                            drop(conn);
                            let lost = Outcome::Lost("unexpected message from the server".into());
                            return Some(self.lose(lost));
                        }
                    }
                },
                Stage::Done => return Some(Outcome::NotRun),
            }
        }
    }

    fn give_back(&mut self, conn: Conn) {
        self.stage = Stage::Done;
        if self.publisher {
            *self.pool.publisher.lock() = Some(conn);
        } else {
            self.pool.readers.give_back(conn);
        }
    }

    /// Gives up the connection's place (it is closed or gone).
    fn lose(&mut self, outcome: Outcome) -> Outcome {
        self.stage = Stage::Done;
        if !self.publisher {
            self.pool.readers.forget_one();
        }
        outcome
    }

    fn finish(&mut self, outcome: Outcome) -> DirectResult {
        let claim = self.claim.take();
        let result = self.answer(outcome, claim.as_ref().map(|c| &c.trim));
        // Done with the publish slot (after `after_publish`, as the async
        // path): the publishes queued meanwhile go, and on a fallback the
        // async path claims it again.
        if let Some(claim) = claim {
            batch::hand_over(self.inner, &claim.queue);
        }
        result
    }

    fn answer(&self, outcome: Outcome, trim: Option<&batch::Trim>) -> DirectResult {
        let inner = self.inner;
        let target = &inner.target;
        let rows = match outcome {
            Outcome::NotRun => return DirectResult::Fallback,
            // The async path creates the table and runs it again.
            Outcome::Failed(e) if e.code == "42P01" => return DirectResult::Fallback,
            Outcome::Lost(_) if !self.publisher => return DirectResult::Fallback,
            Outcome::Lost(e) => {
                return DirectResult::Done(Err(Error::Connection(format!(
                    "PostgreSQL connection to {target} broke before the publish was answered (the message may or may not be stored): {e}"
                ))))
            }
            Outcome::Failed(e) => {
                let c = &e.code;
                return DirectResult::Done(Err(
                    if c.starts_with("08") || c.starts_with("57P") || c == "53300" {
                        Error::Connection(format!(
                            "PostgreSQL connection to {target} failed: {}: {}",
                            e.severity, e.message
                        ))
                    } else {
                        Error::Backend(format!("PostgreSQL at {target}: {}", e.message))
                    },
                ));
            }
            Outcome::Rows(rows) => rows,
        };
        let bad = |what: &str| Error::Backend(format!("PostgreSQL at {target}: {what}"));
        DirectResult::Done(match &self.call {
            DirectCall::Publish { .. } => {
                let id = rows
                    .first()
                    .ok_or_else(|| bad("INSERT returned no id"))
                    .and_then(|row| int8_at(row, 0).map_err(|e| bad(&e)))
                    .and_then(|id| id.ok_or_else(|| bad("INSERT returned no id")));
                if let (Ok(id), Some(trim)) = (&id, trim) {
                    batch::after_publish(inner, &[*id], trim);
                }
                id.map(|id| DirectReply::Published(Some(id)))
            }
            DirectCall::LastId(_) => match rows.first() {
                None => Ok(DirectReply::Id(0)),
                Some(row) => int8_at(row, 0)
                    .map(|id| DirectReply::Id(id.unwrap_or(0)))
                    .map_err(|e| bad(&e)),
            },
            DirectCall::LastIds(channels) => {
                let mut found = std::collections::HashMap::with_capacity(rows.len());
                let mut failed = None;
                for row in &rows {
                    match (text_at(row, 0), int8_at(row, 1)) {
                        (Ok(Some(channel)), Ok(id)) => {
                            found.insert(channel.to_string(), id.unwrap_or(0));
                        }
                        (Err(e), _) | (_, Err(e)) => failed = Some(bad(&e)),
                        (Ok(None), _) => failed = Some(bad("a NULL channel")),
                    }
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok(DirectReply::Ids(
                        channels
                            .iter()
                            .map(|c| found.get(c).copied().unwrap_or(0))
                            .collect(),
                    )),
                }
            }
            DirectCall::Backlog(channel, _) => rows
                .iter()
                .map(|row| match (int8_at(row, 0), text_at(row, 1)) {
                    (Ok(Some(id)), Ok(Some(value))) => Ok(Message::new(id, id, *channel, value)),
                    (Err(e), _) | (_, Err(e)) => Err(bad(&e)),
                    _ => Err(bad("a NULL in a backlog row")),
                })
                .collect::<Result<Vec<_>, Error>>()
                .map(DirectReply::Messages),
        })
    }
}

impl Drop for PgRun<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Ready(conn, _) => self.give_back(conn),
            // A statement sent and not answered: its connection closes.
            Stage::Unconnected | Stage::Sent(..) => {
                self.lose(Outcome::NotRun);
            }
            Stage::Done => {}
        }
        // (A publish dropped while its statement runs: the next one goes on
        // another connection, so two may be in flight; trims allow for
        // late commits, see `TRIM_MARGIN`.)
        if let Some(claim) = self.claim.take() {
            batch::hand_over(self.inner, &claim.queue);
        }
    }
}

/// Column `i` of a binary row (`None`: NULL).
fn column(row: &DataRowBody, i: usize) -> Result<Option<&[u8]>, String> {
    let mut ranges = row.ranges();
    let mut at = 0;
    while let Some(range) = ranges.next().map_err(|e| e.to_string())? {
        if at == i {
            return Ok(range.map(|r| &row.buffer()[r]));
        }
        at += 1;
    }
    Err(format!("an answer row without column {i}"))
}

fn int8_at(row: &DataRowBody, i: usize) -> Result<Option<i64>, String> {
    column(row, i)?
        .map(|v| pgtypes::int8_from_sql(v).map_err(|e| e.to_string()))
        .transpose()
}

fn text_at(row: &DataRowBody, i: usize) -> Result<Option<&str>, String> {
    column(row, i)?
        .map(|v| pgtypes::text_from_sql(v).map_err(|e| e.to_string()))
        .transpose()
}
