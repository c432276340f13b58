//! `splitter-echo --listen ADDR --name NAME`: the echo backend of the tests and the demo (see
//! `splitter::echo`). Runs until SIGTERM or Ctrl-C, then finishes open requests.

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
    /// Answer of GET /hostname.
    #[arg(long)]
    name: String,
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
    rt.block_on(async {
        let server = match EchoServer::bind(args.listen, &args.name).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("splitter-echo: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        // One line on stdout, so a parent that asked for port 0 learns the real one.
        println!("listening on {}", server.local_addr());
        if let Err(e) = splitter::signal::terminated().await {
            eprintln!("splitter-echo: cannot wait for signals: {e}");
        }
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}
