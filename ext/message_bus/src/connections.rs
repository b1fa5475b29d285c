//! `MessageBus::Native::Connections`: the parked web clients of one
//! middleware, fed straight from the backend's hub.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use magnus::{prelude::*, RArray, RHash, RString, Ruby};
use message_bus_core::backend::Backend;
use message_bus_core::bus::Sink;
use message_bus_core::client::{self, Requested};
use message_bus_core::envelope::{Envelope, Identity};
use message_bus_core::fanout::{Fanout, WebClientStats};
use message_bus_core::gate::Gate;
use message_bus_core::http::connection::{park, Pending, Session, View};
use message_bus_core::http::frame::head_prefix;
use message_bus_core::http::json::{payload, OutMessage};
use message_bus_core::http::stream::{self, StreamSession, Transport};
use message_bus_core::http::{sse, ws_codec};
use message_bus_core::metrics::Snapshot;
use message_bus_core::runtime::runtime;
use message_bus_core::{Error, Message};

use crate::backend::{rstring, NativeBackend};
use crate::errors::to_ruby;
use crate::gvl::block_on;

type RbResult<T> = Result<T, magnus::Error>;

#[magnus::wrap(class = "MessageBus::Native::Connections", free_immediately, size)]
pub struct NativeConnections {
    backend: Arc<dyn Backend>,
    fanout: Arc<Fanout>,
    /// The last head prefix parked, shared by the connections that use it.
    head: message_bus_core::sync::Mutex<Option<Arc<[u8]>>>,
}

/// The identity of a request's `park_params`.
fn request_identity(ruby: &Ruby, request: RHash) -> RbResult<Identity> {
    identity(
        ruby,
        request.fetch("client_id")?,
        request.fetch("site_id")?,
        request.fetch("user_json")?,
        request.fetch("groups_json")?,
    )
}

pub(crate) fn identity(
    ruby: &Ruby,
    client_id: RString,
    site_id: Option<RString>,
    user_json: RString,
    groups_json: RString,
) -> RbResult<Identity> {
    let parse = |text: String, what: &str| {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| to_ruby(ruby, Error::Argument(format!("{what} is not JSON: {e}"))))
    };
    let groups = match parse(rstring(ruby, groups_json, "group ids")?, "group ids")? {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Null => Vec::new(),
        other => vec![other],
    };
    Ok(Identity {
        client_id: rstring(ruby, client_id, "client id")?,
        user_id: parse(rstring(ruby, user_json, "user id")?, "user id")?,
        group_ids: groups,
        site_id: site_id.map(|s| rstring(ruby, s, "site id")).transpose()?,
    })
}

/// `[[channel, id or nil], ...]` → subscriptions.
pub(crate) fn subscriptions(ruby: &Ruby, list: RArray) -> RbResult<Vec<Requested>> {
    let mut out = Vec::with_capacity(list.len());
    for pair in list.into_iter() {
        let pair = RArray::try_convert(pair)?;
        let channel = rstring(ruby, RString::try_convert(pair.entry(0)?)?, "channel")?;
        let id: Option<i64> = pair.entry(1)?;
        out.push((channel, id));
    }
    Ok(out)
}

/// A duplicate of `fd`, which the caller keeps open for this call.
fn dup_fd(ruby: &Ruby, fd: i32) -> RbResult<OwnedFd> {
    // SAFETY: dup of a descriptor the caller keeps open for this call.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        let e = std::io::Error::last_os_error();
        return Err(to_ruby(
            ruby,
            Error::Connection(format!("cannot duplicate the client socket: {e}")),
        ));
    }
    // SAFETY: `dup` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// `MessageBus::Native::PendingPoll`: a poll registered for live messages,
/// waiting to be parked; dropping it (or `_cancel`) unregisters it.
#[magnus::wrap(class = "MessageBus::Native::PendingPoll", free_immediately, size)]
pub struct PendingPoll(message_bus_core::sync::Mutex<Option<PendingParts>>);

/// A pending poll and the positions its backlog read covered.
type PendingParts = (Pending, Vec<(String, i64)>);

impl PendingPoll {
    fn cancel(&self) {
        self.0.lock().take();
    }
}

/// `[[name, value], ...]` → header pairs.
pub(crate) fn headers(list: RArray) -> RbResult<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(list.len());
    for pair in list.into_iter() {
        let pair = RArray::try_convert(pair)?;
        out.push((pair.entry::<String>(0)?, pair.entry::<String>(1)?));
    }
    Ok(out)
}

impl NativeConnections {
    fn new(ruby: &Ruby, backend: &NativeBackend) -> RbResult<Self> {
        let backend = Arc::clone(&backend.0);
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let fanout = {
            let _guard = rt.enter();
            Fanout::new(Gate::new()).map_err(|e| to_ruby(ruby, e))?
        };
        backend.hub().add_sink(Arc::clone(&fanout) as Arc<dyn Sink>);
        block_on(ruby, || backend.ensure_listening())?;
        Ok(NativeConnections {
            backend,
            fanout,
            head: message_bus_core::sync::Mutex::default(),
        })
    }

    /// The JSON array answering a poll right away (rows A and D of §3.6).
    fn poll(
        ruby: &Ruby,
        rb_self: &Self,
        client_id: RString,
        site_id: Option<RString>,
        user_json: RString,
        groups_json: RString,
        channels: RArray,
    ) -> RbResult<(RString, bool)> {
        let who = identity(ruby, client_id, site_id, user_json, groups_json)?;
        let subs = subscriptions(ruby, channels)?;
        let backlog = block_on(ruby, || {
            client::compute(rb_self.backend.as_ref(), rb_self.fanout.gate(), &who, &subs)
        })?;
        Ok((
            ruby.str_new(&payload(&backlog.messages, &backlog.status)),
            backlog.is_empty(),
        ))
    }

    /// Like `poll`, but registered for live messages before the backlog is
    /// read: `[body, nil]` when there is something to answer, `[body,
    /// pending]` when the client may be parked with `_attach` (no second read).
    fn poll_pending(
        ruby: &Ruby,
        rb_self: &Self,
        args: &[magnus::Value],
    ) -> RbResult<(RString, Option<PendingPoll>)> {
        let args = magnus::scan_args::scan_args::<
            (RString, Option<RString>, RString, RString, RArray, i64),
            (),
            (),
            (),
            (),
            (),
        >(args)?;
        let (client_id, site_id, user_json, groups_json, channels, seq) = args.required;
        let who = identity(ruby, client_id, site_id, user_json, groups_json)?;
        let subs = subscriptions(ruby, channels)?;
        let pending = Pending::new(&who, seq, &subs, Arc::clone(&rb_self.fanout));
        let backlog = block_on(ruby, || {
            client::compute(rb_self.backend.as_ref(), rb_self.fanout.gate(), &who, &subs)
        })?;
        let body = ruby.str_new(&payload(&backlog.messages, &backlog.status));
        if !backlog.is_empty() {
            return Ok((body, None));
        }
        Ok((
            body,
            Some(PendingPoll(message_bus_core::sync::Mutex::new(Some((
                pending,
                backlog.positions,
            ))))),
        ))
    }

    /// Parks a pending poll on a duplicate of `fd` (rows B of §3.6).
    fn attach(
        ruby: &Ruby,
        rb_self: &Self,
        pending: &PendingPoll,
        fd: i32,
        request: RHash,
    ) -> RbResult<()> {
        let Some((pending, positions)) = pending.0.lock().take() else {
            return Err(to_ruby(ruby, Error::Argument("poll already parked".into())));
        };
        let view = rb_self.view(request)?;
        let owned = dup_fd(ruby, fd)?;
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let _guard = rt.enter();
        pending
            .attach(owned, view, positions)
            .map_err(|e| to_ruby(ruby, e))
    }

    /// Takes over a duplicate of `fd` and parks the client (rows B of §3.6).
    fn park(ruby: &Ruby, rb_self: &Self, fd: i32, request: RHash) -> RbResult<()> {
        let who = request_identity(ruby, request)?;
        let session = Session {
            seq: request.fetch("seq")?,
            identity: who,
            subscriptions: subscriptions(ruby, request.fetch("channels")?)?,
            view: rb_self.view(request)?,
        };
        let owned = dup_fd(ruby, fd)?;
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let _guard = rt.enter();
        park(
            owned,
            session,
            Arc::clone(&rb_self.fanout),
            Arc::clone(&rb_self.backend),
        )
        .map_err(|e| to_ruby(ruby, e))
    }

    /// Takes over a duplicate of `fd` for a WebSocket (after checking its
    /// upgrade with `_websocket_accept`) or an event stream: the request's
    /// `park_params` plus `transport` ("websocket" or "sse"), `accept` (the
    /// `Sec-WebSocket-Accept` value), `keepalive_ms` and `max_channels`.
    fn stream(ruby: &Ruby, rb_self: &Self, fd: i32, request: RHash) -> RbResult<()> {
        let who = request_identity(ruby, request)?;
        let headers = headers(request.fetch("headers")?)?;
        let transport: String = request.fetch("transport")?;
        let (transport, head) = match transport.as_str() {
            "websocket" => {
                let accept: String = request.fetch("accept")?;
                (
                    Transport::WebSocket,
                    ws_codec::upgrade_head(&accept, &headers),
                )
            }
            "sse" => (Transport::Sse, sse::head(&headers)),
            other => {
                return Err(to_ruby(
                    ruby,
                    Error::Argument(format!("unknown transport {other:?}")),
                ))
            }
        };
        let session = StreamSession {
            identity: who,
            transport,
            head,
            subscriptions: subscriptions(ruby, request.fetch("channels")?)?,
            keepalive: Duration::from_millis(request.fetch::<_, u64>("keepalive_ms")?),
            max_channels: request.fetch("max_channels")?,
        };
        let owned = dup_fd(ruby, fd)?;
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let _guard = rt.enter();
        stream::open(
            owned,
            session,
            Arc::clone(&rb_self.fanout),
            Arc::clone(&rb_self.backend),
        )
        .map_err(|e| to_ruby(ruby, e))
    }

    /// How a parked poll answers: the `park_params` of the request.
    fn view(&self, request: RHash) -> RbResult<View> {
        Ok(View {
            chunked: request.fetch("chunked")?,
            head_prefix: self.shared_head(head_prefix(&headers(request.fetch("headers")?)?)),
            timeout: Duration::from_millis(request.fetch::<_, u64>("timeout_ms")?),
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

    /// What the Ruby filter thread must judge: String prefixes of client
    /// message filters, or everything (a Regexp filter, a custom codec).
    fn configure_gate(&self, prefixes: Vec<String>, everything: bool) {
        self.fanout.gate().configure(prefixes, everything);
    }

    /// Messages waiting for Ruby's verdict, as `[global_id, message_id,
    /// encoded_channel, envelope]`; `[]` after `timeout` seconds, nil once stopped.
    fn gate_jobs(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout: f64,
    ) -> RbResult<Option<RArray>> {
        crate::subscription::next_batch(ruby, rb_self.fanout.gate().jobs(), max, timeout)
    }

    /// Ruby's verdict on one message: the envelope as JSON, or nil (denied).
    fn resolve(
        ruby: &Ruby,
        rb_self: &Self,
        channel: RString,
        message_id: i64,
        envelope: Option<RString>,
    ) -> RbResult<()> {
        let channel = rstring(ruby, channel, "channel")?;
        let envelope = envelope.map(|e| rstring(ruby, e, "envelope")).transpose()?;
        rb_self
            .fanout
            .gate()
            .resolve(channel, message_id, envelope.as_deref());
        Ok(())
    }

    fn parked(&self) -> usize {
        self.fanout.parked()
    }

    /// The connection parked under `client_id`: `[conn_id, user_json,
    /// groups_json, site_id, seq, [[channel, position or nil], ...], chunked,
    /// connected_ms]`, or nil.
    fn lookup(ruby: &Ruby, rb_self: &Self, client_id: String) -> RbResult<Option<RArray>> {
        let Some(parked) = rb_self.fanout.lookup(&client_id) else {
            return Ok(None);
        };
        let who = &parked.identity;
        let groups = serde_json::Value::Array(who.group_ids.clone()).to_string();
        let channels = ruby.ary_new_capa(parked.channels.len());
        let positions = parked.outbox.positions();
        for (n, channel) in parked.channels.iter().enumerate() {
            channels.push((channel.as_str(), positions.get(n).copied().flatten()))?;
        }
        let out = ruby.ary_new_capa(8);
        out.push(parked.conn_id)?;
        out.push(who.user_id.to_string())?;
        out.push(groups)?;
        out.push(who.site_id.clone())?;
        out.push(parked.seq)?;
        out.push(channels)?;
        out.push(parked.outbox.is_chunked())?;
        out.push(parked.connected_ms)?;
        Ok(Some(out))
    }

    /// Closes (with its close output) the connection `conn_id` of
    /// `client_id`; false if it is no longer parked.
    fn close_client(&self, client_id: String, conn_id: u64) -> bool {
        self.fanout.close_client(&client_id, conn_id)
    }

    /// Whether `conn_id` is the connection parked under `client_id`.
    fn is_parked(&self, client_id: String, conn_id: u64) -> bool {
        self.fanout
            .lookup(&client_id)
            .is_some_and(|p| p.conn_id == conn_id)
    }

    /// Writes one message (already judged) to the connection `conn_id` of
    /// `client_id`: `data` is its JSON. False if it was not handed over.
    fn deliver_to(ruby: &Ruby, rb_self: &Self, args: &[magnus::Value]) -> RbResult<bool> {
        let args = magnus::scan_args::scan_args::<
            (String, u64, i64, i64, RString, RString),
            (),
            (),
            (),
            (),
            (),
        >(args)?;
        let (client_id, conn_id, global_id, message_id, channel, data) = args.required;
        let Some(parked) = rb_self.fanout.lookup(&client_id) else {
            return Ok(false);
        };
        if parked.conn_id != conn_id {
            return Ok(false);
        }
        let message = OutMessage {
            global_id,
            message_id,
            channel: rstring(ruby, channel, "channel")?,
            data: rstring(ruby, data, "data")?,
        };
        Ok(rb_self.fanout.deliver_to(&parked, message))
    }

    /// Hands a message to every parked connection that may see it:
    /// `envelope` is its JSON-codec envelope (client message filters were
    /// already applied by the caller).
    fn notify(
        ruby: &Ruby,
        rb_self: &Self,
        global_id: i64,
        message_id: i64,
        encoded_channel: RString,
        envelope: RString,
    ) -> RbResult<()> {
        let envelope_text = rstring(ruby, envelope, "envelope")?;
        let envelope = Envelope::parse(&envelope_text).map_err(|e| to_ruby(ruby, e))?;
        let message = Message {
            global_id,
            message_id,
            channel: rstring(ruby, encoded_channel, "channel")?,
            data: envelope_text,
        };
        rb_self.fanout.notify(&message, envelope);
        Ok(())
    }

    /// Adds this middleware's web clients to a scrape.
    pub(crate) fn add_to(&self, snapshot: &mut Snapshot) {
        snapshot.web.add(&self.fanout.stats());
        self.fanout
            .add_delivery_latency(&mut snapshot.delivery_latency);
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> RbResult<RHash> {
        stats_hash(ruby, &rb_self.fanout.stats())
    }

    /// The stats of a middleware without parked-client registry: all zero.
    fn empty_stats(ruby: &Ruby) -> RbResult<RHash> {
        stats_hash(ruby, &WebClientStats::default())
    }

    /// Stops feeding this registry and closes its connections (nothing to
    /// do in a forked child: the registry is the parent's).
    fn stop(&self) {
        if self.fanout.is_inherited() {
            return;
        }
        self.stop_feeding();
    }

    /// Like `_stop`, then waits up to `seconds` for the connections to have
    /// written their close output (a WebSocket's 1001): at process exit.
    fn stop_and_wait(ruby: &Ruby, rb_self: &Self, seconds: f64) -> RbResult<bool> {
        if rb_self.fanout.is_inherited() {
            return Ok(true);
        }
        rb_self.stop_feeding();
        let fanout = Arc::clone(&rb_self.fanout);
        let timeout = Duration::from_secs_f64(seconds.clamp(0.0, 60.0));
        block_on(
            ruby,
            || async move { Ok(fanout.wait_closed(timeout).await) },
        )
    }

    fn stop_feeding(&self) {
        let sink: Arc<dyn Sink> = Arc::clone(&self.fanout) as Arc<dyn Sink>;
        self.backend.hub().remove_sink(&sink);
        self.fanout.close_all();
        self.fanout.gate().close();
    }
}

/// Checks a WebSocket upgrade's version and key: `[accept, nil]`, or
/// `[nil, [status, message]]` for the refusal to answer before the upgrade.
fn websocket_accept(
    version: Option<String>,
    key: Option<String>,
) -> (Option<String>, Option<(u16, &'static str)>) {
    match ws_codec::accept_key(version.as_deref(), key.as_deref()) {
        Ok(accept) => (Some(accept), None),
        Err(refusal) => (None, Some((refusal.status, refusal.message))),
    }
}

/// `{parked:, delivered:, slow_closed:, unreadable:, closed: {reason => count}}`.
fn stats_hash(ruby: &Ruby, s: &WebClientStats) -> RbResult<RHash> {
    let h = ruby.hash_new();
    h.aset(ruby.to_symbol("parked"), s.parked)?;
    h.aset(ruby.to_symbol("delivered"), s.delivered)?;
    h.aset(ruby.to_symbol("slow_closed"), s.slow_closed())?;
    h.aset(ruby.to_symbol("unreadable"), s.unreadable)?;
    let closed = ruby.hash_new();
    for (reason, count) in s.closes() {
        closed.aset(ruby.to_symbol(reason.name()), count)?;
    }
    h.aset(ruby.to_symbol("closed"), closed)?;
    Ok(h)
}

impl Drop for NativeConnections {
    fn drop(&mut self) {
        if self.fanout.is_inherited() {
            // The parent's fan-out: its threads are not here and its locks
            // may be held. Never dropped in this process.
            std::mem::forget(Arc::clone(&self.fanout));
        }
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> RbResult<()> {
    let class = native.define_class("Connections", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("new", magnus::function!(NativeConnections::new, 1))?;
    class.define_method("_poll", magnus::method!(NativeConnections::poll, 5))?;
    class.define_method("_park", magnus::method!(NativeConnections::park, 2))?;
    class.define_method(
        "_poll_pending",
        magnus::method!(NativeConnections::poll_pending, -1),
    )?;
    class.define_method("_attach", magnus::method!(NativeConnections::attach, 3))?;
    class.define_method("_stream", magnus::method!(NativeConnections::stream, 2))?;
    class.define_singleton_method("_websocket_accept", magnus::function!(websocket_accept, 2))?;
    let pending = native.define_class("PendingPoll", ruby.class_object())?;
    pending.undef_default_alloc_func();
    pending.define_method("_cancel", magnus::method!(PendingPoll::cancel, 0))?;
    class.define_method("_parked", magnus::method!(NativeConnections::parked, 0))?;
    class.define_method("_lookup", magnus::method!(NativeConnections::lookup, 1))?;
    class.define_method(
        "_close_client",
        magnus::method!(NativeConnections::close_client, 2),
    )?;
    class.define_method("_parked?", magnus::method!(NativeConnections::is_parked, 2))?;
    class.define_method(
        "_deliver_to",
        magnus::method!(NativeConnections::deliver_to, -1),
    )?;
    class.define_method("_notify", magnus::method!(NativeConnections::notify, 4))?;
    class.define_method(
        "_configure_gate",
        magnus::method!(NativeConnections::configure_gate, 2),
    )?;
    class.define_method(
        "_gate_jobs",
        magnus::method!(NativeConnections::gate_jobs, 2),
    )?;
    class.define_method("_resolve", magnus::method!(NativeConnections::resolve, 3))?;
    class.define_method("_stats", magnus::method!(NativeConnections::stats, 0))?;
    class.define_singleton_method(
        "_empty_stats",
        magnus::function!(NativeConnections::empty_stats, 0),
    )?;
    class.define_method("_stop", magnus::method!(NativeConnections::stop, 0))?;
    class.define_method(
        "_stop_and_wait",
        magnus::method!(NativeConnections::stop_and_wait, 1),
    )?;
    Ok(())
}
