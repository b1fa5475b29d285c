//! Ruby binding of the message_bus core: conversion only, one file per class.

mod backend;
mod connections;
mod errors;
mod gvl;
mod subscription;

use magnus::{prelude::*, Ruby};

/// Called from Ruby by `fork` hooks: the child must not use the parent's runtime.
fn after_fork() {
    message_bus_core::runtime::forget_if_inherited();
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
    native.define_module_function("_drain_log", magnus::function!(drain_log, 0))?;
    backend::define(ruby, native)?;
    subscription::define(ruby, native)?;
    connections::define(ruby, native)?;
    Ok(())
}
