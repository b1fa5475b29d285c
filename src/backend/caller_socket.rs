//! The plain socket of a caller-thread connection (`direct` paths of Redis
//! and PostgreSQL): TCP or a Unix socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub(crate) enum CallerSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl CallerSocket {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            CallerSocket::Tcp(s) => s.as_raw_fd(),
            CallerSocket::Unix(s) => s.as_raw_fd(),
        }
    }

    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            CallerSocket::Tcp(s) => s.set_nonblocking(true),
            CallerSocket::Unix(s) => s.set_nonblocking(true),
        }
    }

    /// Read and write timeouts, for a blocking socket.
    pub(crate) fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            CallerSocket::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            CallerSocket::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    /// A write that never raises SIGPIPE (the server may have closed).
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: a valid socket and buffer.
        let n = unsafe {
            libc::send(
                self.fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Read for CallerSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            CallerSocket::Tcp(s) => s.read(buf),
            CallerSocket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for CallerSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CallerSocket::Tcp(s) => s.write(buf),
            CallerSocket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
