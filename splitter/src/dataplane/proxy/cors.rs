//! The CORS filter on the request path: a preflight (OPTIONS with `Origin` and
//! `Access-Control-Request-Method`) is answered by the proxy, an actual request from an allowed
//! origin gets the `Access-Control-*` headers on its response. The
//! headers themselves are the plan's pure decision (`splitter_plan::plan::l7_cors`).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use super::body::ProxyBody;
use splitter_plan::plan::{l7::Cors, l7_cors::CorsHeaders};

pub enum CorsStep {
    /// A preflight: this is the answer (200 with the headers for an allowed origin, 403 without
    /// any for another), with an empty body.
    Answer(Response<ProxyBody>),
    /// An actual request from an allowed origin: forward it, add these to the response.
    Headers(CorsHeaders),
    /// No `Origin`, or one not allowed: the request is served as if there were no filter.
    Pass,
}

pub fn step<B>(cors: &Cors, req: &Request<B>) -> CorsStep {
    let headers = req.headers();
    let Some(origin) = headers.get(header::ORIGIN) else {
        return CorsStep::Pass;
    };
    let preflight = req.method() == Method::OPTIONS;
    match headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        Some(method) if preflight => {
            let asked = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
            // The gateway owns the preflights of a route with the filter: an origin that is
            // not allowed gets 403 without any `Access-Control-*` header (the browser then
            // refuses the actual request), never the backend's own OPTIONS answer.
            let mut resp = Response::new(ProxyBody::local(Bytes::new()));
            match cors.preflight(origin, method, asked) {
                Some(add) => insert(&mut resp, add),
                None => *resp.status_mut() = StatusCode::FORBIDDEN,
            }
            CorsStep::Answer(resp)
        }
        _ => cors
            .actual(origin)
            .map_or(CorsStep::Pass, CorsStep::Headers),
    }
}

/// Sets each header, replacing what the backend may have written under that name.
pub fn insert<B>(resp: &mut Response<B>, add: CorsHeaders) {
    let h = resp.headers_mut();
    for (name, value) in add {
        h.insert(name, value);
    }
}
