//! HTTPRoute rule filters: from the CRD shape (a `type` plus one matching field) to
//! [`Filter`], with the CEL rules the CRD enforces.

use gateway_api::httproutes::{
    HttpRouteRulesFilters as RawFilter,
    HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType,
};

use gateway_api::httproutes::{
    HttpRouteRulesBackendRefsFilters as RawBackendFilter, HttpRouteRulesFiltersCors as RawCors,
    HttpRouteRulesFiltersRequestMirror as RawMirror,
};
use http::{HeaderName, HeaderValue, StatusCode, uri::Scheme as UriScheme};

use super::{
    FieldPath, ModelError, Refusal,
    cors::{self, Allowed, CORS_METHODS, Cors},
    http::{
        Filter, Fraction, HeaderModifier, Mirror, PathModifier, REDIRECT_STATUS_CODES, Redirect,
        UrlRewrite, is_framing_header,
    },
    route, validate,
};

/// `(name, value)` pairs of a header modifier's `set` or `add` list. The request and response
/// modifiers are distinct generated types of the same shape, hence a macro, not a function.
macro_rules! name_values {
    ($list:expr) => {
        $list
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect()
    };
}

/// The rule's filters in spec order, and, when one of them is a type we do not implement, why
/// (the rule is then dropped by the plan rather than served without it).
pub(crate) fn rule_filters(
    raw: Vec<RawFilter>,
    ns: &str,
    at: &FieldPath<'_>,
) -> Result<(Vec<Filter>, Option<String>), ModelError> {
    if raw.len() > 16 {
        return Err(at.err("more than 16 filters"));
    }
    let mut out = Vec::new();
    let mut unsupported = None;
    let mut seen: Vec<&'static str> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let fat = at.index(i);
        let name = type_name(&f.r#type);
        // Only RequestMirror and ExtensionRef may repeat (CEL).
        if !matches!(
            f.r#type,
            FilterType::RequestMirror | FilterType::ExtensionRef
        ) {
            if seen.contains(&name) {
                return Err(fat
                    .field("type")
                    .err(format!("{name} may appear only once per rule")));
            }
            seen.push(name);
        }
        match filter(f, name, ns, &fat) {
            Ok(f) => out.push(f),
            Err(Refusal::Unsupported(why)) => {
                unsupported.get_or_insert(why);
            }
            Err(Refusal::Invalid(e)) => return Err(e),
        }
    }
    Ok((out, unsupported))
}

/// A backendRef's filters. The generated type has the rule filters' shape (the CRD shares one
/// schema), so it is read through that one; only the header modifiers are served per backend,
/// any other type drops the rule with a reason naming the field.
pub(crate) fn backend_filters(
    raw: Vec<RawBackendFilter>,
    ns: &str,
    at: &FieldPath<'_>,
) -> Result<(Vec<Filter>, Option<String>), ModelError> {
    let mut same_shape = Vec::with_capacity(raw.len());
    for (i, f) in raw.into_iter().enumerate() {
        let converted = serde_json::to_value(f)
            .and_then(serde_json::from_value::<RawFilter>)
            .map_err(|e| at.index(i).err(format!("not a filter: {e}")))?;
        same_shape.push(converted);
    }
    let (filters, mut unsupported) = rule_filters(same_shape, ns, at)?;
    if unsupported.is_none()
        && let Some((i, f)) = filters.iter().enumerate().find(|(_, f)| {
            !matches!(
                f,
                Filter::RequestHeaderModifier(_) | Filter::ResponseHeaderModifier(_)
            )
        })
    {
        unsupported = Some(format!(
            "{}.type: {} is not supported as a backendRef filter (only RequestHeaderModifier \
             and ResponseHeaderModifier)",
            at.index(i).path,
            filter_name(f)
        ));
    }
    Ok((filters, unsupported))
}

fn filter_name(f: &Filter) -> &'static str {
    match f {
        Filter::RequestHeaderModifier(_) => "RequestHeaderModifier",
        Filter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
        Filter::RequestRedirect(_) => "RequestRedirect",
        Filter::UrlRewrite(_) => "URLRewrite",
        Filter::RequestMirror(_) => "RequestMirror",
        Filter::Cors(_) => "CORS",
    }
}

/// `requestMirror`: the backendRef as any other (a Service needs a port), and the share of
/// requests, `percent` or `fraction` but not both (CEL).
fn mirror(m: RawMirror, ns: &str, at: &FieldPath<'_>) -> Result<Mirror, ModelError> {
    let b = m.backend_ref;
    let backend = route::backend_ref(
        ns,
        b.group,
        b.kind,
        b.namespace,
        b.name,
        b.port,
        None,
        &at.field("backendRef"),
    )?;
    let fraction = match (m.percent, m.fraction) {
        (Some(_), Some(_)) => {
            return Err(at.err("only one of percent or fraction may be specified"));
        }
        (Some(p), None) => {
            let p = u32::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
                at.field("percent")
                    .err(format!("{p} is not within 0..=100"))
            })?;
            Fraction {
                numerator: p,
                denominator: 100,
            }
        }
        (None, Some(f)) => {
            let fat = at.field("fraction");
            let numerator = u32::try_from(f.numerator)
                .map_err(|_| fat.field("numerator").err("must not be negative"))?;
            let denominator = u32::try_from(f.denominator.unwrap_or(100))
                .ok()
                .filter(|d| *d >= 1)
                .ok_or_else(|| fat.field("denominator").err("must be at least 1"))?;
            if numerator > denominator {
                return Err(fat.err(format!(
                    "numerator {numerator} must be less than or equal to denominator {denominator}"
                )));
            }
            Fraction {
                numerator,
                denominator,
            }
        }
        (None, None) => Fraction::ALL,
    };
    Ok(Mirror { backend, fraction })
}

/// `cors`, with the CRD's limits and CEL rules.
fn cors_filter(c: RawCors, at: &FieldPath<'_>) -> Result<Cors, ModelError> {
    let origins = c.allow_origins.unwrap_or_default();
    if origins.len() > 64 {
        return Err(at.field("allowOrigins").err("more than 64 entries"));
    }
    let allow_origins = origins
        .iter()
        .enumerate()
        .map(|(i, o)| cors::origin_pattern(o).map_err(|e| at.field("allowOrigins").index(i).err(e)))
        .collect::<Result<Vec<_>, _>>()?;
    let methods = c.allow_methods.unwrap_or_default();
    let mat = at.field("allowMethods");
    if methods.len() > 9 {
        return Err(mat.err("more than 9 entries"));
    }
    let allow_methods = if methods.iter().any(|m| m == "*") {
        if methods.len() > 1 {
            return Err(mat.err("\"*\" must be the only entry"));
        }
        Allowed::Any
    } else {
        for (i, m) in methods.iter().enumerate() {
            if !CORS_METHODS.contains(&m.as_str()) {
                return Err(mat
                    .index(i)
                    .err(format!("{m:?} is not one of {CORS_METHODS:?} or \"*\"")));
            }
            if methods[..i].contains(m) {
                return Err(mat.index(i).err(format!("{m:?} appears twice")));
            }
        }
        Allowed::List((!methods.is_empty()).then(|| methods.join(", ")))
    };
    let allow_headers = cors::header_list(&c.allow_headers.unwrap_or_default())
        .map_err(|e| at.field("allowHeaders").err(e))?;
    let expose_headers = match cors::header_list(&c.expose_headers.unwrap_or_default())
        .map_err(|e| at.field("exposeHeaders").err(e))?
    {
        Allowed::Any => Some("*".to_string()),
        Allowed::List(l) => l,
    };
    let max_age = match c.max_age {
        None => 5,
        Some(a) => u32::try_from(a)
            .ok()
            .filter(|a| *a >= 1)
            .ok_or_else(|| at.field("maxAge").err(format!("{a} is less than 1")))?,
    };
    Ok(Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
    })
}

/// One filter, or why it is refused.
fn filter(f: RawFilter, name: &str, ns: &str, fat: &FieldPath<'_>) -> Result<Filter, Refusal> {
    let missing = |field: &str| {
        fat.field(field)
            .err(format!("must be set for a {name} filter"))
    };
    match f.r#type {
        FilterType::RequestHeaderModifier => {
            let m = f
                .request_header_modifier
                .ok_or_else(|| missing("requestHeaderModifier"))?;
            Ok(Filter::RequestHeaderModifier(header_modifier(
                name_values!(m.set),
                name_values!(m.add),
                m.remove.unwrap_or_default(),
                &fat.field("requestHeaderModifier"),
            )?))
        }
        FilterType::ResponseHeaderModifier => {
            let m = f
                .response_header_modifier
                .ok_or_else(|| missing("responseHeaderModifier"))?;
            Ok(Filter::ResponseHeaderModifier(header_modifier(
                name_values!(m.set),
                name_values!(m.add),
                m.remove.unwrap_or_default(),
                &fat.field("responseHeaderModifier"),
            )?))
        }
        FilterType::RequestRedirect => {
            let r = f
                .request_redirect
                .ok_or_else(|| missing("requestRedirect"))?;
            let rat = fat.field("requestRedirect");
            if let Some(h) = &r.hostname {
                validate::hostname(h, false).map_err(|e| rat.field("hostname").err(e))?;
            }
            let port = r
                .port
                .map(validate::port)
                .transpose()
                .map_err(|e| rat.field("port").err(e))?;
            let code = r.status_code.unwrap_or(302);
            let status_code = u16::try_from(code)
                .ok()
                .filter(|c| REDIRECT_STATUS_CODES.contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    rat.field("statusCode")
                        .err(format!("{code} is not one of {REDIRECT_STATUS_CODES:?}"))
                })?;
            let path = match r.path {
                None => None,
                Some(p) => Some(path_modifier(
                    matches!(p.r#type, RedirectPathType::ReplaceFullPath),
                    p.replace_full_path,
                    p.replace_prefix_match,
                    &rat.field("path"),
                )?),
            };
            Ok(Filter::RequestRedirect(Redirect {
                scheme: r.scheme.map(|s| match s {
                    Scheme::Http => UriScheme::HTTP,
                    Scheme::Https => UriScheme::HTTPS,
                }),
                hostname: r.hostname,
                path,
                port,
                status_code,
            }))
        }
        FilterType::UrlRewrite => {
            let r = f.url_rewrite.ok_or_else(|| missing("urlRewrite"))?;
            let rat = fat.field("urlRewrite");
            if let Some(h) = &r.hostname {
                validate::hostname(h, false).map_err(|e| rat.field("hostname").err(e))?;
            }
            let path = match r.path {
                None => None,
                Some(p) => Some(path_modifier(
                    matches!(p.r#type, RewritePathType::ReplaceFullPath),
                    p.replace_full_path,
                    p.replace_prefix_match,
                    &rat.field("path"),
                )?),
            };
            let hostname = r
                .hostname
                .map(|h| {
                    HeaderValue::try_from(h)
                        .map_err(|_| rat.field("hostname").err("not a valid Host value"))
                })
                .transpose()?;
            Ok(Filter::UrlRewrite(UrlRewrite { hostname, path }))
        }
        FilterType::RequestMirror => {
            let m = f.request_mirror.ok_or_else(|| missing("requestMirror"))?;
            Ok(Filter::RequestMirror(mirror(
                m,
                ns,
                &fat.field("requestMirror"),
            )?))
        }
        FilterType::Cors => {
            let c = f.cors.ok_or_else(|| missing("cors"))?;
            Ok(Filter::Cors(cors_filter(c, &fat.field("cors"))?))
        }
        FilterType::ExtensionRef => Err(Refusal::Unsupported(format!(
            "{}: filter type {name} is not supported",
            fat.path
        ))),
    }
}

fn type_name(t: &FilterType) -> &'static str {
    match t {
        FilterType::RequestHeaderModifier => "RequestHeaderModifier",
        FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        FilterType::RequestMirror => "RequestMirror",
        FilterType::RequestRedirect => "RequestRedirect",
        FilterType::UrlRewrite => "URLRewrite",
        FilterType::ExtensionRef => "ExtensionRef",
        FilterType::Cors => "CORS",
    }
}

/// A header modifier. The CRD admits any header value, but one with control characters cannot
/// be written on the wire: that refuses the rule, not the object. So does any action on a
/// framing header ([`FRAMING_HEADERS`](super::http::FRAMING_HEADERS)): their values are always the proxy's, so setting or adding
/// one would let the route author smuggle messages, and removing one could not do what it says
/// (the proxy strips and recomputes them on every hop anyway).
pub(crate) fn header_modifier(
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
    remove: Vec<String>,
    at: &FieldPath<'_>,
) -> Result<HeaderModifier, Refusal> {
    let mut names: Vec<HeaderName> = Vec::new();
    let mut check = |name: &str, field: &str, i: usize| -> Result<HeaderName, ModelError> {
        let fat = at.field(field).index(i).field("name");
        validate::header_name(name).map_err(|e| fat.err(e))?;
        let parsed =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| fat.err("not a header name"))?;
        // One action per header name (CRD list-map keys).
        if names.contains(&parsed) {
            return Err(fat.err(format!("header {name:?} appears in more than one action")));
        }
        names.push(parsed.clone());
        Ok(parsed)
    };
    let value = |v: String, field: &str, i: usize| {
        HeaderValue::try_from(v.as_str()).map_err(|_| {
            Refusal::Unsupported(format!(
                "{}: header value {v:?} cannot be sent (control characters)",
                at.field(field).index(i).field("value").path
            ))
        })
    };
    let framing = |name: HeaderName, field: &str, i: usize| {
        if is_framing_header(&name) {
            return Err(Refusal::Unsupported(format!(
                "{}: header {:?} frames the message and is always set by the proxy; filters may \
                 not set, add or remove it",
                at.field(field).index(i).field("name").path,
                name.as_str(),
            )));
        }
        Ok(name)
    };
    let mut m = HeaderModifier::default();
    for (i, (n, v)) in set.into_iter().enumerate() {
        let name = framing(check(&n, "set", i)?, "set", i)?;
        m.set.push((name, value(v, "set", i)?));
    }
    for (i, (n, v)) in add.into_iter().enumerate() {
        let name = framing(check(&n, "add", i)?, "add", i)?;
        m.add.push((name, value(v, "add", i)?));
    }
    for (i, n) in remove.into_iter().enumerate() {
        m.remove
            .push(framing(check(&n, "remove", i)?, "remove", i)?);
    }
    Ok(m)
}

fn path_modifier(
    full: bool,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
    at: &FieldPath<'_>,
) -> Result<PathModifier, ModelError> {
    let (value, field) = if full {
        (replace_full_path, "replaceFullPath")
    } else {
        (replace_prefix_match, "replacePrefixMatch")
    };
    let value = value.ok_or_else(|| {
        at.field(field)
            .err("must be set for this path modifier type")
    })?;
    if value.len() > 1024 {
        return Err(at.field(field).err("longer than 1024 characters"));
    }
    // An empty ReplacePrefixMatch is legal (strip the prefix); anything else is a path.
    if !value.is_empty() || full {
        validate::http_path(&value).map_err(|e| at.field(field).err(e))?;
    }
    Ok(if full {
        PathModifier::ReplaceFullPath(value)
    } else {
        PathModifier::ReplacePrefixMatch(value)
    })
}

/// Whether a filter list uses `ReplacePrefixMatch` (which needs a single PathPrefix match).
pub(crate) fn uses_replace_prefix(filters: &[Filter]) -> bool {
    filters.iter().any(|f| {
        matches!(
            f,
            Filter::UrlRewrite(UrlRewrite {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            }) | Filter::RequestRedirect(Redirect {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            })
        )
    })
}
