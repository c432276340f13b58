//! The pure core from YAML fixtures: one or more tests per Gateway API rule of DESIGN sections 3
//! and 4, and the weighted Maglev table's properties.

mod grpc;
mod maglev;
mod plan;
mod refresh;
mod support;
mod tls;
mod tlsroute;
