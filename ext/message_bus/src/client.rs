//! What `MessageBus::Client` needs of the core: its backlog, computed by
//! the same rules as a web poll's (`client::Plan`), over a built-in backend
//! (read in Rust) or a backend written in Ruby (read through its methods);
//! and the permission check of live messages.

use magnus::{value::ReprValue, RArray, RString, Ruby, TryConvert, Value};
use message_bus_core::bus::decode_channel;
use message_bus_core::client::Plan;
use message_bus_core::envelope::Envelope;
use message_bus_core::{Error, Message};

use crate::backend::{rstring, NativeBackend};
use crate::errors::to_ruby;
use crate::gvl::block_on;
use crate::web_request::{identity, subscriptions};

type RbResult<T> = Result<T, magnus::Error>;

/// Where the backlog is read.
enum Source<'a> {
    Native(&'a NativeBackend),
    Ruby(Value),
}

impl Source<'_> {
    fn last_ids(&self, ruby: &Ruby, channels: &[String]) -> RbResult<Vec<i64>> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Source::Native(b) => block_on(ruby, || b.0.last_ids(channels)),
            Source::Ruby(backend) => {
                let args: Vec<RString> = channels.iter().map(|c| ruby.str_new(c)).collect();
                backend.funcall("last_ids", args.as_slice())
            }
        }
    }

    fn backlog(&self, ruby: &Ruby, channel: &str, after: i64) -> RbResult<Vec<Message>> {
        match self {
            Source::Native(b) => block_on(ruby, || b.0.backlog(channel, after)),
            Source::Ruby(backend) => {
                let list: RArray = backend.funcall("backlog", (ruby.str_new(channel), after))?;
                list.into_iter().map(|m| ruby_message(ruby, m)).collect()
            }
        }
    }
}

/// A `MessageBus::Message` (undecoded, as backends return them).
fn ruby_message(ruby: &Ruby, m: Value) -> RbResult<Message> {
    let text = |name: &str| -> RbResult<String> {
        let value: RString = m.funcall(name, ())?;
        rstring(ruby, value, name)
    };
    Ok(Message {
        global_id: m.funcall("global_id", ())?,
        message_id: m.funcall("message_id", ())?,
        channel: text("channel")?,
        data: text("data")?,
    })
}

/// Which messages Ruby judges (client message filters, a custom codec) and
/// the Proc that does: `(global_id, message_id, channel, data)` → the
/// envelope as JSON, or nil when web clients may not see it.
struct Judge {
    prefixes: Vec<String>,
    everything: bool,
    verdict: Option<Value>,
}

impl Judge {
    fn envelope(&self, ruby: &Ruby, m: &Message) -> RbResult<Option<Envelope>> {
        let (channel, _) = decode_channel(&m.channel);
        let judged = self.everything
            || self
                .prefixes
                .iter()
                .any(|p| channel.starts_with(p.as_str()));
        let json = match (&self.verdict, judged) {
            (Some(verdict), true) => {
                let answer: Option<RString> = verdict.funcall(
                    "call",
                    (
                        m.global_id,
                        m.message_id,
                        ruby.str_new(&m.channel),
                        ruby.str_new(&m.data),
                    ),
                )?;
                match answer {
                    Some(json) => rstring(ruby, json, "envelope")?,
                    None => return Ok(None),
                }
            }
            _ => m.data.clone(),
        };
        Ok(Envelope::parse(&json).ok())
    }
}

/// `[[global_id, message_id, channel, data_json], ...]`, `[[channel, id], ...]`
/// for the status, and the positions the answer covers.
#[allow(clippy::too_many_arguments)]
fn client_backlog(
    ruby: &Ruby,
    source: Value,
    client_id: RString,
    site_id: Option<RString>,
    user_json: RString,
    groups_json: RString,
    channels: RArray,
    judged: (Vec<String>, bool, Option<Value>),
) -> RbResult<(RArray, RArray, RArray)> {
    let who = identity(ruby, client_id, site_id, user_json, groups_json)?;
    let subs = subscriptions(ruby, channels)?;
    let source = match <&NativeBackend>::try_convert(source) {
        Ok(native) => Source::Native(native),
        Err(_) => Source::Ruby(source),
    };
    let judge = Judge {
        prefixes: judged.0,
        everything: judged.1,
        verdict: judged.2,
    };
    let mut plan = Plan::new(&who, &subs).map_err(|e| to_ruby(ruby, e))?;
    let bus_ids = source.last_ids(ruby, plan.encoded())?;
    if bus_ids.len() != plan.encoded().len() {
        return Err(to_ruby(
            ruby,
            Error::Backend(format!(
                "last_ids returned {} ids for {} channels",
                bus_ids.len(),
                plan.encoded().len()
            )),
        ));
    }
    if let Source::Native(b) = &source {
        if message_bus_core::backend::epoch::client_ahead(&plan.requested(), &bus_ids) {
            // The answer lowers the client's position: the response's epoch
            // is read after these ids (see `backend::epoch`).
            block_on(ruby, || b.0.refresh_epoch())?;
        }
    }
    for (index, after) in plan.reads(bus_ids) {
        let channel = plan.encoded()[index].clone();
        for m in source.backlog(ruby, &channel, after)? {
            let envelope = judge.envelope(ruby, &m)?;
            plan.add(index, &m, envelope.as_ref());
        }
    }
    let out = plan.finish();
    let messages = ruby.ary_new_capa(out.messages.len());
    for m in &out.messages {
        messages.push((
            m.global_id,
            m.message_id,
            m.channel.as_str(),
            m.data.as_str(),
        ))?;
    }
    let pairs = |list: &[(String, i64)]| -> RbResult<RArray> {
        let a = ruby.ary_new_capa(list.len());
        for (channel, id) in list {
            a.push((channel.as_str(), *id))?;
        }
        Ok(a)
    };
    Ok((messages, pairs(&out.status)?, pairs(&out.positions)?))
}

/// The target part of the permission check (COMPAT.md §3.5) for a client,
/// given the message's targets as a JSON-codec envelope.
fn allowed(
    ruby: &Ruby,
    client_id: RString,
    user_json: RString,
    groups_json: RString,
    envelope: RString,
) -> RbResult<bool> {
    let who = identity(ruby, client_id, None, user_json, groups_json)?;
    let envelope = rstring(ruby, envelope, "envelope")?;
    let envelope = Envelope::parse(&envelope).map_err(|e| to_ruby(ruby, e))?;
    Ok(envelope.allows(&who))
}

pub fn define(native: magnus::RModule) -> RbResult<()> {
    native.define_module_function("_client_backlog", magnus::function!(client_backlog, 7))?;
    native.define_module_function("_allowed?", magnus::function!(allowed, 4))?;
    Ok(())
}
