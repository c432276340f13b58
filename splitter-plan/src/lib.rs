//! The pure core of splitter: objects -> [`model`] (validated, typed values) -> [`model::Index`]
//! -> [`plan`] (listeners, L4/L7 mode, weighted tables, L7 route tables, statuses) ->
//! [`status::patches`].
//!
//! Everything decidable without the kernel, a socket or the API server is decided here, and
//! tested here with plain `#[test]`s. The crate boundary enforces it: this crate depends on no
//! aya, hyper, tokio or kube client (DESIGN section 2), so it builds and tests on stable alone.

pub mod access;
pub mod model;
pub mod plan;
pub mod status;
