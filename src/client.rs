//! One web client's request: its subscriptions, and the backlog computation
//! of COMPAT.md §3.4 (messages after the requested ids, `/__status` entries).

use crate::backend::Backend;
use crate::bus::{decode_channel, encode_channel, SITE_TOKEN};
use crate::envelope::{Envelope, Identity};
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::http::json::OutMessage;
use crate::message::Message;

/// A subscription as sent by the client: `None` means "from now" (an empty value).
pub type Requested = (String, Option<i64>);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientBacklog {
    pub messages: Vec<OutMessage>,
    /// Channel → the bus's last id, for the `/__status` element.
    pub status: Vec<(String, i64)>,
    /// Channel → the id the client is now up to; live messages at or below it
    /// were covered by this answer.
    pub positions: Vec<(String, i64)>,
}

impl ClientBacklog {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.status.is_empty()
    }
}

/// The encoded name of a channel a web client asked for. The site token is
/// refused whatever the client's site: with it, a client could name another
/// site's backlog (`/secret$|$a`), even one without a site of its own.
fn requested_channel(channel: &str, site: Option<&str>) -> Result<String> {
    if channel.contains(SITE_TOKEN) {
        return Err(Error::Argument(format!(
            "channel {channel:?} contains the site token {SITE_TOKEN:?}"
        )));
    }
    encode_channel(channel, site)
}

/// The rules of COMPAT.md §3.4 for one request, fed by whoever reads the
/// storage: [`compute`] for web polls (Rust reads the backend), the binding
/// for `MessageBus::Client#backlog` (also over backends written in Ruby).
/// Feed it in order: [`Plan::reads`] with the bus's last ids, then
/// [`Plan::add`] for each message of each read, then [`Plan::finish`].
pub struct Plan<'a> {
    who: &'a Identity,
    subscriptions: &'a [Requested],
    encoded: Vec<String>,
    bus_ids: Vec<i64>,
    /// Per subscription: the id the client is up to, and whether it gets a status.
    progress: Vec<(i64, bool)>,
    messages: Vec<OutMessage>,
}

impl<'a> Plan<'a> {
    pub fn new(who: &'a Identity, subscriptions: &'a [Requested]) -> Result<Self> {
        let site = who.site_id.as_deref();
        let encoded = subscriptions
            .iter()
            .map(|(channel, _)| requested_channel(channel, site))
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            who,
            subscriptions,
            encoded,
            bus_ids: Vec::new(),
            progress: Vec::new(),
            messages: Vec::new(),
        })
    }

    /// The subscribed channels, site-encoded, in order.
    pub fn encoded(&self) -> &[String] {
        &self.encoded
    }

    pub fn requested(&self) -> Vec<Option<i64>> {
        self.subscriptions.iter().map(|(_, r)| *r).collect()
    }

    /// Given the bus's last id of every subscribed channel (in order): the
    /// backlog reads to make, as (subscription index, messages after this id).
    pub fn reads(&mut self, bus_ids: Vec<i64>) -> Vec<(usize, i64)> {
        let mut reads = Vec::new();
        self.progress.clear();
        for (index, (_, requested)) in self.subscriptions.iter().enumerate() {
            let bus_id = bus_ids.get(index).copied().unwrap_or(0);
            // An empty value means "from now", resolved with the client's site (§9 Q37).
            let requested = requested.unwrap_or(bus_id);
            let mut needs_status = false;
            if requested < -1 {
                // Look-behind: the last -requested - 1 ids.
                reads.push((index, (bus_id + requested + 1).max(0)));
            } else if requested == -1 || requested > bus_id {
                // From now, or ahead of the bus (storage reset or expired).
                needs_status = true;
            } else if requested < bus_id {
                reads.push((index, requested));
            }
            self.progress.push((bus_id, needs_status));
        }
        self.bus_ids = bus_ids;
        reads
    }

    /// A message read for subscription `index`, with its envelope if web
    /// clients may see it at all (`None`: withheld by a filter, or unreadable).
    pub fn add(&mut self, index: usize, message: &Message, envelope: Option<&Envelope>) {
        let Some((position, needs_status)) = self.progress.get_mut(index) else {
            return;
        };
        *position = (*position).max(message.message_id);
        let (name, _) = decode_channel(&message.channel);
        match envelope {
            Some(envelope) if envelope.allows(self.who) => {
                self.messages
                    .push(OutMessage::from_stored(message, name, envelope.data.get()));
            }
            // Withheld: the client learns where the channel is (status).
            _ => *needs_status = true,
        }
    }

    pub fn finish(self) -> ClientBacklog {
        let mut out = ClientBacklog {
            messages: self.messages,
            ..ClientBacklog::default()
        };
        for (((channel, _), (position, needs_status)), bus_id) in self
            .subscriptions
            .iter()
            .zip(&self.progress)
            .zip(&self.bus_ids)
        {
            if *needs_status {
                out.status.push((channel.clone(), *bus_id));
            }
            out.positions.push((channel.clone(), *position));
        }
        out
    }
}

/// A web poll's backlog. `gate` decides which messages Ruby must judge
/// (client message filters, custom codecs); the others are parsed here.
pub async fn compute(
    backend: &dyn Backend,
    gate: &Gate,
    who: &Identity,
    subscriptions: &[Requested],
) -> Result<ClientBacklog> {
    let mut plan = Plan::new(who, subscriptions)?;
    let bus_ids = if plan.encoded().is_empty() {
        Vec::new()
    } else {
        backend
            .last_ids_for_poll(plan.encoded(), &plan.requested())
            .await?
    };
    for (index, start) in plan.reads(bus_ids) {
        let channel = plan.encoded()[index].clone();
        for m in backend.backlog(&channel, start).await? {
            let (name, _) = decode_channel(&m.channel);
            let envelope = gate.envelope(&m, name).await;
            plan.add(index, &m, envelope.as_deref());
        }
    }
    Ok(plan.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::PublishOptions;
    use serde_json::{json, Value};

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn envelope(data: &str, users: &str) -> String {
        format!(r#"{{"data":{data},"user_ids":{users},"group_ids":null,"client_ids":null}}"#)
    }

    /// COMPAT.md §3.13's common state, on the memory backend (ids are global).
    fn state() -> MemoryBackend {
        let b = MemoryBackend::new();
        for n in 1..=5 {
            let data = format!(r#"{{"n":{n},"text":"notice {n}"}}"#);
            block(b.publish(
                "/notices",
                &envelope(&data, "null"),
                &PublishOptions::default(),
            ))
            .unwrap();
        }
        block(b.publish(
            "/notices",
            &envelope(r#""private""#, "[42]"),
            &PublishOptions::default(),
        ))
        .unwrap();
        for _ in 0..2 {
            block(b.publish(
                "/chat/room-1",
                &envelope(r#""hi""#, "null"),
                &PublishOptions::default(),
            ))
            .unwrap();
        }
        b
    }

    fn who(user: Value) -> Identity {
        Identity {
            client_id: "c".into(),
            user_id: user,
            group_ids: vec![],
            site_id: None,
        }
    }

    #[test]
    fn example_one_status_for_minus_one_and_withheld_messages() {
        let b = state();
        let subs = vec![
            ("/chat/room-1".to_string(), Some(-1)),
            ("/notices".to_string(), Some(4)),
        ];
        let r = block(compute(&b, &Gate::default(), &who(Value::Null), &subs)).unwrap();
        assert_eq!(
            r.messages.iter().map(|m| m.message_id).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(
            r.status,
            vec![("/chat/room-1".to_string(), 8), ("/notices".to_string(), 6)]
        );
        let r42 = block(compute(&b, &Gate::default(), &who(json!(42)), &subs)).unwrap();
        assert_eq!(
            r42.messages
                .iter()
                .map(|m| m.message_id)
                .collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(r42.status, vec![("/chat/room-1".to_string(), 8)]);
    }

    #[test]
    fn look_behind_up_to_date_ahead_and_from_now() {
        let b = state();
        let up_to_date = block(compute(
            &b,
            &Gate::default(),
            &who(Value::Null),
            &[("/chat/room-1".into(), Some(8))],
        ))
        .unwrap();
        assert!(up_to_date.is_empty());
        assert_eq!(up_to_date.positions, vec![("/chat/room-1".to_string(), 8)]);
        let behind = block(compute(
            &b,
            &Gate::default(),
            &who(Value::Null),
            &[("/chat/room-1".into(), Some(-2))],
        ))
        .unwrap();
        assert_eq!(
            behind
                .messages
                .iter()
                .map(|m| m.message_id)
                .collect::<Vec<_>>(),
            vec![8]
        );
        assert!(behind.status.is_empty());
        let ahead = block(compute(
            &b,
            &Gate::default(),
            &who(Value::Null),
            &[("/chat/room-1".into(), Some(100))],
        ))
        .unwrap();
        assert_eq!(ahead.status, vec![("/chat/room-1".to_string(), 8)]);
        let now = block(compute(
            &b,
            &Gate::default(),
            &who(Value::Null),
            &[("/chat/room-1".into(), None)],
        ))
        .unwrap();
        assert!(now.is_empty());
        let empty = block(compute(
            &b,
            &Gate::default(),
            &who(Value::Null),
            &[("/nothing".into(), Some(-5))],
        ))
        .unwrap();
        assert!(empty.is_empty());
    }

    /// A poll of `channel` from id 0 by an anonymous client of `site`.
    fn poll_from_zero(
        b: &MemoryBackend,
        site: Option<&str>,
        channel: &str,
    ) -> Result<ClientBacklog> {
        let mut client = who(Value::Null);
        client.site_id = site.map(str::to_string);
        block(compute(
            b,
            &Gate::default(),
            &client,
            &[(channel.into(), Some(0))],
        ))
    }

    #[test]
    fn sites_are_kept_apart() {
        let b = MemoryBackend::new();
        block(b.publish("/c$|$a", &envelope("1", "null"), &PublishOptions::default())).unwrap();
        assert!(poll_from_zero(&b, Some("b"), "/c")
            .unwrap()
            .messages
            .is_empty());
        let r = poll_from_zero(&b, Some("a"), "/c").unwrap();
        assert_eq!(r.messages[0].channel, "/c");
    }

    #[test]
    fn the_site_token_is_refused_for_every_site_and_an_empty_site_reads_the_empty_suffix() {
        let b = MemoryBackend::new();
        block(b.publish("/s$|$a", &envelope("1", "null"), &PublishOptions::default())).unwrap();
        block(b.publish("/d$|$", &envelope("2", "null"), &PublishOptions::default())).unwrap();
        for site in [None, Some(""), Some("b")] {
            for channel in ["/s$|$a", "/global/s$|$a", "$|$"] {
                assert!(
                    poll_from_zero(&b, site, channel).is_err(),
                    "{channel} for site {site:?}"
                );
            }
        }
        let r = poll_from_zero(&b, Some(""), "/d").unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].channel, "/d");
    }
}
