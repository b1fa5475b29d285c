//! `MessageBus::Native::WebRequest`: the one shape in which a web request
//! crosses the native line, a Struct whose members are listed here (once)
//! and read by index. `MessageBus::Rack::PollRequest#native` builds it (the
//! only place), every `Native::Connections` entry point takes it, and
//! [`web_request`] converts it into the core's `WebRequest`.

use std::sync::OnceLock;
use std::time::Duration;

use magnus::value::{Opaque, ReprValue};
use magnus::{prelude::*, RArray, RClass, RString, RStruct, Ruby, Symbol, Value};
use message_bus_core::client::Requested;
use message_bus_core::envelope::Identity;
use message_bus_core::http::endpoint::{WebRequest, WebTransport};
use message_bus_core::Error;

use crate::backend::rstring;
use crate::errors::to_ruby;

type RbResult<T> = Result<T, magnus::Error>;

macro_rules! members {
    ($($member:ident = $name:literal),* $(,)?) => {
        /// A member of the Struct, by index.
        #[derive(Clone, Copy)]
        enum Member { $($member),* }
        /// The Struct's members, in `Member` order.
        const MEMBERS: &[&str] = &[$($name),*];
    };
}

members!(
    ClientId = "client_id",
    SiteId = "site_id",
    UserJson = "user_json",
    GroupsJson = "groups_json",
    Seq = "seq",
    // `[[channel, last id or nil], ...]`
    Channels = "channels",
    // The response headers, `[[name, value], ...]`.
    Headers = "headers",
    // :poll, :long_poll (one response), :streaming (a chunked long poll),
    // :websocket or :sse.
    Transport = "transport",
    // A long poll's interval.
    TimeoutMs = "timeout_ms",
    // A WebSocket's ping, or an event stream's comment, interval.
    KeepaliveMs = "keepalive_ms",
    // The `Sec-WebSocket-Accept` value.
    Accept = "accept",
    // At most this many channels on a WebSocket or an event stream.
    MaxChannels = "max_channels",
);

static CLASS: OnceLock<Opaque<RClass>> = OnceLock::new();

/// The one conversion of a Ruby request.
pub(crate) fn web_request(ruby: &Ruby, value: Value) -> RbResult<WebRequest> {
    let request = RStruct::from_value(value)
        .filter(|_| {
            CLASS
                .get()
                .is_some_and(|class| value.is_kind_of(ruby.get_inner(*class)))
        })
        .ok_or_else(|| {
            to_ruby(
                ruby,
                Error::Argument("a web request must be a MessageBus::Native::WebRequest".into()),
            )
        })?;
    let get = |member: Member| request.get::<Value>(member as usize);
    let ms = |member: Member| -> RbResult<Duration> {
        Ok(Duration::from_millis(request.get(member as usize)?))
    };
    let transport: Symbol = request.get(Member::Transport as usize)?;
    let transport = match &*transport.name()? {
        "poll" => WebTransport::Poll,
        "long_poll" => WebTransport::LongPoll {
            chunked: false,
            timeout: ms(Member::TimeoutMs)?,
        },
        "streaming" => WebTransport::LongPoll {
            chunked: true,
            timeout: ms(Member::TimeoutMs)?,
        },
        "websocket" => WebTransport::WebSocket {
            accept: request.get(Member::Accept as usize)?,
            keepalive: ms(Member::KeepaliveMs)?,
            max_channels: request.get(Member::MaxChannels as usize)?,
        },
        "sse" => WebTransport::Sse {
            keepalive: ms(Member::KeepaliveMs)?,
            max_channels: request.get(Member::MaxChannels as usize)?,
        },
        other => {
            return Err(to_ruby(
                ruby,
                Error::Argument(format!("unknown transport {other:?}")),
            ))
        }
    };
    Ok(WebRequest {
        identity: identity(
            ruby,
            RString::try_convert(get(Member::ClientId)?)?,
            Option::<RString>::try_convert(get(Member::SiteId)?)?,
            RString::try_convert(get(Member::UserJson)?)?,
            RString::try_convert(get(Member::GroupsJson)?)?,
        )?,
        seq: request.get(Member::Seq as usize)?,
        subscriptions: subscriptions(ruby, request.get(Member::Channels as usize)?)?,
        headers: headers(request.get(Member::Headers as usize)?)?,
        transport,
    })
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

/// `[[name, value], ...]` → header pairs.
pub(crate) fn headers(list: RArray) -> RbResult<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(list.len());
    for pair in list.into_iter() {
        let pair = RArray::try_convert(pair)?;
        out.push((pair.entry::<String>(0)?, pair.entry::<String>(1)?));
    }
    Ok(out)
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> RbResult<()> {
    let names: Vec<Symbol> = MEMBERS.iter().map(|name| ruby.to_symbol(name)).collect();
    let class: RClass = ruby.class_struct().funcall("new", names.as_slice())?;
    native.const_set("WebRequest", class)?;
    magnus::gc::register_mark_object(class);
    let _ = CLASS.set(Opaque::from(class));
    Ok(())
}
