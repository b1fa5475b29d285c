//! Live messages written to real sockets by the fan-out threads: a reader
//! that stops reading makes the socket take only part of a message; the
//! rest must follow in order, with the chunk framing intact, once it reads
//! again (COMPAT.md §3.9, §3.10). A reader that never reads is cut by the
//! outbox bounds, a half-closed client is still answered, a client that
//! keeps sending is cut; each close is counted under its reason.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::{Backend, PublishOptions};
use message_bus_core::envelope::Identity;
use message_bus_core::fanout::{CloseReason, QUEUE_BYTES_BOUND};
use message_bus_core::http::endpoint::{WebEndpoint, WebRequest, WebTransport};

/// De-chunks an HTTP/1.1 body; returns the payloads between separators.
fn records(body: &[u8]) -> Vec<String> {
    let mut data = Vec::new();
    let mut rest = body;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_line = std::str::from_utf8(&rest[..line_end]).expect("an ASCII size line");
        let size = usize::from_str_radix(size_line, 16).expect("a hexadecimal chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        assert_eq!(
            &rest[start + size..start + size + 2],
            b"\r\n",
            "chunk framing"
        );
        data.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    String::from_utf8(data)
        .expect("UTF-8 payloads")
        .split("\r\n|\r\n")
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

/// A web endpoint on a memory backend, on its own runtime.
struct Bus {
    rt: tokio::runtime::Runtime,
    backend: Arc<dyn Backend>,
    endpoint: WebEndpoint,
}

impl Bus {
    fn new() -> Bus {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let endpoint = {
            let _guard = rt.enter();
            WebEndpoint::new(Arc::clone(&backend)).expect("the fan-out threads")
        };
        Bus {
            rt,
            backend,
            endpoint,
        }
    }

    /// Parks a streaming long poll of `/big` from now, interval `timeout`;
    /// returns the client's end and what it read, once the head and the
    /// empty first chunk arrived (every message published next is live).
    fn park(&self, client_id: &str, timeout: Duration) -> (std::net::TcpStream, Vec<u8>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("an address"))
            .expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let request = WebRequest {
            identity: Identity {
                client_id: client_id.into(),
                ..Identity::default()
            },
            seq: 1,
            subscriptions: vec![("/big".into(), None)],
            headers: Vec::new(),
            transport: WebTransport::LongPoll {
                chunked: true,
                timeout,
            },
        };
        {
            let _guard = self.rt.enter();
            self.endpoint.open(server.into(), request).expect("parked");
        }
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a read timeout");
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !response.ends_with(b"[]\r\n|\r\n\r\n") {
            let n = client.read(&mut buf).expect("the response head");
            assert!(n > 0, "closed before the head");
            response.extend_from_slice(&buf[..n]);
        }
        (client, response)
    }

    /// Publishes message `n` on `/big`, with `fill` bytes of padding.
    fn publish(&self, n: usize, fill: usize) {
        let filler = "x".repeat(fill);
        let data = format!(
            r#"{{"data":{{"n":{n},"fill":"{filler}"}},"user_ids":null,"group_ids":null,"client_ids":null}}"#
        );
        self.rt
            .block_on(
                self.backend
                    .publish("/big", &data, &PublishOptions::default()),
            )
            .expect("published");
    }

    /// Waits (bounded) until `reason` was counted `count` times.
    fn wait_for_close(&self, reason: CloseReason, count: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.endpoint.stats().closed(reason) >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// The message numbers of a streamed response (empty payloads skipped).
fn message_numbers(response: &[u8]) -> Vec<i64> {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    records(&response[head_end + 4..])
        .iter()
        .filter(|p| p.as_str() != "[]")
        .map(|p| {
            let value: serde_json::Value = serde_json::from_str(p).expect("a JSON payload");
            value[0]["data"]["n"].as_i64().expect("a message number")
        })
        .collect()
}

#[test]
fn a_stalled_reader_gets_every_message_in_order_once_it_reads_again() {
    let bus = Bus::new();
    let (mut client, mut response) = bus.park("reader", Duration::from_secs(3));
    // 14 messages of 64 KiB while the client reads nothing: far more than
    // the (capped) socket buffers hold, less than the outbox bounds.
    let count = 14;
    for n in 1..=count {
        bus.publish(n, 64 * 1024);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Reads everything until the server closes at the end of the interval.
    client
        .read_to_end(&mut response)
        .expect("the whole response");
    assert_eq!(
        message_numbers(&response),
        (1..=count as i64).collect::<Vec<_>>()
    );
    assert!(bus.wait_for_close(CloseReason::Timeout, 1));
    assert_eq!(bus.endpoint.stats().slow_closed(), 0);
}

#[test]
fn a_reader_that_never_reads_is_cut_by_the_outbox_bounds() {
    let bus = Bus::new();
    let _client = bus.park("never", Duration::from_secs(30));
    // 200 messages of 64 KiB (12.5 MiB): under the count bound, so only the
    // bytes bound can cut it, long before the write timeout would.
    const { assert!(200 * 64 * 1024 > 4 * QUEUE_BYTES_BOUND) };
    for n in 1..=200 {
        bus.publish(n, 64 * 1024);
    }
    assert!(bus.wait_for_close(CloseReason::SlowConsumer, 1));
    assert_eq!(bus.endpoint.stats().parked, 0);
    assert_eq!(bus.endpoint.stats().closed(CloseReason::WriteTimeout), 0);
}

#[test]
fn a_client_that_half_closed_still_gets_its_messages() {
    let bus = Bus::new();
    let (mut client, mut response) = bus.park("half", Duration::from_secs(2));
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("half-closed");
    std::thread::sleep(Duration::from_millis(100));
    bus.publish(1, 10);
    client
        .read_to_end(&mut response)
        .expect("the whole response");
    assert_eq!(message_numbers(&response), vec![1]);
    assert!(response.ends_with(b"7\r\n[]\r\n|\r\n\r\n0\r\n\r\n"));
    assert!(bus.wait_for_close(CloseReason::Timeout, 1));
}

#[test]
fn a_client_that_keeps_sending_is_cut_after_a_small_bound() {
    let bus = Bus::new();
    let (mut client, _) = bus.park("chatty", Duration::from_secs(30));
    // Were the server to stop reading without closing, the writes would block.
    client
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("a write timeout");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    // Cut once the server read the bound: a reset makes a write fail.
    while sent < 64 * 1024 * 1024 {
        match client.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(sent < 64 * 1024 * 1024, "the server kept reading");
    assert!(bus.wait_for_close(CloseReason::UnexpectedInput, 1));
    assert_eq!(bus.endpoint.stats().parked, 0);
}
