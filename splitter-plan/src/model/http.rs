//! The validated, typed values of an HTTPRoute rule: matches, filters, timeouts.
//!
//! Built once by the model from the CRD strings, with a field path on failure, and carried
//! unchanged through the plan into the proxy: a regular expression is compiled here, a header
//! name parsed here, a redirect status code checked here. Whatever serves these values cannot
//! meet an invalid one, so its compilation has no error path.

use std::{fmt, time::Duration};

use http::{HeaderName, HeaderValue, Method, StatusCode, uri::Scheme};
use regex::{Regex, RegexBuilder};
use serde::{Serialize, Serializer, ser::SerializeSeq};

/// Redirect status codes an implementation may use (301 and 302 core, the rest extended).
pub const REDIRECT_STATUS_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Upper bound on a compiled expression's size: a route's regex comes from a user's manifest and
/// must not be able to eat the proxy's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression anchored to the whole value, compiled. Equal when written the same.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source` as `^(?:source)$`, with a size limit.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// All must match; of several entries with one name only the first is kept.
    pub headers: Vec<HeaderMatch>,
    /// All must match. Names are case-sensitive; of several entries with one name only the
    /// first is kept.
    pub query: Vec<QueryMatch>,
    #[serde(serialize_with = "ser::opt_display")]
    pub method: Option<Method>,
    /// A GRPCRoute match: the service and method it was written with (`path` holds them
    /// lowered to `/service/method`), for GRPCRoute precedence, which counts their characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMethodMatch>,
}

/// A GRPCRoute `method` match as written (either may be absent: any service, any method).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GrpcMethodMatch {
    pub service: Option<String>,
    pub method: Option<String>,
    pub regex: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    /// Whole path, case-sensitive.
    Exact(String),
    /// Element-wise prefix; stored without a trailing `/` except for the root prefix `/`.
    Prefix(String),
    /// RE2-style regular expression (implementation-specific support), anchored to the whole path.
    Regex(Pattern),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser::display")]
    pub name: HeaderName,
    pub value: ValueMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ValueMatch {
    Exact(String),
    Regex(Pattern),
}

impl ValueMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    /// A copy of each selected request to another backend; the plan resolves the ref into
    /// the rule's mirrors, the proxy never sees this variant's ref.
    RequestMirror(Mirror),
    Cors(super::cors::Cors),
}

/// `requestMirror`: where copies go and which share of requests is copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub backend: super::route::BackendRef,
    pub fraction: Fraction,
}

/// `numerator / denominator` of requests (`percent: p` is `p / 100`; absent: every request).
/// `denominator >= 1`, `numerator <= denominator` (CRD rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: u32,
}

impl Fraction {
    pub const ALL: Fraction = Fraction {
        numerator: 1,
        denominator: 1,
    };
}

/// Headers that frame a message or describe one hop: they are always the proxy's to write
/// (computed after filters run), so a header modifier that names one in any action is refused
/// with its rule. A filter that set `Content-Length` could smuggle a second request inside the
/// first one's body, or make a response's body spill into the client's next response.
pub const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Whether `name` is one of [`FRAMING_HEADERS`] (names are lower-case once parsed).
pub fn is_framing_header(name: &HeaderName) -> bool {
    FRAMING_HEADERS.contains(&name.as_str())
}

/// `set` replaces, `add` appends, `remove` deletes; one action per name. No action names a
/// [framing header](FRAMING_HEADERS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    #[serde(serialize_with = "ser::fields")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser::fields")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser::names")]
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    #[serde(serialize_with = "ser::opt_display")]
    pub scheme: Option<Scheme>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// One of [`REDIRECT_STATUS_CODES`] (the CRD default is 302).
    #[serde(serialize_with = "ser::status")]
    pub status_code: StatusCode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrlRewrite {
    /// The Host the backend sees.
    #[serde(serialize_with = "ser::opt_value")]
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathModifier {
    /// A path (starts with `/`).
    ReplaceFullPath(String),
    /// Replaces the part of the path matched by the route's `PathMatch::Prefix`; a path, or
    /// empty to strip the prefix.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Whole request, client to gateway and back (`timeouts.request`).
    pub request: Option<Duration>,
    /// One try to the backend (`timeouts.backendRequest`).
    pub backend_request: Option<Duration>,
}

/// How the `http` types appear in `splitter check -o json` and `/debug/plan`: as written.
mod ser {
    use super::*;

    pub fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn opt_display<T: fmt::Display, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    fn value_text(v: &HeaderValue) -> String {
        String::from_utf8_lossy(v.as_bytes()).into_owned()
    }

    pub fn opt_value<S: Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&value_text(v)),
            None => s.serialize_none(),
        }
    }

    pub fn fields<S: Serializer>(v: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (n, val) in v {
            seq.serialize_element(&(n.as_str(), value_text(val)))?;
        }
        seq.end()
    }

    pub fn names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(HeaderName::as_str))
    }

    pub fn status<S: Serializer>(v: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(v.as_u16())
    }
}
