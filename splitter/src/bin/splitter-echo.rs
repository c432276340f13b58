//! `splitter-echo --listen ADDR --name NAME`: the echo backend of the tests and the demo (see
//! `splitter::echo`). With `--tls-cert FILE --tls-key FILE` it is a TLS backend instead (see
//! `splitter::echo_tls`), for TLS passthrough. Runs until SIGTERM or Ctrl-C, then finishes
//! open requests.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use splitter::echo::EchoServer;

#[derive(Parser)]
#[command(
    name = "splitter-echo",
    about = "HTTP echo backend: GET /hostname answers NAME"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 or [::]:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// Answer of GET /hostname (with TLS: the pod name of the TEST answer).
    #[arg(long)]
    name: String,
    /// PEM certificate chain: serve the TLS line protocol of `splitter::echo_tls` instead of
    /// HTTP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Namespace named in the TLS TEST answer.
    #[arg(long, default_value = "default")]
    namespace: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("splitter-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return rt.block_on(serve_tls(&args, cert, key));
    }
    rt.block_on(async {
        let server = match EchoServer::bind(args.listen, &args.name).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("splitter-echo: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let terminated = match splitter::signal::terminated() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("splitter-echo: cannot wait for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        // One line on stdout, so a parent that asked for port 0 learns the real one; a
        // SIGTERM from then on is a clean stop.
        println!("listening on {}", server.local_addr());
        terminated.await;
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn serve_tls(args: &Args, cert: &std::path::Path, key: &std::path::Path) -> ExitCode {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let config = match (read(cert), read(key)) {
        (Ok(c), Ok(k)) => match splitter::echo_tls::server_config(&c, &k) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("splitter-echo: {e}");
                return ExitCode::FAILURE;
            }
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("splitter-echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match splitter::echo_tls::TlsEchoServer::bind(
        args.listen,
        &args.name,
        &args.namespace,
        config,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("splitter-echo: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let terminated = match splitter::signal::terminated() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("splitter-echo: cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {} (TLS)", server.local_addr());
    terminated.await;
    server.shutdown().await;
    ExitCode::SUCCESS
}
