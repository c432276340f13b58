//! Unprivileged tests of the agent around the pure core: the file source, `splitter check` as a
//! process, and the manifests under `deploy/` (schemas, RBAC against the API access table).

mod check;
mod deploy;
mod source;
