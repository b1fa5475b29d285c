//! Long-poll load driver: N web clients on 127.0.0.1 long-poll one channel
//! (streaming or not), reconnecting with their last id after every response,
//! while the driver publishes M timestamped messages through the test app's
//! `/publish` route. Reports publish→delivery latency, lost and duplicated
//! messages, and the server's RSS. Bounded: it stops after the last message
//! arrived everywhere or after `--deadline` seconds.
//!
//! longpoll --port P --clients N --messages M [--interval-ms I] [--no-chunk]
//!          [--server-pid PID] [--deadline S] [--callback-interval-ms C]
//!          [--publishers K] [--duration S] [--external-publishers]
//!          [--slow-readers R] [--fill B] [--websocket] [--sources A]
//!
//! `--sources A`: client i connects from 127.0.0.(1 + i mod A), so that more
//! clients than one source address has ephemeral ports can connect.
//!
//! `--websocket`: each client holds a WebSocket
//! (`/message-bus/ws<N>/ws`) instead of polling: it subscribes with its
//! last id on open, answers pings, and reconnects with its last id if the
//! connection ends.
//!
//! `--callback-interval-ms C`: after a poll that brought nothing, a client
//! waits until C ms after that poll started, as the browser client does.
//! With `--server-pid` the server's RSS is read before the clients connect,
//! after the first half of them waits and after all wait.
//!
//! Slow readers (`--slow-readers R`, issue 12 N1): R more clients send a
//! streaming poll and never read; `--fill B` pads every message with B
//! bytes. The driver samples the server's RSS, the kernel's TCP memory
//! (`/proc/net/sockstat`) and the Send-Q of the server's sockets while it
//! runs, and reports their peaks, the server's peak RSS (VmHWM) and its
//! close counters (`/diagnostics`). Latency figures are the fast clients'.
//!
//! Soak mode (`bench/soak`): `--duration S` makes K publishers (`--publishers`,
//! default 1) each publish `S * 1000 / I` messages I ms apart, message number
//! `p + K * i`; with `--external-publishers` the driver publishes nothing
//! (other processes do, same numbering) and waits S seconds after printing
//! `READY`. The server's RSS and open fds are reported at start and end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const CHANNEL: &str = "/bench";

struct Options {
    port: u16,
    clients: usize,
    messages: usize,
    interval: Duration,
    chunked: bool,
    server_pid: Option<u32>,
    deadline: Duration,
    publishers: usize,
    duration: Option<Duration>,
    external: bool,
    /// Like the browser client's `callbackInterval`: after a poll that
    /// brought nothing, the next one starts this long after it (0: at once).
    callback_interval: Duration,
    /// Clients that send a streaming poll and never read.
    slow_readers: usize,
    /// Padding bytes in every message.
    fill: usize,
    /// Clients hold WebSockets instead of polling.
    websocket: bool,
    /// Clients connect from this many loopback addresses, 127.0.0.1 up
    /// (one source address runs out of ephemeral ports near 28,000).
    sources: u8,
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        value(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| format!("{name} needs a number, got {v}"))
        })
    };
    Ok(Options {
        port: u16::try_from(number("--port", 0)?).map_err(|_| "--port out of range".to_string())?,
        clients: number("--clients", 1000)? as usize,
        messages: number("--messages", 20)? as usize,
        interval: Duration::from_millis(number("--interval-ms", 250)?),
        chunked: !args.iter().any(|a| a == "--no-chunk"),
        server_pid: value("--server-pid").and_then(|v| v.parse().ok()),
        deadline: Duration::from_secs(number("--deadline", 120)?),
        callback_interval: Duration::from_millis(number("--callback-interval-ms", 0)?),
        publishers: (number("--publishers", 1)? as usize).max(1),
        duration: value("--duration")
            .map(|v| v.parse().map(Duration::from_secs))
            .transpose()
            .map_err(|_| "--duration needs a number of seconds".to_string())?,
        external: args.iter().any(|a| a == "--external-publishers"),
        slow_readers: number("--slow-readers", 0)? as usize,
        fill: number("--fill", 0)? as usize,
        websocket: args.iter().any(|a| a == "--websocket"),
        sources: u8::try_from(number("--sources", 1)?.clamp(1, 250))
            .map_err(|_| "--sources out of range".to_string())?,
    })
}

/// A connection to the server from the client's source address.
async fn connect(opts: &Options, client: usize) -> std::io::Result<TcpStream> {
    if opts.sources == 1 {
        return TcpStream::connect(("127.0.0.1", opts.port)).await;
    }
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (client % opts.sources as usize) as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket
        .connect((std::net::Ipv4Addr::LOCALHOST, opts.port).into())
        .await
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's established connections on `port`, counted by the client's
/// address (from /proc/net/tcp: shows `--sources` in use, as the server sees it).
fn connections_by_source(port: u16) -> String {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return "unknown".into();
    };
    let mut by_source = std::collections::BTreeMap::<std::net::Ipv4Addr, usize>::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(&"01")) =
            (fields.get(1), fields.get(2), fields.get(3))
        else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        let remote_ip = remote
            .split(':')
            .next()
            .and_then(|ip| u32::from_str_radix(ip, 16).ok());
        if let (Some(local_port), Some(ip)) = (local_port, remote_ip) {
            if local_port == port {
                // /proc/net/tcp prints the address in host byte order (little-endian here).
                *by_source
                    .entry(std::net::Ipv4Addr::from(ip.swap_bytes()))
                    .or_default() += 1;
            }
        }
    }
    let parts: Vec<String> = by_source
        .iter()
        .map(|(ip, n)| format!("{ip} {n}"))
        .collect();
    format!("{} sources: {}", by_source.len(), parts.join(", "))
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn server_usage(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!(
            "RSS {} KiB, {} open fds",
            rss_kib(pid).map_or("?".into(), |v| v.to_string()),
            fd_count(pid).map_or("?".into(), |v| v.to_string())
        ),
        None => "no --server-pid".into(),
    }
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
    ready: AtomicUsize,
    latencies: std::sync::Mutex<Vec<u64>>,
    /// Per message number, the latencies (MB_BENCH_BY_MESSAGE=1 reports them).
    by_message: std::sync::Mutex<Vec<Vec<u64>>>,
    /// Set at the drain deadline: clients stop after their current poll.
    stopping: std::sync::atomic::AtomicBool,
    /// Per message number, how many clients never received it.
    missing: std::sync::Mutex<Vec<u64>>,
}

/// What one client has seen: message numbers received, last message id.
struct ClientState {
    last_id: i64,
    seen: Vec<bool>,
    count: usize,
}

fn request(client: usize, last_id: i64, chunked: bool, port: u16) -> Vec<u8> {
    let body = format!("%2Fbench={last_id}");
    let dont_chunk = if chunked { "" } else { "Dont-Chunk: true\r\n" };
    format!(
        "POST /message-bus/bench{client}/poll HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{dont_chunk}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One entry of an answer or frame, as the driver reads it (typed: the
/// driver's parsing competes with the server for the same 2 cores).
#[derive(serde::Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(default)]
    message_id: i64,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The data of the bench's messages (`n`, `t`) and of `/__status`.
#[derive(serde::Deserialize, Default)]
struct Data {
    n: Option<u64>,
    t: Option<u64>,
    #[serde(rename = "/bench")]
    bench: Option<i64>,
}

fn data_of(entry: &Entry) -> Data {
    entry
        .data
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

/// Counts the bench's messages in one answer or frame, read at `arrived`
/// (microseconds: taken when its bytes were read, as `tcp_floor` takes its
/// arrivals, so that the driver's own parsing is not counted as latency);
/// false when it is not a JSON array of entries.
async fn handle_payload(json: &[u8], arrived: u64, state: &mut ClientState, stats: &Stats) -> bool {
    let Ok(messages) = serde_json::from_slice::<Vec<Entry>>(json) else {
        return false;
    };
    for m in &messages {
        if m.channel == "/__status" {
            if let Some(id) = data_of(m).bench {
                state.last_id = id;
            }
            continue;
        }
        if m.channel != CHANNEL {
            continue;
        }
        state.last_id = state.last_id.max(m.message_id);
        let data = data_of(m);
        let n = data.n.unwrap_or(u64::MAX) as usize;
        let sent = data.t.unwrap_or(arrived);
        if n < state.seen.len() {
            if state.seen[n] {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                state.seen[n] = true;
                state.count += 1;
                stats.received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut latencies) = stats.latencies.lock() {
                    latencies.push(arrived.saturating_sub(sent));
                }
                if let Ok(mut by) = stats.by_message.lock() {
                    if by.len() <= n {
                        by.resize(n + 1, Vec::new());
                    }
                    by[n].push(arrived.saturating_sub(sent));
                }
            }
        }
    }
    true
}

/// The content-length header of a response head, if any.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One poll: returns when the server closes the response.
/// `permit` (the ramp-up slot) is released once the response head arrived.
async fn poll_once(
    opts: &Options,
    client: usize,
    state: &mut ClientState,
    stats: &Stats,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> std::io::Result<()> {
    let mut stream = connect(opts, client).await?;
    stream
        .write_all(&request(client, state.last_id, opts.chunked, opts.port))
        .await?;
    // A non-streamed poll gets no head before its answer: the request sent
    // ends its ramp-up slot (main then waits for the server's parked count).
    if !opts.chunked && permit.take().is_some() {
        stats.ready.fetch_add(1, Ordering::Relaxed);
    }
    let mut buf = Vec::with_capacity(4096);
    let mut scratch = vec![0u8; 8192];
    let mut body_start = None;
    // A streaming request may still get a plain answer (the server's
    // max_active_clients reached, or a backlog without chunking).
    let mut plain = !opts.chunked;
    let mut records = 0usize; // de-chunked payload bytes consumed
    let mut dechunked: Vec<u8> = Vec::new();
    let mut chunk_pos = 0usize;
    let mut read_at = 0;
    loop {
        let n = stream.read(&mut scratch).await?;
        if n == 0 {
            break;
        }
        read_at = now_micros();
        buf.extend_from_slice(&scratch[..n]);
        if body_start.is_none() {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                body_start = Some(end + 4);
                if content_length(&buf[..end + 4]).is_some() {
                    plain = true;
                }
                chunk_pos = end + 4;
                if permit.take().is_some() {
                    stats.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // A non-streamed answer may come from Puma on a kept-alive
        // connection: it ends at its content-length, not at close.
        if let (true, Some(start)) = (plain, body_start) {
            if content_length(&buf[..start]).is_some_and(|len| buf.len() >= start + len) {
                break;
            }
        }
        if !plain && body_start.is_some() {
            // De-chunk what is complete, then split records on the separator.
            while let Some(line_end) = find(&buf[chunk_pos..], b"\r\n") {
                let size_text =
                    std::str::from_utf8(&buf[chunk_pos..chunk_pos + line_end]).unwrap_or("0");
                let size = usize::from_str_radix(size_text.trim(), 16).unwrap_or(0);
                let data_start = chunk_pos + line_end + 2;
                if size == 0 || buf.len() < data_start + size + 2 {
                    break;
                }
                dechunked.extend_from_slice(&buf[data_start..data_start + size]);
                chunk_pos = data_start + size + 2;
            }
            while let Some(sep) = find(&dechunked[records..], b"\r\n|\r\n") {
                let json = dechunked[records..records + sep].to_vec();
                if !handle_payload(&json, read_at, state, stats).await {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                records += sep + 5;
            }
        }
    }
    if plain {
        if let Some(start) = body_start {
            if !handle_payload(&buf[start..], read_at, state, stats).await {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// A masked client frame (the mask is fixed: the bench is not a browser).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One WebSocket connection: returns when the server closes it.
/// `permit` (the ramp-up slot) is released once the first frame arrived.
async fn websocket_once(
    opts: &Options,
    client: usize,
    state: &mut ClientState,
    stats: &Stats,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> std::io::Result<()> {
    let mut stream = connect(opts, client).await?;
    let upgrade = format!(
        "GET /message-bus/ws{client}/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        opts.port
    );
    stream.write_all(upgrade.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut scratch = vec![0u8; 8192];
    let mut upgraded = false;
    loop {
        let n = stream.read(&mut scratch).await?;
        if n == 0 {
            return Ok(());
        }
        let read_at = now_micros();
        buf.extend_from_slice(&scratch[..n]);
        if !upgraded {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("upgrade refused"));
            }
            buf.drain(..end + 4);
            upgraded = true;
            let subscribe = format!(r#"{{"subscribe":{{"{CHANNEL}":{}}}}}"#, state.last_id);
            stream
                .write_all(&client_frame(1, subscribe.as_bytes()))
                .await?;
        }
        // Whole frames at the start of the buffer.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (head, len) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => break,
                n => (2, n as usize),
            };
            if buf.len() < head + len {
                break;
            }
            let opcode = buf[0] & 0x0f;
            let payload: Vec<u8> = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            match opcode {
                1 => {
                    if permit.take().is_some() {
                        stats.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    if !handle_payload(&payload, read_at, state, stats).await {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // Done: held until every client is (a long poll's FIN
                    // costs the server nothing until its timeout, a WebSocket's
                    // ends the connection: thousands of those at once would
                    // load the server while others still wait for the last
                    // message), then dropped.
                    if state.count >= opts.messages || stats.stopping.load(Ordering::Relaxed) {
                        let expected = (opts.clients * opts.messages) as u64;
                        while stats.received.load(Ordering::Relaxed) < expected
                            && !stats.stopping.load(Ordering::Relaxed)
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        return Ok(());
                    }
                }
                9 => stream.write_all(&client_frame(10, &payload)).await?,
                8 => return Ok(()),
                _ => {}
            }
        }
    }
}

async fn run_client(opts: Arc<Options>, client: usize, stats: Arc<Stats>, gate: Arc<Semaphore>) {
    let mut state = ClientState {
        last_id: -1,
        seen: vec![false; opts.messages],
        count: 0,
    };
    // Ramp up: only a few hundred connects in flight at once.
    let mut permit = Arc::clone(&gate).acquire_owned().await.ok();
    while state.count < opts.messages && !stats.stopping.load(Ordering::Relaxed) {
        let started = Instant::now();
        let before = state.count;
        let result = if opts.websocket {
            websocket_once(&opts, client, &mut state, &stats, &mut permit).await
        } else {
            poll_once(&opts, client, &mut state, &stats, &mut permit).await
        };
        if result.is_err() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else if !opts.callback_interval.is_zero() {
            // The browser client's schedule (COMPAT §7.4): 100 ms after data,
            // else callbackInterval after the previous start, at least 100 ms.
            let floor = Duration::from_millis(100);
            let wait = if state.count > before {
                floor
            } else {
                opts.callback_interval
                    .saturating_sub(started.elapsed())
                    .max(floor)
            };
            tokio::time::sleep(wait).await;
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    if state.count < opts.messages {
        let mut missing = stats.missing.lock().unwrap_or_else(|e| e.into_inner());
        missing.resize(opts.messages, 0);
        for (n, seen) in state.seen.iter().enumerate() {
            if !seen {
                missing[n] += 1;
            }
        }
    }
}

/// The response to a GET of the test app.
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut text = Vec::new();
    stream.read_to_end(&mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Clients parked on the server, from the test app's `/diagnostics`.
async fn parked(port: u16) -> std::io::Result<usize> {
    let text = get(port, "/diagnostics").await?;
    let count = text
        .split("\"parked\":")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0);
    Ok(count)
}

async fn publish(port: u16, n: usize, fill: &str) -> std::io::Result<()> {
    let body = format!(
        r#"{{"channel":"{CHANNEL}","data":{{"n":{n},"t":{},"fill":"{fill}"}}}}"#,
        now_micros()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).await?;
    Ok(())
}

/// Opens the slow readers: each sends a streaming poll and never reads.
/// Returns once the server has them all parked (or at the deadline).
async fn slow_readers(opts: &Options, deadline: Instant) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(opts.slow_readers);
    for n in 0..opts.slow_readers {
        let body = "%2Fbench=";
        let request = format!(
            "POST /message-bus/slow{n}/poll HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            opts.port,
            body.len()
        );
        match TcpStream::connect(("127.0.0.1", opts.port)).await {
            Ok(mut stream) => {
                if stream.write_all(request.as_bytes()).await.is_ok() {
                    sockets.push(stream);
                }
            }
            Err(e) => eprintln!("slow reader {n}: {e}"),
        }
    }
    while Instant::now() < deadline {
        let waiting = tokio::time::timeout(Duration::from_secs(5), parked(opts.port)).await;
        if matches!(waiting, Ok(Ok(n)) if n >= sockets.len()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} slow readers parked (they never read); server {}",
        sockets.len(),
        server_usage(opts.server_pid)
    );
    sockets
}

/// Highest values seen by `sample_server`.
#[derive(Default)]
struct Peaks {
    rss_kib: AtomicU64,
    tcp_mem_pages: AtomicU64,
    send_queue: AtomicU64,
    /// Server sockets with bytes in their Send-Q, at the peak of `send_queue`.
    backed_up: AtomicU64,
}

impl Peaks {
    async fn report(&self, pid: Option<u32>, port: u16) {
        let peak_rss = pid.and_then(|p| status_kib(p, "VmHWM:"));
        println!(
            "peaks while running: server RSS {} KiB (VmHWM {} KiB), kernel TCP memory {} KiB, \
             server Send-Q {} KiB over {} sockets",
            self.rss_kib.load(Ordering::Relaxed),
            peak_rss.map_or("?".into(), |v| v.to_string()),
            self.tcp_mem_pages.load(Ordering::Relaxed) * 4,
            self.send_queue.load(Ordering::Relaxed) / 1024,
            self.backed_up.load(Ordering::Relaxed)
        );
        if let Ok(Ok(text)) =
            tokio::time::timeout(Duration::from_secs(10), get(port, "/diagnostics")).await
        {
            let web = text
                .find("\"web_clients\":")
                .map_or(text.as_str(), |i| &text[i..]);
            println!("server diagnostics: {}", web.trim_end_matches('}'));
        }
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pages of TCP memory the kernel has allocated (all sockets of the host).
fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

/// Total Send-Q of the sockets whose local port is `port`, and how many
/// have one.
fn send_queues(port: u16) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    let (mut total, mut sockets) = (0, 0);
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 4 && fields[1].ends_with(&local) {
            let queued = fields[4]
                .split(':')
                .next()
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            total += queued;
            sockets += u64::from(queued > 0);
        }
    }
    Some((total, sockets))
}

/// Samples the server every 100 ms until the process ends.
fn sample_server(port: u16, pid: Option<u32>) -> Arc<Peaks> {
    let peaks = Arc::new(Peaks::default());
    let samples = Arc::clone(&peaks);
    tokio::spawn(async move {
        loop {
            if let Some(rss) = pid.and_then(rss_kib) {
                samples.rss_kib.fetch_max(rss, Ordering::Relaxed);
            }
            if let Some(pages) = tcp_mem_pages() {
                samples.tcp_mem_pages.fetch_max(pages, Ordering::Relaxed);
            }
            if let Some((queued, sockets)) = send_queues(port) {
                if queued > samples.send_queue.fetch_max(queued, Ordering::Relaxed) {
                    samples.backed_up.store(sockets, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    peaks
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let opts = match options() {
        Ok(mut o) if o.port != 0 => {
            if let Some(d) = o.duration {
                let per = (d.as_millis() / o.interval.as_millis().max(1)) as usize;
                o.messages = per * o.publishers;
            }
            Arc::new(o)
        }
        Ok(_) => return eprintln!("usage: longpoll --port P [--clients N] [--messages M] [--interval-ms I] [--no-chunk] [--server-pid PID] [--deadline S] [--callback-interval-ms C] [--publishers K] [--duration S] [--external-publishers] [--slow-readers R] [--fill B] [--websocket] (see the source's header)"),
        Err(e) => return eprintln!("{e}"),
    };
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let connect_deadline = started + opts.deadline;
    let rss_before = opts.server_pid.and_then(rss_kib);
    let (_slow, peaks) = if opts.slow_readers > 0 {
        let slow = slow_readers(&opts, connect_deadline).await;
        (slow, Some(sample_server(opts.port, opts.server_pid)))
    } else {
        (Vec::new(), None)
    };
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(opts.clients);
    // Two halves, with the server's RSS between them: the second half's
    // growth is the cost of one more waiting client, without the one-time
    // growth of a fresh server (Ruby heap, allocator arenas).
    let half = opts.clients / 2;
    let mut rss_half = None;
    for (from, to) in [(0, half), (half, opts.clients)] {
        for client in from..to {
            tasks.push(tokio::spawn(run_client(
                Arc::clone(&opts),
                client,
                Arc::clone(&stats),
                Arc::clone(&gate),
            )));
        }
        // Wait until these clients have their first response head (or the deadline).
        while stats.ready.load(Ordering::Relaxed) < to && Instant::now() < connect_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to == half && opts.chunked {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_half = opts.server_pid.and_then(rss_kib);
        }
    }
    if !opts.chunked {
        while Instant::now() < connect_deadline {
            let waiting = tokio::time::timeout(Duration::from_secs(5), parked(opts.port)).await;
            if matches!(waiting, Ok(Ok(n)) if n >= opts.clients) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let connected_after = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = opts.server_pid.and_then(rss_kib);
    let usage_start = server_usage(opts.server_pid);
    println!(
        "READY: {} clients connected after {:.1} s; server {usage_start}",
        stats.ready.load(Ordering::Relaxed),
        connected_after.as_secs_f64()
    );
    println!(
        "server's connections by client address: {}",
        connections_by_source(opts.port)
    );
    let publish_failures = Arc::new(AtomicU64::new(0));
    if opts.external {
        tokio::time::sleep(opts.duration.unwrap_or_default()).await;
    } else {
        let k = opts.publishers;
        let per = opts.messages / k;
        let publishers: Vec<_> = (0..k)
            .map(|p| {
                let opts = Arc::clone(&opts);
                let failures = Arc::clone(&publish_failures);
                tokio::spawn(async move {
                    for i in 0..per {
                        let n = p + k * i;
                        let fill = "x".repeat(opts.fill);
                        match tokio::time::timeout(
                            Duration::from_secs(10),
                            publish(opts.port, n, &fill),
                        )
                        .await
                        {
                            Ok(Ok(())) => {}
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                eprintln!("publish {n} failed");
                            }
                        }
                        tokio::time::sleep(opts.interval).await;
                    }
                })
            })
            .collect();
        for p in publishers {
            let _ = p.await;
        }
    }
    // Every client stops once it has every message; the rest are cut off at the deadline.
    let stop = Instant::now() + opts.deadline;
    {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            tokio::time::sleep_until(stop.into()).await;
            stats
                .stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let stop = stop + Duration::from_secs(30); // current polls end within the long-polling interval
    for t in tasks {
        let remaining = stop.saturating_duration_since(Instant::now());
        let abort = t.abort_handle();
        if tokio::time::timeout(remaining, t).await.is_err() {
            abort.abort();
        }
    }
    let mut latencies =
        std::mem::take(&mut *stats.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    let expected = (opts.clients * opts.messages) as u64;
    let received = stats.received.load(Ordering::Relaxed);
    println!(
        "clients {} ({}), messages {}, all connected after {:.1} s",
        opts.clients,
        if opts.websocket {
            "websocket"
        } else if opts.chunked {
            "chunked"
        } else {
            "not chunked"
        },
        opts.messages,
        connected_after.as_secs_f64()
    );
    println!(
        "delivered {received}/{expected}, lost {}, duplicated {}, reconnects {}, errors {}",
        expected.saturating_sub(received),
        stats.duplicates.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed)
    );
    println!(
        "publish->delivery latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    if std::env::var("MB_BENCH_BY_MESSAGE").is_ok_and(|v| v == "1") {
        let mut by =
            std::mem::take(&mut *stats.by_message.lock().unwrap_or_else(|e| e.into_inner()));
        let line: Vec<String> = by
            .iter_mut()
            .enumerate()
            .map(|(n, l)| {
                l.sort_unstable();
                format!("#{n} {:.0}/{:.0}", percentile(l, 0.5), percentile(l, 0.99))
            })
            .collect();
        println!("p50/p99 ms by message: {}", line.join(", "));
    }
    let missing = std::mem::take(&mut *stats.missing.lock().unwrap_or_else(|e| e.into_inner()));
    let holes: Vec<String> = missing
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| format!("{n}x{c}"))
        .collect();
    if !holes.is_empty() {
        println!(
            "missing (message number x clients), {} numbers: {}",
            holes.len(),
            holes.iter().take(40).cloned().collect::<Vec<_>>().join(" ")
        );
    }
    if opts.duration.is_some() {
        println!(
            "soak: {:.0} s, publish failures {}, server at start: {usage_start}; at end: {}",
            started.elapsed().as_secs_f64(),
            publish_failures.load(Ordering::Relaxed),
            server_usage(opts.server_pid)
        );
    }
    if let Some(peaks) = peaks {
        peaks.report(opts.server_pid, opts.port).await;
    }
    if let (Some(before), Some(connected)) = (rss_before, rss_connected) {
        let per = (connected.saturating_sub(before) as f64 * 1024.0) / opts.clients.max(1) as f64;
        println!("server RSS: {before} KiB before, {connected} KiB with all clients waiting ({per:.0} bytes per client)");
        if let Some(at_half) = rss_half {
            let second = opts.clients - half;
            let marginal =
                (connected.saturating_sub(at_half) as f64 * 1024.0) / second.max(1) as f64;
            println!("server RSS with the first {half} clients waiting: {at_half} KiB; the other {second} added {marginal:.0} bytes each");
        }
    }
}
