//! The Server-Sent Events transport: the client has nothing to say (its
//! bytes are discarded up to a bound, its FIN ends the stream); the
//! keepalive (due by the fan-out's sweep) writes a comment; the close output
//! has no frame of its own (see `stream`).

use super::stream::Stream;
use super::{read_input, BoxFuture, Discard, End, Input, Link, Reaction, Transport};
use crate::fanout::{self, CloseReason, Out};
use crate::http::sse;
use crate::http::writer::Cut;

pub(crate) struct EventStream {
    stream: Stream,
    /// Bytes the client sent (they mean nothing).
    discarded: usize,
}

impl EventStream {
    pub(crate) fn new(stream: Stream) -> Self {
        EventStream {
            stream,
            discarded: 0,
        }
    }
}

impl Transport for EventStream {
    fn counted(&self) -> fanout::Transport {
        fanout::Transport::Sse
    }

    fn open<'a>(&'a mut self, link: &'a mut Link) -> BoxFuture<'a, Result<(), End>> {
        Box::pin(self.stream.open(link))
    }

    fn on_readable<'a>(&'a mut self, link: &'a mut Link) -> Reaction<'a> {
        let mut sink = Discard(&mut self.discarded);
        match read_input(&link.socket, &mut sink) {
            Input::Drained => Reaction::Wait,
            Input::Ended | Input::Failed => Reaction::End(End::Drop(CloseReason::PeerClosed)),
            Input::TooMuch => Reaction::End(End::Drop(CloseReason::UnexpectedInput)),
        }
    }

    fn on_keepalive(&mut self, link: &Link) -> Option<End> {
        link.outbox().push_owned(sse::KEEPALIVE.to_vec());
        self.stream.rearm(link);
        None
    }

    fn killed(&self, reason: CloseReason, cut: Option<Cut>) -> End {
        Stream::killed(reason, cut)
    }

    fn close<'a>(
        &'a mut self,
        link: &'a Link,
        end: End,
        rest: Option<(Out, bool)>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.stream.close(link, end, rest))
    }
}
