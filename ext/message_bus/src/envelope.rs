//! The untargeted envelope of a publish, for data of the plain shapes: an
//! exact String (UTF-8), Integer (Fixnum), nil, true, false, Array, or Hash
//! with String or Symbol keys, written byte for byte as Ruby's JSON
//! generator writes `{"data" => data, "user_ids" => nil, ...}`. Anything
//! else (floats, bignums, other classes, whose `to_json` may be the
//! application's) answers nil and is left to the codec in Ruby.

use std::fmt::Write;

use magnus::r_hash::ForEach;
use magnus::rb_sys::AsRawValue;
use magnus::{prelude::*, Fixnum, RArray, RHash, RString, Ruby, Symbol, Value};
use message_bus_core::envelope::{push_json_string, UNTARGETED_HEAD, UNTARGETED_TAIL};

/// Deeper data goes to the codec (no deep recursion on this stack).
const MAX_DEPTH: usize = 32;

/// `MessageBus::Native._untargeted_envelope(data)`: the envelope, or nil.
fn untargeted_envelope(ruby: &Ruby, data: Value) -> Option<RString> {
    let mut out = String::with_capacity(128);
    out.push_str(UNTARGETED_HEAD);
    write_value(ruby, &mut out, data, 0)?;
    out.push_str(UNTARGETED_TAIL);
    Some(ruby.str_new(&out))
}

fn write_value(ruby: &Ruby, out: &mut String, value: Value, depth: usize) -> Option<()> {
    if value.is_nil() {
        out.push_str("null");
    } else if value.as_raw() == ruby.qtrue().as_raw() {
        out.push_str("true");
    } else if value.as_raw() == ruby.qfalse().as_raw() {
        out.push_str("false");
    } else if let Some(n) = Fixnum::from_value(value) {
        write!(out, "{}", n.to_i64()).ok()?;
    } else if push_plain_str(ruby, out, value) {
    } else if depth >= MAX_DEPTH {
        return None;
    } else if let Some(array) = RArray::from_value(value) {
        if array.class().as_raw() != ruby.class_array().as_raw() {
            return None;
        }
        out.push('[');
        // SAFETY: no Ruby code runs while the slice is read (nothing here
        // calls into Ruby or allocates Ruby objects).
        for (n, item) in unsafe { array.as_slice() }.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            write_value(ruby, out, *item, depth + 1)?;
        }
        out.push(']');
    } else if let Some(hash) = RHash::from_value(value) {
        if hash.class().as_raw() != ruby.class_hash().as_raw() {
            return None;
        }
        write_hash(ruby, out, hash, depth)?;
    } else {
        return None;
    }
    Some(())
}

fn write_hash(ruby: &Ruby, out: &mut String, hash: RHash, depth: usize) -> Option<()> {
    out.push('{');
    let mut first = true;
    let mut plain = true;
    let walked = hash.foreach(|key: Value, value: Value| {
        let written = (|| {
            if !first {
                out.push(',');
            }
            first = false;
            write_key(ruby, out, key)?;
            out.push(':');
            write_value(ruby, out, value, depth + 1)
        })();
        if written.is_some() {
            Ok(ForEach::Continue)
        } else {
            plain = false;
            Ok(ForEach::Stop)
        }
    });
    if walked.is_err() || !plain {
        return None;
    }
    out.push('}');
    Some(())
}

/// A String key as it is, a Symbol key by its name (what the generator
/// does); other keys go through `to_s` in Ruby, so not here.
fn write_key(ruby: &Ruby, out: &mut String, key: Value) -> Option<()> {
    if push_plain_str(ruby, out, key) {
        return Some(());
    }
    let name = Symbol::from_value(key)?.name().ok()?;
    push_json_string(out, &name);
    Some(())
}

/// Writes an exact String in a UTF-8 compatible encoding holding valid
/// UTF-8 (the generator converts or refuses the others); false for
/// anything else.
fn push_plain_str(ruby: &Ruby, out: &mut String, value: Value) -> bool {
    let Some(string) = RString::from_value(value) else {
        return false;
    };
    if string.class().as_raw() != ruby.class_string().as_raw()
        || !string.is_utf8_compatible_encoding()
    {
        return false;
    }
    // SAFETY: the bytes are copied into `out` before any Ruby code runs.
    match std::str::from_utf8(unsafe { string.as_slice() }) {
        Ok(text) => {
            push_json_string(out, text);
            true
        }
        Err(_) => false,
    }
}

pub fn define(native: magnus::RModule) -> Result<(), magnus::Error> {
    native.define_module_function(
        "_untargeted_envelope",
        magnus::function!(untargeted_envelope, 1),
    )
}
