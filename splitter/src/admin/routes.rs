//! The admin pages.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::AdminState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) async fn answer(
    state: Arc<AdminState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
    }
    let path = req.uri().path();
    // A v4-mapped peer on a dual-stack socket is still loopback when it is 127.0.0.1.
    if path.starts_with("/debug/") && !peer.ip().to_canonical().is_loopback() {
        return Ok(text(
            StatusCode::FORBIDDEN,
            "/debug/ answers loopback peers only\n",
        ));
    }
    Ok(match path {
        "/healthz" => healthz(&state),
        "/readyz" => readyz(&state),
        "/debug/l4" => match &state.kernel {
            Some(k) => json(&k.snapshot()),
            None => json(&serde_json::json!({ "ifaces": [], "serving": false,
                "reason": "no interface to attach to: L4 listeners are planned but not served" })),
        },
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => with_type(StatusCode::OK, Bytes::from(out), OPENMETRICS),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode metrics: {e}\n"),
                ),
            }
        }
        "/debug/plan" => json(&(state.plan)()),
        "/debug/heap" => text(StatusCode::OK, &crate::heap::report()),
        "/debug/status" => match &state.status {
            Some(status) => json(&status()),
            None => text(StatusCode::NOT_FOUND, "no status here\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// Alive while the control loop beats (see [`crate::health::Heartbeat`]).
fn healthz(state: &AdminState) -> Response<Full<Bytes>> {
    match state.heartbeat.as_ref().map(|h| h.check()) {
        Some(Err(why)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not healthy: {why}\n"),
        ),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

/// Ready once the first plan is applied, while every L7 listener of the plan is bound and
/// while the kernel half (if this agent runs one) serves; the body says what is missing.
fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    if !state.readiness.get() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
    }
    let problems: Vec<String> = [
        state.binds.as_ref().map(|b| b.ready()),
        state.kernel.as_ref().map(|k| k.ready()),
    ]
    .into_iter()
    .flatten()
    .filter_map(Result::err)
    .collect();
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {}\n", problems.join("\nnot ready: ")),
        )
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(json) => with_type(StatusCode::OK, Bytes::from(json), "application/json"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode JSON: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        Bytes::copy_from_slice(body.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
