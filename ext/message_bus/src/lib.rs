//! Ruby binding of the message_bus core: conversion only, one file per class.

mod backend;
mod client;
mod connections;
mod decode;
mod envelope;
mod errors;
mod gvl;
mod http;
mod metrics;
mod subscription;
mod web_request;

use magnus::{prelude::*, Ruby};

use message_bus_core::fork;

/// `MessageBus.after_fork` and the fork hook: the child must not use the
/// parent's runtime nor hold its client sockets. Returns the sockets closed.
fn after_fork() -> usize {
    fork::adopt()
}

/// The `Process._fork` hook, right before the fork: waits until no Rust
/// thread is in a section whose locks the child needs.
fn before_fork() {
    fork::before_fork();
}

fn after_fork_in_parent() {
    fork::after_fork_in_parent();
}

/// The `Process._fork` hook in the child; returns the client sockets closed.
fn after_fork_in_child() -> usize {
    fork::after_fork_in_child()
}

/// close(2) of a descriptor a forked child inherited inside a Ruby IO (a
/// client served from Ruby): no flush, no shutdown, nothing written.
fn close_fd(fd: i32) -> bool {
    // SAFETY: the caller gives up the descriptor (its IO no longer closes it).
    unsafe { libc::close(fd) == 0 }
}

/// Hijacked client sockets this process holds (for diagnostics and tests).
fn held_sockets() -> usize {
    message_bus_core::http::socket::held().len()
}

/// Takes the core's queued log lines (oldest first) for `MessageBus.logger`.
fn drain_log() -> Vec<String> {
    message_bus_core::log::drain()
}

#[magnus::init(name = "message_bus_native")]
fn init(ruby: &Ruby) -> Result<(), magnus::Error> {
    let bus = ruby.define_module("MessageBus")?;
    let native = bus.define_module("Native")?;
    native.define_module_function("after_fork", magnus::function!(after_fork, 0))?;
    native.define_module_function("_before_fork", magnus::function!(before_fork, 0))?;
    native.define_module_function(
        "_after_fork_in_parent",
        magnus::function!(after_fork_in_parent, 0),
    )?;
    native.define_module_function(
        "_after_fork_in_child",
        magnus::function!(after_fork_in_child, 0),
    )?;
    native.define_module_function("_held_sockets", magnus::function!(held_sockets, 0))?;
    native.define_module_function("_close_fd", magnus::function!(close_fd, 1))?;
    native.define_module_function("_drain_log", magnus::function!(drain_log, 0))?;
    backend::define(ruby, bus, native)?;
    subscription::define(ruby, native)?;
    envelope::define(native)?;
    decode::define(native)?;
    web_request::define(ruby, native)?;
    connections::define(ruby, native)?;
    client::define(native)?;
    http::define(native)?;
    metrics::define(native)?;
    Ok(())
}
