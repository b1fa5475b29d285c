//! The WebSocket transport: input is the client's frames (RFC 6455,
//! `ws_codec`): pings are answered, a close is answered with a close
//! frame, text messages are subscribe / unsubscribe commands
//! (`ws_command`); the keepalive (due by the fan-out's sweep) pings every
//! interval and closes a peer that did not answer the previous ping; the
//! close output is a close frame (see `stream`).

use std::borrow::Cow;

use super::stream::{policy, Stream};
use super::{read_input, BoxFuture, End, Input, Link, Reaction, Sink, Transport};
use crate::fanout::{self, CloseReason, Out};
use crate::http::writer::Cut;
use crate::http::ws_codec::{self as ws, Decoder, Event};
use crate::http::ws_command;

pub(crate) struct WebSocket {
    stream: Stream,
    decoder: Decoder,
    /// A ping went out and no frame came back since.
    awaiting_pong: bool,
}

impl Sink for Decoder {
    fn room(&self) -> usize {
        Decoder::room(self)
    }

    fn take(&mut self, bytes: &[u8]) -> bool {
        self.feed(bytes);
        true
    }
}

impl WebSocket {
    pub(crate) fn new(stream: Stream) -> Self {
        WebSocket {
            stream,
            decoder: Decoder::default(),
            awaiting_pong: false,
        }
    }

    /// Reads what the socket has into the decoder and acts on the frames
    /// it completes.
    async fn on_frames(&mut self, link: &mut Link) -> Option<End> {
        let input = read_input(&link.socket, &mut self.decoder);
        loop {
            match self.decoder.next_event() {
                Ok(None) => break,
                Ok(Some(event)) => {
                    if let Some(end) = self.on_event(link, event).await {
                        return Some(end);
                    }
                }
                Err(violation) => {
                    return Some(End::CloseWith(
                        CloseReason::ProtocolError,
                        violation.code,
                        violation.reason,
                    ))
                }
            }
        }
        match input {
            Input::Drained => None,
            Input::Ended | Input::Failed => Some(End::Drop(CloseReason::PeerClosed)),
            Input::TooMuch => Some(End::Drop(CloseReason::UnexpectedInput)),
        }
    }

    async fn on_event(&mut self, link: &mut Link, event: Event) -> Option<End> {
        // Any frame shows the peer is alive.
        self.awaiting_pong = false;
        match event {
            Event::Pong => None,
            Event::Ping(data) => {
                link.outbox().push_owned(ws::pong_frame(&data));
                None
            }
            Event::Close(code) => Some(End::CloseWith(
                CloseReason::ClientClosed,
                code.unwrap_or(ws::NORMAL),
                Cow::Borrowed(""),
            )),
            // Boxed: what a subscription change takes (a backlog read) is
            // not kept by the frames' future while it reads a pong.
            Event::Text(text) => match ws_command::parse(&text) {
                Ok(command) => Box::pin(self.stream.resubscribe(
                    link,
                    command.subscribe,
                    command.unsubscribe,
                ))
                .await
                .err(),
                Err(reason) => Some(policy(reason)),
            },
        }
    }
}

impl Transport for WebSocket {
    fn counted(&self) -> fanout::Transport {
        fanout::Transport::WebSocket
    }

    fn open<'a>(&'a mut self, link: &'a mut Link) -> BoxFuture<'a, Result<(), End>> {
        Box::pin(self.stream.open(link))
    }

    fn on_readable<'a>(&'a mut self, link: &'a mut Link) -> Reaction<'a> {
        Reaction::Work(Box::pin(self.on_frames(link)))
    }

    /// A ping, or the close of a peer that did not answer the last one.
    fn on_keepalive(&mut self, link: &Link) -> Option<End> {
        if self.awaiting_pong {
            return Some(End::CloseWith(
                CloseReason::PingTimeout,
                ws::POLICY,
                Cow::Borrowed("no pong: the peer stopped answering pings"),
            ));
        }
        self.awaiting_pong = true;
        link.outbox().push_owned(ws::ping_frame());
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
