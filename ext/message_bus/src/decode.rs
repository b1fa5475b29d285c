//! JSON read into Ruby values exactly as `JSON.parse(payload)` reads it,
//! for the plain shapes (objects, arrays, strings, integers, true, false,
//! null): the default codec's decoding of every message a backlog or a
//! subscription hands to Ruby. Anything this does not read the same way
//! answers nil and is left to `JSON.parse`: floats (their rounding and
//! `1e400` are the parser's), data nested deeper than `MAX_DEPTH`, and
//! whatever serde_json refuses (invalid JSON, lone surrogates, invalid
//! UTF-8, comments), so the parser raises or reads it as it always did.

use std::fmt;

use magnus::encoding::EncodingCapable;
use magnus::rb_sys::AsRawValue;
use magnus::{prelude::*, RHash, RString, Ruby, Value};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Deeper data goes to `JSON.parse` (whose own limit is 100): no deep
/// recursion on the caller's stack.
const MAX_DEPTH: usize = 32;

/// `MessageBus::Native._decode_json(payload)`: the decoded value, or nil
/// when `JSON.parse` must read it (a JSON `null` answers nil too, and
/// `JSON.parse` reads it the same).
fn decode_json(ruby: &Ruby, payload: RString) -> Option<Value> {
    if !payload.is_utf8_compatible_encoding() && payload.enc_get() != ruby.ascii8bit_encindex() {
        return None;
    }
    // Copied: building the values allocates Ruby objects, and the bytes of
    // a String may not be held across that.
    // SAFETY: the bytes are copied before any Ruby object is allocated.
    let bytes = unsafe { payload.as_slice() }.to_vec();
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    let value = Build { ruby, depth: 0 }.deserialize(&mut json).ok()?;
    json.end().ok()?;
    Some(value)
}

/// Builds one JSON value as a Ruby value.
struct Build<'r> {
    ruby: &'r Ruby,
    depth: usize,
}

impl Build<'_> {
    fn inner(&self) -> Self {
        Build {
            ruby: self.ruby,
            depth: self.depth + 1,
        }
    }
}

/// Why a value is left to `JSON.parse` (the text is never shown).
fn declined<E: de::Error>(why: &str) -> E {
    E::custom(why)
}

impl<'de> DeserializeSeed<'de> for Build<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(if v {
            self.ruby.qtrue().as_value()
        } else {
            self.ruby.qfalse().as_value()
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(self.ruby.integer_from_i64(v).as_value())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(self.ruby.integer_from_u64(v).as_value())
    }

    /// Floats, and integers too big for 64 bits (which serde_json reads as
    /// floats, where `JSON.parse` makes a Bignum).
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Value, E> {
        Err(declined("a float"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(self.ruby.str_new(v).as_value())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.ruby.qnil().as_value())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(declined("too deep"));
        }
        let array = self.ruby.ary_new_capa(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self.inner())? {
            // SAFETY: pushing onto a new, unfrozen Array cannot raise.
            unsafe { rb_sys::rb_ary_push(array.as_raw(), item.as_raw()) };
        }
        Ok(array.as_value())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(declined("too deep"));
        }
        let hash: RHash = self.ruby.hash_new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(self.inner())?;
            // A repeated key keeps its first place and takes the last value,
            // as JSON.parse leaves it.
            // SAFETY: storing a frozen String key into a new, unfrozen Hash
            // cannot raise (String keys are hashed without calling Ruby).
            unsafe { rb_sys::rb_hash_aset(hash.as_raw(), key, value.as_raw()) };
        }
        Ok(hash.as_value())
    }
}

/// An object's key, as a Ruby String (built on the thread `Build` runs on).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = rb_sys::VALUE;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<rb_sys::VALUE, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = rb_sys::VALUE;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    /// The interned (frozen) String a Hash keeps for this key anyway: no
    /// copy for the keys every message repeats ("data", "user_ids").
    fn visit_str<E: de::Error>(self, v: &str) -> Result<rb_sys::VALUE, E> {
        let len = std::os::raw::c_long::try_from(v.len()).map_err(|_| declined("key length"))?;
        // SAFETY: `v` is valid UTF-8 of `len` bytes, read before returning.
        Ok(unsafe {
            rb_sys::rb_enc_interned_str(v.as_ptr().cast(), len, rb_sys::rb_utf8_encoding())
        })
    }
}

pub fn define(native: magnus::RModule) -> Result<(), magnus::Error> {
    native.define_module_function("_decode_json", magnus::function!(decode_json, 1))
}
