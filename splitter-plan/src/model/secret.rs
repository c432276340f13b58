//! Secrets of type `kubernetes.io/tls`: the certificate chain and private key a TLS listener
//! serves. Only `tls.crt` and `tls.key` are kept; any other data of the Secret is dropped as it
//! is read, so the index holds no more secret material than the listeners need.

use k8s_openapi::api::core::v1::Secret as RawSecret;

use super::Meta;

/// The Secret type that carries `tls.crt` and `tls.key`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub meta: Meta,
    /// `type` as written (`Opaque` when unset, as the API server defaults it).
    pub type_: String,
    /// `tls.crt` (PEM), when present.
    pub cert: Option<Vec<u8>>,
    /// `tls.key` (PEM), when present.
    pub key: Option<Vec<u8>>,
}

/// Never prints the key.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("meta", &self.meta)
            .field("type_", &self.type_)
            .field("cert_bytes", &self.cert.as_ref().map(Vec::len))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(crate) fn secret(raw: RawSecret, meta: Meta) -> Secret {
    let mut data = raw.data.unwrap_or_default();
    let mut take = |k: &str| -> Option<Vec<u8>> {
        // `stringData` (as a manifest may carry it) wins, as the API server merges it.
        raw.string_data
            .as_ref()
            .and_then(|s| s.get(k))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| data.remove(k).map(|b| b.0))
    };
    let cert = take("tls.crt");
    let key = take("tls.key");
    Secret {
        meta,
        type_: raw.type_.unwrap_or_else(|| "Opaque".to_string()),
        cert,
        key,
    }
}
