//! Errors of the model layer: an object the API server would have rejected, or one we cannot read.

use thiserror::Error;

/// An object rejected the way CRD validation would reject it, with the field that is wrong.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{object}: {field}: {reason}")]
pub struct ModelError {
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds), as far as it is known.
    pub object: String,
    /// The JSON path of the offending field, e.g. `spec.rules[0].backendRefs[1].weight`.
    pub field: String,
    pub reason: String,
}

impl ModelError {
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            object: object.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a field of a route rule is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The API server would reject the object (CRD validation): the object is refused.
    Invalid(ModelError),
    /// The CRD admits the value but nothing can serve it (a regular expression that does not
    /// compile, a header value with control characters): the rule is dropped, with this reason
    /// naming the field, and the route's other rules stay.
    Unsupported(String),
}

impl From<ModelError> for Refusal {
    fn from(e: ModelError) -> Self {
        Self::Invalid(e)
    }
}

/// Collects the field path while a converter walks an object, so every error names its field.
#[derive(Clone, Debug)]
pub(crate) struct FieldPath<'a> {
    pub object: &'a str,
    pub path: String,
}

impl<'a> FieldPath<'a> {
    pub fn root(object: &'a str, path: &str) -> Self {
        Self {
            object,
            path: path.to_string(),
        }
    }

    pub fn field(&self, name: &str) -> Self {
        Self {
            object: self.object,
            path: if self.path.is_empty() {
                name.to_string()
            } else {
                format!("{}.{name}", self.path)
            },
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Self {
            object: self.object,
            path: format!("{}[{i}]", self.path),
        }
    }

    pub fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::new(self.object, &self.path, reason)
    }
}
