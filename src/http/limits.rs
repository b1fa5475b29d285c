//! What one hijacked long-poll connection may hold and take: a slow reader is
//! cut once it stops keeping up, and a client that keeps sending once it has
//! sent a few pipelined requests' worth, before either costs the host much.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Duration;

/// Bytes a client may send after its request before it is cut off. They
/// mean nothing on a long poll (its answer ends the connection), so they are
/// read and dropped, a few reads at most, rather than left to pile up.
pub const INPUT_BOUND: usize = 16 * 1024;

pub struct Limits {
    /// A write that cannot complete in this time closes the connection.
    pub write_timeout: Duration,
    /// `SO_SNDBUF` of hijacked sockets, `None` to keep the kernel's own
    /// (autotuned, up to `tcp_wmem`'s maximum: megabytes per slow reader).
    pub send_buffer: Option<usize>,
}

/// The limits of this process: `MESSAGE_BUS_WRITE_TIMEOUT_MS` (default
/// 10,000) and `MESSAGE_BUS_SEND_BUFFER_BYTES` (default 65,536, which Linux
/// doubles for its bookkeeping; 0 keeps the kernel's), read once.
pub fn limits() -> &'static Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Limits {
            write_timeout: Duration::from_millis(
                number("MESSAGE_BUS_WRITE_TIMEOUT_MS")
                    .filter(|ms| *ms > 0)
                    .unwrap_or(10_000),
            ),
            send_buffer: match number("MESSAGE_BUS_SEND_BUFFER_BYTES") {
                Some(0) => None,
                Some(bytes) => usize::try_from(bytes).ok(),
                None => Some(64 * 1024),
            },
        }
    })
}

/// Caps what the kernel keeps queued for this socket (best effort: a
/// failure leaves the kernel's default).
pub fn cap_send_buffer(socket: &impl AsRawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_buffer(socket: &impl AsRawFd) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid descriptor, and a c_int with its size to fill.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::addr_of_mut!(value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[test]
    fn the_send_buffer_cap_is_what_the_kernel_keeps() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        cap_send_buffer(&client, 32 * 1024);
        // Linux doubles the value for its bookkeeping.
        let kept = send_buffer(&client);
        assert!((32 * 1024..=64 * 1024).contains(&kept), "{kept}");
    }
}
