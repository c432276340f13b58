//! HTTPRoute (v1 and v1beta1 share one schema), TCPRoute, UDPRoute and TLSRoute.

use gateway_api::httproutes::{
    HttpRoute as RawHttpRoute, HttpRouteRules, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType as HeaderType, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};

use gateway_api::tlsroutes::TlsRoute as RawTlsRoute;
use http::{HeaderName, Method};

use super::{
    FieldPath, GATEWAY_GROUP, Meta, ModelError, Refusal, STRIP_PATH_ANNOTATION,
    crd::{L4RouteParentRef, L4RouteRule},
    filters,
    http::{Filter, HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, Timeouts, ValueMatch},
    validate,
};

#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    /// HTTPRoute, or a GRPCRoute lowered to the same shape (its method matches become path
    /// matches on `/service/method`, see `grpc_route`): attachment, backends and statuses are
    /// the same rules for both, so one plan serves both.
    pub kind: RouteKind,
    pub meta: Meta,
    pub parent_refs: Vec<ParentRef>,
    /// Lower-case; empty = every host the listener accepts.
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRule>,
    /// `konghq.com/strip-path: "true"`: every PathPrefix match strips its prefix upstream.
    pub strip_path: bool,
}

/// Which route kind an [`HttpRoute`] value was read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    #[default]
    Http,
    Grpc,
}

impl RouteKind {
    pub fn kind(self) -> super::Kind {
        match self {
            Self::Http => super::Kind::HttpRoute,
            Self::Grpc => super::Kind::GrpcRoute,
        }
    }

    /// The `kind` string, as ReferenceGrants and listener `allowedRoutes` name it.
    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }
}

impl HttpRoute {
    pub fn key(&self) -> super::ObjectKey {
        super::ObjectKey::new(self.kind.kind(), &self.meta.namespace, &self.meta.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// ORed; never empty (the CRD default is one `PathPrefix /` match).
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub backends: Vec<BackendRef>,
    pub timeouts: Timeouts,
    /// Set when the rule asks for something this implementation does not do (ExtensionRef, a
    /// backendRef filter other than the header modifiers) or holds a value the CRD admits but nothing can serve (a regular
    /// expression that does not compile, a header value with control characters); the plan
    /// drops the rule and says so in the route status.
    pub unsupported: Option<String>,
}

/// A TCPRoute or UDPRoute: one rule of weighted backends, always served at L4.
#[derive(Clone, Debug, PartialEq)]
pub struct L4Route {
    pub meta: Meta,
    pub parent_refs: Vec<ParentRef>,
    pub backends: Vec<BackendRef>,
}

/// A TLSRoute: SNI hostnames and one rule of weighted backends. The connection is passed
/// through to a backend without terminating TLS (the backend holds the certificate).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsRoute {
    pub meta: Meta,
    pub parent_refs: Vec<ParentRef>,
    /// Lower-case SNI names, `*.` wildcards allowed; empty (alpha versions only) = every name
    /// the listener accepts.
    pub hostnames: Vec<String>,
    pub backends: Vec<BackendRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendRef {
    /// "" is the core group.
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Required for a core Service (CRD rule), optional for other kinds.
    pub port: Option<u16>,
    pub weight: u32,
    /// `backendRefs[].filters` (HTTPRoute only): applied when this backend is picked, after
    /// the rule's. Only the header modifiers are served; a rule with another kind is dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

impl BackendRef {
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }
}

/// Every `spec.parentRefs` entry through [`parent_ref`]. HTTPRoute's and the L4 routes' parent
/// refs are distinct generated types of the same shape, hence a macro, not a function.
macro_rules! parent_refs_of {
    ($list:expr, $namespace:expr, $spec:expr) => {
        $list
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                parent_ref(
                    $namespace,
                    p.group,
                    p.kind,
                    p.namespace,
                    p.name,
                    p.section_name,
                    p.port,
                    &$spec.field("parentRefs").index(i),
                )
            })
            .collect::<Result<Vec<_>, _>>()
    };
}
pub(crate) use parent_refs_of;

pub(crate) fn http_route(raw: RawHttpRoute, meta: Meta, id: &str) -> Result<HttpRoute, ModelError> {
    let spec = FieldPath::root(id, "spec");
    let parent_refs = parent_refs_of!(raw.spec.parent_refs, &meta.namespace, &spec)?;
    let mut hostnames = Vec::new();
    for (i, h) in raw
        .spec
        .hostnames
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        validate::hostname(&h, true).map_err(|e| spec.field("hostnames").index(i).err(e))?;
        hostnames.push(h);
    }
    // CRD default: one rule matching everything and forwarding nowhere.
    let raw_rules = raw
        .spec
        .rules
        .unwrap_or_else(|| vec![HttpRouteRules::default()]);
    if raw_rules.len() > 16 {
        return Err(spec
            .field("rules")
            .err(format!("{} rules, the limit is 16", raw_rules.len())));
    }
    // Counted as written: a match dropped as unsupported still counts against the CRD limit.
    let total_matches: usize = raw_rules
        .iter()
        .map(|r| r.matches.as_ref().map_or(1, Vec::len))
        .sum();
    if total_matches > 128 {
        return Err(spec.field("rules").err(format!(
            "{total_matches} matches in total, the limit is 128"
        )));
    }
    let rules = raw_rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| http_rule(r, &meta.namespace, &spec.field("rules").index(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let strip_path = meta
        .annotations
        .get(STRIP_PATH_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(HttpRoute {
        kind: RouteKind::Http,
        meta,
        parent_refs,
        hostnames,
        rules,
        strip_path,
    })
}

fn http_rule(r: HttpRouteRules, ns: &str, at: &FieldPath<'_>) -> Result<HttpRule, ModelError> {
    let raw_matches = r
        .matches
        .unwrap_or_else(|| vec![HttpRouteRulesMatches::default()]);
    if raw_matches.len() > 64 {
        return Err(at.field("matches").err("more than 64 matches"));
    }
    // Taken before conversion: a match dropped as unsupported must not change the CEL rules.
    let one_prefix_match = raw_matches.len() == 1
        && raw_matches[0]
            .path
            .as_ref()
            .and_then(|p| p.r#type.as_ref())
            .is_none_or(|t| matches!(t, PathType::PathPrefix));
    let mut unsupported = None;
    let mut matches = Vec::with_capacity(raw_matches.len());
    for (i, m) in raw_matches.into_iter().enumerate() {
        match route_match(m, &at.field("matches").index(i)) {
            Ok(m) => matches.push(m),
            Err(Refusal::Unsupported(why)) => {
                unsupported.get_or_insert(why);
            }
            Err(Refusal::Invalid(e)) => return Err(e),
        }
    }
    let mut backends = Vec::new();
    for (i, b) in r.backend_refs.unwrap_or_default().into_iter().enumerate() {
        let bat = at.field("backendRefs").index(i);
        let (filters, problem) =
            filters::backend_filters(b.filters.unwrap_or_default(), ns, &bat.field("filters"))?;
        if let Some(p) = problem {
            unsupported.get_or_insert(p);
        }
        let mut planned = backend_ref(
            ns,
            b.group,
            b.kind,
            b.namespace,
            b.name,
            b.port,
            b.weight,
            &bat,
        )?;
        planned.filters = filters;
        backends.push(planned);
    }
    if backends.len() > 16 {
        return Err(at.field("backendRefs").err("more than 16 backendRefs"));
    }
    let (filters, filter_problem) =
        filters::rule_filters(r.filters.unwrap_or_default(), ns, &at.field("filters"))?;
    if let Some(p) = filter_problem {
        unsupported.get_or_insert(p);
    }
    // CEL rules of the CRD.
    let has_redirect = filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    let has_rewrite = filters.iter().any(|f| matches!(f, Filter::UrlRewrite(_)));
    if has_redirect && has_rewrite {
        return Err(at
            .field("filters")
            .err("RequestRedirect and URLRewrite cannot be combined"));
    }
    if has_redirect && !backends.is_empty() {
        return Err(at.err("RequestRedirect filter must not be used together with backendRefs"));
    }
    if filters::uses_replace_prefix(&filters) && !one_prefix_match {
        return Err(at
            .field("filters")
            .err("ReplacePrefixMatch needs exactly one match, of type PathPrefix"));
    }
    let mut timeouts = Timeouts::default();
    if let Some(t) = r.timeouts {
        if let Some(v) = t.request {
            timeouts.request =
                validate::duration(&v).map_err(|e| at.field("timeouts.request").err(e))?;
        }
        if let Some(v) = t.backend_request {
            timeouts.backend_request =
                validate::duration(&v).map_err(|e| at.field("timeouts.backendRequest").err(e))?;
        }
        if let (Some(req), Some(be)) = (timeouts.request, timeouts.backend_request)
            && be > req
        {
            return Err(at
                .field("timeouts.backendRequest")
                .err("must not be greater than timeouts.request"));
        }
    }
    Ok(HttpRule {
        matches,
        filters,
        backends,
        timeouts,
        unsupported,
    })
}

fn route_match(m: HttpRouteRulesMatches, at: &FieldPath<'_>) -> Result<RouteMatch, Refusal> {
    let (ty, value) = match m.path {
        Some(p) => (
            p.r#type.unwrap_or(PathType::PathPrefix),
            p.value.unwrap_or_else(|| "/".into()),
        ),
        None => (PathType::PathPrefix, "/".to_string()),
    };
    let pat = at.field("path.value");
    let path = match ty {
        PathType::Exact => {
            validate::http_path(&value).map_err(|e| pat.err(e))?;
            PathMatch::Exact(value)
        }
        PathType::PathPrefix => {
            validate::http_path(&value).map_err(|e| pat.err(e))?;
            let trimmed = value.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            })
        }
        PathType::RegularExpression => {
            if value.is_empty() || value.len() > 1024 {
                return Err(pat
                    .err("a regular expression must be 1 to 1024 characters")
                    .into());
            }
            PathMatch::Regex(pattern(&value, &pat)?)
        }
    };
    let headers = header_matches(
        m.headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let regex = matches!(h.r#type, Some(HeaderType::RegularExpression));
                (h.name, regex, h.value)
            })
            .collect(),
        at,
    )?;
    let mut query: Vec<QueryMatch> = Vec::new();
    for (i, q) in m.query_params.unwrap_or_default().into_iter().enumerate() {
        let qat = at.field("queryParams").index(i);
        if q.name.is_empty() || q.name.len() > 256 {
            return Err(qat.field("name").err("must be 1 to 256 characters").into());
        }
        if q.value.is_empty() || q.value.len() > 1024 {
            return Err(qat
                .field("value")
                .err("must be 1 to 1024 characters")
                .into());
        }
        if query.iter().any(|x| x.name == q.name) {
            continue;
        }
        let value = match q.r#type.unwrap_or(QueryType::Exact) {
            QueryType::Exact => ValueMatch::Exact(q.value),
            QueryType::RegularExpression => {
                ValueMatch::Regex(pattern(&q.value, &qat.field("value"))?)
            }
        };
        query.push(QueryMatch {
            name: q.name,
            value,
        });
    }
    let method = m
        .method
        .map(|m| {
            let name = serde_json::to_value(&m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{m:?}").to_ascii_uppercase());
            Method::from_bytes(name.as_bytes())
                .map_err(|_| at.field("method").err(format!("{name:?} is not a method")))
        })
        .transpose()?;
    Ok(RouteMatch {
        path,
        headers,
        query,
        method,
        grpc: None,
    })
}

/// `matches[].headers` of an HTTPRoute or GRPCRoute as `(name, is a regular expression,
/// value)`: names checked, of several entries with one name only the first kept (spec).
pub(crate) fn header_matches(
    raw: Vec<(String, bool, String)>,
    at: &FieldPath<'_>,
) -> Result<Vec<HeaderMatch>, Refusal> {
    if raw.len() > 16 {
        return Err(at
            .field("headers")
            .err("more than 16 header matches")
            .into());
    }
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (i, (raw_name, regex, raw_value)) in raw.into_iter().enumerate() {
        let hat = at.field("headers").index(i);
        validate::header_name(&raw_name).map_err(|e| hat.field("name").err(e))?;
        if raw_value.is_empty() || raw_value.len() > 4096 {
            return Err(hat
                .field("value")
                .err("must be 1 to 4096 characters")
                .into());
        }
        let name = HeaderName::from_bytes(raw_name.as_bytes())
            .map_err(|_| hat.field("name").err("not a valid header name"))?;
        if headers.iter().any(|x| x.name == name) {
            continue;
        }
        let value = if regex {
            ValueMatch::Regex(pattern(&raw_value, &hat.field("value"))?)
        } else {
            ValueMatch::Exact(raw_value)
        };
        headers.push(HeaderMatch { name, value });
    }
    Ok(headers)
}

/// A regular expression the CRD admits (any string) compiled, or why it cannot be served.
pub(crate) fn pattern(source: &str, at: &FieldPath<'_>) -> Result<Pattern, Refusal> {
    Pattern::new(source).map_err(|e| {
        // The parser's message draws a caret diagram over several lines; a status condition
        // and a `check` line want its last line, which names the problem.
        let text = e.to_string();
        let why = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("does not compile");
        let why = why.strip_prefix("error: ").unwrap_or(why);
        Refusal::Unsupported(format!(
            "{}: invalid regular expression {source:?}: {why}",
            at.path
        ))
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "the fields of a parentRef, whose generated types differ per route kind"
)]
pub(crate) fn parent_ref(
    route_ns: &str,
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
    at: &FieldPath<'_>,
) -> Result<ParentRef, ModelError> {
    if name.is_empty() {
        return Err(at.field("name").err("must not be empty"));
    }
    let port = port
        .map(validate::port)
        .transpose()
        .map_err(|e| at.field("port").err(e))?;
    Ok(ParentRef {
        group: group.unwrap_or_else(|| GATEWAY_GROUP.to_string()),
        kind: kind.unwrap_or_else(|| "Gateway".to_string()),
        namespace: namespace.unwrap_or_else(|| route_ns.to_string()),
        name,
        section_name: section_name.filter(|s| !s.is_empty()),
        port,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "the fields of a backendRef, whose generated types differ per route kind"
)]
pub(crate) fn backend_ref(
    route_ns: &str,
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    port: Option<i32>,
    weight: Option<i32>,
    at: &FieldPath<'_>,
) -> Result<BackendRef, ModelError> {
    if name.is_empty() {
        return Err(at.field("name").err("must not be empty"));
    }
    let weight = validate::weight(weight).map_err(|e| at.field("weight").err(e))?;
    let port = port
        .map(validate::port)
        .transpose()
        .map_err(|e| at.field("port").err(e))?;
    let group = group.unwrap_or_default();
    let group = if group == "core" {
        String::new()
    } else {
        group
    };
    let kind = kind.unwrap_or_else(|| "Service".to_string());
    if group.is_empty() && kind == "Service" && port.is_none() {
        return Err(at.field("port").err("must have port for Service reference"));
    }
    Ok(BackendRef {
        group,
        kind,
        namespace: namespace.unwrap_or_else(|| route_ns.to_string()),
        name,
        port,
        weight,
        filters: Vec::new(),
    })
}

/// The backendRefs of a route kind with exactly one rule of 1 to 16 of them (TCPRoute,
/// UDPRoute, TLSRoute), each made by `resolve` with its field path.
fn one_rule<R: Default, B>(
    rules: Vec<R>,
    refs_of: impl FnOnce(R) -> Vec<B>,
    spec: &FieldPath<'_>,
    resolve: impl Fn(B, &FieldPath<'_>) -> Result<BackendRef, ModelError>,
) -> Result<Vec<BackendRef>, ModelError> {
    if rules.len() != 1 {
        return Err(spec
            .field("rules")
            .err(format!("must hold exactly one rule, found {}", rules.len())));
    }
    let refs = refs_of(rules.into_iter().next().unwrap_or_default());
    let at = spec.field("rules").index(0).field("backendRefs");
    if refs.is_empty() || refs.len() > 16 {
        return Err(at.err("needs 1 to 16 backendRefs"));
    }
    refs.into_iter()
        .enumerate()
        .map(|(i, b)| resolve(b, &at.index(i)))
        .collect()
}

pub(crate) fn l4_route(
    meta: Meta,
    parent_refs: Option<Vec<L4RouteParentRef>>,
    rules: Vec<L4RouteRule>,
    id: &str,
) -> Result<L4Route, ModelError> {
    let spec = FieldPath::root(id, "spec");
    let parent_refs = parent_refs_of!(parent_refs, &meta.namespace, &spec)?;
    let backends = one_rule(
        rules,
        |r| r.backend_refs,
        &spec,
        |b, at| {
            backend_ref(
                &meta.namespace,
                b.group,
                b.kind,
                b.namespace,
                b.name,
                b.port,
                b.weight,
                at,
            )
        },
    )?;
    Ok(L4Route {
        meta,
        parent_refs,
        backends,
    })
}

/// A TLSRoute, validated as the v1 CRD does: 1 to 1024 hostnames (the alpha versions, `v1`
/// false, may have none), exactly one rule, 1 to 16 backendRefs.
pub(crate) fn tls_route(
    raw: RawTlsRoute,
    meta: Meta,
    v1: bool,
    id: &str,
) -> Result<TlsRoute, ModelError> {
    let spec = FieldPath::root(id, "spec");
    let parent_refs = parent_refs_of!(raw.spec.parent_refs, &meta.namespace, &spec)?;
    let hostnames = raw.spec.hostnames;
    if (v1 && hostnames.is_empty()) || hostnames.len() > 1024 {
        return Err(spec.field("hostnames").err(format!(
            "must hold 1 to 1024 hostnames, found {}",
            hostnames.len()
        )));
    }
    for (i, h) in hostnames.iter().enumerate() {
        validate::hostname(h, true).map_err(|e| spec.field("hostnames").index(i).err(e))?;
    }
    let backends = one_rule(
        raw.spec.rules,
        |r| r.backend_refs,
        &spec,
        |b, at| {
            backend_ref(
                &meta.namespace,
                b.group,
                b.kind,
                b.namespace,
                b.name,
                b.port,
                b.weight,
                at,
            )
        },
    )?;
    Ok(TlsRoute {
        meta,
        parent_refs,
        hostnames,
        backends,
    })
}
