//! TLS termination for HTTPS listeners: the listener's [`TlsPlan`] becomes a rustls server
//! configuration whose certificate is chosen per handshake by SNI ([`TlsPlan::select`]), with
//! ALPN offering `h2` and `http/1.1`. A listener holds its configuration in an `ArcSwapOption`
//! beside its route table: a new plan (a rotated Secret) is swapped in atomically, new
//! handshakes use it, and connections already open keep the session they negotiated.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use rustls::{
    ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use splitter_plan::plan::tls::{PlannedCertificate, TlsPlan};

/// Picks the certificate of a handshake by its server name, as the plan says.
#[derive(Debug)]
struct SniResolver {
    plan: TlsPlan,
    /// The loaded key of each certificate of the plan, by identity.
    keys: Vec<(Arc<PlannedCertificate>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = self.plan.select(hello.server_name())?;
        self.keys
            .iter()
            .find(|(c, _)| Arc::ptr_eq(c, chosen))
            .map(|(_, k)| k.clone())
    }
}

/// The server configuration of a listener's TLS plan. A certificate whose key cannot be loaded
/// (the plan checked it, so this is not expected) is logged and left out: its handshakes fail,
/// and nothing is ever served in clear on an HTTPS listener.
pub(crate) fn server_config(listener: &str, plan: &TlsPlan) -> Arc<ServerConfig> {
    let mut keys: Vec<(Arc<PlannedCertificate>, Arc<CertifiedKey>)> = Vec::new();
    for c in &plan.certificates {
        if keys.iter().any(|(k, _)| Arc::ptr_eq(k, &c.certificate)) {
            continue;
        }
        match c.certificate.certified_key() {
            Ok(k) => keys.push((c.certificate.clone(), Arc::new(k))),
            Err(e) => {
                tracing::warn!(%listener, secret = %c.certificate.secret, error = %e, "certificate left out")
            }
        }
    }
    let resolver = SniResolver {
        plan: plan.clone(),
        keys,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets, as nginx ships them: a returning client resumes whatever the
    // number of clients, where rustls' default (tickets that point into a 256-entry session
    // cache) forgets a client after 128 TLS 1.3 handshakes by others
    // (`l7::tls::a_returning_client_resumes_by_ticket_after_many_other_handshakes`; the bench's
    // 64 clients never reach that). TLS 1.3 resumption still runs an ECDHE
    // exchange (rustls offers only psk_dhe_ke), so forward secrecy holds; the ticket keys are
    // random, rotate every 6 hours and never leave the process. A new plan (a rotated
    // certificate) makes a new ticketer: tickets issued before it give full handshakes.
    match ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => {
            tracing::warn!(%listener, error = %e, "no session tickets: resumption only through the session cache")
        }
    }
    Arc::new(config)
}

/// A client connection, in clear or behind TLS: one type for hyper to serve either way.
pub(crate) enum ClientIo<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
