//! Live messages written to real sockets by the fan-out threads: a reader
//! that stops reading makes the socket take only part of a message; the
//! rest must follow in order, with the chunk framing intact, once it reads
//! again (COMPAT.md §3.9, §3.10).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::{Backend, PublishOptions};
use message_bus_core::envelope::Identity;
use message_bus_core::fanout::Fanout;
use message_bus_core::gate::Gate;
use message_bus_core::http::connection::{park, Session, View};

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

#[test]
fn a_stalled_reader_gets_every_message_in_order_once_it_reads_again() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let fanout = {
        let _guard = rt.enter();
        Fanout::new(Gate::new()).expect("the fan-out threads")
    };
    backend.hub().add_sink(Arc::clone(&fanout) as _);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("an address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let who = Identity {
        client_id: "reader".into(),
        ..Identity::default()
    };
    let session = Session {
        seq: 1,
        identity: who,
        subscriptions: vec![("/big".into(), None)],
        view: View {
            chunked: true,
            head_prefix: Arc::from(&b"HTTP/1.1 200 OK\r\n"[..]),
            timeout: Duration::from_secs(3),
        },
    };
    {
        let _guard = rt.enter();
        park(
            server.into(),
            session,
            Arc::clone(&fanout),
            Arc::clone(&backend),
        )
        .expect("parked");
    }
    // The head and the empty first chunk: the backlog was answered ("from
    // now"), so every message published next is live.
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
    // 120 messages of 64 KiB while the client reads nothing: far more than
    // the socket buffers hold, fewer than the 256 a connection may queue.
    let filler = "x".repeat(64 * 1024);
    let count = 120;
    for n in 1..=count {
        let data = format!(
            r#"{{"data":{{"n":{n},"fill":"{filler}"}},"user_ids":null,"group_ids":null,"client_ids":null}}"#
        );
        rt.block_on(backend.publish("/big", &data, &PublishOptions::default()))
            .expect("published");
    }
    std::thread::sleep(Duration::from_millis(200));
    // Reads everything until the server closes at the end of the interval.
    client
        .read_to_end(&mut response)
        .expect("the whole response");
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let payloads = records(&response[head_end + 4..]);
    let ids: Vec<i64> = payloads
        .iter()
        .filter(|p| p.as_str() != "[]")
        .map(|p| {
            let value: serde_json::Value = serde_json::from_str(p).expect("a JSON payload");
            value[0]["data"]["n"].as_i64().expect("a message number")
        })
        .collect();
    assert_eq!(ids, (1..=count).collect::<Vec<_>>());
    assert_eq!(fanout.stats().slow_closed, 0);
}
