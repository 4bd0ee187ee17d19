//! Accepting TCP connections and serving HTTP on them, within bounds.
//!
//! - **A permit per socket.** With a cap, a connection takes a permit when it
//!   is accepted and the socket holds it until it closes: through an upgrade
//!   the WebSocket owns the socket, so one permit covers the handshake and
//!   the connection after it. Pending handshakes, API and health requests and
//!   idle keep-alive connections count like WebSockets. Over the cap a
//!   connection waits up to [`WAIT_FOR_PLACE`] for a place (one that is
//!   closing gives it back), then gets a `503` with a JSON body and is
//!   closed.
//! - **A budget per client address** (client listener only; see
//!   [`crate::address`]): a connection takes a token of its address's
//!   connection rate before anything else; without one it gets a `429`
//!   with a JSON body and `Retry-After`, and is closed. The address's frame
//!   budget rides with the connection ([`Accepted::address`]) to the socket
//!   it may become.
//! - **Deadlines.** A request's head must arrive within the header timeout
//!   (for a connection's first request on a listener with a direct handler,
//!   read by the listener itself; then hyper's header read timeout, which
//!   also runs while a keep-alive connection waits for its next request).
//! - **Direct upgrades.** With [`Bounds::direct`], a connection's first
//!   head is read here and offered to the handler (see [`super::direct`]);
//!   what it does not take goes to hyper with the bytes already read. The front-ends and the API
//!   bound what follows the head (see `--handshake-timeout-seconds`).
//! - **Socket options.** `TCP_NODELAY`, TCP keepalive and, when set,
//!   `TCP_USER_TIMEOUT` (how long sent data may stay unacknowledged). They
//!   are set once on the listening socket; where accepted sockets inherit
//!   them (Linux does), they are not set again on each one (six system
//!   calls fewer per connection): see [`Inherits`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use self::refusal::{refuse, Refusal};
use super::direct::{read_head, reply_head, Direct, Head, Prefaced, Taken};
use crate::address::{AddressBudget, Addresses, Admit};
use crate::http_error::HttpError;
use crate::metrics::Metrics;

/// How one listener accepts and bounds its connections.
#[derive(Clone)]
pub struct Bounds {
    /// Label of this listener in the metrics (`client`, `admin`).
    pub label: &'static str,
    /// One permit per open connection; `None`: no cap.
    pub permits: Option<Arc<Semaphore>>,
    /// Budgets per client address; `None`: not bounded per address.
    pub addresses: Option<Arc<Addresses>>,
    /// A request's head must arrive within this.
    pub header_timeout: Duration,
    /// TCP keepalive idle time (`None`: off).
    pub tcp_keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT` (`None`: the kernel's default).
    pub user_timeout: Option<Duration>,
    /// Upgrades answered without the HTTP stack (see [`super::direct`]);
    /// `None`: every request goes to hyper.
    pub direct: Option<Direct<Held>>,
}

/// Put in every request's extensions: what the listener decided about the
/// connection it came on.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Whether a permit of the node's cap was taken (false without a cap),
    /// so the front-end must not take another.
    pub counted: bool,
    /// The budget the connection's address shares with its other sockets
    /// (`None`: trusted, or not bounded per address).
    pub address: Option<AddressBudget>,
}

impl Accepted {
    /// The address budget of the connection `request` came on.
    pub fn address_of<B>(request: &http::Request<B>) -> Option<AddressBudget> {
        request
            .extensions()
            .get::<Accepted>()
            .and_then(|a| a.address.clone())
    }
}

/// Connections waiting for a place at a full cap, or being refused, at
/// once; beyond, a connection over the cap is just closed (the cap protects
/// file descriptors, and waiting ones hold some).
const MAX_WAITING: usize = 64;

/// How long a connection over the cap waits for a place before it is
/// refused: a connection that is closing gives its place back within it.
pub const WAIT_FOR_PLACE: Duration = Duration::from_secs(1);

/// What every connection task of one listener shares.
#[derive(Clone)]
struct Listener {
    router: Router,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    /// Held by every connection task, so the listener knows when all ended.
    open: watch::Receiver<()>,
    /// Whether accepted sockets inherit the listening socket's options.
    inherits: Arc<Inherits>,
    /// This listener's `pubmesh_http_connections` gauge (looked up once).
    open_gauge: prometheus::IntGauge,
}

impl Listener {
    fn start(
        &self,
        tcp: TcpStream,
        permit: Option<OwnedSemaphorePermit>,
        address: Option<AddressBudget>,
    ) {
        self.inherits.apply(&tcp, &self.bounds);
        let accepted = Accepted {
            counted: permit.is_some(),
            address,
        };
        let io = Held {
            tcp,
            _permit: permit,
        };
        tokio::spawn(connection(io, accepted, self.clone()));
    }

    /// Over the cap: wait a moment for a place, else answer 503 and close.
    fn wait_or_refuse(
        &self,
        tcp: TcpStream,
        address: Option<AddressBudget>,
        permits: Arc<Semaphore>,
        waiting: &Arc<Semaphore>,
    ) {
        let Ok(slot) = waiting.clone().try_acquire_owned() else {
            self.refused();
            return drop(tcp);
        };
        let listener = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(WAIT_FOR_PLACE, permits.acquire_owned()).await {
                Ok(Ok(permit)) => listener.start(tcp, Some(permit), address),
                _ => {
                    listener.refused();
                    let _ = tcp.set_nodelay(true);
                    refuse(tcp, Refusal::capacity(listener.bounds.label)).await;
                }
            }
            drop(slot);
        });
    }

    /// Over its address's connection rate: answer 429 and close (or just
    /// close, when many refusals are already being answered).
    fn refuse_address(&self, tcp: TcpStream, wait: Duration, waiting: &Arc<Semaphore>) {
        self.metrics
            .errors
            .with_label_values(&["rate_limited"])
            .inc();
        let Ok(slot) = waiting.clone().try_acquire_owned() else {
            return drop(tcp);
        };
        let refusal = Refusal::address_rate(self.bounds.addresses.as_deref(), wait);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            refuse(tcp, refusal).await;
            drop(slot);
        });
    }

    fn refused(&self) {
        let label = self.bounds.label;
        self.metrics.http_refused.with_label_values(&[label]).inc();
        if label == "client" {
            self.metrics.errors.with_label_values(&["capacity"]).inc();
        }
    }
}

/// Serve `router` on `listener` until `shutdown` completes; then stop
/// accepting, ask open HTTP connections to finish their current request,
/// and return once they have (upgraded sockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop) = watch::channel(false);
    let (open_tx, open) = watch::channel(());
    // Accepted sockets may inherit these (checked on the first one).
    let listening = set_options_on(socket2::SockRef::from(&listener), &bounds).is_ok();
    let open_gauge = metrics.http_connections.with_label_values(&[bounds.label]);
    let shared = Listener {
        open_gauge,
        router,
        bounds,
        metrics,
        stop,
        open,
        inherits: Arc::new(Inherits::new(listening)),
    };
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let address = match shared.bounds.addresses.as_ref().map(|a| a.admit(peer.ip())) {
            None | Some(Admit::Trusted) => None,
            Some(Admit::Counted(budget)) => Some(budget),
            Some(Admit::Refused(wait)) => {
                shared.refuse_address(tcp, wait, &waiting);
                continue;
            }
        };
        match &shared.bounds.permits {
            None => shared.start(tcp, None, address),
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => shared.start(tcp, Some(permit), address),
                Err(_) => shared.wait_or_refuse(tcp, address, permits.clone(), &waiting),
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(shared);
    // Every connection task holds a receiver until it ends.
    open_tx.closed().await;
}

/// One connection: its first request taken by the listener's direct
/// handler, or HTTP until it ends or is upgraded.
async fn connection(mut io: Held, accepted: Accepted, mut listener: Listener) {
    let gauge = listener.open_gauge.clone();
    gauge.inc();
    let mut read = Vec::new();
    if let Some(direct) = listener.bounds.direct.clone() {
        let head = tokio::select! {
            head = tokio::time::timeout(listener.bounds.header_timeout, read_head(&mut io)) => head,
            _ = async { drop(listener.stop.wait_for(|stop| *stop).await) } => return gauge.dec(),
        };
        match head {
            Err(_) => {
                gauge.dec();
                return listener
                    .metrics
                    .http_timeouts
                    .with_label_values(&["header"])
                    .inc();
            }
            Ok(Head::Gone) => return gauge.dec(),
            Ok(Head::Other(bytes)) => read = bytes,
            Ok(Head::Request(mut request, bytes, len)) => {
                request.extensions_mut().insert(accepted.clone());
                let taken = direct(&request);
                drop(request);
                match taken {
                    None => read = bytes,
                    Some(taken) => {
                        // The socket outlives the listener's wait for its
                        // HTTP connections, as an upgraded one does.
                        drop(listener);
                        gauge.dec();
                        // A task of its own, sized for the socket alone (this
                        // one is sized for reading a head, and for hyper).
                        tokio::spawn(taken_over(io, bytes, len, taken));
                        return;
                    }
                }
            }
        }
    }
    serve_http(Prefaced::new(io, read, Vec::new()), accepted, listener).await;
    gauge.dec();
}

/// A request a direct handler answered: run the socket, or refuse it.
fn taken_over(
    io: Held,
    mut read: Vec<u8>,
    head: usize,
    taken: Result<Taken<Held>, HttpError>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match taken {
        Ok(Taken { reply, run }) => {
            let rest = if head == read.len() {
                Vec::new()
            } else {
                read.split_off(head)
            };
            drop(read);
            run(Prefaced::new(io, rest, reply_head(&reply)))
        }
        Err(e) => Box::pin(refuse(io, Refusal::of(&e))),
    }
}

/// HTTP on one connection, until it ends or is upgraded.
async fn serve_http(io: Prefaced<Held>, accepted: Accepted, listener: Listener) {
    let Listener {
        router,
        bounds,
        metrics,
        mut stop,
        open: _open,
        inherits: _,
        open_gauge: _,
    } = listener;
    let service = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(accepted.clone());
        hyper::service::Service::call(&service, request)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = async { drop(stop.wait_for(|stop| *stop).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.http_timeouts.with_label_values(&["header"]).inc();
        }
        tracing::debug!(error = %e, listener = bounds.label, "HTTP connection ended");
    }
}

/// After a failed `accept`: a connection that went away before it was
/// accepted is nothing; anything else (out of file descriptors, memory)
/// gets a pause, so the loop does not spin while the condition lasts.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn set_options(tcp: &TcpStream, bounds: &Bounds) {
    if let Err(e) = set_options_on(socket2::SockRef::from(tcp), bounds) {
        tracing::debug!(error = %e, "socket options");
    }
}

/// Whether accepted sockets inherit the listening socket's options, learnt
/// from the sockets accepted first: until one is seen with every option
/// already in place, each is checked (and given what it lacks); after
/// [`Inherits::TRIES`] without, the options are set on every socket. A
/// socket whose handshake completed before the listening socket had its
/// options lacks them even where they are inherited, hence more than one
/// try.
struct Inherits(std::sync::atomic::AtomicU32);

impl Inherits {
    const TRIES: u32 = 64;
    const YES: u32 = u32::MAX;

    /// `listening`: the options are set on the listening socket.
    fn new(listening: bool) -> Inherits {
        Inherits(std::sync::atomic::AtomicU32::new(if listening {
            0
        } else {
            Self::TRIES
        }))
    }

    /// Give `tcp` the options `bounds` asks for, unless it has them already.
    fn apply(&self, tcp: &TcpStream, bounds: &Bounds) {
        use std::sync::atomic::Ordering::Relaxed;
        match self.0.load(Relaxed) {
            Self::YES => {}
            n if n >= Self::TRIES => set_options(tcp, bounds),
            _ => {
                if has_options(tcp, bounds).unwrap_or(false) {
                    self.0.store(Self::YES, Relaxed);
                } else {
                    self.0.fetch_add(1, Relaxed);
                    set_options(tcp, bounds);
                }
            }
        }
    }
}

/// `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT` as `bounds` say, on a
/// connected or a listening socket.
fn set_options_on(socket: socket2::SockRef<'_>, bounds: &Bounds) -> io::Result<()> {
    // Small frames must not wait for Nagle's algorithm (40 ms stalls).
    socket.set_tcp_nodelay(true)?;
    if let Some(idle) = bounds.tcp_keepalive {
        socket.set_tcp_keepalive(&keepalive(idle))?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = bounds.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

/// Whether an accepted socket already has the options `bounds` asks for
/// (inherited from the listening socket).
fn has_options(tcp: &TcpStream, bounds: &Bounds) -> io::Result<bool> {
    let socket = socket2::SockRef::from(tcp);
    let mut same = socket.tcp_nodelay()?;
    if let Some(idle) = bounds.tcp_keepalive {
        // The kernel keeps whole seconds.
        let secs = |d: Duration| d.as_secs();
        same &= socket.keepalive()?
            && secs(socket.tcp_keepalive_time()?) == secs(idle)
            && secs(socket.tcp_keepalive_interval()?) == secs(keepalive_interval(idle));
        #[cfg(target_os = "linux")]
        {
            same &= socket.tcp_keepalive_retries()? == 3;
        }
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = bounds.user_timeout {
        same &= socket.tcp_user_timeout()? == Some(timeout);
    }
    Ok(same)
}

/// Keepalive probes after `idle` without traffic, then 3 probes a third of
/// `idle` apart (at least 1 s): a silent dead peer goes after about twice
/// `idle`.
pub fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    let interval = keepalive_interval(idle);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(3);
    keepalive
}

/// The time between keepalive probes for an idle time of `idle`.
fn keepalive_interval(idle: Duration) -> Duration {
    (idle / 3).max(Duration::from_secs(1))
}

/// An accepted socket and the permit it holds until it is dropped.
pub struct Held {
    tcp: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Held {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

mod refusal;
#[cfg(test)]
mod tests;
