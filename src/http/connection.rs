//! The task that owns one hijacked long-poll socket: it writes the head and
//! the backlog, streams live messages, and closes on timeout, on replacement,
//! on peer close or when it cannot keep up (COMPAT.md §3.9, §3.10).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, timeout, Instant};

use crate::backend::Backend;
use crate::client::{self, Requested};
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::fanout::{Admission, Event, Fanout, Parked, QUEUE_BOUND};
use crate::gate::Gate;
use crate::http::frame;
use crate::http::json::payload;

/// A write that cannot complete in this time closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a parked connection needs, gathered by the middleware.
pub struct Session {
    pub client_id: String,
    pub seq: i64,
    pub identity: Identity,
    pub subscriptions: Vec<Requested>,
    pub chunked: bool,
    /// Status line and headers (see `frame::head_prefix`).
    /// Shared by the connections of one middleware with the same headers.
    pub head_prefix: Arc<[u8]>,
    pub timeout: Duration,
}

struct Conn {
    stream: TcpStream,
    session: Session,
    kill: Arc<Notify>,
    head_written: bool,
}

enum Closed {
    /// Write the close output of §3.10.
    Gracefully,
    /// The peer went away or cannot keep up: just drop the socket.
    Abruptly,
}

fn take_over(fd: OwnedFd) -> Result<TcpStream> {
    let std_stream = std::net::TcpStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| Error::Connection(format!("cannot take over the client socket: {e}")))?;
    TcpStream::from_std(std_stream)
        .map_err(|e| Error::Connection(format!("cannot take over the client socket: {e}")))
}

/// A connection's registration, made before its backlog is read.
struct Registration {
    parked: Arc<Parked>,
    events: mpsc::Receiver<Event>,
    kill: Arc<Notify>,
}

fn register(
    identity: &Identity,
    seq: i64,
    subscriptions: &[Requested],
    fanout: &Fanout,
) -> Registration {
    let (events_tx, events) = mpsc::channel(QUEUE_BOUND);
    let kill = Arc::new(Notify::new());
    let parked = Arc::new(Parked {
        conn_id: fanout.next_conn_id(),
        seq,
        identity: identity.clone(),
        channels: subscriptions.iter().map(|(c, _)| c.clone()).collect(),
        events: events_tx,
        kill: Arc::clone(&kill),
    });
    Registration {
        parked,
        events,
        kill,
    }
}

/// Takes over `fd` (a connected stream socket), registers the client and
/// spawns its task on the current runtime. Must be called within the runtime.
pub fn park(
    fd: OwnedFd,
    session: Session,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let stream = take_over(fd)?;
    let reg = register(
        &session.identity,
        session.seq,
        &session.subscriptions,
        &fanout,
    );
    let admission = fanout.admit(&session.client_id, Arc::clone(&reg.parked));
    spawn(stream, session, reg, admission, None, fanout, backend);
    Ok(())
}

/// How a parked connection answers.
pub struct View {
    pub chunked: bool,
    pub head_prefix: Arc<[u8]>,
    pub timeout: Duration,
}

/// A poll registered for live messages while its backlog is read: answered
/// at once when the backlog has anything, parked (`attach`) otherwise.
pub struct Pending {
    reg: Option<Registration>,
    fanout: Arc<Fanout>,
}

impl Pending {
    /// Registers under a provisional key (not counted as parked).
    pub fn new(
        identity: &Identity,
        seq: i64,
        subscriptions: &[Requested],
        fanout: Arc<Fanout>,
    ) -> Self {
        let reg = register(identity, seq, subscriptions, &fanout);
        fanout.admit_pending(Arc::clone(&reg.parked));
        Pending {
            reg: Some(reg),
            fanout,
        }
    }

    /// Parks the connection on `fd` with the positions its (empty) backlog
    /// answer covered, as `park` would have. Must be called within the runtime.
    pub fn attach(
        mut self,
        fd: OwnedFd,
        view: View,
        positions: Vec<(String, i64)>,
        backend: Arc<dyn Backend>,
    ) -> Result<()> {
        let stream = take_over(fd)?;
        let Some(reg) = self.reg.take() else {
            return Err(Error::Connection("poll already parked".into()));
        };
        let session = Session {
            client_id: reg.parked.identity.client_id.clone(),
            seq: reg.parked.seq,
            identity: reg.parked.identity.clone(),
            subscriptions: Vec::new(),
            chunked: view.chunked,
            head_prefix: view.head_prefix,
            timeout: view.timeout,
        };
        let admission = if self.fanout.release_pending(reg.parked.conn_id) {
            self.fanout
                .admit(&session.client_id, Arc::clone(&reg.parked))
        } else {
            // Closed meanwhile (middleware stopped): answer "[]" and close.
            Admission::Stale
        };
        spawn(
            stream,
            session,
            reg,
            admission,
            Some(positions),
            Arc::clone(&self.fanout),
            backend,
        );
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(reg) = self.reg.take() {
            self.fanout.release_pending(reg.parked.conn_id);
        }
    }
}

fn spawn(
    stream: TcpStream,
    session: Session,
    reg: Registration,
    admission: Admission,
    positions: Option<Vec<(String, i64)>>,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) {
    let conn_id = reg.parked.conn_id;
    drop(reg.parked);
    let events = reg.events;
    let kill = reg.kill;
    tokio::spawn(async move {
        let mut conn = Conn {
            stream,
            session,
            kill,
            head_written: false,
        };
        let outcome = match admission {
            Admission::Stale => Closed::Gracefully,
            Admission::Parked => {
                conn.serve(backend.as_ref(), fanout.gate(), events, positions)
                    .await
            }
        };
        if let Closed::Gracefully = outcome {
            conn.close_output().await;
        }
        let _ = conn.stream.shutdown().await;
        fanout.release(&conn.session.client_id, conn_id);
    });
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), ()> {
        let kill = Arc::clone(&self.kill);
        tokio::select! {
            result = timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)) => match result {
                Ok(Ok(())) => Ok(()),
                _ => Err(()),
            },
            _ = kill.notified() => Err(()),
        }
    }

    /// Reads the backlog after registration (every message is either in it
    /// or arrives as a live event, and positions drop the overlap) and
    /// writes the head and the backlog.
    async fn answer_backlog(
        &mut self,
        backend: &dyn Backend,
        gate: &Gate,
    ) -> std::result::Result<HashMap<String, i64>, Closed> {
        let backlog = client::compute(
            backend,
            gate,
            &self.session.identity,
            &self.session.subscriptions,
        )
        .await
        .map_err(|_| Closed::Gracefully)?;
        if self.session.chunked {
            let mut out = frame::chunked_head(&self.session.head_prefix);
            if backlog.is_empty() {
                out.extend_from_slice(frame::EMPTY_CHUNK);
            } else {
                out.extend_from_slice(&frame::chunk(&payload(&backlog.messages, &backlog.status)));
            }
            self.head_written = true;
            if self.write(&out).await.is_err() {
                return Err(Closed::Abruptly);
            }
        } else if !backlog.is_empty() {
            let body = payload(&backlog.messages, &backlog.status);
            let _ = self
                .write(&frame::full_response(&self.session.head_prefix, &body))
                .await;
            return Err(Closed::Abruptly);
        }
        Ok(backlog.positions.into_iter().collect())
    }

    async fn serve(
        &mut self,
        backend: &dyn Backend,
        gate: &Gate,
        mut events: mpsc::Receiver<Event>,
        answered: Option<Vec<(String, i64)>>,
    ) -> Closed {
        let deadline = Instant::now() + self.session.timeout;
        let mut positions: HashMap<String, i64> = match answered {
            // Read before registration by the caller and found empty.
            Some(positions) => {
                if self.session.chunked {
                    let mut out = frame::chunked_head(&self.session.head_prefix);
                    out.extend_from_slice(frame::EMPTY_CHUNK);
                    self.head_written = true;
                    if self.write(&out).await.is_err() {
                        return Closed::Abruptly;
                    }
                }
                positions.into_iter().collect()
            }
            None => match self.answer_backlog(backend, gate).await {
                Ok(positions) => positions,
                Err(closed) => return closed,
            },
        };
        // Only the positions matter from here on.
        self.session.subscriptions = Vec::new();
        let mut scratch = [0u8; 64];
        loop {
            let kill = Arc::clone(&self.kill);
            tokio::select! {
                biased;
                _ = kill.notified() => return Closed::Abruptly,
                event = events.recv() => match event {
                    Some(Event::Live(live)) => {
                        let id = live.message.message_id;
                        let position = positions.entry(live.message.channel.clone()).or_insert(i64::MIN);
                        // Already covered by the backlog or a previous push (§9 Q43).
                        if id <= *position {
                            continue;
                        }
                        *position = id;
                        if self.session.chunked {
                            if self.write(&live.chunk).await.is_err() {
                                return Closed::Abruptly;
                            }
                        } else {
                            let _ = self.write(&frame::full_response(&self.session.head_prefix, &live.body)).await;
                            return Closed::Abruptly;
                        }
                    }
                    Some(Event::Close) | None => return Closed::Gracefully,
                },
                _ = sleep_until(deadline) => return Closed::Gracefully,
                read = self.stream.read(&mut scratch) => match read {
                    // The peer closed (or reset) its side: nobody will read.
                    Ok(0) | Err(_) => return Closed::Abruptly,
                    Ok(_) => {}
                },
            }
        }
    }

    async fn close_output(&mut self) {
        let mut out = Vec::new();
        if self.session.chunked {
            if !self.head_written {
                out.extend_from_slice(&frame::chunked_head(&self.session.head_prefix));
            }
            out.extend_from_slice(frame::EMPTY_CHUNK);
            out.extend_from_slice(frame::LAST_CHUNK);
        } else {
            out = frame::full_response(&self.session.head_prefix, "[]");
        }
        let _ = self.write(&out).await;
    }
}
