//! The native memory of parked connections, without Ruby: parks N loopback
//! connections (two halves) on the memory backend and reports the heap bytes
//! and allocations each one keeps (counted by a wrapping allocator) and the
//! RSS growth per connection.
//!
//! `ulimit -n 20000; cargo run --release -p longpoll-bench --bin park_memory [N] [--websocket]`
//!
//! `--websocket`: the connections are idle WebSockets instead (after the
//! `101`, each client subscribes to one channel with a masked text frame and
//! gets its backlog answer), as `bench/longpoll --websocket` holds them.

use std::sync::Arc;
use std::time::Duration;

use message_bus_core::backend::memory::MemoryBackend;
use message_bus_core::backend::Backend;
use message_bus_core::envelope::Identity;
use message_bus_core::http::endpoint::{WebEndpoint, WebRequest, WebTransport};

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes allocated and not yet freed.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BY_SIZE: [AtomicUsize; 4097] = [const { AtomicUsize::new(0) }; 4097];

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        BY_SIZE[layout.size().min(4096)].fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        COUNT.fetch_sub(1, Ordering::Relaxed);
        BY_SIZE[layout.size().min(4096)].fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A masked client text frame (payload under 126 bytes).
fn client_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads the client's side until the backlog answer of its subscription
/// (the `/__status` frame) arrived, up to a deadline.
fn await_backlog(client: &mut std::net::TcpStream) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while std::time::Instant::now() < deadline {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if seen.windows(8).any(|w| w == b"__status") {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let websocket = args.iter().any(|a| a == "--websocket");
    let n: usize = args
        .iter()
        .find_map(|v| v.parse().ok())
        .unwrap_or(8000)
        .max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
    let addr = listener.local_addr().expect("the listener's address");
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let endpoint = {
        let _g = rt.enter();
        WebEndpoint::new(Arc::clone(&backend)).expect("the fan-out threads")
    };
    // Client sockets first, so their (tiny) userland cost is in the baseline.
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..n {
        // Fails when N exceeds the open-file limit (`ulimit -n`).
        clients.push(std::net::TcpStream::connect(addr).expect("a connection (raise ulimit -n?)"));
        servers.push(listener.accept().expect("an accepted connection").0);
    }
    let mut rss = vec![rss_kib()];
    let mut sizes = Vec::new();
    let mut live = vec![(LIVE.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed))];
    for round in 1..=2 {
        let half: Vec<_> = servers.drain(..n / 2).collect();
        for (i, s) in half.into_iter().enumerate() {
            let fd = std::os::fd::OwnedFd::from(s);
            let who = Identity {
                client_id: format!("client-{}-{i}", rss.len()),
                ..Identity::default()
            };
            let transport = if websocket {
                WebTransport::WebSocket {
                    accept: "bench".into(),
                    keepalive: Duration::from_secs(25),
                    max_channels: 1000,
                }
            } else {
                WebTransport::LongPoll {
                    chunked: true,
                    timeout: Duration::from_secs(60),
                }
            };
            let request = WebRequest {
                identity: who,
                seq: 1,
                // A WebSocket subscribes with its first frame, below.
                subscriptions: if websocket {
                    Vec::new()
                } else {
                    vec![("/bench".into(), Some(-1))]
                },
                // Parked connections share the head of equal headers.
                headers: Vec::new(),
                transport,
            };
            let _g = rt.enter();
            endpoint.open(fd, request).expect("an open connection");
        }
        if websocket {
            use std::io::Write;
            let frame = client_text_frame(br#"{"subscribe":{"/bench":-1}}"#);
            let from = (round - 1) * (n / 2);
            for client in &mut clients[from..from + n / 2] {
                client.write_all(&frame).expect("a subscribe frame written");
            }
            for client in &mut clients[from..from + n / 2] {
                await_backlog(client);
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while endpoint.parked() < n / 2 * round && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        rss.push(rss_kib());
        live.push((LIVE.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed)));
        sizes.push(
            BY_SIZE
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
        );
    }
    for (size, (a, b)) in sizes[0].iter().zip(&sizes[1]).enumerate() {
        if b > a && b - a >= n / 4 {
            println!(
                "allocations of {size} B: {:.2} per connection",
                (b - a) as f64 / (n / 2) as f64
            );
        }
    }
    println!(
        "live heap per connection: {} B in {} allocations",
        (live[2].0 - live[1].0) / (n / 2),
        (live[2].1 - live[1].1) as f64 / (n / 2) as f64
    );
    println!(
        "RSS {rss:?} KiB; per connection: first half {} B, second half {} B",
        (rss[1] - rss[0]) * 1024 / (n as u64 / 2),
        (rss[2] - rss[1]) * 1024 / (n as u64 / 2)
    );
    drop(servers);
    drop(clients);
}
