//! The L7 data path: a hyper reverse proxy serving the plan's [`L7RouteTable`]s.
//!
//! [`L7Listeners`] is the actuator: it keeps the running listeners equal to the plan's map of
//! bind address to table. Underneath, one [`Proxy`] owns the worker threads and the metrics;
//! each L7 listener is a [`ProxyListener`] made by [`Proxy::listen`]. A listener accepts on
//! the caller's runtime and places every connection on one worker thread for its whole life;
//! the worker serves it, and drives and pools the backend connections its requests use, by
//! itself (`workers`, `pool`). A new plan is applied with
//! [`ProxyListener::install`], which swaps the listener's compiled table atomically
//! (`arc-swap`): requests already routed finish where they were going, keep-alive connections
//! stay open, and the next request sees the new routes. An HTTPS listener's table carries its
//! certificates; the listener terminates TLS (`tls`: rustls, certificate by SNI, ALPN h2 and
//! http/1.1) and swaps its TLS configuration the same way, for the next handshake.
//!
//! Per request: find the first route (precedence order) whose hostnames and match accept it,
//! apply its filters, pick a backendRef by smooth weighted round robin and an endpoint of it
//! round robin, and stream the request there over a pooled keep-alive connection: the request
//! (and its body, if any) is written and its response read by the request's own task
//! (`direct`, one HTTP/1.1 client for every request, upgrades included). A backend that speaks
//! HTTP/2 (a GRPCRoute's, or a Service port with `appProtocol: kubernetes.io/h2c`) is reached
//! through `h2c` instead: one multiplexed connection per endpoint and thread, bodies and
//! trailers streamed. With `--access-log`, one line per request (`access`). Answers of the proxy
//! itself: 400 two Hosts, 404 no route, 500 invalid backendRef share (or all weights 0), 503 no endpoints,
//! 502 connect or protocol failure, 504 HTTPRoute timeout; to a gRPC call, the matching gRPC
//! status in a trailers-only response (`grpc`).
//!
//! Against clients that hold resources without using them (`idle`, `slots`): one watchdog per
//! connection keeps the header, body-read, response-write and HTTP/2 stream idle timeouts and
//! the maximum age; HTTP/2 requests run under a per-connection in-flight limit that requests
//! reset by the client keep counting against until their backend answers, and a connection
//! that resets too many streams before their response is closed with GOAWAY; connections are
//! limited per listener and per client source, and the slots live in the client socket, so an
//! upgraded tunnel (itself idle-timed, `upgrade`) holds them; backend connections are capped per
//! endpoint ([`EndpointSlots`]). 503 also answers a request whose endpoint is at that cap.
//!
//! TLS passthrough listeners (TLSRoutes by SNI) are served here too (`passthrough`): no HTTP,
//! the ClientHello's server name picks the route and the connection is spliced to a backend.
//!
//! [`L7RouteTable`]: splitter_plan::plan::l7::L7RouteTable

mod accept_task;
mod access;
mod balance;
mod body;
mod cors;
mod direct;
mod drain;
mod error;
mod grpc;
mod h2c;
mod handler;
mod host_index;
mod hygiene;
mod idle;
mod listeners;
mod metrics;
mod mirror;
mod passthrough;
mod pool;
mod request_body;
mod rlimit;
mod server;
mod slots;
mod table;
mod tls;
mod upgrade;
mod upstream;
mod workers;

pub use access::AccessLog;
pub use balance::{EndpointCursor, SmoothWrr};
pub use body::ProxyBody;
pub use error::{ForwardError, ProxyError, RouteError, UpstreamError};
pub use hygiene::{BadRequest, XffPolicy};
pub use listeners::{ApplyReport, L7Listeners};
pub use metrics::{ListenerLabels, PassthroughLabels, ProxyMetrics, RequestLabels, RouteLabels};
pub use passthrough::{
    ClientHello, HelloError, MAX_CLIENT_HELLO, PassthroughListener, read_client_hello,
};
pub use rlimit::raise_nofile_limit;
pub use server::{Proxy, ProxyConfig, ProxyListener};
pub use slots::{EndpointPermit, EndpointSlots};
pub use table::TableIssue;
pub use upstream::UpstreamConfig;
pub use workers::default_workers;
