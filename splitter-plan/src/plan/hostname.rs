//! Hostname intersection between listeners and routes, and how specific a hostname is.

/// The one wildcard rule, for listener/route intersection and for a request's Host alike:
/// `*.x` matches a name with one or more labels before `.x`, never `x` itself; names compare
/// case-insensitively, as DNS names do.
pub fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // `suffix` keeps its leading dot, so at least one non-empty label must precede it.
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && !host[..host.len() - suffix.len()].ends_with('.')
        }
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// Whether `host` (a name or a `*.` wildcard) is covered by `pattern`: as [`matches`], and a
/// wildcard host is covered when its suffix is (`*.a.x` counts as `a.x` here).
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern.starts_with("*.") {
        matches(pattern, host.strip_prefix("*.").unwrap_or(host))
    } else {
        matches(pattern, host)
    }
}

/// The hostnames a route serves on a listener: the intersection of both, the more specific
/// name of each matching pair. `Some(vec![])` means "any host"; `None` means no intersection.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    match (listener, route.is_empty()) {
        (None, true) => Some(Vec::new()),
        (Some(l), true) => Some(vec![l.to_string()]),
        (None, false) => Some(route.to_vec()),
        (Some(l), false) => {
            let mut out: Vec<String> = Vec::new();
            for r in route {
                let pick = if r == l || covers(l, r) {
                    Some(r.as_str())
                } else if covers(r, l) {
                    Some(l)
                } else {
                    None
                };
                if let Some(p) = pick
                    && !out.iter().any(|o| o == p)
                {
                    out.push(p.to_string());
                }
            }
            (!out.is_empty()).then_some(out)
        }
    }
}

/// Whether two effective hostname lists (empty: any host) share a host.
pub fn lists_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|x| b.iter().any(|y| x == y || covers(x, y) || covers(y, x)))
}

/// Sort key: exact names first (longest first), then wildcards (longest suffix first), then
/// "any host". Smaller sorts first.
pub fn specificity(hostname: Option<&str>) -> (u8, std::cmp::Reverse<usize>) {
    match hostname {
        Some(h) if h.starts_with("*.") => (1, std::cmp::Reverse(h.len())),
        Some(h) => (0, std::cmp::Reverse(h.len())),
        None => (2, std::cmp::Reverse(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn wildcard_covers_one_or_more_labels_not_the_suffix() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "aexample.com"));
        assert!(covers("*.example.com", "*.foo.example.com"));
        assert!(!covers("*.foo.example.com", "*.example.com"));
    }

    #[test]
    fn intersections() {
        assert_eq!(intersect(None, &[]), Some(vec![]));
        assert_eq!(intersect(Some("a.com"), &[]), Some(v(&["a.com"])));
        assert_eq!(
            intersect(
                Some("*.example.com"),
                &v(&["foo.example.com", "foo.example.net"])
            ),
            Some(v(&["foo.example.com"]))
        );
        assert_eq!(
            intersect(Some("very.specific.com"), &v(&["*.specific.com"])),
            Some(v(&["very.specific.com"]))
        );
        assert_eq!(intersect(Some("*.wildcard.io"), &v(&["wildcard.io"])), None);
        assert_eq!(intersect(Some("*.example.com"), &v(&["example.com"])), None);
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["*.example.com"])),
            Some(v(&["*.example.com"]))
        );
    }
}
