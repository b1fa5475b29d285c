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

/// Takes over `fd` (a connected stream socket), registers the client and
/// spawns its task on the current runtime. Must be called within the runtime.
pub fn park(
    fd: OwnedFd,
    session: Session,
    fanout: Arc<Fanout>,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    let std_stream = std::net::TcpStream::from(fd);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| Error::Connection(format!("cannot take over the client socket: {e}")))?;
    let stream = TcpStream::from_std(std_stream)
        .map_err(|e| Error::Connection(format!("cannot take over the client socket: {e}")))?;
    let (events_tx, events) = mpsc::channel(QUEUE_BOUND);
    let kill = Arc::new(Notify::new());
    let conn_id = fanout.next_conn_id();
    let channels = session
        .subscriptions
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    let parked = Arc::new(Parked {
        conn_id,
        seq: session.seq,
        identity: session.identity.clone(),
        channels,
        events: events_tx,
        kill: Arc::clone(&kill),
    });
    let admission = fanout.admit(&session.client_id, parked);
    tokio::spawn(async move {
        let client_id = session.client_id.clone();
        let mut conn = Conn {
            stream,
            session,
            kill,
            head_written: false,
        };
        let outcome = match admission {
            Admission::Stale => Closed::Gracefully,
            Admission::Parked => conn.serve(backend.as_ref(), fanout.gate(), events).await,
        };
        if let Closed::Gracefully = outcome {
            conn.close_output().await;
        }
        let _ = conn.stream.shutdown().await;
        fanout.release(&client_id, conn_id);
    });
    Ok(())
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

    async fn serve(
        &mut self,
        backend: &dyn Backend,
        gate: &Gate,
        mut events: mpsc::Receiver<Event>,
    ) -> Closed {
        let deadline = Instant::now() + self.session.timeout;
        // The backlog is read after registration: every message is either in
        // it or arrives as a live event, and positions drop the overlap.
        let backlog = match client::compute(
            backend,
            gate,
            &self.session.identity,
            &self.session.subscriptions,
        )
        .await
        {
            Ok(b) => b,
            Err(_) => return Closed::Gracefully,
        };
        let mut positions: HashMap<String, i64> = backlog.positions.iter().cloned().collect();
        if self.session.chunked {
            let mut out = frame::chunked_head(&self.session.head_prefix);
            if backlog.is_empty() {
                out.extend_from_slice(frame::EMPTY_CHUNK);
            } else {
                out.extend_from_slice(&frame::chunk(&payload(&backlog.messages, &backlog.status)));
            }
            self.head_written = true;
            if self.write(&out).await.is_err() {
                return Closed::Abruptly;
            }
        } else if !backlog.is_empty() {
            let body = payload(&backlog.messages, &backlog.status);
            let _ = self
                .write(&frame::full_response(&self.session.head_prefix, &body))
                .await;
            return Closed::Abruptly;
        }
        // Only end of stream matters: what the peer sends is discarded.
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
