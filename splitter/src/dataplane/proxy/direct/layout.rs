//! The header layout of a backend connection's last response.
//!
//! A backend answers request after request with the same header fields in the same order (one
//! code path writes them). Turning each field name into a `HeaderName` and hashing it into a
//! fresh map, for every response, was a visible share of the proxy's work. A connection
//! keeps the map built for its last response, values left empty; a response whose names are
//! spelled the same, in the same order, gets a copy with its own values put in place.

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header::InvalidHeaderValue};

/// More fields than this are not remembered: the copy would cost more than it saves, and a
/// pooled connection should not hold much.
const MAX_FIELDS: usize = 32;

/// Which framing fields are present: most responses have a Content-Length and nothing else,
/// and these spare the map lookups that say so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Seen {
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub connection: bool,
}

impl Seen {
    pub fn note(&mut self, name: &HeaderName) {
        if name == http::header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == http::header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == http::header::CONNECTION {
            self.connection = true;
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Layout {
    /// The names as the backend spelled them, one after another, and where each ends.
    spelled: Vec<u8>,
    ends: Vec<usize>,
    /// One entry per name, in order, each with an empty value. Empty when nothing is kept.
    map: HeaderMap,
    seen: Seen,
    /// Where the values of the response being read lie in its head.
    values: Vec<Range<usize>>,
}

/// Where `part`, a slice of a buffer starting at address `start`, lies in it (an empty slice
/// may point anywhere: it is placed at 0). httparse parses in place, so every name and value it
/// returns is such a slice.
pub(super) fn span(start: usize, part: &[u8]) -> Range<usize> {
    let at = if part.is_empty() {
        0
    } else {
        part.as_ptr() as usize - start
    };
    at..at + part.len()
}

impl Layout {
    /// Whether `fields` have the remembered names, spelled the same and in the same order. If
    /// so, notes where each value lies in the head that starts at address `start`, for
    /// [`fill`](Self::fill).
    pub fn matches(&mut self, fields: &[httparse::Header<'_>], start: usize) -> bool {
        if self.ends.is_empty() || fields.len() != self.ends.len() {
            return false;
        }
        let mut from = 0;
        for (field, &end) in fields.iter().zip(&self.ends) {
            if self.spelled[from..end] != *field.name.as_bytes() {
                return false;
            }
            from = end;
        }
        self.values.clear();
        self.values
            .extend(fields.iter().map(|f| span(start, f.value)));
        true
    }

    /// The map for the response that [`matches`](Self::matches) last: the remembered names,
    /// each with its value sliced from `head`.
    pub fn fill(&self, head: &Bytes) -> Result<(HeaderMap, Seen), InvalidHeaderValue> {
        let mut map = self.map.clone();
        for (slot, range) in map.values_mut().zip(&self.values) {
            *slot = HeaderValue::from_maybe_shared(head.slice(range.clone()))?;
        }
        Ok((map, self.seen))
    }

    /// Remembers the names of `map`, spelled as `spelled` (in the map's order), for the next
    /// response. A map with a repeated name is not kept: its values would not come back in
    /// the order they were read.
    pub fn learn<'a>(
        &mut self,
        spelled: impl Iterator<Item = &'a [u8]>,
        map: &HeaderMap,
        seen: Seen,
    ) {
        self.spelled.clear();
        self.ends.clear();
        self.map = HeaderMap::new();
        if map.len() > MAX_FIELDS || map.keys_len() != map.len() {
            return;
        }
        for name in spelled {
            self.spelled.extend_from_slice(name);
            self.ends.push(self.spelled.len());
        }
        self.map = HeaderMap::with_capacity(map.len());
        for name in map.keys() {
            self.map.append(name.clone(), HeaderValue::from_static(""));
        }
        self.seen = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head of `fields` and the httparse view of it.
    struct Head {
        bytes: Bytes,
        spans: Vec<(Range<usize>, Range<usize>)>,
    }

    impl Head {
        fn new(fields: &[(&str, &str)]) -> Self {
            let mut bytes = Vec::new();
            let mut spans = Vec::new();
            for (n, v) in fields {
                let name = bytes.len()..bytes.len() + n.len();
                bytes.extend_from_slice(n.as_bytes());
                let value = bytes.len()..bytes.len() + v.len();
                bytes.extend_from_slice(v.as_bytes());
                spans.push((name, value));
            }
            Self {
                bytes: Bytes::from(bytes),
                spans,
            }
        }

        fn fields(&self) -> Vec<httparse::Header<'_>> {
            self.spans
                .iter()
                .map(|(n, v)| httparse::Header {
                    name: std::str::from_utf8(&self.bytes[n.clone()]).unwrap(),
                    value: &self.bytes[v.clone()],
                })
                .collect()
        }

        /// Learns this head the way the parser does on a miss.
        fn teach(&self, layout: &mut Layout, seen: Seen) {
            let mut map = HeaderMap::new();
            for f in self.fields() {
                map.append(
                    HeaderName::from_bytes(f.name.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(f.value).unwrap(),
                );
            }
            layout.learn(
                self.spans.iter().map(|(n, _)| &self.bytes[n.clone()]),
                &map,
                seen,
            );
        }

        fn matches(&self, layout: &mut Layout) -> bool {
            layout.matches(&self.fields(), self.bytes.as_ptr() as usize)
        }
    }

    #[test]
    fn a_learned_layout_fills_in_new_values_in_order() {
        let mut layout = Layout::default();
        let seen = Seen {
            content_length: true,
            ..Seen::default()
        };
        Head::new(&[
            ("Content-Type", "text/plain"),
            ("x-echo-name", "a"),
            ("content-length", "1"),
        ])
        .teach(&mut layout, seen);
        let next = Head::new(&[
            ("Content-Type", "text/html"),
            ("x-echo-name", "bb"),
            ("content-length", "12"),
        ]);
        assert!(next.matches(&mut layout));
        let (filled, got) = layout.fill(&next.bytes).unwrap();
        assert_eq!(got, seen);
        let fields: Vec<_> = filled
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                ("content-type", "text/html"),
                ("x-echo-name", "bb"),
                ("content-length", "12"),
            ]
        );
    }

    #[test]
    fn other_names_spellings_or_orders_do_not_match() {
        let mut layout = Layout::default();
        assert!(!Head::new(&[]).matches(&mut layout), "nothing learned yet");
        Head::new(&[("a", "1"), ("b", "2")]).teach(&mut layout, Seen::default());
        for other in [
            &[("b", "2"), ("a", "1")][..],
            &[("a", "1"), ("B", "2")],
            &[("a", "1")],
            &[("a", "1"), ("b", "2"), ("c", "3")],
            &[("ab", "1"), ("", "2")],
        ] {
            assert!(!Head::new(other).matches(&mut layout), "{other:?}");
        }
        assert!(Head::new(&[("a", "x"), ("b", "y")]).matches(&mut layout));
    }

    #[test]
    fn repeated_names_are_not_remembered() {
        let mut layout = Layout::default();
        let repeated = Head::new(&[("a", "1"), ("a", "2")]);
        repeated.teach(&mut layout, Seen::default());
        assert!(!repeated.matches(&mut layout));
    }

    #[test]
    fn an_invalid_value_is_refused() {
        let mut layout = Layout::default();
        Head::new(&[("a", "1")]).teach(&mut layout, Seen::default());
        let bad = Head::new(&[("a", "\x01")]);
        assert!(bad.matches(&mut layout));
        assert!(layout.fill(&bad.bytes).is_err());
    }
}
