//! The bytes of a hijacked response (COMPAT.md §3.7, §3.9), for web clients
//! served from Ruby (`MessageBus::Client` writing to its `io`): the same
//! framing the Rust connections write.

use magnus::{RArray, RString, Ruby};
use message_bus_core::http::frame;

use crate::web_request::headers as pairs;

type RbResult<T> = Result<T, magnus::Error>;

/// Status line and headers of a streamed answer.
fn chunked_head(ruby: &Ruby, headers: RArray) -> RbResult<RString> {
    let head = frame::chunked_head(&frame::head_prefix(&pairs(headers)?));
    Ok(ruby.str_from_slice(&head))
}

/// One chunk carrying `payload` (a JSON array) and the separator.
fn chunk(ruby: &Ruby, payload: String) -> RString {
    ruby.str_from_slice(&frame::chunk(&payload))
}

/// A complete non-streamed answer.
fn full_response(ruby: &Ruby, headers: RArray, body: String) -> RbResult<RString> {
    let prefix = frame::head_prefix(&pairs(headers)?);
    Ok(ruby.str_from_slice(&frame::full_response(&prefix, &body)))
}

fn last_chunk(ruby: &Ruby) -> RString {
    ruby.str_from_slice(frame::LAST_CHUNK)
}

pub fn define(native: magnus::RModule) -> RbResult<()> {
    native.define_module_function("_http_chunked_head", magnus::function!(chunked_head, 1))?;
    native.define_module_function("_http_chunk", magnus::function!(chunk, 1))?;
    native.define_module_function("_http_full_response", magnus::function!(full_response, 2))?;
    native.define_module_function("_http_last_chunk", magnus::function!(last_chunk, 0))?;
    Ok(())
}
