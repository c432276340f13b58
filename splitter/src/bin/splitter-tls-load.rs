//! `splitter-tls-load`: the new-TLS-connection load of `cargo xtask bench l7 --tls`. Each of
//! `--concurrency` threads loops: connect, full TLS handshake, one `GET` with `Connection:
//! close`, read the response to the end, close. Prints one JSON line: connections completed,
//! their rate, the p99 of connect-to-last-byte, errors, and how many handshakes resumed.
//! With `--resume`, the client keeps the sessions servers give it (rustls' default in-memory
//! cache, tickets included) and offers them on the next connections, as a browser would.
//!
//! Why not wrk with a `Connection: close` script: it resumes. Against nginx logging
//! `$ssl_session_reused`, 2688 of its 2692 handshakes in 2 s (`-c4`) were resumptions: wrk
//! keeps an `SSL` per connection slot across reconnects and OpenSSL offers the previous
//! session. Here session resumption is off in the client (`Resumption::disabled`: no session
//! IDs, no tickets offered), and every handshake is checked to have been a full one
//! (`handshake_kind`). The certificate is verified against `--ca`, as a real client would.
//! Built in release with the agent (xtask runs in the dev profile, where rustls is slow enough
//! to make the client the bottleneck).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned,
    client::Resumption,
    crypto::ring,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

#[derive(Parser)]
#[command(
    name = "splitter-tls-load",
    about = "New TLS connections, one request each, no resumption"
)]
struct Args {
    /// Address to connect to, e.g. 10.240.0.2:443.
    #[arg(long)]
    connect: SocketAddr,
    /// Name to verify the certificate for (and send as SNI when it is a DNS name).
    #[arg(long)]
    server_name: String,
    /// PEM file of the certificates to trust.
    #[arg(long)]
    ca: PathBuf,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Connections in flight at once (one thread each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offer the sessions the server gave on earlier connections (resumed handshakes).
    #[arg(long)]
    resume: bool,
}

/// What one thread saw.
#[derive(Default)]
struct Tally {
    /// Connect-to-last-byte time of each completed connection, in microseconds.
    latencies: Vec<u32>,
    errors: u64,
    resumed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("splitter-tls-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)? {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !args.resume {
        // Every handshake a full one: nothing cached, nothing offered.
        config.resumption = Resumption::disabled();
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let name = ServerName::try_from(args.server_name.clone())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.server_name
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| s.spawn(|| worker(args.connect, &config, &name, &request, deadline)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    let report = serde_json::json!({
        "connections": latencies.len(),
        "per_sec": latencies.len() as f64 / elapsed,
        "p99_us": p99,
        "errors": tallies.iter().map(|t| t.errors).sum::<u64>(),
        "resumed": tallies.iter().map(|t| t.resumed).sum::<u64>(),
    });
    println!("{report}");
    Ok(())
}

/// Opens connections one after the other until `deadline`.
fn worker(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    request: &str,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut response = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let started = Instant::now();
        match one(addr, config, name, request, &mut response) {
            Ok(kind) if response.starts_with(b"HTTP/1.1 200 ") => {
                tally
                    .latencies
                    .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                tally.resumed += u64::from(kind == HandshakeKind::Resumed);
            }
            Ok(_) | Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// One connection: handshake, request, the whole response (the server closes after it), then
/// an abortive close (RST). The RST leaves no TIME_WAIT on either side: tens of thousands of
/// connections in a run outnumber the client's ephemeral ports, and a port reused while the
/// server still holds the previous connection on it in TIME_WAIT stalls the new SYN (measured:
/// the rate fell from about 4000/s to 300-600/s in the rounds after a fast one).
fn one(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    request: &str,
    response: &mut Vec<u8>,
) -> anyhow::Result<HandshakeKind> {
    response.clear();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = ClientConnection::new(config.clone(), name.clone())?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())?;
    match tls.read_to_end(response) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    tls.conn
        .handshake_kind()
        .ok_or_else(|| anyhow::anyhow!("no handshake"))
}
