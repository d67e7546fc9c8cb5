//! The HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process serves) and
//! `/readyz` (see [`super::health`]), for Prometheus, ECS and NLB health checks. Anything else
//! is 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::context::{Shared, stop_requested};

/// HTTP connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Prometheus' text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves HTTP on `listener` until the proxy stops.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    super::accept_until_stopped(
        listener,
        &shared.clone(),
        MAX_CONNECTIONS,
        "http",
        |stream, _| connection(stream, shared.clone()),
    )
    .await;
}

/// Serves one HTTP connection until it ends or the proxy stops.
async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    let service = service_fn(|req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&req, &shared).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        _ = stop_requested(&mut stopped) => {}
    }
}

/// Answers one request.
async fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(shared.render_metrics())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => match shared.readiness.check(shared).await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
