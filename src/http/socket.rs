//! A hijacked client socket owned by this process. Every one is noted in a
//! table of descriptor numbers (atomics only: a fork may happen at any
//! moment), so that a forked child can close the sockets it inherited. It
//! closes them with close(2) only (never shutdown, never a byte written):
//! the parent keeps serving those clients, and once the parent lets go of a
//! client the kernel ends the connection instead of the child holding it open.
//!
//! A child never drops an inherited `ClientSocket` (its copies live on in the
//! parent's leaked runtime and fan-out): by then its descriptor number may
//! belong to one of the child's own files.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::http::limits;

/// Descriptors per page of the table, and pages: numbers up to 2^20.
const PAGE_BITS: usize = 4096;
const PAGES: usize = 256;
const WORDS: usize = PAGE_BITS / 64;

type Page = [AtomicU64; WORDS];

static TABLE: [AtomicPtr<Page>; PAGES] = [const { AtomicPtr::new(ptr::null_mut()) }; PAGES];
/// The process whose sockets the table lists.
static OWNER: AtomicU32 = AtomicU32::new(0);
/// A child is closing what it inherited.
static CLOSING: AtomicBool = AtomicBool::new(false);

fn slot(fd: RawFd) -> Option<(usize, usize, u64)> {
    let n = usize::try_from(fd).ok()?;
    let page = n / PAGE_BITS;
    (page < PAGES).then(|| (page, (n % PAGE_BITS) / 64, 1u64 << (n % 64)))
}

fn page(index: usize) -> &'static Page {
    let current = TABLE[index].load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: pages are never freed once published.
        return unsafe { &*current };
    }
    let fresh = Box::into_raw(Box::new([const { AtomicU64::new(0) }; WORDS]));
    match TABLE[index].compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
    {
        // SAFETY: just published, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            // SAFETY: `fresh` was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: published by another thread, never freed.
            unsafe { &*other }
        }
    }
}

fn note(fd: RawFd) {
    close_inherited();
    match slot(fd) {
        Some((p, word, bit)) => {
            page(p)[word].fetch_or(bit, Ordering::SeqCst);
        }
        None => crate::log::warn(format!(
            "message_bus: client socket descriptor {fd} is too high to be closed in forked children"
        )),
    }
}

fn forget(fd: RawFd) {
    if let Some((p, word, bit)) = slot(fd) {
        page(p)[word].fetch_and(!bit, Ordering::SeqCst);
    }
}

/// Client sockets this process holds now.
pub fn held() -> Vec<RawFd> {
    let mut out = Vec::new();
    for (p, entry) in TABLE.iter().enumerate() {
        let page = entry.load(Ordering::Acquire);
        if page.is_null() {
            continue;
        }
        // SAFETY: pages are never freed once published.
        for (w, word) in unsafe { &*page }.iter().enumerate() {
            let mut bits = word.load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                out.push((p * PAGE_BITS + w * 64 + b) as RawFd);
            }
        }
    }
    out
}

/// In a forked child: closes (close(2) only) every client socket the parent
/// held, once. Returns how many were closed; 0 in the process that owns them.
pub fn close_inherited() -> usize {
    let pid = std::process::id();
    let owner = OWNER.load(Ordering::SeqCst);
    if owner == pid {
        while CLOSING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_micros(50));
        }
        return 0;
    }
    if OWNER
        .compare_exchange(owner, pid, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // Another thread of this child is closing them.
        return close_inherited();
    }
    if owner == 0 {
        // No socket was ever noted before this process took the table.
        return 0;
    }
    CLOSING.store(true, Ordering::SeqCst);
    let mut closed = 0;
    for (p, entry) in TABLE.iter().enumerate() {
        let page = entry.load(Ordering::Acquire);
        if page.is_null() {
            continue;
        }
        // SAFETY: pages are never freed once published.
        for (w, word) in unsafe { &*page }.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // SAFETY: a descriptor inherited from the parent, which this
                // process no longer refers to anywhere it would use.
                if unsafe { libc::close((p * PAGE_BITS + w * 64 + b) as RawFd) } == 0 {
                    closed += 1;
                }
            }
        }
    }
    CLOSING.store(false, Ordering::SeqCst);
    closed
}

/// A hijacked socket, readable and writable through tokio.
pub struct ClientSocket {
    stream: ManuallyDrop<TcpStream>,
    fd: RawFd,
    owner: u32,
}

impl ClientSocket {
    /// Takes over `fd` (a connected stream socket). Must be called within the runtime.
    pub fn take_over(fd: OwnedFd) -> Result<Self> {
        let failed = |e: std::io::Error| {
            Error::Connection(format!("cannot take over the client socket: {e}"))
        };
        let std_stream = std::net::TcpStream::from(fd);
        std_stream.set_nonblocking(true).map_err(failed)?;
        // Live messages are small writes that must leave at once.
        let _ = std_stream.set_nodelay(true);
        // What a slow reader leaves in the kernel is bounded; past it, the
        // outbox bounds and the write timeout find it out.
        if let Some(bytes) = limits::limits().send_buffer {
            limits::cap_send_buffer(&std_stream, bytes);
        }
        let raw = std_stream.as_raw_fd();
        let stream = TcpStream::from_std(std_stream).map_err(failed)?;
        note(raw);
        Ok(ClientSocket {
            stream: ManuallyDrop::new(stream),
            fd: raw,
            owner: std::process::id(),
        })
    }

    fn owned_here(&self) -> bool {
        self.owner == std::process::id()
    }

    /// Half-closes: a FIN after what was written (nothing in a process
    /// that inherited the socket: the parent still serves its client).
    pub fn shutdown_write(&self) {
        if self.owned_here() {
            // SAFETY: a shutdown of the descriptor this socket owns.
            unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        }
    }
}

impl Deref for ClientSocket {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if !self.owned_here() {
            // Closed by `close_inherited`; the number may be reused by now.
            return;
        }
        forget(self.fd);
        // SAFETY: dropped once, here.
        unsafe { ManuallyDrop::drop(&mut self.stream) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// A client and the server side of its connection, taken over (within a runtime).
    fn connected() -> (std::net::TcpStream, ClientSocket) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            client,
            ClientSocket::take_over(OwnedFd::from(server)).unwrap(),
        )
    }

    #[test]
    fn slots_cover_the_table_and_refuse_what_does_not_fit() {
        assert_eq!(slot(0), Some((0, 0, 1)));
        assert_eq!(slot(65), Some((0, 1, 2)));
        assert_eq!(slot(4096), Some((1, 0, 1)));
        assert_eq!(slot((PAGES * PAGE_BITS) as RawFd), None);
        assert_eq!(slot(-1), None);
    }

    #[test]
    fn a_socket_is_listed_while_held() {
        let rt = runtime();
        let _guard = rt.enter();
        let (client, socket) = connected();
        let fd = socket.fd;
        assert!(held().contains(&fd));
        drop(socket);
        assert!(!held().contains(&fd));
        drop(client);
    }

    #[test]
    fn a_forked_child_closes_what_it_inherited_and_the_parent_keeps_it() {
        use std::io::{Read, Write};
        let rt = runtime();
        let _guard = rt.enter();
        let (mut client, socket) = connected();
        let mut pipe = [0; 2];
        // SAFETY: a pipe for the child's report.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes system calls and exits without unwinding.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let closed = close_inherited();
            // SAFETY: probes the descriptor; reports; exits at once.
            unsafe {
                let open = libc::fcntl(socket.fd, libc::F_GETFD) != -1;
                let report = [u8::from(closed >= 1), u8::from(open)];
                libc::write(pipe[1], report.as_ptr().cast(), 2);
                libc::_exit(0);
            }
        }
        // SAFETY: our end of the pipe.
        unsafe { libc::close(pipe[1]) };
        let mut report = [0u8; 2];
        // SAFETY: the read end, owned from here on.
        let mut reader = unsafe { std::fs::File::from_raw_fd(pipe[0]) };
        reader.read_exact(&mut report).unwrap();
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(report, [1, 0], "the child closed the inherited socket");
        // The parent's copy still works.
        rt.block_on(socket.writable()).unwrap();
        socket.try_write(b"still here").unwrap();
        let mut got = [0u8; 10];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still here");
        client.write_all(b"x").unwrap();
        assert!(held().contains(&socket.fd));
    }
}
