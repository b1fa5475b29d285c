//! What every backend shares: site encoding of channel names and the hub that
//! hands each message coming off the backend to local subscriptions and to
//! the web-client fan-out.

use std::sync::Arc;

use crate::sync::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::subscription::Subscription;

/// Separates a channel from its site id in encoded channel names.
pub const SITE_TOKEN: &str = "$|$";
/// Channels under this prefix are never site-encoded.
pub const GLOBAL_PREFIX: &str = "/global/";

/// `channel$|$site`, or the channel unchanged for `/global/` channels or when
/// there is no site (COMPAT.md §2).
pub fn encode_channel(channel: &str, site_id: Option<&str>) -> Result<String> {
    if channel.starts_with(GLOBAL_PREFIX) {
        return Ok(channel.to_string());
    }
    match site_id {
        None => Ok(channel.to_string()),
        Some(_) if channel.contains(SITE_TOKEN) => Err(Error::Argument(format!(
            "channel {channel:?} contains the site token {SITE_TOKEN:?}"
        ))),
        Some(site) => Ok(format!("{channel}{SITE_TOKEN}{site}")),
    }
}

/// A client's site as decoding a channel it reads gives it back: an empty
/// site (`channel$|$`) is no site.
pub fn decoded_site(site_id: Option<&str>) -> Option<&str> {
    site_id.filter(|site| !site.is_empty())
}

/// Splits an encoded channel into the channel and its site id (empty → none).
pub fn decode_channel(encoded: &str) -> (&str, Option<&str>) {
    match encoded.split_once(SITE_TOKEN) {
        Some((channel, site)) => {
            // Only the text up to a further token belongs to the site (split semantics).
            let site = site.split(SITE_TOKEN).next().unwrap_or("");
            (channel, if site.is_empty() { None } else { Some(site) })
        }
        None => (encoded, None),
    }
}

/// Receives every message coming off a backend, in global-id order, on the
/// backend's delivery context. Must not block.
pub trait Sink: Send + Sync {
    fn deliver(&self, message: &Arc<Message>);
    /// Storage was reset: ids restart.
    fn reset(&self) {}
    /// Belongs to the parent of this forked process (never fed here).
    fn is_inherited(&self) -> bool {
        false
    }
}

#[derive(Default)]
pub struct Hub {
    subscriptions: Mutex<Vec<Arc<Subscription>>>,
    sinks: RwLock<Vec<Arc<dyn Sink>>>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Every method takes a fork guard section (see [`crate::fork`]), and
    /// skips what a forked child inherited without touching it: the parent's
    /// threads may have held those objects' locks at the fork.
    pub fn deliver(&self, message: Message) {
        self.deliver_with(move || message);
    }

    /// Delivers the message `make` builds, built only when a subscription
    /// or a sink is there to take it (a memory publish nobody listens to
    /// copies nothing).
    pub fn deliver_with(&self, make: impl FnOnce() -> Message) {
        let _section = crate::fork::guard();
        let has_sinks = !self.sinks.read().is_empty();
        let message = {
            let mut subs = self.subscriptions.lock();
            subs.retain(|s| !s.is_inherited() && !s.is_closed());
            if subs.is_empty() && !has_sinks {
                return;
            }
            let message = Arc::new(make());
            for sub in subs.iter() {
                sub.push(&message);
            }
            message
        };
        for sink in self.sinks.read().iter() {
            sink.deliver(&message);
        }
    }

    pub fn add_subscription(&self, sub: Arc<Subscription>) {
        let _section = crate::fork::guard();
        let mut subs = self.subscriptions.lock();
        subs.retain(|s| !s.is_inherited() && !s.is_closed());
        subs.push(sub);
    }

    pub fn has_subscriptions(&self) -> bool {
        let _section = crate::fork::guard();
        let subs = self.subscriptions.lock();
        subs.iter().any(|s| !s.is_inherited() && !s.is_closed())
    }

    /// Ends every local subscription (queued messages are still handed out).
    pub fn close_subscriptions(&self) {
        let _section = crate::fork::guard();
        for sub in self.subscriptions.lock().drain(..) {
            if !sub.is_inherited() {
                sub.close();
            }
        }
    }

    /// After fork: subscriptions opened by the parent have no reader here
    /// (they are dropped without being touched).
    pub fn close_inherited_subscriptions(&self) {
        let _section = crate::fork::guard();
        self.subscriptions.lock().retain(|s| !s.is_inherited());
    }

    pub fn add_sink(&self, sink: Arc<dyn Sink>) {
        let _section = crate::fork::guard();
        self.sinks.write().push(sink);
    }

    pub fn remove_sink(&self, sink: &Arc<dyn Sink>) {
        let _section = crate::fork::guard();
        self.sinks.write().retain(|s| !Arc::ptr_eq(s, sink));
    }

    /// Whether a sink of this process is fed.
    pub fn has_sinks(&self) -> bool {
        let _section = crate::fork::guard();
        let sinks = self.sinks.read();
        sinks.iter().any(|s| !s.is_inherited())
    }

    /// Storage was reset: replay floors and sink positions no longer apply.
    pub fn storage_reset(&self) {
        let _section = crate::fork::guard();
        for sub in self.subscriptions.lock().iter() {
            if !sub.is_inherited() {
                sub.clear_floor();
            }
        }
        for sink in self.sinks.read().iter() {
            if !sink.is_inherited() {
                sink.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_encoding_follows_the_reference() {
        assert_eq!(encode_channel("/foo", None).unwrap(), "/foo");
        assert_eq!(encode_channel("/foo", Some("s1")).unwrap(), "/foo$|$s1");
        assert_eq!(encode_channel("/foo", Some("")).unwrap(), "/foo$|$");
        assert_eq!(
            encode_channel("/global/x", Some("s1")).unwrap(),
            "/global/x"
        );
        assert!(encode_channel("/a$|$b", Some("s")).is_err());
        assert_eq!(encode_channel("/a$|$b", None).unwrap(), "/a$|$b");
    }

    #[test]
    fn site_decoding_follows_the_reference() {
        assert_eq!(decode_channel("/foo$|$s1"), ("/foo", Some("s1")));
        assert_eq!(decode_channel("/foo"), ("/foo", None));
        assert_eq!(decode_channel("/foo$|$"), ("/foo", None));
        for (site, encoded) in [
            (None, "/foo"),
            (Some(""), "/foo$|$"),
            (Some("s1"), "/foo$|$s1"),
        ] {
            assert_eq!(
                decoded_site(site),
                decode_channel(&encode_channel("/foo", site).unwrap()).1,
                "{encoded}"
            );
        }
    }
}
