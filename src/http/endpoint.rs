//! The web endpoint: the native side of one middleware. It owns the
//! backend, the fan-out its hub feeds and the head prefix its parked long
//! polls share, and takes every request in one shape, [`WebRequest`]. The
//! sessions of the per-connection tasks (`conn::long_poll::Session`,
//! `conn::stream::StreamSession`) are derived from a request here, so the
//! binding only converts a Ruby request into a `WebRequest` and calls one
//! method.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::bus::Sink;
use crate::client::{self, Requested};
use crate::envelope::{Envelope, Identity};
use crate::error::{Error, Result};
use crate::fanout::{Fanout, Parked, WebClientStats};
use crate::gate::Gate;
use crate::http::conn::long_poll::{self, Pending, Session, View};
use crate::http::conn::stream::{self, StreamSession};
use crate::http::frame::head_prefix;
use crate::http::json::{payload, OutMessage};
use crate::http::{sse, ws_codec};
use crate::metrics::Snapshot;
use crate::sync::Mutex;
use crate::Message;

/// One web request, as the middleware parsed and checked it.
#[derive(Debug, Clone)]
pub struct WebRequest {
    pub identity: Identity,
    /// The client's `__seq` (a long poll with an older one is refused).
    pub seq: i64,
    /// Channels and the last ids the client asks from (`None`: from now).
    pub subscriptions: Vec<Requested>,
    /// The response headers, without the status line.
    pub headers: Vec<(String, String)>,
    pub transport: WebTransport,
}

/// How a request is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebTransport {
    /// At once, with the JSON body: no socket is taken over.
    Poll,
    /// Parked on its socket until a message or `timeout`: one response, or
    /// a chunked stream of them.
    LongPoll { chunked: bool, timeout: Duration },
    /// After the upgrade (`accept`: the `Sec-WebSocket-Accept` value); a
    /// ping every `keepalive`, at most `max_channels` subscribed.
    WebSocket {
        accept: String,
        keepalive: Duration,
        max_channels: usize,
    },
    /// An event stream: a comment every `keepalive`.
    Sse {
        keepalive: Duration,
        max_channels: usize,
    },
}

/// A poll registered for live messages whose (empty) backlog was read:
/// parked by [`WebEndpoint::attach`]; dropping it unregisters it.
pub struct PendingPoll {
    pending: Pending,
    /// The positions the backlog read covered.
    positions: Vec<(String, i64)>,
}

/// The web clients of one middleware, fed straight from its backend's hub.
pub struct WebEndpoint {
    backend: Arc<dyn Backend>,
    fanout: Arc<Fanout>,
    /// The last head prefix parked, shared by the connections that use it.
    head: Mutex<Option<Arc<[u8]>>>,
}

impl WebEndpoint {
    /// A fan-out fed by `backend`'s hub. Must be called within the runtime
    /// (the fan-out's threads use it); then `listen`.
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self> {
        let fanout = Fanout::new(Gate::new())?;
        backend.hub().add_sink(Arc::clone(&fanout) as Arc<dyn Sink>);
        Ok(WebEndpoint {
            backend,
            fanout,
            head: Mutex::default(),
        })
    }

    /// Makes sure the backend hands its messages over.
    pub async fn listen(&self) -> Result<()> {
        self.backend.ensure_listening().await
    }

    /// The JSON array answering a poll right away (rows A and D of §3.6).
    pub async fn poll(&self, request: &WebRequest) -> Result<String> {
        let backlog = self.backlog(request).await?;
        Ok(payload(&backlog.messages, &backlog.status))
    }

    /// Like `poll`, but registered for live messages before the backlog is
    /// read: the body, and when it has nothing to answer the poll that
    /// `attach` parks (no second read). The request's transport and headers
    /// are not used here (`attach` gets them).
    pub async fn poll_pending(
        &self,
        request: &WebRequest,
    ) -> Result<(String, Option<PendingPoll>)> {
        let pending = Pending::new(
            &request.identity,
            request.seq,
            &request.subscriptions,
            Arc::clone(&self.fanout),
        );
        let backlog = self.backlog(request).await?;
        let body = payload(&backlog.messages, &backlog.status);
        if !backlog.is_empty() {
            return Ok((body, None));
        }
        let positions = backlog.positions;
        Ok((body, Some(PendingPoll { pending, positions })))
    }

    async fn backlog(&self, request: &WebRequest) -> Result<client::ClientBacklog> {
        client::compute(
            self.backend.as_ref(),
            self.fanout.gate(),
            &request.identity,
            &request.subscriptions,
        )
        .await
    }

    /// Parks `pending` on `fd` (rows B of §3.6), answering as `request`, a
    /// long poll, says. Must be called within the runtime.
    pub fn attach(&self, pending: PendingPoll, fd: OwnedFd, request: &WebRequest) -> Result<()> {
        let view = self.view(request)?;
        pending.pending.attach(fd, view, pending.positions)
    }

    /// Takes over `fd` for `request`: parks a long poll (rows B of §3.6),
    /// or starts a WebSocket or an event stream. Must be called within the
    /// runtime.
    pub fn open(&self, fd: OwnedFd, request: WebRequest) -> Result<()> {
        let fanout = Arc::clone(&self.fanout);
        let backend = Arc::clone(&self.backend);
        match request.transport {
            WebTransport::LongPoll { .. } => {
                long_poll::park(fd, self.session(request)?, fanout, backend)
            }
            WebTransport::WebSocket { .. } | WebTransport::Sse { .. } => {
                stream::open(fd, stream_session(request)?, fanout, backend)
            }
            WebTransport::Poll => Err(not_parked(&request.transport)),
        }
    }

    fn session(&self, request: WebRequest) -> Result<Session> {
        let view = self.view(&request)?;
        Ok(Session {
            seq: request.seq,
            identity: request.identity,
            subscriptions: request.subscriptions,
            view,
        })
    }

    /// How a long poll answers.
    fn view(&self, request: &WebRequest) -> Result<View> {
        let WebTransport::LongPoll { chunked, timeout } = request.transport else {
            return Err(not_parked(&request.transport));
        };
        Ok(View {
            chunked,
            head_prefix: self.shared_head(head_prefix(&request.headers)),
            timeout,
        })
    }

    fn shared_head(&self, bytes: Vec<u8>) -> Arc<[u8]> {
        let mut slot = self.head.lock();
        match slot.as_ref() {
            Some(head) if **head == *bytes => Arc::clone(head),
            _ => {
                let head: Arc<[u8]> = Arc::from(bytes);
                *slot = Some(Arc::clone(&head));
                head
            }
        }
    }

    /// The connection parked under `client_id`.
    pub fn lookup(&self, client_id: &str) -> Option<Arc<Parked>> {
        self.fanout.lookup(client_id)
    }

    /// Whether `conn_id` is the connection parked under `client_id`.
    pub fn is_parked(&self, client_id: &str, conn_id: u64) -> bool {
        self.parked_as(client_id, conn_id).is_some()
    }

    /// The connection parked under `client_id`, if it is `conn_id`.
    fn parked_as(&self, client_id: &str, conn_id: u64) -> Option<Arc<Parked>> {
        self.lookup(client_id).filter(|p| p.conn_id == conn_id)
    }

    /// Parked connections (pending polls not counted).
    pub fn parked(&self) -> usize {
        self.fanout.parked()
    }

    /// Closes (with its close output) the connection `conn_id` of
    /// `client_id`; false if it is no longer parked.
    pub fn close_client(&self, client_id: &str, conn_id: u64) -> bool {
        self.fanout.close_client(client_id, conn_id)
    }

    /// Writes one message (already judged) to the connection `conn_id` of
    /// `client_id`; false if it was not handed over.
    pub fn deliver_to(&self, client_id: &str, conn_id: u64, message: OutMessage) -> bool {
        self.parked_as(client_id, conn_id)
            .is_some_and(|parked| self.fanout.deliver_to(&parked, message))
    }

    /// Hands a message to every parked connection that may see it: its
    /// `data` is its JSON-codec envelope (client message filters were
    /// already applied by the caller).
    pub fn notify(&self, message: Message) -> Result<()> {
        let envelope = Envelope::parse(&message.data)?;
        self.fanout.notify(&message, envelope);
        Ok(())
    }

    /// What Ruby judges (client message filters) before live delivery.
    pub fn gate(&self) -> &Arc<Gate> {
        self.fanout.gate()
    }

    pub fn stats(&self) -> WebClientStats {
        self.fanout.stats()
    }

    /// Adds this endpoint's web clients to a scrape.
    pub fn add_to(&self, snapshot: &mut Snapshot) {
        snapshot.web.add(&self.stats());
        self.fanout
            .add_delivery_latency(&mut snapshot.delivery_latency);
    }

    /// Stops feeding the fan-out and closes its connections (nothing to do
    /// in a forked child: the fan-out is the parent's).
    pub fn stop(&self) {
        if self.fanout.is_inherited() {
            return;
        }
        self.stop_feeding();
    }

    /// Like `stop`, then waits up to `timeout` for the connections to have
    /// written their close output (a WebSocket's 1001): at process exit.
    pub async fn stop_and_wait(&self, timeout: Duration) -> bool {
        if self.fanout.is_inherited() {
            return true;
        }
        self.stop_feeding();
        self.fanout.wait_closed(timeout).await
    }

    fn stop_feeding(&self) {
        let sink: Arc<dyn Sink> = Arc::clone(&self.fanout) as Arc<dyn Sink>;
        self.backend.hub().remove_sink(&sink);
        self.fanout.close_all();
        self.fanout.gate().close();
    }
}

impl Drop for WebEndpoint {
    fn drop(&mut self) {
        if self.fanout.is_inherited() {
            // The parent's fan-out: its threads are not here and its locks
            // may be held. Never dropped in this process.
            std::mem::forget(Arc::clone(&self.fanout));
        }
    }
}

/// A WebSocket's or an event stream's session: the head it writes first.
fn stream_session(request: WebRequest) -> Result<StreamSession> {
    let (kind, head, keepalive, max_channels) = match request.transport {
        WebTransport::WebSocket {
            ref accept,
            keepalive,
            max_channels,
        } => (
            stream::Kind::WebSocket,
            ws_codec::upgrade_head(accept, &request.headers),
            keepalive,
            max_channels,
        ),
        WebTransport::Sse {
            keepalive,
            max_channels,
        } => (
            stream::Kind::Sse,
            sse::head(&request.headers),
            keepalive,
            max_channels,
        ),
        ref other => return Err(not_parked(other)),
    };
    Ok(StreamSession {
        identity: request.identity,
        kind,
        head,
        subscriptions: request.subscriptions,
        keepalive,
        max_channels,
    })
}

fn not_parked(transport: &WebTransport) -> Error {
    Error::Argument(format!("no socket to take over for {transport:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::PublishOptions;

    /// The process runtime, as in production.
    fn runtime() -> Arc<tokio::runtime::Runtime> {
        crate::runtime::runtime().expect("the runtime")
    }

    fn endpoint(rt: &tokio::runtime::Runtime) -> WebEndpoint {
        let _guard = rt.enter();
        WebEndpoint::new(Arc::new(MemoryBackend::new())).expect("an endpoint")
    }

    fn request(transport: WebTransport) -> WebRequest {
        WebRequest {
            identity: Identity {
                client_id: "c".into(),
                ..Identity::default()
            },
            seq: 3,
            subscriptions: vec![("/a".into(), Some(0))],
            headers: vec![("x-test".into(), "1".into())],
            transport,
        }
    }

    fn long_poll(chunked: bool) -> WebTransport {
        WebTransport::LongPoll {
            chunked,
            timeout: Duration::from_millis(250),
        }
    }

    fn publish(rt: &tokio::runtime::Runtime, endpoint: &WebEndpoint, channel: &str) -> i64 {
        let data = r#"{"data":"hi","user_ids":null,"group_ids":null,"client_ids":null}"#;
        rt.block_on(
            endpoint
                .backend
                .publish(channel, data, &PublishOptions::default()),
        )
        .expect("published")
        .expect("stored")
    }

    #[test]
    fn a_long_poll_becomes_a_session_sharing_the_head_of_equal_headers() {
        let rt = runtime();
        let endpoint = endpoint(&rt);
        let session = endpoint
            .session(request(long_poll(true)))
            .expect("a session");
        assert_eq!(session.seq, 3);
        assert_eq!(session.identity.client_id, "c");
        assert_eq!(session.subscriptions, vec![("/a".to_string(), Some(0))]);
        assert!(session.view.chunked);
        assert_eq!(session.view.timeout, Duration::from_millis(250));
        assert!(session
            .view
            .head_prefix
            .starts_with(b"HTTP/1.1 200 OK\r\nx-test: 1\r\n"));
        let again = endpoint
            .session(request(long_poll(false)))
            .expect("a session");
        assert!(!again.view.chunked);
        assert!(Arc::ptr_eq(
            &session.view.head_prefix,
            &again.view.head_prefix
        ));
    }

    #[test]
    fn a_websocket_or_event_stream_request_becomes_a_stream_session() {
        let websocket = WebTransport::WebSocket {
            accept: "k=".into(),
            keepalive: Duration::from_secs(20),
            max_channels: 7,
        };
        let sse = WebTransport::Sse {
            keepalive: Duration::from_secs(15),
            max_channels: 9,
        };
        for (transport, kind, head_start, in_head, keepalive, max_channels) in [
            (
                websocket,
                stream::Kind::WebSocket,
                "HTTP/1.1 101 ",
                "sec-websocket-accept: k=\r\n",
                20,
                7,
            ),
            (
                sse,
                stream::Kind::Sse,
                "HTTP/1.1 200 ",
                "text/event-stream",
                15,
                9,
            ),
        ] {
            let session = stream_session(request(transport)).expect("a stream session");
            assert_eq!(session.kind, kind);
            let head = String::from_utf8(session.head).expect("an ASCII head");
            assert!(head.starts_with(head_start), "{head}");
            assert!(head.contains(in_head), "{head}");
            assert!(head.contains("x-test: 1\r\n"), "{head}");
            assert_eq!(session.subscriptions, vec![("/a".to_string(), Some(0))]);
            assert_eq!(session.keepalive, Duration::from_secs(keepalive));
            assert_eq!(session.max_channels, max_channels);
        }
    }

    #[test]
    fn a_request_of_the_wrong_transport_is_refused() {
        let rt = runtime();
        let endpoint = endpoint(&rt);
        assert!(matches!(
            endpoint.session(request(WebTransport::Poll)),
            Err(Error::Argument(_))
        ));
        assert!(matches!(
            stream_session(request(long_poll(true))),
            Err(Error::Argument(_))
        ));
    }

    #[test]
    fn a_poll_answers_the_backlog_and_a_pending_poll_waits_only_when_it_is_empty() {
        let rt = runtime();
        let endpoint = endpoint(&rt);
        let id = publish(&rt, &endpoint, "/a");
        let body = rt
            .block_on(endpoint.poll(&request(WebTransport::Poll)))
            .expect("a poll");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer[0]["message_id"], id);
        assert_eq!(answer[0]["data"], "hi");

        let (body, pending) = rt
            .block_on(endpoint.poll_pending(&request(long_poll(false))))
            .expect("a poll");
        assert!(pending.is_none(), "answered at once: {body}");

        let mut up_to_date = request(long_poll(false));
        up_to_date.subscriptions = vec![("/a".into(), Some(id))];
        let (body, pending) = rt
            .block_on(endpoint.poll_pending(&up_to_date))
            .expect("a poll");
        assert_eq!(body, "[]");
        let pending = pending.expect("a pending poll");
        assert_eq!(pending.positions, vec![("/a".to_string(), id)]);
        assert_eq!(endpoint.parked(), 0, "a pending poll is not parked");
    }
}
