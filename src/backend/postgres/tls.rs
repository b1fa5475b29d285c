//! Opening a connection as its `sslmode` asks. `require`: TLS through
//! native-tls (OpenSSL), the server's certificate not verified, as libpq's
//! `require` does (libpq verifies only for `verify-ca` and `verify-full`,
//! which tokio-postgres does not take). `disable` and `prefer`: plain TCP or
//! Unix socket (`prefer` as the direct path makes it, so that one backend
//! never mixes the two).
//!
//! The connection is driven by a task of its own; the LISTEN connection's
//! notifications go to `notifications`.

use std::future::poll_fn;

use postgres_native_tls::MakeTlsConnector;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};

use crate::error::{Error, Result};

/// Connects, and drives the connection until it breaks or `Client` is
/// dropped (then aborting the handle is not needed).
pub(super) async fn connect(
    config: &Config,
    notifications: Option<UnboundedSender<String>>,
    to_error: impl Fn(tokio_postgres::Error) -> Error,
) -> Result<(Client, JoinHandle<()>)> {
    if config.get_ssl_mode() == SslMode::Require {
        let (client, connection) = config.connect(connector()?).await.map_err(to_error)?;
        Ok((client, tokio::spawn(drive(connection, notifications))))
    } else {
        let (client, connection) = config.connect(NoTls).await.map_err(to_error)?;
        Ok((client, tokio::spawn(drive(connection, notifications))))
    }
}

fn connector() -> Result<MakeTlsConnector> {
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(|e| Error::Connection(format!("cannot set up TLS for PostgreSQL: {e}")))?;
    Ok(MakeTlsConnector::new(connector))
}

async fn drive<S, T>(
    mut connection: Connection<S, T>,
    notifications: Option<UnboundedSender<String>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notifications {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}
