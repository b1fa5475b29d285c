//! `MessageBus::Native::Subscription`: the queue a Ruby dispatcher thread
//! drains, waiting with the GVL released.

use std::sync::Arc;
use std::time::Duration;

use magnus::{prelude::*, RArray, Ruby};
use message_bus_core::subscription::{Batch, Subscription};

use crate::backend::message_to_ruby;
use crate::gvl::blocking;

#[magnus::wrap(class = "MessageBus::Native::Subscription", free_immediately, size)]
pub struct NativeSubscription(pub Arc<Subscription>);

/// Up to `max` messages of `sub`; `[]` when `timeout` seconds passed; nil once closed.
pub fn next_batch(
    ruby: &Ruby,
    sub: Arc<Subscription>,
    max: usize,
    timeout: f64,
) -> Result<Option<RArray>, magnus::Error> {
    let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    let batch = blocking(ruby, Some(Arc::clone(&sub)), |_| {
        sub.next_batch(max, timeout)
    })?;
    match batch {
        Batch::Closed => Ok(None),
        Batch::TimedOut => Ok(Some(ruby.ary_new())),
        Batch::Messages(messages) => {
            let out = ruby.ary_new_capa(messages.len());
            for m in &messages {
                out.push(message_to_ruby(ruby, m)?)?;
            }
            Ok(Some(out))
        }
    }
}

impl NativeSubscription {
    fn next_batch(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout: f64,
    ) -> Result<Option<RArray>, magnus::Error> {
        next_batch(ruby, Arc::clone(&rb_self.0), max, timeout)
    }

    fn close(&self) {
        self.0.close();
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn start(&self) -> Option<i64> {
        self.0.start()
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), magnus::Error> {
    let class = native.define_class("Subscription", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_method(
        "_next_batch",
        magnus::method!(NativeSubscription::next_batch, 2),
    )?;
    class.define_method("_close", magnus::method!(NativeSubscription::close, 0))?;
    class.define_method("_start", magnus::method!(NativeSubscription::start, 0))?;
    class.define_method(
        "_closed?",
        magnus::method!(NativeSubscription::is_closed, 0),
    )?;
    Ok(())
}
