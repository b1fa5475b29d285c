//! `MessageBus::Native::Backend`: a core backend seen from Ruby. Messages
//! cross as `MessageBus::Message` objects (global id, message id, encoded
//! channel, undecoded envelope), built here rather than from arrays in Ruby.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};

use magnus::rb_sys::{AsRawValue, FromRawValue};
use magnus::value::Opaque;
use magnus::{prelude::*, RArray, RClass, RModule, RString, Ruby, Value};
use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::redis::RedisBackend;
use message_bus_core::backend::{Backend, DirectCall, PublishOptions, Settings};
use message_bus_core::metrics::{BackendKind, Metered};
use message_bus_core::{Error, Message};

use crate::errors::to_ruby;
use crate::gvl::{block_on, immediate, request, request_not_immediate};
use crate::subscription::NativeSubscription;

type RbResult<T> = Result<T, magnus::Error>;

#[magnus::wrap(class = "MessageBus::Native::Backend", free_immediately, size)]
pub struct NativeBackend(pub Arc<dyn Backend>);

pub fn rstring(ruby: &Ruby, value: RString, what: &str) -> RbResult<String> {
    // SAFETY: the bytes are copied before any other Ruby call.
    unsafe { borrowed_str(ruby, &value, what) }.map(str::to_owned)
}

/// The bytes of a Ruby String as text, not copied.
///
/// # Safety
/// The caller uses them only while no Ruby code runs and the GVL is held
/// (Ruby code could change the string; a GC could move or free its bytes).
pub unsafe fn borrowed_str<'a>(ruby: &Ruby, value: &'a RString, what: &str) -> RbResult<&'a str> {
    // SAFETY: as the caller promises.
    std::str::from_utf8(unsafe { value.as_slice() }).map_err(|_| {
        to_ruby(
            ruby,
            Error::InvalidMessage(format!(
                "{what} must be valid UTF-8 (message_bus stores text)"
            )),
        )
    })
}

/// `MessageBus::Message` (a Struct of four members), looked up once when the
/// extension loads.
static MESSAGE_CLASS: OnceLock<Opaque<RClass>> = OnceLock::new();

pub fn message_to_ruby(ruby: &Ruby, m: &Message) -> RbResult<Value> {
    let class = MESSAGE_CLASS.get().ok_or_else(|| {
        to_ruby(
            ruby,
            Error::Backend("MessageBus::Message is not loaded: require \"message_bus\"".into()),
        )
    })?;
    let class = ruby.get_inner(*class).as_raw();
    let members = [
        ruby.integer_from_i64(m.global_id).as_raw(),
        ruby.integer_from_i64(m.message_id).as_raw(),
        ruby.str_new(&m.channel).as_raw(),
        ruby.str_new(&m.data).as_raw(),
    ];
    // Allocated and filled by member index: `new` would look up and call
    // `initialize` for every message.
    let message = magnus::rb_sys::protect(|| {
        // SAFETY: `class` is a Struct class of four members (checked at
        // load); the values live on this stack, where Ruby's GC sees them.
        unsafe {
            let message = rb_sys::rb_obj_alloc(class);
            for (index, value) in members.into_iter().enumerate() {
                rb_sys::rb_struct_aset(message, ruby_fixnum(index), value);
            }
            message
        }
    })?;
    // SAFETY: a live Ruby object just made.
    Ok(unsafe { Value::from_raw(message) })
}

/// A small non-negative integer as a Ruby Fixnum (`INT2FIX`).
fn ruby_fixnum(n: usize) -> rb_sys::VALUE {
    ((n as rb_sys::VALUE) << 1) | 1
}

fn messages_to_ruby(ruby: &Ruby, messages: &[Message]) -> RbResult<RArray> {
    let out = ruby.ary_new_capa(messages.len());
    for m in messages {
        out.push(message_to_ruby(ruby, m)?)?;
    }
    Ok(out)
}

impl NativeBackend {
    fn memory() -> Self {
        NativeBackend(Metered::wrap(
            BackendKind::Memory,
            Arc::new(MemoryBackend::new()),
        ))
    }

    /// Never connects: connections are made on first use.
    fn redis(ruby: &Ruby, url: RString, pubsub_channel: RString) -> RbResult<Self> {
        let url = rstring(ruby, url, "Redis URL")?;
        let pubsub_channel = rstring(ruby, pubsub_channel, "pub/sub channel")?;
        let backend = RedisBackend::new(&url, &pubsub_channel).map_err(|e| to_ruby(ruby, e))?;
        Ok(NativeBackend(Metered::wrap(
            BackendKind::Redis,
            Arc::new(backend),
        )))
    }

    /// Redis Sentinel: `node_url`'s host is the master name. Never connects.
    fn redis_sentinel(
        ruby: &Ruby,
        node_url: RString,
        sentinel_urls: RArray,
        pubsub_channel: RString,
    ) -> RbResult<Self> {
        let node_url = rstring(ruby, node_url, "Redis URL")?;
        let sentinel_urls = (0..sentinel_urls.len())
            .map(|i| {
                let url: RString = sentinel_urls.entry(i as isize)?;
                rstring(ruby, url, "sentinel URL")
            })
            .collect::<RbResult<Vec<_>>>()?;
        let pubsub_channel = rstring(ruby, pubsub_channel, "pub/sub channel")?;
        let backend = RedisBackend::sentinel(&node_url, &sentinel_urls, &pubsub_channel)
            .map_err(|e| to_ruby(ruby, e))?;
        Ok(NativeBackend(Metered::wrap(
            BackendKind::Redis,
            Arc::new(backend),
        )))
    }

    /// Never connects: connections are made on first use.
    fn postgres(ruby: &Ruby, conninfo: RString, notify_channel: RString) -> RbResult<Self> {
        let conninfo = rstring(ruby, conninfo, "PostgreSQL connection string")?;
        let notify_channel = rstring(ruby, notify_channel, "NOTIFY channel")?;
        let backend =
            PostgresBackend::new(&conninfo, &notify_channel).map_err(|e| to_ruby(ruby, e))?;
        Ok(NativeBackend(Metered::wrap(
            BackendKind::Postgres,
            Arc::new(backend),
        )))
    }

    fn setting<'a>(&'a self, ruby: &Ruby, name: &str) -> RbResult<&'a AtomicI64> {
        let s = self.0.settings();
        Ok(match name {
            "max_backlog_size" => &s.max_backlog_size,
            "max_global_backlog_size" => &s.max_global_backlog_size,
            "max_backlog_age" => &s.max_backlog_age,
            "clear_every" => &s.clear_every,
            "max_in_memory_publish_backlog" => &s.max_in_memory_publish_backlog,
            other => {
                return Err(to_ruby(
                    ruby,
                    Error::Argument(format!("unknown backend setting {other}")),
                ))
            }
        })
    }

    fn get_setting(ruby: &Ruby, rb_self: &Self, name: String) -> RbResult<i64> {
        Ok(Settings::get(rb_self.setting(ruby, &name)?))
    }

    fn set_setting(ruby: &Ruby, rb_self: &Self, name: String, value: i64) -> RbResult<i64> {
        if name == "clear_every" && value < 1 {
            return Err(to_ruby(
                ruby,
                Error::Argument("clear_every must be at least 1".into()),
            ));
        }
        Settings::set(rb_self.setting(ruby, &name)?, value);
        Ok(value)
    }

    fn publish(
        ruby: &Ruby,
        rb_self: &Self,
        channel: RString,
        data: RString,
        max_backlog_age: Option<i64>,
        max_backlog_size: Option<i64>,
        queue_in_memory: Option<bool>,
    ) -> RbResult<Option<i64>> {
        let opts = PublishOptions {
            max_backlog_age,
            max_backlog_size,
            queue_in_memory,
        };
        // SAFETY: the strings are borrowed for the immediate call only, in
        // which no Ruby code runs; the other ways copy them first.
        let (channel, data) = unsafe {
            (
                borrowed_str(ruby, &channel, "channel")?,
                borrowed_str(ruby, &data, "encoded message")?,
            )
        };
        let call = DirectCall::Publish {
            channel,
            data,
            opts: &opts,
        };
        if let Some(done) = immediate(ruby, &*rb_self.0, call) {
            return done;
        }
        let (channel, data) = (channel.to_owned(), data.to_owned());
        let call = DirectCall::Publish {
            channel: &channel,
            data: &data,
            opts: &opts,
        };
        request_not_immediate(ruby, &*rb_self.0, call, || {
            rb_self.0.publish(&channel, &data, &opts)
        })
    }

    fn last_id(ruby: &Ruby, rb_self: &Self, channel: RString) -> RbResult<i64> {
        // SAFETY: borrowed for the immediate call only (see `publish`).
        let borrowed = unsafe { borrowed_str(ruby, &channel, "channel")? };
        if let Some(done) = immediate(ruby, &*rb_self.0, DirectCall::LastId(borrowed)) {
            return done;
        }
        let channel = borrowed.to_owned();
        request_not_immediate(ruby, &*rb_self.0, DirectCall::LastId(&channel), || {
            rb_self.0.last_id(&channel)
        })
    }

    fn last_ids(ruby: &Ruby, rb_self: &Self, channels: RArray) -> RbResult<Vec<i64>> {
        let mut names = Vec::with_capacity(channels.len());
        for c in channels.into_iter() {
            let s = RString::try_convert(c)?;
            names.push(rstring(ruby, s, "channel")?);
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        request(ruby, &*rb_self.0, DirectCall::LastIds(&names), || {
            rb_self.0.last_ids(&names)
        })
    }

    fn backlog(ruby: &Ruby, rb_self: &Self, channel: RString, last_id: i64) -> RbResult<RArray> {
        // SAFETY: borrowed for the immediate call only (see `publish`).
        let borrowed = unsafe { borrowed_str(ruby, &channel, "channel")? };
        let messages: Vec<Message> =
            match immediate(ruby, &*rb_self.0, DirectCall::Backlog(borrowed, last_id)) {
                Some(done) => done?,
                None => {
                    let channel = borrowed.to_owned();
                    let call = DirectCall::Backlog(&channel, last_id);
                    request_not_immediate(ruby, &*rb_self.0, call, || {
                        rb_self.0.backlog(&channel, last_id)
                    })?
                }
            };
        messages_to_ruby(ruby, &messages)
    }

    fn global_backlog(ruby: &Ruby, rb_self: &Self, last_id: i64) -> RbResult<RArray> {
        let messages = block_on(ruby, || rb_self.0.global_backlog(last_id))?;
        messages_to_ruby(ruby, &messages)
    }

    fn get_message(
        ruby: &Ruby,
        rb_self: &Self,
        channel: RString,
        id: i64,
    ) -> RbResult<Option<Value>> {
        let channel = rstring(ruby, channel, "channel")?;
        let message = block_on(ruby, || rb_self.0.get_message(&channel, id))?;
        message.map(|m| message_to_ruby(ruby, &m)).transpose()
    }

    fn reset(ruby: &Ruby, rb_self: &Self) -> RbResult<()> {
        block_on(ruby, || rb_self.0.reset())
    }

    fn expire_all_backlogs(ruby: &Ruby, rb_self: &Self) -> RbResult<()> {
        block_on(ruby, || rb_self.0.expire_all_backlogs())
    }

    fn subscribe(
        ruby: &Ruby,
        rb_self: &Self,
        last_id: Option<i64>,
    ) -> RbResult<NativeSubscription> {
        let sub = block_on(ruby, || rb_self.0.subscribe(last_id))?;
        Ok(NativeSubscription(sub))
    }

    fn global_unsubscribe(ruby: &Ruby, rb_self: &Self) -> RbResult<()> {
        block_on(ruby, || async {
            rb_self.0.global_unsubscribe().await;
            Ok(())
        })
    }

    fn destroy(ruby: &Ruby, rb_self: &Self) -> RbResult<()> {
        block_on(ruby, || async {
            rb_self.0.destroy().await;
            Ok(())
        })
    }

    fn after_fork(&self) {
        self.0.hub().close_inherited_subscriptions();
        self.0.after_fork();
    }

    /// The storage epoch: the cached one, else read (created if missing).
    fn epoch(ruby: &Ruby, rb_self: &Self) -> RbResult<Option<String>> {
        if let Some(epoch) = rb_self.0.epoch() {
            return Ok(Some(epoch.to_string()));
        }
        let epoch = block_on(ruby, || rb_self.0.load_epoch())?;
        Ok(epoch.map(|e| e.to_string()))
    }

    /// Reads the storage epoch again (created if missing).
    fn refresh_epoch(ruby: &Ruby, rb_self: &Self) -> RbResult<Option<String>> {
        block_on(ruby, || rb_self.0.refresh_epoch())?;
        Ok(rb_self.0.epoch().map(|e| e.to_string()))
    }

    fn is_subscribed(&self) -> bool {
        self.0.is_subscribed()
    }

    fn queued_publishes(&self) -> usize {
        self.0.queued_publishes()
    }

    fn dropped_publishes(&self) -> u64 {
        self.0.dropped_publishes()
    }
}

pub fn define(ruby: &Ruby, bus: RModule, native: RModule) -> RbResult<()> {
    let message: RClass = bus.const_get("Message").map_err(|_| {
        to_ruby(
            ruby,
            Error::Backend(
                "load the extension through require \"message_bus\" (MessageBus::Message first)"
                    .into(),
            ),
        )
    })?;
    let members: RArray = message.funcall("members", ())?;
    if members.len() != 4 {
        return Err(to_ruby(
            ruby,
            Error::Backend("MessageBus::Message must be a Struct of four members".into()),
        ));
    }
    magnus::gc::register_mark_object(message);
    let _ = MESSAGE_CLASS.set(Opaque::from(message));
    let class = native.define_class("Backend", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_singleton_method("memory", magnus::function!(NativeBackend::memory, 0))?;
    class.define_singleton_method("redis", magnus::function!(NativeBackend::redis, 2))?;
    class.define_singleton_method(
        "redis_sentinel",
        magnus::function!(NativeBackend::redis_sentinel, 3),
    )?;
    class.define_singleton_method("postgres", magnus::function!(NativeBackend::postgres, 2))?;
    class.define_method("_setting", magnus::method!(NativeBackend::get_setting, 1))?;
    class.define_method(
        "_set_setting",
        magnus::method!(NativeBackend::set_setting, 2),
    )?;
    class.define_method("_publish", magnus::method!(NativeBackend::publish, 5))?;
    class.define_method("_last_id", magnus::method!(NativeBackend::last_id, 1))?;
    class.define_method("_last_ids", magnus::method!(NativeBackend::last_ids, 1))?;
    class.define_method("_backlog", magnus::method!(NativeBackend::backlog, 2))?;
    class.define_method(
        "_global_backlog",
        magnus::method!(NativeBackend::global_backlog, 1),
    )?;
    class.define_method(
        "_get_message",
        magnus::method!(NativeBackend::get_message, 2),
    )?;
    class.define_method("_reset", magnus::method!(NativeBackend::reset, 0))?;
    class.define_method(
        "_expire_all_backlogs",
        magnus::method!(NativeBackend::expire_all_backlogs, 0),
    )?;
    class.define_method("_subscribe", magnus::method!(NativeBackend::subscribe, 1))?;
    class.define_method(
        "_global_unsubscribe",
        magnus::method!(NativeBackend::global_unsubscribe, 0),
    )?;
    class.define_method("_destroy", magnus::method!(NativeBackend::destroy, 0))?;
    class.define_method("_after_fork", magnus::method!(NativeBackend::after_fork, 0))?;
    class.define_method("_epoch", magnus::method!(NativeBackend::epoch, 0))?;
    class.define_method(
        "_refresh_epoch",
        magnus::method!(NativeBackend::refresh_epoch, 0),
    )?;
    class.define_method(
        "_subscribed?",
        magnus::method!(NativeBackend::is_subscribed, 0),
    )?;
    class.define_method(
        "_queued_publishes",
        magnus::method!(NativeBackend::queued_publishes, 0),
    )?;
    class.define_method(
        "_dropped_publishes",
        magnus::method!(NativeBackend::dropped_publishes, 0),
    )?;
    Ok(())
}
