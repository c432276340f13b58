//! `splitter check --manifests PATH [-o json]`: load manifests, build the plan, print it.

use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use crate::source::{FileSource, file::LoadReport};
use splitter_plan::plan::{
    self, L4Plan, ListenerPlan, Plan, PlanConfig, Transport,
    l7::{BackendTarget, Filter, L7Route, PathMatch, PathModifier, PlannedBackend},
    maglev::{TableTarget, WeightedTable},
};

/// How `splitter check` prints the plan (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// The result of a check: what to print and whether everything was valid.
pub struct CheckOutcome {
    pub output: String,
    pub ok: bool,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    errors: Vec<String>,
    skipped: Vec<String>,
    problems: Vec<String>,
    plan: &'a Plan,
}

pub fn run(paths: &[PathBuf], output: Output, config: &PlanConfig) -> CheckOutcome {
    let mut source = FileSource::new(paths.iter().cloned());
    let report = source.scan();
    // The changes of the first scan are a copy of every object, of no use to a check.
    drop(source.take_changes());
    let plan = plan::build(&source.index(), config, None);
    // Each problem of an object says where the object is: file and document.
    let problems: Vec<String> = plan
        .problems_by_object()
        .into_iter()
        .map(|(key, p)| match key.and_then(|k| source.origin(k)) {
            Some((path, doc)) => format!("{}: document {doc}: {p}", path.display()),
            None => p,
        })
        .collect();
    let ok = report.errors.is_empty() && problems.is_empty();
    let output = match output {
        Output::Json => {
            let r = JsonReport {
                ok,
                errors: report.errors.iter().map(ToString::to_string).collect(),
                skipped: skipped(&report),
                problems,
                plan: &plan,
            };
            serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
                + "\n"
        }
        Output::Text => text(&report, &plan, &problems, ok),
    };
    CheckOutcome { output, ok }
}

fn skipped(report: &LoadReport) -> Vec<String> {
    report
        .skipped
        .iter()
        .map(|s| {
            format!(
                "{}: document {}: {} {} (not used by the agent)",
                s.path.display(),
                s.document,
                s.api_version,
                s.kind
            )
        })
        .collect()
}

/// The human-readable report.
pub fn text(report: &LoadReport, plan: &Plan, problems: &[String], ok: bool) -> String {
    let mut o = String::new();
    for s in skipped(report) {
        let _ = writeln!(o, "skipped: {s}");
    }
    for e in &report.errors {
        let _ = writeln!(o, "error: {e}");
    }
    if plan.listeners.is_empty() {
        let _ = writeln!(
            o,
            "no listeners: no Gateway of our class with a usable listener"
        );
    }
    for l in &plan.listeners {
        listener(&mut o, l);
    }
    let _ = writeln!(o, "\nstatus:");
    for c in &plan.gateway_classes {
        for cond in &c.conditions {
            let _ = writeln!(o, "  {}: {cond}", c.class);
        }
    }
    for g in &plan.gateways {
        let addrs = if g.addresses.is_empty() {
            "every address".to_string()
        } else {
            g.addresses.join(", ")
        };
        let _ = writeln!(o, "  {} ({addrs}):", g.gateway);
        for cond in &g.conditions {
            let _ = writeln!(o, "    {cond}");
        }
        for l in &g.listeners {
            let kinds: Vec<&str> = l.supported_kinds.iter().map(|k| k.kind.as_str()).collect();
            let _ = writeln!(
                o,
                "    listener {}: attachedRoutes {}, supportedKinds [{}]",
                l.name,
                l.attached_routes,
                kinds.join(", ")
            );
            for cond in &l.conditions {
                let _ = writeln!(o, "      {cond}");
            }
        }
    }
    for r in plan.routes.iter() {
        for p in &r.parents {
            let _ = writeln!(o, "  {} -> {}:", r.route, p.parent_ref);
            for cond in &p.conditions {
                let _ = writeln!(o, "    {cond}");
            }
        }
    }
    for d in &plan.diagnostics {
        let _ = writeln!(o, "{d}");
    }
    if ok {
        let _ = writeln!(o, "\nOK");
    } else {
        let _ = writeln!(
            o,
            "\nINVALID: {} error(s), {} problem(s)",
            report.errors.len(),
            problems.len()
        );
        for p in problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    o
}

fn listener(o: &mut String, l: &ListenerPlan) {
    let addrs: Vec<String> = if l.key().addresses.is_empty() {
        vec!["*".to_string()]
    } else {
        l.key().addresses.iter().map(ToString::to_string).collect()
    };
    let transport = match l.key().transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    let _ = writeln!(
        o,
        "\nlistener {}:{}/{transport}: {}",
        addrs.join(","),
        l.key().port,
        l.mode()
    );
    for s in l.sources() {
        let host = s
            .hostname
            .as_deref()
            .map(|h| format!(" host {h}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  from {} listener {} ({}{host})",
            s.gateway, s.listener, s.protocol
        );
    }
    let _ = writeln!(o, "  why: {}", l.reason());
    if let Some(t) = &l.l7() {
        for c in t.tls.iter().flat_map(|tls| &tls.certificates) {
            let host = c.hostname.as_deref().unwrap_or("*");
            let until = k8s_openapi::jiff::Timestamp::from_second(c.certificate.not_after)
                .map_or_else(|_| c.certificate.not_after.to_string(), |t| t.to_string());
            let _ = writeln!(
                o,
                "  tls for {host}: {} [{}] until {until}",
                c.certificate.secret,
                c.certificate.names.join(", ")
            );
        }
        for r in &t.routes {
            l7_route(o, r);
        }
        for r in t.passthrough.iter().flat_map(|p| &p.routes) {
            let name = r.hostname.as_deref().unwrap_or("any name");
            let _ = writeln!(o, "  {} passthrough for SNI {name}", r.route);
            backends(o, &r.backends, "closed", "closed");
        }
    }
    if let Some(p) = &l.l4() {
        l4(o, p);
    }
}

fn l7_route(o: &mut String, r: &L7Route) {
    let m = &r.matched;
    let mut what = match &m.path {
        PathMatch::Exact(p) => format!("path = {p}"),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
        PathMatch::Regex(p) => format!("path ~ {p}"),
    };
    if let Some(method) = &m.method {
        let _ = write!(what, ", method {method}");
    }
    for h in &m.headers {
        let _ = write!(what, ", header {}={:?}", h.name, h.value);
    }
    for q in &m.query {
        let _ = write!(what, ", query {}={:?}", q.name, q.value);
    }
    let hosts = if r.hostnames.is_empty() {
        "any host".to_string()
    } else {
        r.hostnames.join(",")
    };
    let _ = writeln!(o, "  {} rule {}: {what} ({hosts})", r.route, r.rule_index);
    for f in &r.filters {
        let _ = writeln!(o, "    filter {}", filter(f));
    }
    for m in &r.mirrors {
        let _ = writeln!(
            o,
            "    mirror {}: {} endpoint{}",
            m.name,
            m.endpoints.len(),
            if m.endpoints.len() == 1 { "" } else { "s" }
        );
    }
    // A gRPC call the proxy cannot forward is answered with a gRPC status (`proxy::grpc`).
    if r.route.kind == splitter_plan::model::Kind::GrpcRoute {
        backends(o, &r.backends, "UNAVAILABLE", "UNAVAILABLE");
    } else {
        backends(o, &r.backends, "500", "503");
    }
}

fn filter(f: &Filter) -> String {
    let path = |p: &Option<PathModifier>| match p {
        Some(PathModifier::ReplaceFullPath(v)) => format!(" ReplaceFullPath {v:?}"),
        Some(PathModifier::ReplacePrefixMatch(v)) => format!(" ReplacePrefixMatch {v:?}"),
        None => String::new(),
    };
    match f {
        Filter::RequestHeaderModifier(m) => format!(
            "RequestHeaderModifier set {:?} add {:?} remove {:?}",
            m.set, m.add, m.remove
        ),
        Filter::ResponseHeaderModifier(m) => format!(
            "ResponseHeaderModifier set {:?} add {:?} remove {:?}",
            m.set, m.add, m.remove
        ),
        Filter::RequestRedirect(r) => format!("RequestRedirect {}{}", r.status_code, path(&r.path)),
        Filter::UrlRewrite(r) => {
            let host = r
                .hostname
                .as_ref()
                .map(|h| format!(" hostname {}", String::from_utf8_lossy(h.as_bytes())))
                .unwrap_or_default();
            format!("URLRewrite{host}{}", path(&r.path))
        }
        Filter::RequestMirror(m) => format!(
            "RequestMirror to {}/{} ({}/{} of requests)",
            m.backend.namespace, m.backend.name, m.fraction.numerator, m.fraction.denominator
        ),
        Filter::Cors(c) => format!(
            "CORS {} origin{}, credentials {}",
            c.allow_origins.len(),
            if c.allow_origins.len() == 1 { "" } else { "s" },
            c.allow_credentials
        ),
    }
}

/// Each backend's share of the rule, its endpoints, and the invalid and no-endpoint shares.
fn backends(o: &mut String, backends: &[PlannedBackend], invalid_answer: &str, empty_answer: &str) {
    let sum: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if backends.is_empty() {
        let _ = writeln!(o, "    no backendRefs: every request gets {invalid_answer}");
        return;
    }
    if sum == 0 {
        let _ = writeln!(o, "    all weights are 0: everything gets {invalid_answer}");
    }
    let pct = |w: u32| {
        if sum == 0 {
            0.0
        } else {
            f64::from(w) * 100.0 / sum as f64
        }
    };
    let (mut invalid, mut empty) = (0u64, 0u64);
    for b in backends {
        let what = match &b.target {
            BackendTarget::Endpoints(eps) => {
                format!(
                    "{} endpoint{}",
                    eps.len(),
                    if eps.len() == 1 { "" } else { "s" }
                )
            }
            BackendTarget::NoEndpoints => {
                empty += u64::from(b.weight);
                format!("no ready endpoints ({empty_answer})")
            }
            BackendTarget::Invalid(r) => {
                invalid += u64::from(b.weight);
                format!("invalid: {r:?} ({invalid_answer})")
            }
        };
        let h2c = if b.protocol.is_http1() { "" } else { ", h2c" };
        let _ = writeln!(
            o,
            "    {:>7.2}%  weight {:<7} {:<32} {what}{h2c}",
            pct(b.weight),
            b.weight,
            b.name
        );
        for f in &b.filters {
            let _ = writeln!(o, "      backend filter {}", filter(f));
        }
    }
    if sum > 0 {
        let _ = writeln!(
            o,
            "    invalid share {:.2}%, no-endpoint share {:.2}%",
            invalid as f64 * 100.0 / sum as f64,
            empty as f64 * 100.0 / sum as f64
        );
    }
}

fn l4(o: &mut String, p: &L4Plan) {
    match &p.route {
        Some(r) => {
            let _ = writeln!(o, "  {r}:");
        }
        None => {
            let _ = writeln!(o, "  no route:");
        }
    }
    backends(o, &p.backends, "rejected", "rejected");
    match &p.table_v6 {
        None => table(o, "Maglev table", &p.table),
        Some(v6) => {
            table(o, "Maglev table (IPv4 VIPs)", &p.table);
            table(o, "Maglev table (IPv6 VIPs)", v6);
        }
    }
}

fn table(o: &mut String, title: &str, t: &WeightedTable) {
    let _ = writeln!(o, "  {title}: M={}, {} entries", t.m, t.backends.len());
    for b in &t.backends {
        let name = match b.target {
            TableTarget::Endpoint(a) => a.to_string(),
            TableTarget::Reject => "REJECT".to_string(),
        };
        let _ = writeln!(
            o,
            "    {:>7.3}%  {:>6} slots  {name}",
            f64::from(b.quota) * 100.0 / f64::from(t.m),
            b.quota
        );
    }
    if let Some(d) = t.disruption {
        let _ = writeln!(
            o,
            "    disruption: {} slots moved (minimum {})",
            d.moved, d.minimum
        );
    }
}
