//! What happened to the web clients of one fan-out: live messages pushed,
//! messages no client could read, and the end of every hijacked connection
//! under its reason. Plain atomics, bumped where it happens and read by
//! diagnostics (and metrics) without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a hijacked connection (long poll, WebSocket, SSE) ended. Each connection ends once,
/// under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its long-polling interval ended (the close output was written).
    Timeout,
    /// A non-streamed answer was complete: its backlog or its first live message.
    Delivered,
    /// A newer request of the same client id took its place.
    Replaced,
    /// Refused at once: a newer request of the client id was already parked.
    Refused,
    /// The middleware stopped or the bus was destroyed.
    Stopped,
    /// The peer reset the connection, or a write to it failed.
    PeerClosed,
    /// More was waiting for it than the outbox bounds allow (a slow reader).
    SlowConsumer,
    /// A write could not complete within the write timeout (a slow reader).
    WriteTimeout,
    /// The client kept sending bytes after its request.
    UnexpectedInput,
    /// Its backlog could not be read (the close output was written).
    Error,
    /// A WebSocket client closed (its close frame was answered).
    ClientClosed,
    /// A WebSocket client broke the protocol or sent a message it may not
    /// (closed with 1002, 1003, 1007, 1008 or 1009 and a reason).
    ProtocolError,
    /// A WebSocket peer stopped answering pings.
    PingTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Timeout,
        CloseReason::Delivered,
        CloseReason::Replaced,
        CloseReason::Refused,
        CloseReason::Stopped,
        CloseReason::PeerClosed,
        CloseReason::SlowConsumer,
        CloseReason::WriteTimeout,
        CloseReason::UnexpectedInput,
        CloseReason::Error,
        CloseReason::ClientClosed,
        CloseReason::ProtocolError,
        CloseReason::PingTimeout,
    ];

    /// The reason's name in diagnostics and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Timeout => "timeout",
            CloseReason::Delivered => "delivered",
            CloseReason::Replaced => "replaced",
            CloseReason::Refused => "refused",
            CloseReason::Stopped => "stopped",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::UnexpectedInput => "unexpected_input",
            CloseReason::Error => "error",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::PingTimeout => "ping_timeout",
        }
    }

    /// Cut because the client did not read fast enough.
    pub fn is_slow_reader(self) -> bool {
        matches!(self, CloseReason::SlowConsumer | CloseReason::WriteTimeout)
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
pub struct WebClientCounters {
    /// Connections whose task runs (opened, not yet closed).
    open: AtomicU64,
    delivered: AtomicU64,
    unreadable: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl WebClientCounters {
    /// A live message was handed to a connection (written or queued).
    pub fn message_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A live message could not be parsed for web clients.
    pub fn message_unreadable(&self) {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection's task started (it ends with `connection_closed`).
    pub fn connection_opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection's task ended (after counting its close).
    pub fn connection_ended(&self) {
        // Saturating: never below zero whatever the order of calls.
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Connections whose task still runs.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, parked: usize) -> WebClientStats {
        WebClientStats {
            parked,
            delivered: self.delivered.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            closed: CloseReason::ALL.map(|r| self.closed[r.index()].load(Ordering::Relaxed)),
        }
    }
}

/// The counters at one moment, with the number of parked connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebClientStats {
    pub parked: usize,
    /// Live messages handed to connections.
    pub delivered: u64,
    pub unreadable: u64,
    /// Closes per reason, in the order of `CloseReason::ALL`.
    closed: [u64; CloseReason::ALL.len()],
}

impl WebClientStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Every reason with its count, in the order of `CloseReason::ALL`.
    pub fn closes(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL.iter().map(|r| (*r, self.closed(*r)))
    }

    /// Connections cut because their client did not read fast enough.
    pub fn slow_closed(&self) -> u64 {
        self.closes()
            .filter(|(r, _)| r.is_slow_reader())
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_count_and_name() {
        let counters = WebClientCounters::default();
        for (n, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), n);
            for _ in 0..=n {
                counters.connection_closed(*reason);
            }
        }
        counters.message_delivered();
        let stats = counters.snapshot(3);
        for (n, (reason, count)) in stats.closes().enumerate() {
            assert_eq!(count, n as u64 + 1, "{}", reason.name());
        }
        let names: std::collections::HashSet<_> =
            CloseReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), CloseReason::ALL.len());
        assert_eq!(stats.slow_closed(), 7 + 8);
        assert_eq!((stats.parked, stats.delivered, stats.unreadable), (3, 1, 0));
    }
}
