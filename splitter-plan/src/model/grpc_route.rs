//! GRPCRoute, lowered to the shape of an HTTPRoute ([`HttpRoute`] with [`RouteKind::Grpc`]).
//!
//! A gRPC call is an HTTP/2 POST to `/<service>/<method>`, so a `method` match is a path match:
//! service and method both given and Exact become an exact path, anything else an anchored
//! regular expression over the two path segments. Header matches and the two header filters
//! are HTTPRoute's. What the spec orders by (characters of the service, then of the method) is
//! kept in [`GrpcMethodMatch`] for the plan's precedence.

use gateway_api::grpcroutes::{
    GrpcRoute as RawGrpcRoute, GrpcRouteRules, GrpcRouteRulesFilters,
    GrpcRouteRulesFiltersType as FilterType, GrpcRouteRulesMatches,
    GrpcRouteRulesMatchesHeadersType as HeaderType, GrpcRouteRulesMatchesMethodType as MethodType,
};

use super::{
    FieldPath, Meta, ModelError, Refusal,
    filters::header_modifier,
    http::{Filter, GrpcMethodMatch, PathMatch, Pattern, RouteMatch, Timeouts},
    route::{
        HttpRoute, HttpRule, RouteKind, backend_ref, header_matches, parent_ref, parent_refs_of,
        pattern,
    },
    validate,
};

/// Limits of the GRPCRoute CRD.
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_BACKENDS: usize = 16;
const MAX_FILTERS: usize = 16;

pub(crate) fn grpc_route(raw: RawGrpcRoute, meta: Meta, id: &str) -> Result<HttpRoute, ModelError> {
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
        hostnames.push(h.to_ascii_lowercase());
    }
    let raw_rules = raw
        .spec
        .rules
        .unwrap_or_else(|| vec![GrpcRouteRules::default()]);
    if raw_rules.len() > MAX_RULES {
        return Err(spec.field("rules").err(format!(
            "{} rules, the limit is {MAX_RULES}",
            raw_rules.len()
        )));
    }
    let rules = raw_rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(r, &meta.namespace, &spec.field("rules").index(i)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpRoute {
        kind: RouteKind::Grpc,
        meta,
        parent_refs,
        hostnames,
        rules,
        strip_path: false,
    })
}

fn rule(r: GrpcRouteRules, ns: &str, at: &FieldPath<'_>) -> Result<HttpRule, ModelError> {
    let raw_matches = r
        .matches
        .unwrap_or_else(|| vec![GrpcRouteRulesMatches::default()]);
    if raw_matches.len() > MAX_MATCHES {
        return Err(at
            .field("matches")
            .err(format!("more than {MAX_MATCHES} matches")));
    }
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
    let raw_backends = r.backend_refs.unwrap_or_default();
    if raw_backends.len() > MAX_BACKENDS {
        return Err(at
            .field("backendRefs")
            .err(format!("more than {MAX_BACKENDS} backendRefs")));
    }
    let mut backends = Vec::new();
    for (i, b) in raw_backends.into_iter().enumerate() {
        let bat = at.field("backendRefs").index(i);
        if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
            unsupported.get_or_insert_with(|| {
                format!("{}.filters: backendRef filters are not supported", bat.path)
            });
        }
        backends.push(backend_ref(
            ns,
            b.group,
            b.kind,
            b.namespace,
            b.name,
            b.port,
            b.weight,
            &bat,
        )?);
    }
    let (filters, problem) = filters(r.filters.unwrap_or_default(), &at.field("filters"))?;
    if let Some(p) = problem {
        unsupported.get_or_insert(p);
    }
    Ok(HttpRule {
        matches,
        filters,
        backends,
        // GRPCRoute has no timeouts field.
        timeouts: Timeouts::default(),
        unsupported,
    })
}

fn route_match(m: GrpcRouteRulesMatches, at: &FieldPath<'_>) -> Result<RouteMatch, Refusal> {
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
    let (path, grpc) = match m.method {
        None => (PathMatch::Prefix("/".into()), None),
        Some(method) => {
            let mat = at.field("method");
            let service = method.service.filter(|s| !s.is_empty());
            let name = method.method.filter(|s| !s.is_empty());
            if service.is_none() && name.is_none() {
                return Err(mat
                    .err("one or both of 'service' or 'method' must be specified")
                    .into());
            }
            let regex = matches!(method.r#type, Some(MethodType::RegularExpression));
            for (field, v) in [("service", &service), ("method", &name)] {
                if let Some(v) = v {
                    if v.len() > 1024 {
                        return Err(mat.field(field).err("longer than 1024 characters").into());
                    }
                    if !regex {
                        check_exact(field, v).map_err(|e| mat.field(field).err(e))?;
                    }
                }
            }
            let path = lowered_path(service.as_deref(), name.as_deref(), regex, &mat)?;
            (
                path,
                Some(GrpcMethodMatch {
                    service,
                    method: name,
                    regex,
                }),
            )
        }
    };
    Ok(RouteMatch {
        path,
        headers,
        query: Vec::new(),
        method: None,
        grpc,
    })
}

/// The CRD's patterns for Exact values: a service is a dotted identifier
/// (`(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*`), a method an identifier.
fn check_exact(field: &str, v: &str) -> Result<(), String> {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let ok = if field == "service" {
        v.strip_prefix('.').unwrap_or(v).split('.').all(ident)
    } else {
        ident(v)
    };
    if ok {
        Ok(())
    } else if field == "service" {
        Err(format!("{v:?} is not a dotted service name"))
    } else {
        Err(format!("{v:?} is not a method name"))
    }
}

/// The path match a method match stands for: `/<service>/<method>`, either part any segment
/// when absent.
fn lowered_path(
    service: Option<&str>,
    method: Option<&str>,
    regex: bool,
    at: &FieldPath<'_>,
) -> Result<PathMatch, Refusal> {
    const ANY_SEGMENT: &str = "[^/]+";
    if !regex {
        if let (Some(s), Some(m)) = (service, method) {
            return Ok(PathMatch::Exact(format!("/{s}/{m}")));
        }
        let s = service.map_or_else(|| ANY_SEGMENT.to_string(), regex::escape);
        let m = method.map_or_else(|| ANY_SEGMENT.to_string(), regex::escape);
        let source = format!("/{s}/{m}");
        return Pattern::new(&source)
            .map(PathMatch::Regex)
            .map_err(|e| Refusal::Unsupported(format!("{}: cannot be matched: {e}", at.path)));
    }
    // Each part checked on its own, so an error names the field that is wrong.
    for (field, v) in [("service", service), ("method", method)] {
        if let Some(v) = v {
            pattern(v, &at.field(field))?;
        }
    }
    let s = service.unwrap_or(ANY_SEGMENT);
    let m = method.unwrap_or(ANY_SEGMENT);
    pattern(&format!("/(?:{s})/(?:{m})"), at).map(PathMatch::Regex)
}

/// Rule filters: the two header modifiers; RequestMirror and ExtensionRef drop the rule.
fn filters(
    raw: Vec<GrpcRouteRulesFilters>,
    at: &FieldPath<'_>,
) -> Result<(Vec<Filter>, Option<String>), ModelError> {
    if raw.len() > MAX_FILTERS {
        return Err(at.err(format!("more than {MAX_FILTERS} filters")));
    }
    let mut out = Vec::new();
    let mut unsupported = None;
    let mut seen = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let fat = at.index(i);
        let name = match f.r#type {
            FilterType::RequestHeaderModifier => "RequestHeaderModifier",
            FilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
            FilterType::RequestMirror => "RequestMirror",
            FilterType::ExtensionRef => "ExtensionRef",
        };
        if matches!(
            f.r#type,
            FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier
        ) {
            if seen.contains(&name) {
                return Err(fat
                    .field("type")
                    .err(format!("{name} may appear only once per rule")));
            }
            seen.push(name);
        }
        let missing = |field: &str| {
            fat.field(field)
                .err(format!("must be set for a {name} filter"))
        };
        let converted = match f.r#type {
            FilterType::RequestHeaderModifier => {
                let m = f
                    .request_header_modifier
                    .ok_or_else(|| missing("requestHeaderModifier"))?;
                header_modifier(
                    pairs(
                        m.set
                            .map(|l| l.into_iter().map(|h| (h.name, h.value)).collect()),
                    ),
                    pairs(
                        m.add
                            .map(|l| l.into_iter().map(|h| (h.name, h.value)).collect()),
                    ),
                    m.remove.unwrap_or_default(),
                    &fat.field("requestHeaderModifier"),
                )
                .map(Filter::RequestHeaderModifier)
            }
            FilterType::ResponseHeaderModifier => {
                let m = f
                    .response_header_modifier
                    .ok_or_else(|| missing("responseHeaderModifier"))?;
                header_modifier(
                    pairs(
                        m.set
                            .map(|l| l.into_iter().map(|h| (h.name, h.value)).collect()),
                    ),
                    pairs(
                        m.add
                            .map(|l| l.into_iter().map(|h| (h.name, h.value)).collect()),
                    ),
                    m.remove.unwrap_or_default(),
                    &fat.field("responseHeaderModifier"),
                )
                .map(Filter::ResponseHeaderModifier)
            }
            FilterType::RequestMirror | FilterType::ExtensionRef => Err(Refusal::Unsupported(
                format!("{}: filter type {name} is not supported", fat.path),
            )),
        };
        match converted {
            Ok(f) => out.push(f),
            Err(Refusal::Unsupported(why)) => {
                unsupported.get_or_insert(why);
            }
            Err(Refusal::Invalid(e)) => return Err(e),
        }
    }
    Ok((out, unsupported))
}

fn pairs(list: Option<Vec<(String, String)>>) -> Vec<(String, String)> {
    list.unwrap_or_default()
}
