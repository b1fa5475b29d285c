//! `MessageBus::Native::Backend`: a core backend seen from Ruby. Messages
//! cross as `[global_id, message_id, encoded_channel, envelope]` arrays.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use magnus::{prelude::*, RArray, RString, Ruby};
use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::postgres::PostgresBackend;
use message_bus_core::backend::redis::RedisBackend;
use message_bus_core::backend::{Backend, DirectCall, PublishOptions, Settings};
use message_bus_core::metrics::{BackendKind, Metered};
use message_bus_core::{Error, Message};

use crate::errors::to_ruby;
use crate::gvl::{block_on, run_direct};
use crate::subscription::NativeSubscription;

type RbResult<T> = Result<T, magnus::Error>;

#[magnus::wrap(class = "MessageBus::Native::Backend", free_immediately, size)]
pub struct NativeBackend(pub Arc<dyn Backend>);

pub fn rstring(ruby: &Ruby, value: RString, what: &str) -> RbResult<String> {
    // SAFETY: the bytes are copied before any other Ruby call.
    let bytes = unsafe { value.as_slice() }.to_vec();
    String::from_utf8(bytes).map_err(|_| {
        to_ruby(
            ruby,
            Error::InvalidMessage(format!(
                "{what} must be valid UTF-8 (message_bus stores text)"
            )),
        )
    })
}

pub fn message_to_ruby(ruby: &Ruby, m: &Message) -> RbResult<RArray> {
    let a = ruby.ary_new_capa(4);
    a.push(m.global_id)?;
    a.push(m.message_id)?;
    a.push(ruby.str_new(&m.channel))?;
    a.push(ruby.str_new(&m.data))?;
    Ok(a)
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
        let channel = rstring(ruby, channel, "channel")?;
        let data = rstring(ruby, data, "encoded message")?;
        let opts = PublishOptions {
            max_backlog_age,
            max_backlog_size,
            queue_in_memory,
        };
        let backend = &rb_self.0;
        let call = DirectCall::Publish {
            channel: &channel,
            data: &data,
            opts: &opts,
        };
        if let Some(done) = backend.direct(call).and_then(|run| run_direct(ruby, run)) {
            return done;
        }
        block_on(ruby, || backend.publish(&channel, &data, &opts))
    }

    fn last_id(ruby: &Ruby, rb_self: &Self, channel: RString) -> RbResult<i64> {
        let channel = rstring(ruby, channel, "channel")?;
        let direct = rb_self.0.direct(DirectCall::LastId(&channel));
        if let Some(done) = direct.and_then(|run| run_direct(ruby, run)) {
            return done;
        }
        block_on(ruby, || rb_self.0.last_id(&channel))
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
        let direct = rb_self.0.direct(DirectCall::LastIds(&names));
        if let Some(done) = direct.and_then(|run| run_direct(ruby, run)) {
            return done;
        }
        block_on(ruby, || rb_self.0.last_ids(&names))
    }

    fn backlog(ruby: &Ruby, rb_self: &Self, channel: RString, last_id: i64) -> RbResult<RArray> {
        let channel = rstring(ruby, channel, "channel")?;
        let direct = rb_self.0.direct(DirectCall::Backlog(&channel, last_id));
        let messages = match direct.and_then(|run| run_direct(ruby, run)) {
            Some(done) => done?,
            None => block_on(ruby, || rb_self.0.backlog(&channel, last_id))?,
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
    ) -> RbResult<Option<RArray>> {
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

pub fn define(ruby: &Ruby, native: magnus::RModule) -> RbResult<()> {
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
