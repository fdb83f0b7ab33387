//! The HTTP API: `/metrics`, `/healthz`, `/readyz`.
//!
//! In: the shared [`Metrics`] (series) and the daemon's [`Health`]
//! (capture, log files, inventory sync). Out: HTTP/1.1 answers on the
//! configured address: the OpenMetrics exposition, liveness (capture has
//! read the flow map recently, every log file is written and no write to
//! one is stalled) and readiness (programs attached, flow map read at least
//! once, inventory synced and fresh when one is configured), both as
//! [`Health`] says.
//!
//! The server is bounded so that idle or slow clients cannot take the
//! process's descriptors: at most `--metrics-max-connections` connections at
//! a time (past that, new ones wait in the kernel's accept queue, holding no
//! descriptor of ours), a connection that sends no complete request head
//! within `--metrics-idle-timeout` (idle keep-alive included) is closed, and
//! so is one that does not take its answer within that time.

mod deadline;

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use crate::{
    health::Health,
    metrics::{CONTENT_TYPE as OPENMETRICS, Metrics},
};

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The address cannot be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} for /metrics, /healthz and /readyz")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoints answer from.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The series.
    pub metrics: Metrics,
    /// Liveness and readiness.
    pub health: Health,
}

/// How many clients the server takes and for how long (`observer run` options).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Most HTTP connections served at a time; more wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: u32,
    /// An HTTP connection is closed when no complete request head arrives
    /// within this time (a new connection, or an idle keep-alive one) or
    /// when its answer is not taken within it.
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    /// 64 connections, 10 s.
    fn default() -> Self {
        Self { max_connections: 64, idle_timeout: Duration::from_secs(10) }
    }
}

/// Binds `addr`; a separate step so that a bad address fails the start.
/// `[::]` listens on IPv6 and IPv4 alike (whatever `net.ipv6.bindv6only`
/// says), and on a kernel without IPv6 falls back to `0.0.0.0`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    let bind_error = |source| ApiError::Bind { addr, source };
    if !(addr.is_ipv6() && addr.ip().is_unspecified()) {
        return TcpListener::bind(addr).await.map_err(bind_error);
    }
    let socket = match tokio::net::TcpSocket::new_v6() {
        Ok(socket) => socket,
        Err(error) if error.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!("this kernel has no IPv6: serving on {v4} instead of {addr}");
            return TcpListener::bind(v4).await.map_err(bind_error);
        }
        Err(error) => return Err(bind_error(error)),
    };
    dual_stack(&socket).map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

/// Clears IPV6_V6ONLY: IPv4 clients arrive as `::ffff:a.b.c.d`.
fn dual_stack(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and an option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Serves connections on `listener`, within `limits`, until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: ApiState, limits: HttpLimits, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut full_since: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0 && full_since.is_none() {
            full_since = Some(Instant::now());
            tracing::warn!(
                max = limits.max_connections,
                "HTTP connection limit reached: new connections wait until one closes (idle ones close after {:?})",
                limits.idle_timeout
            );
        }
        // A slot first, then the connection: past the limit, clients wait in
        // the kernel's queue and hold no descriptor of ours.
        let slot = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        if let Some(since) = full_since.take() {
            tracing::info!(waited = ?since.elapsed(), "HTTP connection limit no longer reached");
        }
        let stream = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(stream, state, limits.idle_timeout).await;
            drop(slot);
        });
    }
}

/// Answers requests on one connection until the client closes it or is too
/// slow: no request head within `idle` (hyper's header read timeout runs
/// whenever the connection waits for a request), or an answer not taken
/// within `idle` ([`deadline::WriteDeadline`]).
async fn serve_connection(stream: tokio::net::TcpStream, state: ApiState, idle: Duration) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&state, request.method(), request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let io = TokioIo::new(deadline::WriteDeadline::new(stream, idle));
    let connection =
        http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(idle).serve_connection(io, service);
    if let Err(error) = pin!(connection).await {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The answer to `method path`.
pub fn respond(state: &ApiState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/metrics" => {
            let mut response = text(StatusCode::OK, state.metrics.encode());
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/healthz" => match state.health.liveness() {
            Ok(message) => text(StatusCode::OK, message),
            Err(message) => text(StatusCode::SERVICE_UNAVAILABLE, message),
        },
        "/readyz" => match state.health.readiness() {
            Ok(message) => text(StatusCode::OK, message),
            Err(message) => text(StatusCode::SERVICE_UNAVAILABLE, message),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::{
        capture::{CaptureHealth, clock::monotonic_ns},
        export::sink::{LineSink, Reopen, Rotation, SinkName, Target},
        health::StallLimits,
        metrics::MetricsConfig,
    };

    fn state() -> ApiState {
        state_with(StallLimits::default())
    }

    fn state_with(limits: StallLimits) -> ApiState {
        let health = Health::new(limits);
        ApiState { metrics: Metrics::new(MetricsConfig::default(), &health), health }
    }

    async fn get(state: &ApiState, path: &str) -> (StatusCode, String) {
        let response = respond(state, &Method::GET, path);
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readiness_follows_capture_and_inventory() {
        let state = state();
        state.health.expect_inventory();
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let health = Arc::new(CaptureHealth::default());
        state.health.attach_capture(Arc::clone(&health));
        assert!(get(&state, "/readyz").await.1.contains("flow map not read"));
        health.last_poll_ns.store(monotonic_ns(), Ordering::Relaxed);
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("inventory"), "{body}");
        state.health.set_inventory(true, false);
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
        // A stale source makes the node not ready, and it is ready again on recovery.
        state.health.set_inventory(true, true);
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stale"), "{body}");
        state.health.set_inventory(true, false);
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn liveness_fails_when_capture_stops_polling() {
        let state = state();
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        let health = Arc::new(CaptureHealth::default());
        state.health.attach_capture(Arc::clone(&health));
        health.last_poll_ns.store(monotonic_ns(), Ordering::Relaxed);
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        health.last_poll_ns.store(monotonic_ns().saturating_sub(31_000_000_000), Ordering::Relaxed);
        let (status, body) = get(&state, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stalled"), "{body}");
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_over_real_http() {
        let state = state();
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state, HttpLimits::default(), stopped));
        let response = raw_get(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("application/openmetrics-text"), "{response}");
        assert!(response.contains("flow_observer_build_info{"), "{response}");
        assert!(response.trim_end().ends_with("# EOF"), "{response}");
        assert!(raw_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.send(true).expect("stop");
        server.await.expect("server task");
    }

    #[tokio::test]
    async fn liveness_names_a_failing_log_file() {
        let state = state();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dns.jsonl");
        let sink = LineSink::open(SinkName::DnsLog, Target::File(path.clone()), Rotation::OFF, Reopen::default())
            .expect("opens");
        state.health.attach_sinks(vec![sink.health()]);
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        sink.health().fail("writing failed: No space left on device (os error 28)".to_owned());
        let (status, body) = get(&state, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(&format!("dns_log {} failing", path.display())), "{body}");
        assert!(body.contains("No space left on device"), "{body}");
    }

    /// A flow log on a pipe whose reader stopped reading: the write blocks,
    /// `/healthz` says the sink is stalled (and the metric how long), and
    /// both recover once the reader drains the pipe.
    #[tokio::test]
    async fn liveness_names_a_stalled_log_file_and_recovers() {
        use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
        let state = state_with(StallLimits { sink: Duration::from_millis(200), ..StallLimits::default() });
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("flows.fifo");
        let path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
        let mut reader =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("reader");
        let mut sink = LineSink::open(SinkName::FlowLog, Target::File(fifo.clone()), Rotation::OFF, Reopen::default())
            .expect("opens");
        state.health.attach_sinks(vec![sink.health()]);
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        // More than the pipe holds: the write blocks until the reader reads.
        let mut line = vec![b'x'; 1 << 20];
        line.push(b'\n');
        let writer = std::thread::spawn(move || sink.write(&line, 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (status, body) = get(&state, "/healthz").await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break body;
            }
            assert!(Instant::now() < deadline, "no stall reported: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(body.contains(&format!("flow_log {} stalled", fifo.display())), "{body}");
        let exposition = state.metrics.encode();
        let blocked = exposition
            .lines()
            .find_map(|line| line.strip_prefix("flow_observer_sink_write_blocked_seconds{sink=\"flow_log\"} "))
            .and_then(|value| value.parse::<f64>().ok())
            .expect("the blocked gauge");
        assert!(blocked >= 0.2, "{exposition}");
        let mut drained = 0;
        let mut buf = vec![0u8; 1 << 16];
        while !writer.is_finished() || drained < (1 << 20) + 1 {
            match reader.read(&mut buf) {
                Ok(read) => drained += read,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(error) => panic!("reading the pipe: {error}"),
            }
            assert!(Instant::now() < deadline + Duration::from_secs(10), "the write never finished");
        }
        assert_eq!(writer.join().expect("writer"), 0, "nothing dropped: the write only waited");
        assert_eq!(drained, (1 << 20) + 1);
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        assert!(state.metrics.encode().contains("flow_observer_sink_write_blocked_seconds{sink=\"flow_log\"} 0.0\n"));
    }

    /// Two slots, 500 ms: two idle clients hold both, so a third is served
    /// only once the server has closed one of them for idleness.
    #[tokio::test]
    async fn idle_connections_are_capped_and_closed() {
        use tokio::io::AsyncReadExt as _;
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        let limits = HttpLimits { max_connections: 2, idle_timeout: Duration::from_millis(500) };
        let server = tokio::spawn(serve(listener, state(), limits, stopped));
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let opened = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(10), raw_get(addr, "/healthz")).await.expect("served");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            opened.elapsed() >= Duration::from_millis(400),
            "served before a slot was free: {:?}",
            opened.elapsed()
        );
        for mut stream in idle {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed");
            assert!(matches!(read, Ok(0) | Err(_)), "the server closed the idle connection: {read:?}");
        }
        stop.send(true).expect("stop");
        server.await.expect("server task");
    }

    #[tokio::test]
    async fn the_ipv6_wildcard_serves_ipv4_and_ipv6_clients() {
        let listener = bind("[::]:0".parse().expect("addr")).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, state(), HttpLimits::default(), stopped));
        for client in
            [SocketAddr::from(([127, 0, 0, 1], port)), SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))]
        {
            assert!(raw_get(client, "/metrics").await.starts_with("HTTP/1.1 200"), "{client}");
        }
        stop.send(true).expect("stop");
        server.await.expect("server task");
    }

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }
}
