//! The firehose loop shared by the networked backends: listen, and after the
//! connection is lost, log it and listen again with exponential backoff.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::log;
use crate::metrics::{self, BackendKind, BackendMetrics};

const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Runs until aborted; every lost connection counts as a reconnect of `kind`. `listen` returns once its connection ends, with
/// whether the subscription had been confirmed (which resets the backoff);
/// `describe` names the subscription in the log line.
pub(super) async fn keep_listening<L, Fut>(
    kind: BackendKind,
    subscribed: &AtomicBool,
    describe: impl Fn() -> String,
    mut listen: L,
) where
    L: FnMut() -> Fut,
    Fut: Future<Output = (bool, Result<(), Error>)>,
{
    let mut delay = MIN_DELAY;
    loop {
        let (confirmed, outcome) = listen().await;
        let error = match outcome {
            Ok(()) => Error::Connection("connection closed".into()),
            Err(e) => e,
        };
        subscribed.store(false, Ordering::SeqCst);
        BackendMetrics::count(&metrics::backend(kind).firehose_reconnects);
        if confirmed {
            delay = MIN_DELAY;
        }
        log::warn(format!(
            "message_bus: {} lost: {error}; reconnecting in {} ms",
            describe(),
            delay.as_millis()
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}
