//! The L7 proxy with one hand-written route, for benchmarks and manual tests while no manifests
//! are involved:
//!
//! ```text
//! cargo run --release -p splitter --example l7_proxy -- --listen 127.0.0.1:18080 \
//!     --prefix /echo --strip-path \
//!     --backend echo=1@127.0.0.1:18081 --backend echo2=1@127.0.0.1:18082
//! ```
//!
//! `--backend NAME=WEIGHT@ADDR[,ADDR...]` is one backendRef with its endpoints.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use splitter::dataplane::proxy::{Proxy, ProxyConfig, ProxyMetrics};
use splitter_plan::plan::{
    ObjectKey,
    l7::{
        BackendTarget, Filter, L7Route, L7RouteTable, PathMatch, PathModifier, PlannedBackend,
        RouteMatch, Timeouts, UrlRewrite,
    },
};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// Path prefix of the one route.
    #[arg(long, default_value = "/")]
    prefix: String,
    /// Rewrite the matched prefix to `/` (the guide's strip-path annotation).
    #[arg(long)]
    strip_path: bool,
    /// NAME=WEIGHT@ADDR[,ADDR...]
    #[arg(long = "backend", required = true, value_parser = parse_backend)]
    backends: Vec<PlannedBackend>,
}

fn parse_backend(s: &str) -> Result<PlannedBackend, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or("expected NAME=WEIGHT@ADDR[,ADDR...]")?;
    let (weight, addrs) = rest.split_once('@').ok_or("expected WEIGHT@ADDR")?;
    let weight: u32 = weight
        .parse()
        .map_err(|e| format!("weight {weight:?}: {e}"))?;
    let endpoints = addrs
        .split(',')
        .map(|a| a.parse().map_err(|e| format!("address {a:?}: {e}")))
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    Ok(PlannedBackend {
        name: name.to_owned(),
        weight,
        target: BackendTarget::Endpoints(endpoints),
        filters: vec![],
        protocol: Default::default(),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let mut route = L7Route {
        route: ObjectKey {
            kind: splitter_plan::model::Kind::HttpRoute,
            namespace: "default".into(),
            name: "example".into(),
        },
        rule_index: 0,
        hostnames: vec![],
        shadowed_by: vec![],
        matched: RouteMatch {
            path: PathMatch::Prefix(args.prefix),
            headers: vec![],
            query: vec![],
            method: None,
            grpc: None,
        },
        filters: vec![],
        backends: args.backends,
        timeouts: Timeouts::default(),
        mirrors: vec![],
    };
    if args.strip_path {
        route.filters.push(Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch("/".into())),
        }));
    }
    let table = L7RouteTable {
        routes: vec![route.into()],
        tls: None,
        passthrough: None,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("l7_proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let proxy = Proxy::new(ProxyConfig::default(), ProxyMetrics::default());
        let (listener, issues) = match proxy.listen(args.listen, &table).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("l7_proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        for i in issues {
            eprintln!("l7_proxy: {i}");
        }
        let terminated = match splitter::signal::terminated() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("l7_proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("listening on {}", listener.local_addr());
        terminated.await;
        listener.shutdown().await;
        ExitCode::SUCCESS
    })
}
