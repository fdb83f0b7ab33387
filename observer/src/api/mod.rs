//! The HTTP API: `/metrics`, `/healthz`, `/readyz`.
//!
//! In: the shared [`Metrics`] (series, capture health, inventory sync).
//! Out: HTTP/1.1 answers on the configured address: the OpenMetrics
//! exposition, liveness (the process answers and capture has read the flow
//! map recently) and readiness (programs attached, flow map read at least
//! once, inventory synced when one is configured).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use crate::metrics::{CONTENT_TYPE as OPENMETRICS, Metrics, capture::last_poll_age};

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
    /// The metrics, capture health and inventory state.
    pub metrics: Metrics,
    /// `/healthz` fails when capture has not read the flow map for this long.
    pub stall_after: Duration,
}

/// Binds `addr`; a separate step so that a bad address fails the start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr).await.map_err(|source| ApiError::Bind { addr, source })
}

/// Serves connections on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: ApiState, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%error, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let response = respond(&state, request.method(), request.uri().path());
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                });
            }
        }
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
        "/healthz" => match liveness(state) {
            Ok(message) => text(StatusCode::OK, message),
            Err(message) => text(StatusCode::SERVICE_UNAVAILABLE, message),
        },
        "/readyz" => match readiness(&state.metrics) {
            Ok(message) => text(StatusCode::OK, message),
            Err(message) => text(StatusCode::SERVICE_UNAVAILABLE, message),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

/// Alive unless capture, once attached, has stopped reading the flow map.
fn liveness(state: &ApiState) -> Result<String, String> {
    let Some(health) = state.metrics.capture_health() else {
        return Ok("ok: starting\n".to_owned());
    };
    match last_poll_age(health) {
        // Attached but not polled yet: starting.
        None => Ok("ok: capture attached\n".to_owned()),
        Some(age) if age <= state.stall_after.as_secs_f64() => Ok(format!("ok: flow map read {age:.1}s ago\n")),
        Some(age) => {
            Err(format!("capture stalled: flow map last read {age:.1}s ago (limit {}s)\n", state.stall_after.as_secs()))
        }
    }
}

/// Ready once the programs are attached, the flow map has been read, and the
/// inventory (if one is configured) has synced.
fn readiness(metrics: &Metrics) -> Result<String, String> {
    let Some(health) = metrics.capture_health() else {
        return Err("not ready: kernel programs not attached yet\n".to_owned());
    };
    if last_poll_age(health).is_none() {
        return Err("not ready: flow map not read yet\n".to_owned());
    }
    match metrics.inventory_synced() {
        Some(false) => Err("not ready: inventory has not finished its first sync\n".to_owned()),
        Some(true) if metrics.inventory_stale() => Err(
            "not ready: inventory stale (its source has been failing past the threshold; the last good state stays in force)\n"
                .to_owned(),
        ),
        Some(true) => Ok("ready: capture attached, inventory synced\n".to_owned()),
        None => Ok("ready: capture attached\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use http_body_util::BodyExt as _;

    use super::*;
    use crate::{
        capture::{CaptureHealth, clock::monotonic_ns},
        metrics::{InventoryState, MetricsConfig},
    };

    fn state() -> ApiState {
        ApiState { metrics: Metrics::new(MetricsConfig::default()), stall_after: Duration::from_secs(30) }
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
        state.metrics.expect_inventory();
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let health = Arc::new(CaptureHealth::default());
        state.metrics.attach_capture(Arc::clone(&health));
        assert!(get(&state, "/readyz").await.1.contains("flow map not read"));
        health.last_poll_ns.store(monotonic_ns(), Ordering::Relaxed);
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("inventory"), "{body}");
        state.metrics.set_inventory(&InventoryState { source: "cluster".into(), synced: true, ..Default::default() });
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
        // A stale source makes the node not ready, and it is ready again on recovery.
        let stale = InventoryState { source: "standalone".into(), synced: true, stale: true, ..Default::default() };
        state.metrics.set_inventory(&stale);
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("stale"), "{body}");
        state.metrics.set_inventory(&InventoryState { stale: false, ..stale });
        assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn liveness_fails_when_capture_stops_polling() {
        let state = state();
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
        let health = Arc::new(CaptureHealth::default());
        state.metrics.attach_capture(Arc::clone(&health));
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
        let server = tokio::spawn(serve(listener, state, stopped));
        let response = raw_get(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("application/openmetrics-text"), "{response}");
        assert!(response.contains("flow_observer_build_info{"), "{response}");
        assert!(response.trim_end().ends_with("# EOF"), "{response}");
        assert!(raw_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
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
