//! HTTPRoute rule filters: from the CRD shape (a `type` plus one matching field) to
//! [`Filter`], with the CEL rules the CRD enforces.

use gateway_api::httproutes::{
    HttpRouteRulesFilters as RawFilter,
    HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as Scheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewritePathType as RewritePathType,
};

use http::{HeaderName, HeaderValue, StatusCode, uri::Scheme as UriScheme};

use super::{
    FieldPath, ModelError, Refusal,
    http::{
        Filter, HeaderModifier, PathModifier, REDIRECT_STATUS_CODES, Redirect, UrlRewrite,
        is_framing_header,
    },
    validate,
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
        match filter(f, name, &fat) {
            Ok(f) => out.push(f),
            Err(Refusal::Unsupported(why)) => {
                unsupported.get_or_insert(why);
            }
            Err(Refusal::Invalid(e)) => return Err(e),
        }
    }
    Ok((out, unsupported))
}

/// One filter, or why it is refused.
fn filter(f: RawFilter, name: &str, fat: &FieldPath<'_>) -> Result<Filter, Refusal> {
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
        FilterType::RequestMirror | FilterType::ExtensionRef | FilterType::Cors => Err(
            Refusal::Unsupported(format!("{}: filter type {name} is not supported", fat.path)),
        ),
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
