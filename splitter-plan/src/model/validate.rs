//! The value checks CRD validation does (patterns, ranges, CEL rules), as plain functions that
//! return the reason a value is wrong.

use std::time::Duration;

/// Largest backendRef weight the CRD accepts.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// A `PathPrefix` or `Exact` path value: absolute, at most 1024 characters, RFC 3986 path
/// characters only, and none of the sequences the CRD forbids (they would let a route match
/// something other than what it says once a proxy or backend normalises the path).
pub fn http_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with '/'"));
    }
    if value.len() > 1024 {
        return Err(format!(
            "path is {} characters long, the limit is 1024",
            value.len()
        ));
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if value.contains(bad) {
            return Err(format!("path {value:?} must not contain {bad:?}"));
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Err(format!("path {value:?} must not end with '/.' or '/..'"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c);
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "path {value:?} contains {c:?}, which is not an RFC 3986 path character"
        ));
    }
    Ok(())
}

/// An RFC 1123 DNS name, optionally with a leading `*.` label when `wildcard` is allowed. IP
/// addresses are refused, as the Gateway API hostname pattern does.
pub fn hostname(value: &str, wildcard: bool) -> Result<(), String> {
    let rest = match value.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err(format!("hostname {value:?} must not be a wildcard")),
        None => value,
    };
    if value.is_empty() || value.len() > 253 {
        return Err(format!("hostname {value:?} must be 1 to 253 characters"));
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "hostname {value:?} must be a name, not an IP address"
        ));
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "hostname {value:?} is not a lower-case RFC 1123 name (label {label:?})"
            ));
        }
    }
    Ok(())
}

/// An HTTP header name (RFC 7230 token).
pub fn header_name(value: &str) -> Result<(), String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if value.is_empty() || value.len() > 256 || !value.chars().all(tchar) {
        return Err(format!("{value:?} is not a valid HTTP header name"));
    }
    Ok(())
}

/// A port number (1..=65535).
pub fn port(value: i32) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {value} is out of range 1..=65535"))
}

/// A backendRef weight (0..=1_000_000), defaulting to 1.
pub fn weight(value: Option<i32>) -> Result<u32, String> {
    let w = i64::from(value.unwrap_or(1));
    if !(0..=MAX_WEIGHT).contains(&w) {
        return Err(format!("weight {w} is out of range 0..=1000000"));
    }
    Ok(w as u32)
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, combinations such as `1m30s`). `0s` means
/// "no timeout" and becomes `None`.
pub fn duration(value: &str) -> Result<Option<Duration>, String> {
    let parsed: gateway_api::Duration = value
        .parse()
        .map_err(|e| format!("duration {value:?} is invalid: {e}"))?;
    if parsed.is_zero() {
        return Ok(None);
    }
    Ok(Some(Duration::from_millis(parsed.as_millis() as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(http_path("/").is_ok());
        assert!(http_path("/echo").is_ok());
        assert!(http_path("/a/b-c_d~e").is_ok());
        assert!(http_path("echo").is_err());
        assert!(http_path("/a//b").is_err());
        assert!(http_path("/a/./b").is_err());
        assert!(http_path("/a/..").is_err());
        assert!(http_path("/a%2Fb").is_err());
        assert!(http_path("/a#b").is_err());
        assert!(http_path("/a b").is_err());
    }

    #[test]
    fn hostnames() {
        assert!(hostname("example.com", false).is_ok());
        assert!(hostname("*.example.com", true).is_ok());
        assert!(hostname("*.example.com", false).is_err());
        assert!(hostname("Example.com", true).is_err());
        assert!(hostname("10.0.0.1", true).is_err());
        assert!(hostname("-a.com", true).is_err());
    }

    #[test]
    fn weights_and_durations() {
        assert_eq!(weight(None), Ok(1));
        assert_eq!(weight(Some(0)), Ok(0));
        assert_eq!(weight(Some(1_000_000)), Ok(1_000_000));
        assert!(weight(Some(1_000_001)).is_err());
        assert!(weight(Some(-1)).is_err());
        assert_eq!(duration("0s"), Ok(None));
        assert_eq!(duration("1m30s"), Ok(Some(Duration::from_secs(90))));
        assert!(duration("ten seconds").is_err());
    }
}
