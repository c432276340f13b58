//! HTTPS listeners' certificates: `certificateRefs` -> Secrets -> certificate chains and keys
//! that parse, match and have not expired. What fails becomes the listener's
//! `ResolvedRefs=False` (`InvalidCertificateRef` or `RefNotPermitted`) with the ref and the
//! reason; what passes reaches the proxy in the listener's [`TlsPlan`].
//!
//! Pure but for one input: the time the expiry is checked against ([`Clock`]), which the agent
//! sets to the system clock and tests set to a fixed instant (or leave off).

use std::sync::Arc;

use rustls::{
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use serde::Serialize;

use super::{ObjectKey, status::reason};
use crate::model::{CertificateRef, Gateway, Index, Kind, ListenerTls, TLS_SECRET_TYPE};

/// What leaf expiry is checked against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// No expiry check (the plan stays a function of the index alone).
    #[default]
    Off,
    /// The system clock when the plan is built.
    System,
    /// A fixed instant, in seconds since the epoch.
    At(i64),
}

impl Clock {
    fn now(self) -> Option<i64> {
        match self {
            Clock::Off => None,
            Clock::At(t) => Some(t),
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok()),
        }
    }
}

/// The TLS side of an L7 listener: every certificate of the HTTPS Gateway listeners that share
/// it. The proxy picks one per handshake by SNI ([`TlsPlan::select`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TlsPlan {
    pub certificates: Vec<ListenerCertificate>,
}

/// One certificate and the Gateway listener hostname it serves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerCertificate {
    /// The Gateway listener's hostname (`None`: any).
    pub hostname: Option<String>,
    #[serde(serialize_with = "serialize_arc")]
    pub certificate: Arc<PlannedCertificate>,
}

fn serialize_arc<S: serde::Serializer>(
    c: &Arc<PlannedCertificate>,
    s: S,
) -> Result<S::Ok, S::Error> {
    c.as_ref().serialize(s)
}

/// A checked certificate chain and key, from one Secret.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct PlannedCertificate {
    pub secret: ObjectKey,
    /// The leaf's DNS names (subjectAltName dNSName entries, lower-case).
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    /// The chain, leaf first, as DER.
    #[serde(skip)]
    pub chain: Vec<Vec<u8>>,
    /// The private key as PEM; never serialised or printed.
    #[serde(skip)]
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for PlannedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedCertificate")
            .field("secret", &self.secret)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl PlannedCertificate {
    /// Checks a Secret's `tls.crt` and `tls.key`: a PEM chain whose first certificate parses,
    /// a PEM key that matches it, and (when `now` is given) a leaf not past its notAfter.
    pub fn from_pem(
        secret: ObjectKey,
        cert_pem: &[u8],
        key_pem: &[u8],
        now: Option<i64>,
    ) -> Result<Self, String> {
        let chain: Vec<Vec<u8>> =
            match CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>() {
                Ok(c) if !c.is_empty() => c.into_iter().map(|c| c.to_vec()).collect(),
                Ok(_) => return Err("tls.crt holds no PEM certificate".to_string()),
                Err(e) => return Err(format!("tls.crt is not valid PEM: {e}")),
            };
        let leaf = x509::leaf(&chain[0])
            .map_err(|e| format!("the first certificate in tls.crt cannot be parsed: {e}"))?;
        let planned = Self {
            secret,
            names: leaf.names,
            not_after: leaf.not_after,
            chain,
            key_pem: key_pem.to_vec(),
        };
        planned.certified_key()?;
        if let Some(now) = now
            && planned.not_after < now
        {
            return Err(format!(
                "the certificate expired at {}",
                rfc3339(planned.not_after)
            ));
        }
        Ok(planned)
    }

    /// The chain and the loaded signing key, as rustls serves them.
    pub fn certified_key(&self) -> Result<CertifiedKey, String> {
        let chain = self
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("tls.key holds no PEM private key ({e})"))?;
        CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key in tls.key does not match the certificate in tls.crt".to_string()
            }
            e => format!("the private key in tls.key cannot be used: {e}"),
        })
    }

    /// Whether `sni` is one of the leaf's names (a `*.` name matches exactly one label, as
    /// certificate wildcards do).
    pub fn serves(&self, sni: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => sni
                .split_once('.')
                .is_some_and(|(head, rest)| !head.is_empty() && rest == suffix),
            None => n == sni,
        })
    }
}

impl TlsPlan {
    /// The certificate for a handshake with server name `sni`: among the Gateway listeners whose
    /// hostname accepts it (the most specific first; a listener without hostname accepts every
    /// name), the first certificate whose names include `sni`, else that listener's first
    /// certificate; with no SNI or no accepting listener, the first certificate of all.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<PlannedCertificate>> {
        let first = self.certificates.first().map(|c| &c.certificate);
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return first;
        };
        let sni = sni.as_str();
        let specificity = |h: &Option<String>| match h {
            None => 0,
            Some(h) if h.starts_with("*.") => 1,
            Some(_) => 2,
        };
        let best = self
            .certificates
            .iter()
            .filter(|c| c.hostname.as_deref().is_none_or(|h| name_matches(h, sni)))
            .map(|c| specificity(&c.hostname))
            .max();
        let Some(best) = best else {
            return first;
        };
        let candidates = || {
            self.certificates.iter().filter(move |c| {
                specificity(&c.hostname) == best
                    && c.hostname.as_deref().is_none_or(|h| name_matches(h, sni))
            })
        };
        candidates()
            .find(|c| c.certificate.serves(sni))
            .or_else(|| candidates().next())
            .map(|c| &c.certificate)
    }
}

/// `pattern` (a DNS name, or `*.` and a suffix matching one or more labels as Gateway API
/// hostnames do) against a lower-case server name.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty()),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Why a listener's certificates do not resolve: the condition reason and message.
pub(crate) type TlsRefusal = (&'static str, String);

/// Resolves every `certificateRefs` entry of a Terminate listener of `gateway`. All must
/// resolve for the listener to be served; the refusal names each that does not.
pub(crate) fn resolve(
    index: &Index,
    gateway: &Gateway,
    tls: &ListenerTls,
    clock: Clock,
) -> Result<Vec<Arc<PlannedCertificate>>, TlsRefusal> {
    if tls.certificate_refs.is_empty() {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            "no certificateRefs: tls.options alone cannot supply a certificate here".to_string(),
        ));
    }
    let now = clock.now();
    let mut out = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut not_permitted = false;
    for (i, r) in tls.certificate_refs.iter().enumerate() {
        match resolve_one(index, gateway, r, now) {
            Ok(c) => out.push(Arc::new(c)),
            Err((why, permitted)) => {
                not_permitted |= !permitted;
                refused.push(format!("certificateRefs[{i}] ({r}): {why}"));
            }
        }
    }
    if refused.is_empty() {
        Ok(out)
    } else {
        let r = if not_permitted {
            reason::REF_NOT_PERMITTED
        } else {
            reason::INVALID_CERTIFICATE_REF
        };
        Err((r, refused.join("; ")))
    }
}

/// One ref; the error says why and whether the reference was permitted at all.
fn resolve_one(
    index: &Index,
    gateway: &Gateway,
    r: &CertificateRef,
    now: Option<i64>,
) -> Result<PlannedCertificate, (String, bool)> {
    if !r.group.is_empty() || r.kind != "Secret" {
        return Err((
            "only core Secrets (group \"\", kind Secret) are supported".to_string(),
            true,
        ));
    }
    let gw_ns = &gateway.meta.namespace;
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if ns != gw_ns
        && !index
            .reference_grants
            .iter()
            .filter(|((grant_ns, _), _)| grant_ns == ns)
            .any(|(_, g)| g.permits("Gateway", gw_ns, "", "Secret", &r.name))
    {
        return Err((
            format!("no ReferenceGrant in namespace {ns} lets Gateways of {gw_ns} use it"),
            false,
        ));
    }
    let secret_key = ObjectKey::new(Kind::Secret, ns, &r.name);
    let Some(secret) = index.secrets.get(&(ns.to_string(), r.name.clone())) else {
        // From a cluster only TLS Secrets are read: one of another type is "not found" too.
        return Err((
            format!("{secret_key} not found (only Secrets of type {TLS_SECRET_TYPE} are read)"),
            true,
        ));
    };
    let bad = |why: String| Err((why, true));
    if secret.type_ != TLS_SECRET_TYPE {
        return bad(format!(
            "{secret_key} is of type {}, not {TLS_SECRET_TYPE}",
            secret.type_
        ));
    }
    let (Some(cert_pem), Some(key_pem)) = (&secret.cert, &secret.key) else {
        return bad(format!("{secret_key} lacks tls.crt or tls.key"));
    };
    PlannedCertificate::from_pem(secret_key.clone(), cert_pem, key_pem, now)
        .map_err(|e| (format!("{secret_key}: {e}"), true))
}

fn rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map_or_else(|_| format!("{secs}s after the epoch"), |t| t.to_string())
}

/// Just enough DER to read a leaf certificate's notAfter and subjectAltName DNS names.
mod x509 {
    pub struct Leaf {
        pub names: Vec<String>,
        pub not_after: i64,
    }

    /// One TLV: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
        let (&tag, rest) = input.split_first().ok_or("truncated")?;
        let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad length".into());
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | usize::from(b);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err("truncated".into());
        }
        Ok((tag, &rest[..len], &rest[len..]))
    }

    fn expect(input: &[u8], want: u8) -> Result<(&[u8], &[u8]), String> {
        let (tag, body, rest) = tlv(input)?;
        if tag != want {
            return Err(format!("expected tag {want:#04x}, found {tag:#04x}"));
        }
        Ok((body, rest))
    }

    const SEQUENCE: u8 = 0x30;
    /// 2.5.29.17
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

    pub fn leaf(der: &[u8]) -> Result<Leaf, String> {
        let (cert, _) = expect(der, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        // [0] EXPLICIT version, optional.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.2;
        }
        rest = tlv(rest)?.2; // serialNumber
        rest = tlv(rest)?.2; // signature
        rest = tlv(rest)?.2; // issuer
        let (validity, after) = expect(rest, SEQUENCE)?;
        let (_, validity) = (tlv(validity)?.0, tlv(validity)?.2); // notBefore
        let (tag, not_after, _) = tlv(validity)?;
        let not_after = time(tag, not_after)?;
        rest = tlv(after)?.2; // subject
        rest = tlv(rest)?.2; // subjectPublicKeyInfo
        let mut names = Vec::new();
        while !rest.is_empty() {
            let (tag, body, next) = tlv(rest)?;
            rest = next;
            if tag != 0xa3 {
                continue;
            }
            let (mut exts, _) = expect(body, SEQUENCE)?;
            while !exts.is_empty() {
                let (ext, next) = expect(exts, SEQUENCE)?;
                exts = next;
                let (oid, mut fields) = expect(ext, 0x06)?;
                if oid != SAN_OID {
                    continue;
                }
                if fields.first() == Some(&0x01) {
                    fields = tlv(fields)?.2; // critical
                }
                let (value, _) = expect(fields, 0x04)?;
                let (mut general, _) = expect(value, SEQUENCE)?;
                while !general.is_empty() {
                    let (tag, name, next) = tlv(general)?;
                    general = next;
                    // [2] IMPLICIT IA5String: dNSName.
                    if tag == 0x82 {
                        names.push(String::from_utf8_lossy(name).to_ascii_lowercase());
                    }
                }
            }
        }
        Ok(Leaf { names, not_after })
    }

    /// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ).
    pub(super) fn time(tag: u8, body: &[u8]) -> Result<i64, String> {
        let text = std::str::from_utf8(body).map_err(|_| "bad time")?;
        let digits = text.strip_suffix('Z').ok_or("time not in UTC")?;
        // Checked first: the slicing below is by byte.
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad time {text:?}"));
        }
        let (year, rest) = match (tag, digits.len()) {
            (0x17, 12) => {
                let yy: i16 = digits[..2].parse().map_err(|_| "bad time")?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
            }
            (0x18, 14) => (digits[..4].parse().map_err(|_| "bad time")?, &digits[4..]),
            _ => return Err(format!("unsupported time {text:?}")),
        };
        let n = |i: usize| -> Result<i8, String> {
            rest[i..i + 2]
                .parse()
                .map_err(|_| format!("bad time {text:?}"))
        };
        let dt =
            k8s_openapi::jiff::civil::DateTime::new(year, n(0)?, n(2)?, n(4)?, n(6)?, n(8)?, 0)
                .map_err(|e| format!("bad time {text:?}: {e}"))?;
        dt.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second())
            .map_err(|e| format!("bad time {text:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Secret is user input: no byte of it may panic the planner.
    #[test]
    fn mangled_certificates_are_errors_not_panics() {
        let pem = include_bytes!("../../tests/fixtures/tls/a.crt");
        let der = CertificateDer::from_pem_slice(pem).unwrap().to_vec();
        assert!(x509::leaf(&der).is_ok());
        for n in 0..der.len() {
            let _ = x509::leaf(&der[..n]);
            for b in [0x00, 0x01, 0x17, 0x18, 0x30, 0x7f, 0x80, 0x84, 0xc3, 0xff] {
                let mut m = der.clone();
                m[n] = b;
                let _ = x509::leaf(&m);
            }
        }
        // Non-ASCII where the digits of a time go, across a two-digit boundary.
        assert!(x509::time(0x17, "26110\u{e9}13414Z".as_bytes()).is_err());
        assert_eq!(x509::time(0x17, b"261106134614Z"), Ok(1_793_972_774));
        assert_eq!(x509::time(0x18, b"21261106134614Z"), Ok(4_949_646_374));
    }

    #[test]
    fn wildcard_names() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "aexample.com"));
        assert!(name_matches("A.example.com", "a.example.com"));
    }
}
