//! Upstream's TCP client (`conformance/utils/tcp`) over TLS, for TLS passthrough: the
//! exchange with the `tcp-backend` server, a rejected handshake, and the TLSRoute status
//! helpers of `conformance/utils/kubernetes`.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    ClientConfig,
    crypto::ring,
    pki_types::{CertificateDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{AnyCertificate, Suite, tls_round_trip};

/// What upstream's `tcp.WaitForValidTCPResponse` checks of a TCP (here: TLS) backend: the
/// welcome line, `PING` answered `PONG`, `IS_TLS` answered, and the `TEST` payload.
#[derive(Debug)]
pub struct TcpAnswer {
    pub is_tls: String,
    pub namespace: String,
    pub pod: String,
    pub server_name: String,
    /// The leaf certificate of the TLS session: the backend's own (the proxy has none).
    pub leaf: Vec<u8>,
}

/// One connection over TLS with server name `sni` to a passthrough listener, the upstream
/// TCP client's exchange (`tcp.MakeTCPRequestAndExpectEventuallyValidResponse` with
/// `useTLS`). The certificate is not verified by name: upstream's names are not the test
/// certificate's; the caller compares the leaf instead.
pub async fn tcp_over_tls(addr: SocketAddr, sni: &str) -> Result<TcpAnswer, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(config)).connect(name, stream),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake with {sni}: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (rx, mut tx) = tokio::io::split(tls);
    let mut lines = BufReader::new(rx).lines();
    let mut next = async || -> Result<String, String> {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "connection closed".to_string())
    };
    let welcome = next().await?;
    if format!("{welcome}\n") != splitter::echo_tls::WELCOME {
        return Err(format!("welcome message {welcome:?}"));
    }
    let mut answers = Vec::new();
    for ask in ["PING", "IS_TLS", "TEST"] {
        tx.write_all(format!("{ask}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tx.flush().await.map_err(|e| e.to_string())?;
        answers.push(next().await?);
    }
    if answers[0] != "PONG" {
        return Err(format!("PING answered {:?}", answers[0]));
    }
    let test: splitter::echo_tls::TlsEchoReply =
        serde_json::from_str(&answers[2]).map_err(|e| format!("TEST payload: {e}"))?;
    Ok(TcpAnswer {
        is_tls: answers[1].clone(),
        namespace: test.namespace,
        pod: test.pod,
        server_name: test.tls.server_name,
        leaf,
    })
}

/// Upstream `tls.MakeTLSConnectionAndExpectEventuallyConnectionRejection`: the TLS handshake
/// with server name `sni` fails (three times in a row, a connection each).
pub async fn expect_tls_rejected(addr: SocketAddr, sni: &str) {
    for _ in 0..3 {
        let got = tls_round_trip(addr, sni, sni, "/").await;
        assert!(
            got.as_ref().is_err_and(|e| e.contains("TLS handshake")),
            "a TLS connection to {addr} for {sni} must be rejected, got {got:?}"
        );
    }
}

/// The DER of the certificate the translated backends present (fixture `a`).
pub fn backend_leaf() -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../splitter-plan/tests/fixtures/tls/a.crt");
    CertificateDer::from_pem_file(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

impl Suite {
    /// Upstream `kubernetes.GatewayAndTLSRoutesMustBeAccepted`: the Gateway and its listeners
    /// are accepted and programmed, and every route is Accepted for it.
    pub fn tls_routes_must_be_accepted(&self, gateway: (&str, &str), routes: &[(&str, &str)]) {
        for r in routes {
            self.route_must_have(*r, gateway, "Accepted", true, "Accepted");
        }
        let gw = self.gateway_status(gateway.0, gateway.1);
        for c in ["Accepted", "Programmed"] {
            assert!(
                gw.conditions.iter().any(|x| x.type_ == c && x.is_true()),
                "Gateway {}/{}: {c} {:#?}",
                gateway.0,
                gateway.1,
                gw.conditions
            );
        }
        for l in &gw.listeners {
            for c in ["Accepted", "Programmed"] {
                assert!(
                    l.conditions.iter().any(|x| x.type_ == c && x.is_true()),
                    "listener {}: {c} {:#?}",
                    l.name,
                    l.conditions
                );
            }
        }
    }

    /// Upstream `kubernetes.TLSRouteMustHaveNoAcceptedParents` (and the HTTPRoute one): no
    /// parent of the route has Accepted=True.
    pub fn route_has_no_accepted_parents(&self, namespace: &str, name: &str) {
        let route = self
            .plan
            .routes
            .iter()
            .find(|r| r.route.namespace == namespace && r.route.name == name)
            .unwrap_or_else(|| panic!("no status for route {namespace}/{name}"));
        for p in &route.parents {
            assert!(
                !p.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.is_true()),
                "route {namespace}/{name} is accepted by {}: {:#?}",
                p.parent_ref,
                p.conditions
            );
        }
    }
}
