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

/// How a hijacked connection answers (the `transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One response per poll (`Dont-Chunk`, HTTP/1.0, or chunking off).
    LongPoll,
    /// A chunked response that stays open for the interval.
    Streaming,
    WebSocket,
    /// Server-Sent Events.
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::LongPoll,
        Transport::Streaming,
        Transport::WebSocket,
        Transport::Sse,
    ];

    pub fn of(chunked: bool) -> Self {
        if chunked {
            Transport::Streaming
        } else {
            Transport::LongPoll
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::LongPoll => "long_poll",
            Transport::Streaming => "streaming",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The inverse of `index` (a transport kept in an atomic).
    pub fn from_index(index: usize) -> Self {
        Transport::ALL
            .get(index)
            .copied()
            .unwrap_or(Transport::LongPoll)
    }
}

const REASONS: usize = CloseReason::ALL.len();
const TRANSPORTS: usize = Transport::ALL.len();

#[derive(Default)]
pub struct WebClientCounters {
    /// Connections whose task runs (opened, not yet ended).
    open: AtomicU64,
    delivered: [AtomicU64; TRANSPORTS],
    unreadable: AtomicU64,
    opened: [AtomicU64; TRANSPORTS],
    closed: [[AtomicU64; REASONS]; TRANSPORTS],
}

impl WebClientCounters {
    /// A live message was handed to a connection (written or queued).
    pub fn message_delivered(&self, transport: Transport) {
        self.delivered[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A live message could not be parsed for web clients.
    pub fn message_unreadable(&self) {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
    }

    /// A hijacked connection's task started; it counts one `connection_closed`
    /// and then `connection_ended`.
    pub fn connection_opened(&self, transport: Transport) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened[transport.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, transport: Transport, reason: CloseReason) {
        self.closed[transport.index()][reason.index()].fetch_add(1, Ordering::Relaxed);
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
        let by_transport = Transport::ALL.map(|t| TransportStats {
            delivered: self.delivered[t.index()].load(Ordering::Relaxed),
            opened: self.opened[t.index()].load(Ordering::Relaxed),
            closed: CloseReason::ALL
                .map(|r| self.closed[t.index()][r.index()].load(Ordering::Relaxed)),
        });
        WebClientStats {
            parked,
            delivered: by_transport.iter().map(|t| t.delivered).sum(),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            by_transport,
        }
    }
}

/// The counters of one transport at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransportStats {
    pub delivered: u64,
    pub opened: u64,
    /// Closes per reason, in the order of `CloseReason::ALL`.
    closed: [u64; REASONS],
}

impl TransportStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Connections opened and not yet closed.
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closed.iter().sum())
    }
}

/// The counters at one moment, with the number of parked connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebClientStats {
    pub parked: usize,
    /// Live messages handed to connections, every transport.
    pub delivered: u64,
    pub unreadable: u64,
    by_transport: [TransportStats; TRANSPORTS],
}

impl WebClientStats {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.by_transport.iter().map(|t| t.closed(reason)).sum()
    }

    /// Every reason with its count over every transport, in the order of `CloseReason::ALL`.
    pub fn closes(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL.iter().map(|r| (*r, self.closed(*r)))
    }

    pub fn transport(&self, transport: Transport) -> &TransportStats {
        &self.by_transport[transport.index()]
    }

    /// Connections cut because their client did not read fast enough.
    pub fn slow_closed(&self) -> u64 {
        self.closes()
            .filter(|(r, _)| r.is_slow_reader())
            .map(|(_, n)| n)
            .sum()
    }

    /// Adds the counts of another fan-out (several middlewares in one process).
    pub fn add(&mut self, other: &WebClientStats) {
        self.parked += other.parked;
        self.delivered += other.delivered;
        self.unreadable += other.unreadable;
        for (mine, theirs) in self.by_transport.iter_mut().zip(&other.by_transport) {
            mine.delivered += theirs.delivered;
            mine.opened += theirs.opened;
            for (a, b) in mine.closed.iter_mut().zip(&theirs.closed) {
                *a += b;
            }
        }
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
                counters.connection_closed(Transport::Streaming, *reason);
            }
        }
        counters.message_delivered(Transport::LongPoll);
        let stats = counters.snapshot(3);
        for (n, (reason, count)) in stats.closes().enumerate() {
            assert_eq!(count, n as u64 + 1, "{}", reason.name());
        }
        let names: std::collections::HashSet<_> =
            CloseReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), CloseReason::ALL.len());
        assert_eq!(stats.slow_closed(), 7 + 8);
        assert_eq!((stats.parked, stats.delivered, stats.unreadable), (3, 1, 0));
        assert_eq!(stats.transport(Transport::LongPoll).delivered, 1);
        assert_eq!(stats.transport(Transport::Streaming).delivered, 0);
    }

    #[test]
    fn open_connections_are_those_opened_and_not_closed_per_transport() {
        let counters = WebClientCounters::default();
        for _ in 0..3 {
            counters.connection_opened(Transport::Streaming);
        }
        counters.connection_opened(Transport::LongPoll);
        counters.connection_closed(Transport::Streaming, CloseReason::Timeout);
        let mut stats = counters.snapshot(0);
        assert_eq!(stats.transport(Transport::Streaming).open(), 2);
        assert_eq!(stats.transport(Transport::LongPoll).open(), 1);
        let other = stats;
        stats.add(&other);
        assert_eq!(stats.transport(Transport::Streaming).opened, 6);
        assert_eq!(stats.closed(CloseReason::Timeout), 2);
    }
}
