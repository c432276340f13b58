//! A TLS echo backend for TLS passthrough: the `splitter-echo --tls-cert` mode, and an
//! in-process server for tests. It terminates TLS with its own certificate, so a client that
//! verifies the certificate and reads the answer knows which backend it reached, end to end.
//!
//! It speaks the line protocol of the upstream Gateway API conformance `tcp-backend`: once the
//! handshake is done it sends `Gateway API Test TCP Server\n`, then answers each line `PING`
//! with `PONG`, `IS_TLS` with `true`, and `TEST` with a JSON line naming its namespace, pod
//! and the server name (SNI) and TLS version the client used. When the client closes its
//! sending side, it answers `BYE <lines read>` and closes (how tests see a half-close pass
//! through a splice).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

/// The first line a client reads (upstream's `tcpserver.WelcomeMessage`).
pub const WELCOME: &str = "Gateway API Test TCP Server\n";

/// The answer to `TEST` (upstream's `TCPAssertions`, the fields conformance checks).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsEchoReply {
    pub namespace: String,
    pub pod: String,
    #[serde(rename = "isTLS")]
    pub is_tls: bool,
    pub tls: TlsAssertions,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsAssertions {
    pub version: String,
    #[serde(rename = "serverName")]
    pub server_name: String,
    #[serde(rename = "negotiatedProtocol", default)]
    pub negotiated_protocol: String,
}

/// A running TLS echo server.
#[derive(Debug)]
pub struct TlsEchoServer {
    local_addr: SocketAddr,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

/// The server's TLS configuration from a PEM certificate chain and key.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate PEM", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("key PEM", &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(Arc::new(config))
}

impl TlsEchoServer {
    /// Binds `addr` and serves as pod `name` of `namespace` until [`Self::shutdown`] or drop.
    pub async fn bind(
        addr: SocketAddr,
        name: &str,
        namespace: &str,
        config: Arc<ServerConfig>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(());
        let who = Arc::new((name.to_string(), namespace.to_string()));
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(config), who, stop_rx));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes open connections.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    who: Arc<(String, String)>,
    mut stop: watch::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone();
                    let who = who.clone();
                    conns.spawn(async move {
                        if let Err(e) = answer(acceptor, stream, &who).await {
                            tracing::debug!(%peer, error = %e, "tls echo: connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tls echo: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

async fn answer(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    who: &(String, String),
) -> io::Result<()> {
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake"))??;
    let (_, session) = tls.get_ref();
    let reply = TlsEchoReply {
        namespace: who.1.clone(),
        pod: who.0.clone(),
        is_tls: true,
        tls: TlsAssertions {
            version: session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
            server_name: session.server_name().unwrap_or("").to_string(),
            negotiated_protocol: session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        },
    };
    let test = serde_json::to_string(&reply).map_err(io::Error::other)?;
    let (rx, mut tx) = tokio::io::split(tls);
    tx.write_all(WELCOME.as_bytes()).await?;
    let mut lines = BufReader::new(rx).lines();
    let mut read = 0u64;
    while let Some(line) = lines.next_line().await? {
        read += 1;
        let out = match line.as_str() {
            "PING" => "PONG\n".to_string(),
            "IS_TLS" => "true\n".to_string(),
            "TEST" => format!("{test}\n"),
            _ => continue,
        };
        tx.write_all(out.as_bytes()).await?;
    }
    tx.write_all(format!("BYE {read}\n").as_bytes()).await?;
    tx.shutdown().await
}
