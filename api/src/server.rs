//! Serving a router over HTTP/1.1 with every connection bounded in time.
//!
//! `axum::serve` keeps a connection as long as its client wants: one that sends nothing, half a
//! header or a trickle of body holds a socket and a task forever, and a few hundred of them
//! exhaust the process's file descriptors. Here each connection is served by hyper directly,
//! with three bounds ([`HttpTimeouts`]):
//!
//! - **header**: a new connection must deliver a whole request header within this of being
//!   accepted, and on a kept-alive connection within this of the next request's first byte;
//! - **idle**: a kept-alive connection that sends no byte of a next request for this long is
//!   closed;
//! - **body**: a request's body must arrive whole within this of its header; a handler that
//!   reads it later gets an error (a 400 problem) and the connection is closed.
//!
//! hyper's HTTP/1 server has one timer, the header read timeout, which starts when the
//! connection begins to wait for a request head (on accept, and as soon as it is idle again). A
//! timer of our own ([`HeadTimer`]) gives that one deadline both meanings: while no byte of the
//! next request has come it is the idle bound, from the first byte on the header bound. The
//! socket is wrapped ([`Watched`]) to note that first byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a connection may take over each part of a request; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// `HTTP_HEADER_TIMEOUT`: a request's header, from accept or from its first byte (10 s).
    pub header: Duration,
    /// `HTTP_IDLE_TIMEOUT`: a kept-alive connection waiting for its next request (60 s).
    pub idle: Duration,
    /// `HTTP_BODY_TIMEOUT`: a request's body, from its header to its last byte (30 s).
    pub body: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            body: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish (idle connections close at once) and returns.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    timeouts: HttpTimeouts,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let router = router.layer(middleware::from_fn_with_state(timeouts.body, body_deadline));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(
                        stream,
                        router.clone(),
                        timeouts,
                        stopping.clone(),
                    ));
                }
                Err(err) if is_per_connection(&err) => {}
                Err(err) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors that concern one connection only (the client went away before it was accepted).
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves one connection until it closes, its client is too slow, or the server stops.
async fn connection(
    stream: TcpStream,
    router: Router,
    timeouts: HttpTimeouts,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer { activity, timeouts })
        .header_read_timeout(timeouts.header)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, "connection closed with an error");
                }
                return;
            }
            changed = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What the socket saw since the connection began waiting for its current request head.
#[derive(Debug, Default)]
struct Activity {
    /// How many request heads the connection has waited for (0 before the first).
    heads: std::sync::atomic::AtomicU64,
    /// When the first byte arrived since hyper began waiting for the current head.
    first_byte: Mutex<Option<Instant>>,
}

impl Activity {
    fn first_byte(&self) -> Option<Instant> {
        self.first_byte.lock().map_or(None, |at| *at)
    }

    fn note_bytes(&self) {
        if let Ok(mut at) = self.first_byte.lock() {
            at.get_or_insert_with(Instant::now);
        }
    }

    fn forget_bytes(&self) {
        if let Ok(mut at) = self.first_byte.lock() {
            *at = None;
        }
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.note_bytes();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's timer for one connection. hyper asks it for one deadline per request head (its
/// header read timeout); the deadline it hands back depends on what the socket has seen.
#[derive(Clone)]
struct HeadTimer {
    activity: Arc<Activity>,
    timeouts: HttpTimeouts,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleeping(Box::pin(tokio::time::sleep(duration))))
    }

    /// Called when the connection starts waiting for a request head.
    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let fresh = self
            .activity
            .heads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0;
        self.activity.forget_bytes();
        let started = Instant::now();
        let head = HeadDeadline {
            activity: Arc::clone(&self.activity),
            timeouts: self.timeouts,
            started,
            fresh,
            sleep: Box::pin(tokio::time::sleep_until(started + self.timeouts.header)),
        };
        Box::pin(head)
    }
}

/// A plain sleep for hyper.
struct Sleeping(Pin<Box<tokio::time::Sleep>>);

impl Future for Sleeping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for Sleeping {}

/// The deadline of one request head: on a new connection `header` after accept; on a
/// kept-alive one `idle` after it became idle, or `header` after the first byte if one came.
/// hyper polls it again whenever bytes arrive, so it moves when the first byte does.
struct HeadDeadline {
    activity: Arc<Activity>,
    timeouts: HttpTimeouts,
    started: Instant,
    fresh: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadDeadline {
    fn deadline(&self) -> Instant {
        if self.fresh {
            return self.started + self.timeouts.header;
        }
        match self.activity.first_byte() {
            Some(at) => at.max(self.started) + self.timeouts.header,
            None => self.started + self.timeouts.idle,
        }
    }
}

impl Future for HeadDeadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline();
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadDeadline {}

/// Gives the request's body a deadline: `timeout` from now (its header has arrived).
async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let request = request.map(|body| {
        Body::new(Deadline {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        })
    });
    next.run(request).await
}

/// A request body that fails once its deadline has passed.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            tracing::debug!("a request body did not arrive in time");
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(BodyTimedOut(timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
