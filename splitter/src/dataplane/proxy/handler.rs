//! One request: route, filter, pick a backend, forward, and record what happened.

use std::{convert::Infallible, pin::Pin, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Version, header,
    uri::{PathAndQuery, Scheme},
};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    body::ProxyBody,
    error::{ForwardError, RouteError, UpstreamError},
    hygiene::{self, XffPolicy},
    metrics::ProxyMetrics,
    table::{Pick, ServingEndpoint, ServingRoute, ServingTable},
    upgrade::{requested_upgrade, restore_upgrade_headers, splice},
    upstream::{HopHeaders, Upstream, strip_hop_by_hop, upstream_uri},
};
use splitter_plan::plan::l7_match::{RequestView, strip_port};

/// What every connection of a listener shares.
pub(crate) struct ListenerShared {
    pub table: ArcSwap<ServingTable>,
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
    let Some(route) = route else {
        let err = ForwardError::NoRoute;
        record(&shared, &shared.none, &shared.none, err.status(), start);
        return Ok(error_response(&err));
    };
    let (mut resp, backend) = match dispatch(&shared, &route, &client, https, req, start).await {
        Ok(ok) => ok,
        Err((err, backend)) => {
            tracing::debug!(route = %route.label, error = %err, "request answered by the proxy");
            (error_response(&err), backend)
        }
    };
    hygiene::apply_header_filters(&route.filters.response_headers, resp.headers_mut());
    record(&shared, &route.label, &backend, resp.status(), start);
    Ok(resp)
}

type Dispatched = Result<(Response<ProxyBody>, Arc<str>), (ForwardError, Arc<str>)>;

async fn dispatch(
    shared: &ListenerShared,
    route: &ServingRoute,
    client: &HeaderValue,
    https: bool,
    req: Request<Incoming>,
    start: Instant,
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
            match forward(shared, route, client, req, endpoint, start).await {
                Ok(resp) => Ok((resp, backend.name.clone())),
                Err(e) => Err((e, backend.name.clone())),
            }
        }
    }
}

async fn forward(
    shared: &ListenerShared,
    route: &ServingRoute,
    client: &HeaderValue,
    mut req: Request<Incoming>,
    endpoint: &ServingEndpoint,
    start: Instant,
) -> Result<Response<ProxyBody>, ForwardError> {
    let authority = &endpoint.authority;
    let upgrade = requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
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
        client,
        endpoint: authority,
    };
    parts.uri = upstream_uri(path_and_query);
    parts.version = Version::HTTP_11;

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
        if source.is_connect() {
            ForwardError::Connect { endpoint, source }
        } else {
            ForwardError::Upstream { endpoint, source }
        }
    };
    let timed_out = || ForwardError::Timeout(authority.to_string());

    if client_upgrade.is_none() && body.is_end_stream() {
        // Most requests: no body to stream, no protocol switch; served from this task.
        let sent = std::pin::pin!(shared.upstream.send_bodyless(endpoint.addr, &parts, &hop));
        let mut resp = within(deadline, sent)
            .await
            .ok_or_else(timed_out)?
            .map_err(upstream_error)?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ForwardError::UnaskedUpgrade(authority.to_string()));
        }
        strip_hop_by_hop(resp.headers_mut());
        return Ok(resp.map(ProxyBody::Direct));
    }

    hop.apply(&mut parts.headers);
    // Boxed for the same reason as connecting in `send_bodyless`: requests with a body are the
    // rarer kind, and hyper's client futures are large.
    let mut sent = Box::pin(
        shared
            .upstream
            .send(endpoint.addr, Request::from_parts(parts, body)),
    );
    let mut resp = within(deadline, sent.as_mut())
        .await
        .ok_or_else(timed_out)?
        .map_err(upstream_error)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A backend may only switch protocols when asked to.
        let (Some(client), Some(protocol)) =
            (client_upgrade, resp.headers().get(header::UPGRADE).cloned())
        else {
            return Err(ForwardError::UnaskedUpgrade(authority.to_string()));
        };
        splice(
            client,
            hyper::upgrade::on(&mut resp),
            shared.tunnel_idle_timeout,
        );
        strip_hop_by_hop(resp.headers_mut());
        restore_upgrade_headers(resp.headers_mut(), protocol);
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    Ok(resp.map(ProxyBody::Hyper))
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
