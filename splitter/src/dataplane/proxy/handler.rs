//! One request: route, filter, pick a backend, forward, and record what happened.

use std::{convert::Infallible, pin::Pin, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    access::{AccessEntry, AccessLog},
    body::ProxyBody,
    cors::{self, CorsStep},
    error::{ForwardError, RouteError, UpstreamError},
    grpc, h2c,
    hygiene::{self, XffPolicy},
    metrics::ProxyMetrics,
    mirror::{self, MirrorContext},
    request_body::IdleTimedBody,
    table::{Pick, ServingBackend, ServingEndpoint, ServingRoute, ServingTable},
    upgrade::{requested_upgrade, restore_upgrade_headers, splice},
    upstream::{HopHeaders, Upstream, add_forwarded, list_has, strip_hop_by_hop, upstream_uri},
};
use splitter_plan::plan::{
    l7::BackendProtocol,
    l7_match::{RequestView, strip_port},
};

/// What every connection of a listener shares.
pub(crate) struct ListenerShared {
    pub table: ArcSwap<ServingTable>,
    /// Where access log lines go; `None`: no log.
    pub access_log: Option<AccessLog>,
    /// The TLS configuration of an HTTPS listener (`None`: plain HTTP), read per handshake.
    pub tls: arc_swap::ArcSwapOption<rustls::ServerConfig>,
    pub upstream: Upstream,
    pub metrics: ProxyMetrics,
    /// The bound address as text, the `listener` label.
    pub listener: Arc<str>,
    pub port: u16,
    /// The empty label, for requests that matched no route or reached no backend.
    pub none: Arc<str>,
    /// Whose `X-Forwarded-For` is forwarded.
    pub xff: XffPolicy,
    /// How long an upgraded connection may carry no byte either way.
    pub tunnel_idle_timeout: std::time::Duration,
    /// How long an HTTP/2 request body may send nothing (HTTP/1.1: the socket watchdog's).
    pub body_read_timeout: std::time::Duration,
}

/// The Host of a request: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

pub(crate) async fn handle(
    shared: Arc<ListenerShared>,
    client: HeaderValue,
    https: bool,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    if let Err(bad) = hygiene::normalise(&mut req) {
        let err = ForwardError::BadRequest(bad);
        record(&shared, &shared.none, &shared.none, err.status(), start);
        return Ok(error_response(&err));
    }
    let route = {
        let table = shared.table.load();
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        table.find(request_host(&req), &view).cloned()
    };
    // Copied only when the access log is on.
    let logged = shared
        .access_log
        .as_ref()
        .map(|_| (req.method().clone(), req.uri().path().to_owned()));
    let Some(route) = route else {
        let err = ForwardError::NoRoute;
        record(&shared, &shared.none, &shared.none, err.status(), start);
        let mut resp = if grpc::is_grpc(req.headers()) {
            grpc::error_response(&err)
        } else {
            error_response(&err)
        };
        if let Some(logged) = logged {
            let none = &shared.none;
            log_access(
                &shared,
                &mut resp,
                none,
                none,
                Note::default(),
                logged,
                start,
            );
        }
        return Ok(resp);
    };
    // CORS: rules without the filter pay this one check.
    let cors_headers = match &route.filters.cors {
        None => None,
        Some(c) => match cors::step(c, &req) {
            CorsStep::Pass => None,
            CorsStep::Headers(h) => Some(Box::new(h)),
            CorsStep::Answer(mut resp) => {
                record(&shared, &route.label, &shared.none, resp.status(), start);
                if let Some(logged) = logged {
                    let none = &shared.none;
                    log_access(
                        &shared,
                        &mut resp,
                        &route.label,
                        none,
                        Note::default(),
                        logged,
                        start,
                    );
                }
                return Ok(resp);
            }
        },
    };
    let mut note = Note::default();
    // The status metrics count: the response's, or for a gRPC call the proxy answered (HTTP
    // 200 with a `grpc-status`), the HTTP status its failure stands for, so that failed calls
    // show as failures.
    let (mut resp, backend, counted) = match dispatch(
        &shared, &route, &client, https, req, start, &mut note,
    )
    .await
    {
        Ok((resp, backend)) => (resp, backend, None),
        Err((err, backend)) => {
            tracing::debug!(route = %route.label, error = %err, "request answered by the proxy");
            let mut resp = if route.grpc {
                grpc::error_response(&err)
            } else {
                error_response(&err)
            };
            if err.client_gone() {
                resp.extensions_mut().insert(ClientGone);
            }
            (resp, backend, Some(err.status()))
        }
    };
    hygiene::apply_header_filters(&route.filters.response_headers, resp.headers_mut());
    if let Some(h) = cors_headers {
        cors::insert(&mut resp, *h);
    }
    let counted = counted.unwrap_or_else(|| resp.status());
    record(&shared, &route.label, &backend, counted, start);
    if let Some(logged) = logged {
        log_access(
            &shared,
            &mut resp,
            &route.label,
            &backend,
            note,
            logged,
            start,
        );
    }
    Ok(resp)
}

/// Has `resp`'s body write the request's access log line when it ends.
fn log_access(
    shared: &ListenerShared,
    resp: &mut Response<ProxyBody>,
    route: &Arc<str>,
    backend: &Arc<str>,
    note: Note,
    (method, path): (http::Method, String),
    start: Instant,
) {
    let Some(log) = &shared.access_log else {
        return;
    };
    let entry = AccessEntry {
        log: log.clone(),
        listener: shared.listener.clone(),
        route: route.clone(),
        backend: backend.clone(),
        endpoint: note.endpoint,
        method,
        path,
        status: resp.status().as_u16(),
        start,
        upstream: note.upstream,
        bytes: 0,
        outcome: Default::default(),
    };
    resp.body_mut().log_to(Box::new(entry));
}

type Dispatched = Result<(Response<ProxyBody>, Arc<str>), (ForwardError, Arc<str>)>;

/// What the access log wants to know of a request beyond its route and status.
#[derive(Default)]
struct Note {
    endpoint: Option<std::net::SocketAddr>,
    /// From sending the request to the backend to its response head.
    upstream: Option<std::time::Duration>,
}

async fn dispatch(
    shared: &ListenerShared,
    route: &ServingRoute,
    client: &HeaderValue,
    https: bool,
    req: Request<Incoming>,
    start: Instant,
    note: &mut Note,
) -> Dispatched {
    if let Some(redirect) = &route.filters.redirect {
        let host = request_host(&req).map(strip_port).unwrap_or_default();
        let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
        let location = redirect.location_for(
            &scheme,
            host,
            req.uri().path(),
            req.uri().query(),
            route.prefix.as_deref(),
            shared.port,
        );
        let none = shared.none.clone();
        return match HeaderValue::try_from(location) {
            Ok(loc) => {
                let mut resp = Response::new(ProxyBody::local(Bytes::new()));
                *resp.status_mut() = redirect.status_code;
                resp.headers_mut().insert(header::LOCATION, loc);
                Ok((resp, none))
            }
            Err(e) => Err((
                ForwardError::Rewrite(RouteError::RewrittenPath(e.to_string())),
                none,
            )),
        };
    }
    match route.pick() {
        Pick::NoBackends => Err((ForwardError::NoBackends, shared.none.clone())),
        Pick::Invalid(b, reason) => Err((
            ForwardError::InvalidBackend {
                backend: b.name.to_string(),
                reason,
            },
            b.name.clone(),
        )),
        Pick::NoEndpoints(b) => Err((
            ForwardError::NoEndpoints(b.name.to_string()),
            b.name.clone(),
        )),
        Pick::Endpoint { backend, endpoint } => {
            let origin = Origin {
                client,
                scheme: if https { "https" } else { "http" },
            };
            let forwarded = match backend.protocol {
                BackendProtocol::Http1 => {
                    forward(
                        shared,
                        route,
                        &origin,
                        req,
                        (backend, endpoint),
                        start,
                        note,
                    )
                    .await
                }
                // Boxed: the HTTP/1.1 request's future stays the size it was.
                BackendProtocol::H2c => {
                    Box::pin(forward_h2c(
                        shared,
                        route,
                        &origin,
                        req,
                        (backend, endpoint),
                        start,
                        note,
                    ))
                    .await
                }
            };
            match forwarded {
                Ok(mut resp) => {
                    if let Some(f) = &backend.filters {
                        hygiene::apply_header_filters(&f.response_headers, resp.headers_mut());
                    }
                    Ok((resp, backend.name.clone()))
                }
                Err(e) => Err((e, backend.name.clone())),
            }
        }
    }
}

/// Marks a response to a request whose client went away before it was answered (its body
/// failed): an HTTP/2 stream reset early counts against the connection like any early reset
/// (see `idle::in_flight`), however fast the proxy gave up on it.
#[derive(Clone, Copy, Debug)]
pub struct ClientGone;

/// Who sent the request, as the backend is told: `X-Forwarded-For` and `X-Forwarded-Proto`.
struct Origin<'a> {
    client: &'a HeaderValue,
    scheme: &'static str,
}

async fn forward(
    shared: &ListenerShared,
    route: &ServingRoute,
    origin: &Origin<'_>,
    mut req: Request<Incoming>,
    (backend, endpoint): (&ServingBackend, &ServingEndpoint),
    start: Instant,
    note: &mut Note,
) -> Result<Response<ProxyBody>, ForwardError> {
    let authority = &endpoint.authority;
    let upgrade = requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == Version::HTTP_2;
    let rewritten = match &route.filters.rewrite {
        Some(rw) => rw
            .path_and_query(parts.uri.path(), parts.uri.query(), route.prefix.as_deref())
            .map_err(|e| ForwardError::Rewrite(RouteError::RewrittenPath(e.to_string())))?,
        None => None,
    };
    let path_and_query = rewritten
        .or_else(|| parts.uri.path_and_query().cloned())
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    strip_hop_by_hop(&mut parts.headers);
    hygiene::forwarded_from_client(&mut parts.headers, shared.xff);
    if parts.version == Version::HTTP_2 {
        hygiene::join_cookies(&mut parts.headers);
    }
    if let Some(protocol) = upgrade {
        restore_upgrade_headers(&mut parts.headers, protocol);
    }
    // HTTP/2 clients send the host as `:authority`; an HTTP/1.1 backend needs it as Host, or the
    // client would fill in the endpoint address.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    if let Some(host) = route
        .filters
        .rewrite
        .as_ref()
        .and_then(|r| r.hostname.clone())
    {
        parts.headers.insert(header::HOST, host);
    }
    hygiene::apply_header_filters(&route.filters.request_headers, &mut parts.headers);
    let hop = HopHeaders {
        client: origin.client,
        endpoint: authority,
        scheme: origin.scheme,
    };
    note.endpoint = Some(endpoint.addr);
    parts.uri = upstream_uri(path_and_query);
    parts.version = Version::HTTP_11;
    // Most requests have no body to stream (and an upgrade request's body, if any, is the
    // backend's business only once it switched): served by the lighter bodyless path. Mirror
    // copies see the request as the rule made it, before the backendRef's own filters.
    let body = {
        // An upgrade (WebSocket) is not copied: a mirror could switch protocols on a copy.
        let tee = if route.mirrors.is_empty() || client_upgrade.is_some() {
            None
        } else {
            let has_body = !body.is_end_stream();
            start_mirrors(shared, route, origin, &parts, has_body)
        };
        (!body.is_end_stream())
            .then(|| IdleTimedBody::new(body, h2.then_some(shared.body_read_timeout)).with_tee(tee))
    };
    if let Some(f) = &backend.filters {
        hygiene::apply_header_filters(&f.request_headers, &mut parts.headers);
    }

    // The two HTTPRoute timeouts collapse into one deadline: with no retries, one backend try
    // is the whole request. It runs until the response head arrives; a body that is already
    // streaming is not cut (long downloads and event streams stay possible).
    let deadline = [route.timeouts.request, route.timeouts.backend_request]
        .into_iter()
        .flatten()
        .min()
        .map(|d| start + d);
    let upstream_error = |source: UpstreamError| {
        let endpoint = authority.to_string();
        if matches!(source, UpstreamError::ReadTimeout) {
            ForwardError::Timeout(endpoint)
        } else if source.is_connect() {
            ForwardError::Connect { endpoint, source }
        } else {
            ForwardError::Upstream { endpoint, source }
        }
    };
    let timed_out = || ForwardError::Timeout(authority.to_string());

    let sent_at = Instant::now();
    let sent = std::pin::pin!(shared.upstream.send(endpoint.addr, &parts, &hop, body));
    let resp = within(deadline, sent)
        .await
        .ok_or_else(timed_out)?
        .map_err(upstream_error)?;
    note.upstream = Some(sent_at.elapsed());
    let (mut head, mut body) = resp.into_parts();
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        // A backend may only switch protocols when asked to.
        let (Some(client), Some(protocol), Some(conn)) = (
            client_upgrade,
            head.headers.get(header::UPGRADE).cloned(),
            body.take_upgraded(),
        ) else {
            return Err(ForwardError::UnaskedUpgrade(authority.to_string()));
        };
        splice(client, conn, shared.tunnel_idle_timeout);
        strip_hop_by_hop(&mut head.headers);
        restore_upgrade_headers(&mut head.headers, protocol);
        return Ok(Response::from_parts(head, ProxyBody::local(Bytes::new())));
    }
    strip_hop_by_hop(&mut head.headers);
    Ok(Response::from_parts(head, ProxyBody::direct(body)))
}

/// Starts the copies of a rule with RequestMirror filters (see `mirror`); kept out of
/// `forward` so that its locals do not enlarge every request's future.
#[inline(never)]
fn start_mirrors(
    shared: &ListenerShared,
    route: &ServingRoute,
    origin: &Origin<'_>,
    parts: &http::request::Parts,
    has_body: bool,
) -> Option<Box<mirror::BodyTee>> {
    let cx = MirrorContext {
        upstream: &shared.upstream,
        budget: &shared.metrics.mirrors,
        listener: &shared.listener,
        route: &route.label,
        client: origin.client,
        scheme: origin.scheme,
    };
    mirror::start(&cx, &route.mirrors, parts, has_body)
}

/// [`forward`] to a backend that speaks HTTP/2 with prior knowledge (`h2c`): the same header
/// hygiene and filters, the request as HTTP/2 (`:authority` from the Host the backend would
/// have seen), bodies streamed both ways with their trailers (`te: trailers` is kept: gRPC
/// servers want it).
async fn forward_h2c(
    shared: &ListenerShared,
    route: &ServingRoute,
    origin: &Origin<'_>,
    req: Request<Incoming>,
    (backend, endpoint): (&ServingBackend, &ServingEndpoint),
    start: Instant,
    note: &mut Note,
) -> Result<Response<ProxyBody>, ForwardError> {
    let authority = &endpoint.authority;
    if requested_upgrade(req.headers()).is_some() {
        return Err(ForwardError::Upstream {
            endpoint: authority.to_string(),
            source: UpstreamError::Protocol(
                "an HTTP/1.1 Upgrade cannot be forwarded to an HTTP/2 backend",
            ),
        });
    }
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == Version::HTTP_2;
    let rewritten = match &route.filters.rewrite {
        Some(rw) => rw
            .path_and_query(parts.uri.path(), parts.uri.query(), route.prefix.as_deref())
            .map_err(|e| ForwardError::Rewrite(RouteError::RewrittenPath(e.to_string())))?,
        None => None,
    };
    let path_and_query = rewritten
        .or_else(|| parts.uri.path_and_query().cloned())
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let te_trailers = list_has(&parts.headers, &header::TE, "trailers");
    // A gRPC client states its deadline; the wait for the answer is the client's then, not
    // the proxy's read timeout (a long call the client is willing to wait for is not cut).
    let client_deadline = if route.grpc {
        grpc::timeout(&parts.headers)
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    hygiene::forwarded_from_client(&mut parts.headers, shared.xff);
    hygiene::apply_header_filters(&route.filters.request_headers, &mut parts.headers);
    if let Some(f) = &backend.filters {
        hygiene::apply_header_filters(&f.request_headers, &mut parts.headers);
    }
    // The host the backend is told, as `:authority` (HTTP/2 has no Host field): a URLRewrite
    // hostname, else the Host as the filters left it, else the client's `:authority`.
    let host = route
        .filters
        .rewrite
        .as_ref()
        .and_then(|r| r.hostname.clone())
        .or_else(|| parts.headers.get(header::HOST).cloned())
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| parts.uri.authority().cloned())
        .unwrap_or_else(|| authority.clone());
    parts.headers.remove(header::HOST);
    add_forwarded(&mut parts.headers, origin.client, origin.scheme);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    note.endpoint = Some(endpoint.addr);
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(host);
    uri.path_and_query = Some(path_and_query);
    parts.uri = http::Uri::from_parts(uri)
        .map_err(|e| ForwardError::Rewrite(RouteError::RewrittenPath(e.to_string())))?;
    parts.version = Version::HTTP_2;
    // A gRPC stream may stay quiet for as long as the call lasts (a bidirectional stream
    // waiting for events): no body idle timer on gRPC calls; other HTTP/2 bodies keep theirs.
    let body_timeout = (h2 && !route.grpc).then_some(shared.body_read_timeout);
    let body = if body.is_end_stream() {
        h2c::empty()
    } else {
        IdleTimedBody::new(body, body_timeout).boxed_unsync()
    };
    let config = shared.upstream.config();
    // As on HTTP/1.1: the route's timeouts and the read timeout (or a gRPC client's own
    // deadline) bound the wait for the response head; a streaming response body is not cut.
    let deadline = [
        route.timeouts.request,
        route.timeouts.backend_request,
        client_deadline.or(config.read_timeout),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|d| start + d);
    let sent_at = Instant::now();
    let sent = std::pin::pin!(h2c::send(
        endpoint.addr,
        config.connect_timeout,
        Request::from_parts(parts, body),
    ));
    let resp = within(deadline, sent)
        .await
        .ok_or_else(|| ForwardError::Timeout(authority.to_string()))?
        .map_err(|source| {
            let endpoint = authority.to_string();
            if source.is_connect() {
                ForwardError::Connect { endpoint, source }
            } else {
                ForwardError::Upstream { endpoint, source }
            }
        })?;
    note.upstream = Some(sent_at.elapsed());
    let (mut head, body) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Ok(Response::from_parts(head, ProxyBody::http2(body)))
}

/// `fut`'s output, or `None` when `deadline` passes first. Taking the future pinned in the
/// caller keeps one copy of it in the request's state instead of one per branch.
async fn within<F: Future>(deadline: Option<Instant>, fut: Pin<&mut F>) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn error_response(err: &ForwardError) -> Response<ProxyBody> {
    let status = err.status();
    // The reason phrase only: endpoint addresses and plan details stay in the logs.
    let body: &'static [u8] = match status {
        StatusCode::BAD_REQUEST => b"Bad Request\n",
        StatusCode::NOT_FOUND => b"Not Found\n",
        StatusCode::SERVICE_UNAVAILABLE => b"Service Unavailable\n",
        StatusCode::BAD_GATEWAY => b"Bad Gateway\n",
        StatusCode::GATEWAY_TIMEOUT => b"Gateway Timeout\n",
        _ => b"Internal Server Error\n",
    };
    let mut resp = Response::new(ProxyBody::local(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn record(
    shared: &ListenerShared,
    route: &Arc<str>,
    backend: &Arc<str>,
    status: StatusCode,
    start: Instant,
) {
    shared.metrics.record(
        &shared.listener,
        route,
        backend,
        status.as_u16(),
        start.elapsed().as_secs_f64(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: &F) -> usize
    where
        F: Fn(Arc<ListenerShared>, HeaderValue, bool, Request<Incoming>) -> Fut,
    {
        size_of::<Fut>()
    }

    /// Every request's future is allocated and copied whole into its box (`server`): the cold
    /// paths stay boxed inside it and the hot ones pinned in place, so that it stays small.
    #[test]
    fn the_per_request_future_stays_small() {
        let size = future_size(&handle);
        assert!(size <= 2816, "the per-request future grew to {size} bytes");
    }
}
