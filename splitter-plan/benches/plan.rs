//! Plan benchmarks (not tests): `cargo bench -p splitter-plan --bench plan`.
//!
//! 1. A full plan for 10,000 HTTPRoutes over 1,000 Services (3 ready endpoints each), and an
//!    endpoint refresh of that plan after one EndpointSlice changes.
//! 2. A weighted Maglev table, M = 65537, over 1,000 endpoints (target: under 20 ms).
//!
//! Plain timing loops: each case runs a few times and prints the best and the mean.

use std::{
    fmt::Write as _,
    hint::black_box,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use splitter_plan::{
    model::{
        Index,
        index::{Changes, Update},
        parse::{Parsed, parse},
    },
    plan::{
        self, PlanConfig,
        maglev::{self, LARGE_M, TableShare, TableTarget},
    },
};

const SERVICES: usize = 1_000;
const ROUTES: usize = 10_000;
const ENDPOINTS: u32 = 1_000;

fn manifests() -> String {
    let mut y = String::new();
    y.push_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: splitter}\n\
         spec: {controllerName: splitter.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: bench}\n\
         spec:\n  gatewayClassName: splitter\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n",
    );
    for s in 0..SERVICES {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: bench}}\n\
             spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc{s}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc{s}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for e in 0..3 {
            let _ = writeln!(y, "- addresses: [10.{}.{}.{}]", s / 250, s % 250, e + 1);
        }
    }
    for r in 0..ROUTES {
        let _ = write!(
            y,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: r{r}, namespace: bench}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [h{}.example.com]\n  rules:\n\
             \x20 - matches: [{{path: {{value: /r{r}}}}}, {{path: {{type: Exact, value: /x{r}}}, headers: [{{name: x-v, value: \"1\"}}]}}]\n\
             \x20   backendRefs: [{{name: svc{}, port: 80, weight: 70}}, {{name: svc{}, port: 80, weight: 30}}]\n",
            r % 100,
            r % SERVICES,
            (r + 1) % SERVICES
        );
    }
    y
}

fn time<T>(name: &str, runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        let start = Instant::now();
        black_box(f());
        let d = start.elapsed();
        best = best.min(d);
        total += d;
    }
    println!(
        "{name:<58} best {:>9.2} ms   mean {:>9.2} ms   ({runs} runs)",
        best.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / runs as f64
    );
    best
}

fn main() {
    let yaml = manifests();
    let mut index = Index::new();
    time(
        "parse + validate 10k HTTPRoutes, 1k Services (YAML)",
        1,
        || {
            let docs = splitter_plan::model::parse::documents(&yaml).expect("bench YAML");
            index = Index::new();
            for d in docs {
                if let Ok(Parsed::Object(o)) = parse(d) {
                    index.apply(*o);
                }
            }
        },
    );
    assert_eq!(index.http_routes.len(), ROUTES);
    let config = PlanConfig::default();
    let mut previous = None;
    time("plan::build: 10k HTTPRoutes over 1k Services", 5, || {
        let p = plan::build(&index, &config, previous.as_ref());
        previous = Some(p);
    });
    let p = previous.expect("built");
    let routes: usize = p.l7_listeners().map(|(_, table)| table.routes.len()).sum();
    println!(
        "  -> {} listeners, {routes} L7 routes, {} route statuses",
        p.listeners.len(),
        p.routes.len()
    );
    // One Service's slice changes (its 3 endpoints shift): the refresh instead of a build.
    let mut version = 0u8;
    time(
        "plan::refresh_endpoints: one Service's EndpointSlice changed",
        20,
        || {
            version = version.wrapping_add(1);
            let mut changes = Changes::default();
            let slice = format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: svc7-1, namespace: bench, labels: {{kubernetes.io/service-name: svc7}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
                 endpoints: [{{addresses: [10.200.0.{version}]}}]\n"
            );
            let doc = splitter_plan::model::parse::documents(&slice)
                .expect("slice YAML")
                .remove(0);
            let Ok(Parsed::Object(o)) = parse(doc) else {
                panic!("slice")
            };
            index.update_noting(Update::Apply(o), &mut changes);
            plan::refresh_endpoints(&p, &index, &config, &changes.endpoints_of).expect("refreshed")
        },
    );
    time("Plan::clone at 10k routes", 5, || p.clone());

    let shares: Vec<TableShare> = (0..ENDPOINTS)
        .map(|i| TableShare {
            target: TableTarget::Endpoint(SocketAddr::new(
                Ipv4Addr::from(0x0a00_0000 + i).into(),
                8080,
            )),
            num: u64::from(i % 7 + 1),
            den: (0..ENDPOINTS).map(|j| u64::from(j % 7 + 1)).sum(),
        })
        .collect();
    let first = maglev::build(LARGE_M, &shares, None);
    let best = time(
        "maglev::build: M=65537, 1000 weighted endpoints",
        20,
        || maglev::build(LARGE_M, &shares, None),
    );
    println!(
        "  -> target under 20 ms: {}",
        if best < Duration::from_millis(20) {
            "met"
        } else {
            "MISSED"
        }
    );
    // Disruption of removing one endpoint (weights 1..=7), as figures: slots moved against the
    // minimum any table with the new quotas could have moved.
    for removed in [0usize, 6, 500] {
        let kept: Vec<TableShare> = shares
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| *s)
            .collect();
        let den: u64 = kept.iter().map(|s| s.num).sum();
        let fewer: Vec<TableShare> = kept.iter().map(|s| TableShare { den, ..*s }).collect();
        let after = maglev::build(LARGE_M, &fewer, Some(&first));
        if let Some(d) = after.disruption {
            println!(
                "  -> removing endpoint {removed} (weight {}) of 1000: {} slots moved, minimum {} ({:.2}% of flows)",
                shares[removed].num,
                d.moved,
                d.minimum,
                f64::from(d.moved) * 100.0 / f64::from(after.m)
            );
        }
    }
}
