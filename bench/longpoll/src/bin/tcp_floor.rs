//! The floor under long-poll fan-out latency on this machine: the time the
//! kernel alone takes to carry one small chunk to each of N loopback TCP
//! connections, with no HTTP, no JSON and no bus. T threads write the chunk
//! to their share of the sockets (plain blocking writes) while a 2-worker
//! tokio runtime reads every client socket, as the load driver does; the
//! latency of a client is from the first write to its read.
//!
//! `ulimit -n 20000; cargo run --release -p longpoll-bench --bin tcp_floor [N] [T] [rounds]`

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const CHUNK: &[u8] =
    b"40\r\n[{\"global_id\":1,\"message_id\":1,\"channel\":\"/bench\",\"data\":1}]\r\n|\r\n\r\n";

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    let (n, threads, rounds) = (arg(1, 10_000), arg(2, 2), arg(3, 5));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
    let addr = listener.local_addr().expect("the listener's address");
    let mut servers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        // Fails when N exceeds the open-file limit (`ulimit -n`).
        let client = std::net::TcpStream::connect(addr).expect("a connection (raise ulimit -n?)");
        let (server, _) = listener.accept().expect("an accepted connection");
        server.set_nodelay(true).expect("TCP_NODELAY");
        client.set_nonblocking(true).expect("a non-blocking socket");
        servers.push(server);
        clients.push(client);
    }
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let received = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Mutex::new(Instant::now()));
    for client in clients {
        let (arrivals, received) = (Arc::clone(&arrivals), Arc::clone(&received));
        rt.spawn(async move {
            let Ok(mut stream) = tokio::net::TcpStream::from_std(client) else {
                return;
            };
            let mut buf = [0u8; 256];
            while let Ok(read) = stream.read(&mut buf).await {
                if read == 0 {
                    return;
                }
                let now = Instant::now();
                if let Ok(mut a) = arrivals.lock() {
                    a.push(now);
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let shares: Vec<Vec<std::net::TcpStream>> = {
        let per = n.div_ceil(threads);
        let mut shares = Vec::new();
        let mut rest = servers;
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            shares.push(rest);
            rest = tail;
        }
        shares
    };
    let shares: Vec<_> = shares
        .into_iter()
        .map(|s| Arc::new(Mutex::new(s)))
        .collect();
    for round in 1..=rounds {
        std::thread::sleep(Duration::from_millis(300));
        received.store(0, Ordering::Relaxed);
        if let Ok(mut a) = arrivals.lock() {
            a.clear();
        }
        let t0 = Instant::now();
        if let Ok(mut s) = start.lock() {
            *s = t0;
        }
        let writers: Vec<_> = shares
            .iter()
            .map(|share| {
                let share = Arc::clone(share);
                std::thread::spawn(move || {
                    if let Ok(mut sockets) = share.lock() {
                        for socket in sockets.iter_mut() {
                            let _ = socket.write_all(CHUNK);
                        }
                    }
                    t0.elapsed()
                })
            })
            .collect();
        let written: Vec<Duration> = writers.into_iter().filter_map(|w| w.join().ok()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut latencies: Vec<f64> = arrivals
            .lock()
            .map(|a| a.iter().map(|t| (*t - t0).as_secs_f64() * 1000.0).collect())
            .unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let slowest_writer = written.iter().max().copied().unwrap_or_default();
        println!(
            "round {round}: {n} connections, {threads} writer threads: all written after {:.1} ms; received {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            slowest_writer.as_secs_f64() * 1000.0,
            latencies.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}
