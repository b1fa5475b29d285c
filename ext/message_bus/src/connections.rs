//! `MessageBus::Native::Connections`: a middleware's `WebEndpoint`
//! (`message_bus_core::http::endpoint`). Conversion only: every request is
//! a `MessageBus::Native::WebRequest` (see `web_request.rs`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use magnus::{prelude::*, RArray, RHash, RString, RStruct, Ruby, Value};
use message_bus_core::fanout::WebClientStats;
use message_bus_core::http::endpoint::{self, WebEndpoint};
use message_bus_core::http::json::OutMessage;
use message_bus_core::http::ws_codec;
use message_bus_core::metrics::Snapshot;
use message_bus_core::runtime::runtime;
use message_bus_core::{Error, Message};

use crate::backend::{rstring, NativeBackend};
use crate::errors::to_ruby;
use crate::gvl::block_on;
use crate::web_request::web_request;

type RbResult<T> = Result<T, magnus::Error>;

#[magnus::wrap(class = "MessageBus::Native::Connections", free_immediately, size)]
pub struct NativeConnections(WebEndpoint);

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
pub struct PendingPoll(message_bus_core::sync::Mutex<Option<endpoint::PendingPoll>>);

impl PendingPoll {
    fn cancel(&self) {
        self.0.lock().take();
    }
}

impl NativeConnections {
    fn new(ruby: &Ruby, backend: &NativeBackend) -> RbResult<Self> {
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let endpoint = {
            let _guard = rt.enter();
            WebEndpoint::new(Arc::clone(&backend.0)).map_err(|e| to_ruby(ruby, e))?
        };
        block_on(ruby, || endpoint.listen())?;
        Ok(NativeConnections(endpoint))
    }

    /// The JSON array answering a poll right away (rows A and D of §3.6).
    fn poll(ruby: &Ruby, rb_self: &Self, request: Value) -> RbResult<RString> {
        let request = web_request(ruby, request)?;
        let body = block_on(ruby, || rb_self.0.poll(&request))?;
        Ok(ruby.str_new(&body))
    }

    /// Like `_poll`, but registered for live messages before the backlog is
    /// read: `[body, nil]` when there is something to answer, `[body,
    /// pending]` when the client may be parked with `_attach` (no second read).
    fn poll_pending(
        ruby: &Ruby,
        rb_self: &Self,
        request: Value,
    ) -> RbResult<(RString, Option<PendingPoll>)> {
        let request = web_request(ruby, request)?;
        let (body, pending) = block_on(ruby, || rb_self.0.poll_pending(&request))?;
        let pending = pending.map(|p| PendingPoll(message_bus_core::sync::Mutex::new(Some(p))));
        Ok((ruby.str_new(&body), pending))
    }

    /// Parks a pending poll on a duplicate of `fd`, answering as `request`
    /// (a long poll) says.
    fn attach(
        ruby: &Ruby,
        rb_self: &Self,
        pending: &PendingPoll,
        fd: i32,
        request: Value,
    ) -> RbResult<()> {
        let request = web_request(ruby, request)?;
        let Some(pending) = pending.0.lock().take() else {
            return Err(to_ruby(ruby, Error::Argument("poll already parked".into())));
        };
        let owned = dup_fd(ruby, fd)?;
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let _guard = rt.enter();
        rb_self
            .0
            .attach(pending, owned, &request)
            .map_err(|e| to_ruby(ruby, e))
    }

    /// Takes over a duplicate of `fd` for `request`: a long poll is parked,
    /// a WebSocket (its upgrade checked with `_websocket_accept`) or an
    /// event stream starts.
    fn open(ruby: &Ruby, rb_self: &Self, fd: i32, request: Value) -> RbResult<()> {
        let request = web_request(ruby, request)?;
        let owned = dup_fd(ruby, fd)?;
        let rt = runtime().map_err(|e| to_ruby(ruby, e))?;
        let _guard = rt.enter();
        rb_self.0.open(owned, request).map_err(|e| to_ruby(ruby, e))
    }

    /// What the Ruby filter thread must judge: String prefixes of client
    /// message filters, or everything (a Regexp filter, a custom codec).
    fn configure_gate(&self, prefixes: Vec<String>, everything: bool) {
        self.0.gate().configure(prefixes, everything);
    }

    /// Messages waiting for Ruby's verdict, as `[global_id, message_id,
    /// encoded_channel, envelope]`; `[]` after `timeout` seconds, nil once stopped.
    fn gate_jobs(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout: f64,
    ) -> RbResult<Option<RArray>> {
        crate::subscription::next_batch(ruby, rb_self.0.gate().jobs(), max, timeout)
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
            .0
            .gate()
            .resolve(channel, message_id, envelope.as_deref());
        Ok(())
    }

    fn parked(&self) -> usize {
        self.0.parked()
    }

    /// The connection parked under `client_id`: `[conn_id, user_json,
    /// groups_json, site_id, seq, [[channel, position or nil], ...], chunked,
    /// connected_ms]`, or nil.
    fn lookup(ruby: &Ruby, rb_self: &Self, client_id: String) -> RbResult<Option<RArray>> {
        let Some(parked) = rb_self.0.lookup(&client_id) else {
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
        self.0.close_client(&client_id, conn_id)
    }

    /// Whether `conn_id` is the connection parked under `client_id`.
    fn is_parked(&self, client_id: String, conn_id: u64) -> bool {
        self.0.is_parked(&client_id, conn_id)
    }

    /// Writes one message (already judged) to the connection `conn_id` of
    /// `client_id`: `message` is its `MessageBus::Message`, `data` the JSON
    /// of its data. False if it was not handed over.
    fn deliver_to(
        ruby: &Ruby,
        rb_self: &Self,
        client_id: String,
        conn_id: u64,
        message: RStruct,
        data: RString,
    ) -> RbResult<bool> {
        // The members of `MessageBus::Message`, by index.
        let message = OutMessage {
            global_id: message.get(0)?,
            message_id: message.get(1)?,
            channel: rstring(ruby, message.get(2)?, "channel")?,
            data: rstring(ruby, data, "data")?,
        };
        Ok(rb_self.0.deliver_to(&client_id, conn_id, message))
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
        let message = Message {
            global_id,
            message_id,
            channel: rstring(ruby, encoded_channel, "channel")?,
            data: rstring(ruby, envelope, "envelope")?,
        };
        rb_self.0.notify(message).map_err(|e| to_ruby(ruby, e))
    }

    /// Adds this middleware's web clients to a scrape.
    pub(crate) fn add_to(&self, snapshot: &mut Snapshot) {
        self.0.add_to(snapshot);
    }

    fn stats(ruby: &Ruby, rb_self: &Self) -> RbResult<RHash> {
        stats_hash(ruby, &rb_self.0.stats())
    }

    /// The stats of a middleware without parked-client registry: all zero.
    fn empty_stats(ruby: &Ruby) -> RbResult<RHash> {
        stats_hash(ruby, &WebClientStats::default())
    }

    /// Stops feeding this registry and closes its connections (nothing to
    /// do in a forked child: the registry is the parent's).
    fn stop(&self) {
        self.0.stop();
    }

    /// Like `_stop`, then waits up to `seconds` for the connections to have
    /// written their close output (a WebSocket's 1001): at process exit.
    fn stop_and_wait(ruby: &Ruby, rb_self: &Self, seconds: f64) -> RbResult<bool> {
        let timeout = Duration::from_secs_f64(seconds.clamp(0.0, 60.0));
        block_on(ruby, || async move {
            Ok(rb_self.0.stop_and_wait(timeout).await)
        })
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

pub fn define(ruby: &Ruby, native: magnus::RModule) -> RbResult<()> {
    let class = native.define_class("Connections", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("new", magnus::function!(NativeConnections::new, 1))?;
    class.define_method("_poll", magnus::method!(NativeConnections::poll, 1))?;
    class.define_method(
        "_poll_pending",
        magnus::method!(NativeConnections::poll_pending, 1),
    )?;
    class.define_method("_attach", magnus::method!(NativeConnections::attach, 3))?;
    class.define_method("_open", magnus::method!(NativeConnections::open, 2))?;
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
        magnus::method!(NativeConnections::deliver_to, 4),
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
