//! The CORS filter's answers: which `Access-Control-*` headers a preflight or an actual request
//! gets. Pure: the proxy hands in the request's `Origin` and `Access-Control-Request-*` values.
//!
//! The choices the spec leaves open follow Envoy (the upstream tests accept both): an allowed
//! origin is echoed, never `*`, and a wildcard `allowMethods` / `allowHeaders` echoes what the
//! preflight asks for; with no `Access-Control-Request-Headers` a wildcard `allowHeaders` is
//! written as `*` unless credentials are allowed, where `*` would mean a literal header name.

use http::{HeaderName, HeaderValue, header};

use super::l7::{Allowed, Cors};

/// The headers to add to a response, in the order they are written.
pub type CorsHeaders = Vec<(HeaderName, HeaderValue)>;

impl Cors {
    /// Whether `origin` is one of `allowOrigins`.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|p| p.matches(origin))
    }

    /// A preflight's answer headers (the proxy answers it 200 itself), or `None` when the
    /// origin is not allowed (the proxy answers 403).
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        request_method: &HeaderValue,
        request_headers: Option<&HeaderValue>,
    ) -> Option<CorsHeaders> {
        let mut out = self.actual(origin)?;
        match &self.allow_methods {
            Allowed::Any => {
                out.push((header::ACCESS_CONTROL_ALLOW_METHODS, request_method.clone()))
            }
            Allowed::List(Some(list)) => {
                out.push((header::ACCESS_CONTROL_ALLOW_METHODS, value(list)?));
            }
            Allowed::List(None) => {}
        }
        match (&self.allow_headers, request_headers) {
            (Allowed::Any, Some(asked)) => {
                out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone()));
            }
            (Allowed::Any, None) if !self.allow_credentials => out.push((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("*"),
            )),
            (Allowed::List(Some(list)), _) => {
                out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, value(list)?));
            }
            _ => {}
        }
        out.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age),
        ));
        Some(out)
    }

    /// The headers an actual (non-preflight) response gets, or `None` when the origin is not
    /// allowed (the response is then left as the backend wrote it).
    pub fn actual(&self, origin: &HeaderValue) -> Option<CorsHeaders> {
        if !self.allows(origin.to_str().ok()?) {
            return None;
        }
        let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
        if self.allow_credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(expose) = &self.expose_headers {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, value(expose)?));
        }
        Some(out)
    }
}

/// The model built these lists from header names and methods only, so this cannot fail.
fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cors::origin_pattern;

    fn cors(creds: bool, methods: Allowed, headers: Allowed) -> Cors {
        Cors {
            allow_origins: vec![
                origin_pattern("https://www.foo.com").unwrap(),
                origin_pattern("https://*.bar.com").unwrap(),
            ],
            allow_methods: methods,
            allow_headers: headers,
            expose_headers: Some("x-header-3, x-header-4".into()),
            max_age: 3600,
            allow_credentials: creds,
        }
    }

    fn get<'a>(h: &'a CorsHeaders, name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_every_header() {
        let c = cors(
            true,
            Allowed::List(Some("GET, OPTIONS".into())),
            Allowed::List(Some("x-header-1, x-header-2".into())),
        );
        let h = c
            .preflight(
                &HeaderValue::from_static("https://xpto.www.bar.com"),
                &HeaderValue::from_static("GET"),
                None,
            )
            .unwrap();
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://xpto.www.bar.com")
        );
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("3600"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert!(
            c.preflight(
                &HeaderValue::from_static("https://foobar.com"),
                &HeaderValue::from_static("GET"),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn wildcards_echo_what_is_asked_and_credentials_never_get_a_star() {
        let c = cors(true, Allowed::Any, Allowed::Any);
        let origin = HeaderValue::from_static("https://www.foo.com");
        let put = HeaderValue::from_static("PUT");
        let asked = HeaderValue::from_static("x-a, x-b");
        let h = c.preflight(&origin, &put, Some(&asked)).unwrap();
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-a, x-b"));
        let h = c.preflight(&origin, &put, None).unwrap();
        assert_eq!(get(&h, "access-control-allow-headers"), None);
        let c = cors(false, Allowed::Any, Allowed::Any);
        let h = c.preflight(&origin, &put, None).unwrap();
        assert_eq!(get(&h, "access-control-allow-headers"), Some("*"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
    }
}
