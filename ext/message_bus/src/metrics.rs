//! `MessageBus::Native.metrics_text`: gathers the core's counters, the web
//! clients of the given middlewares and what Ruby counted, and renders them.

use magnus::{RArray, RHash, Ruby};
use message_bus_core::metrics::{self, BackendKind, Snapshot};
use message_bus_core::Error;

use crate::connections::NativeConnections;
use crate::errors::to_ruby;

type RbResult<T> = Result<T, magnus::Error>;

fn kind(ruby: &Ruby, name: Option<String>) -> RbResult<Option<BackendKind>> {
    match name.as_deref() {
        None => Ok(None),
        Some(name) => BackendKind::ALL
            .iter()
            .find(|k| k.name() == name)
            .copied()
            .map(Some)
            .ok_or_else(|| to_ruby(ruby, Error::Argument(format!("unknown backend {name}")))),
    }
}

fn count(ruby: &Ruby, values: RHash, key: &str) -> RbResult<u64> {
    Ok(values
        .lookup::<_, Option<u64>>(ruby.to_symbol(key))?
        .unwrap_or(0))
}

/// `backend`: the configured backend's name (nil for a Ruby backend);
/// `values`: `{queue_depth:, queue_dropped:, subscriber_blocks:, subscriber_errors:,
/// log_lines_dropped:}`;
/// `connections`: the `Native::Connections` of every live middleware.
fn metrics_text(
    ruby: &Ruby,
    backend: Option<String>,
    values: RHash,
    connections: RArray,
) -> RbResult<String> {
    let mut snapshot = Snapshot::gather(kind(ruby, backend)?);
    snapshot.queue_depth = count(ruby, values, "queue_depth")?;
    snapshot.queue_dropped = count(ruby, values, "queue_dropped")?;
    snapshot.subscriber_blocks = count(ruby, values, "subscriber_blocks")?;
    snapshot.subscriber_errors = count(ruby, values, "subscriber_errors")?;
    snapshot.log_lines_dropped += count(ruby, values, "log_lines_dropped")?;
    for c in connections.into_iter() {
        let c: &NativeConnections = magnus::TryConvert::try_convert(c)?;
        c.add_to(&mut snapshot);
    }
    metrics::render(snapshot)
        .map_err(|_| to_ruby(ruby, Error::Backend("could not render the metrics".into())))
}

fn set_latency_metrics(on: bool) -> bool {
    metrics::set_latency_enabled(on);
    on
}

pub fn define(native: magnus::RModule) -> RbResult<()> {
    native.define_module_function("_metrics_text", magnus::function!(metrics_text, 3))?;
    native.define_module_function(
        "_latency_metrics=",
        magnus::function!(set_latency_metrics, 1),
    )?;
    Ok(())
}
