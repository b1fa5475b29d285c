//! Synchronous request/response connections for callers that do their own
//! I/O (issue 14): the calling thread checks a connection out, writes the
//! command and reads the reply itself, with no hop to a runtime worker.
//!
//! Only plain TCP and Unix-socket targets; TLS and Sentinel use the shared
//! multiplexed connection. The encoding and the reply parser are the `redis`
//! crate's; this file only owns the socket, so that the wait for a reply can
//! be interrupted (a `poll(2)` loop that checks the caller's flag) and then
//! resumed on the same socket, never sending the command again.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{cmd, Cmd, ConnectionAddr, ConnectionInfo, Parser, RedisError, Value};

use crate::backend::caller_socket::CallerSocket;
use crate::backend::direct::{wait_ready, IdleConns, Wait};

/// Connections kept per process. A caller finding none idle and the pool
/// full uses the multiplexed connection (which pipelines concurrent calls).
const MAX_CONNECTIONS: usize = 4;

/// One synchronous connection, with no reply outstanding when idle.
pub struct DirectConn {
    stream: CallerSocket,
    parser: Parser,
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::TimedOut, what.to_string()))
}

impl DirectConn {
    fn connect(
        info: &ConnectionInfo,
        timeout: Duration,
        setup: &[Cmd],
    ) -> Result<Self, RedisError> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = None;
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(e.into()),
                    (None, None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{host} resolves to no address"),
                        )
                        .into())
                    }
                };
                s.set_nodelay(true)?;
                CallerSocket::Tcp(s)
            }
            ConnectionAddr::Unix(path) => CallerSocket::Unix(UnixStream::connect(path)?),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "no synchronous connection for this address",
                )
                .into())
            }
        };
        stream.set_timeouts(timeout)?;
        let mut conn = DirectConn {
            stream,
            parser: Parser::new(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            conn.roundtrip(&auth)?;
        }
        if settings.db() != 0 {
            conn.roundtrip(cmd("SELECT").arg(settings.db()))?;
        }
        for command in setup {
            conn.roundtrip(command)?;
        }
        Ok(conn)
    }

    /// A blocking exchange (bounded by the socket timeouts), for setup.
    fn roundtrip(&mut self, command: &Cmd) -> Result<Value, RedisError> {
        self.stream.write_all(&command.get_packed_command())?;
        self.parser.parse_value(&mut self.stream)?.extract_error()
    }
}

/// The per-process pool. Dropped with the process state (a forked child
/// builds its own and never touches the parent's sockets).
#[derive(Default)]
pub struct DirectPool {
    conns: IdleConns<DirectConn>,
}

impl DirectPool {
    fn checkout(&self) -> Option<Option<DirectConn>> {
        self.conns.checkout(MAX_CONNECTIONS)
    }

    fn give_back(&self, conn: DirectConn) {
        self.conns.give_back(conn);
    }

    fn forget_one(&self) {
        self.conns.forget_one();
    }

    /// Closes the idle connections (after READONLY: they may point at a
    /// former primary).
    pub fn clear(&self) {
        self.conns.clear();
    }

    /// Starts one command. `None`: the pool is full, use the shared connection.
    pub fn exchange(
        self: &Arc<Self>,
        info: &Arc<ConnectionInfo>,
        command: Vec<u8>,
        setup: &Arc<Vec<Cmd>>,
    ) -> Option<Exchange> {
        let conn = self.checkout()?;
        Some(Exchange {
            pool: Arc::clone(self),
            info: Arc::clone(info),
            setup: Arc::clone(setup),
            command,
            stage: match conn {
                Some(conn) => Stage::Ready(conn),
                None => Stage::Unconnected,
            },
        })
    }
}

enum Stage {
    Unconnected,
    Ready(DirectConn),
    Sent(DirectConn, Instant),
    Done,
}

/// What became of a command.
pub enum Outcome {
    /// The reply (a server error is an `Err` here).
    Reply(Result<Value, RedisError>),
    /// The command could not be sent at all (connecting or writing failed):
    /// the server never ran it.
    NotSent(RedisError),
    /// The command was sent and its reply is lost (connection dropped,
    /// timed out): the server may have run it.
    Lost(RedisError),
}

/// One command in flight on a checked-out connection. Dropping it before
/// the reply closes the connection.
pub struct Exchange {
    pool: Arc<DirectPool>,
    info: Arc<ConnectionInfo>,
    setup: Arc<Vec<Cmd>>,
    command: Vec<u8>,
    stage: Stage,
}

impl Exchange {
    /// Drives the command: connects if needed, sends it once, waits for the
    /// reply. Returns `None` when `interrupted()` became true before the end;
    /// calling `run` again resumes where it stopped (the command is never
    /// sent twice). Call with the GVL released: it blocks.
    pub fn run(&mut self, timeout: Duration, interrupted: &dyn Fn() -> bool) -> Option<Outcome> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Unconnected => {
                    if interrupted() {
                        self.stage = Stage::Unconnected;
                        return None;
                    }
                    match DirectConn::connect(&self.info, timeout, &self.setup) {
                        Ok(conn) => self.stage = Stage::Ready(conn),
                        Err(e) => return Some(self.fail(Outcome::NotSent(e))),
                    }
                }
                Stage::Ready(mut conn) => {
                    if interrupted() {
                        self.stage = Stage::Ready(conn);
                        return None;
                    }
                    match conn.stream.write_all(&self.command) {
                        Ok(()) => self.stage = Stage::Sent(conn, Instant::now() + timeout),
                        // A failed write_all left part of the command in the
                        // kernel at most: Redis runs only complete commands.
                        Err(e) => return Some(self.fail(Outcome::NotSent(e.into()))),
                    }
                }
                Stage::Sent(mut conn, deadline) => {
                    match wait_ready(conn.stream.fd(), libc::POLLIN, Some(deadline), interrupted) {
                        Wait::Interrupted => {
                            self.stage = Stage::Sent(conn, deadline);
                            return None;
                        }
                        Wait::TimedOut => {
                            return Some(
                                self.fail(Outcome::Lost(timed_out("no reply from Redis in time"))),
                            )
                        }
                        Wait::Failed(e) => return Some(self.fail(Outcome::Lost(e.into()))),
                        Wait::Ready => {
                            return Some(match conn.parser.parse_value(&mut conn.stream) {
                                Ok(value) => {
                                    self.pool.give_back(conn);
                                    Outcome::Reply(value.extract_error())
                                }
                                Err(e) => self.fail(Outcome::Lost(e)),
                            });
                        }
                    }
                }
                Stage::Done => {
                    return Some(Outcome::NotSent(timed_out("exchange already finished")))
                }
            }
        }
    }

    fn fail(&mut self, outcome: Outcome) -> Outcome {
        self.stage = Stage::Done;
        self.pool.forget_one();
        outcome
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Ready(conn) => self.pool.give_back(conn),
            Stage::Unconnected | Stage::Sent(..) => self.pool.forget_one(),
            Stage::Done => {}
        }
    }
}
