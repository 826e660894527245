//! The limits every connection gets, set deliberately rather than left to
//! library defaults, so that no client can hold unbounded memory or starve
//! the others: HTTP/2 settings (streams, headers, resets, keepalive), a
//! bound on the time a unary call may take, and a bound on open
//! connections.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::transport::{
    Server,
    server::{Connected, TcpConnectInfo, TcpIncoming},
};

/// Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
/// A client wanting more queues them itself.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Bytes of request headers (metadata) one stream may send: far above
/// what a caller needs (ids travel in the body, a bearer token is < 1 KiB),
/// far below what would let a caller pin memory.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams a client may open and reset before the server accepted them;
/// past this the connection is closed (rapid reset, CVE-2023-44487).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for protocol errors on one connection
/// before it closes the connection.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// An idle connection is pinged this often; one that does not answer within
/// the timeout is closed, so vanished peers free their state.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a unary call may take to arrive and be answered
/// (`--request-timeout`). A caller trickling a large message cannot hold its
/// buffer longer than this; the writes it started still finish.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections open at once; more are closed as soon as they are accepted,
/// and the ones open keep being served.
pub const MAX_CONNECTIONS: usize = 4096;

/// The server builder with the limits above, and `request_timeout`.
pub fn server(request_timeout: Duration) -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .timeout(request_timeout)
}

/// Accepted connections, at most [`MAX_CONNECTIONS`] at once, with
/// TCP_NODELAY (without it, Nagle's algorithm and delayed ACKs add ~40 ms
/// to every small reply) and TCP keepalive (for peers that vanished
/// without closing).
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<LimitedConnection>> + Send + 'static {
    let tcp = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refused = Arc::new(AtomicU64::new(0));
    tcp.filter_map(move |accepted| {
        let permit = Arc::clone(&open).try_acquire_owned();
        let refused = Arc::clone(&refused);
        async move {
            let stream = match accepted {
                Ok(stream) => stream,
                Err(err) => return Some(Err(err)),
            };
            match permit {
                Ok(permit) => Some(Ok(LimitedConnection {
                    stream,
                    _permit: permit,
                })),
                Err(_) => {
                    // Dropping the stream closes it. Logged sparingly: a
                    // flood of connections must not become a flood of logs.
                    let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if count.is_power_of_two() {
                        tracing::warn!(
                            limit = MAX_CONNECTIONS,
                            refused = count,
                            "too many open connections: closing new ones"
                        );
                    }
                    None
                }
            }
        }
    })
}

/// An accepted connection that holds its place under [`MAX_CONNECTIONS`]
/// until it closes.
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
