//! The CORS filter on the request path: a preflight from an allowed origin is answered by the
//! proxy, an actual request from one gets the `Access-Control-*` headers on its response. The
//! headers themselves are the plan's pure decision (`splitter_plan::plan::l7_cors`).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use super::body::ProxyBody;
use splitter_plan::plan::{l7::Cors, l7_cors::CorsHeaders};

pub enum CorsStep {
    /// A preflight from an allowed origin: this is the answer (200, empty body).
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
            match cors.preflight(origin, method, asked) {
                Some(add) => {
                    let mut resp = Response::new(ProxyBody::local(Bytes::new()));
                    *resp.status_mut() = StatusCode::OK;
                    insert(&mut resp, add);
                    CorsStep::Answer(resp)
                }
                None => CorsStep::Pass,
            }
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
