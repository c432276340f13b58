//! The `splitter` binary: wiring only; every subcommand's logic lives in the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use splitter::{check, dataplane::ebpf, doctor, inspect};
use splitter_common::pin::DEFAULT_PIN_DIR;

#[derive(Parser)]
#[command(
    name = "splitter",
    version,
    about = "eBPF/XDP-accelerated traffic splitter for the Kubernetes Gateway API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check whether this node can run the agent (kernel, BTF, bpffs, capabilities, load, attach).
    Doctor {
        /// Also attach the XDP program to this interface (and detach it again).
        #[arg(long)]
        iface: Option<String>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Print the live kernel state read from the pinned maps.
    Inspect {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Load manifests, build the plan and print it: listeners with their mode and why, weighted
    /// shares per backend, statuses. Exits 1 when anything is invalid.
    Check {
        /// A manifest file or a directory of them (repeatable).
        #[arg(long = "manifests", required = true)]
        manifests: Vec<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
        output: String,
        #[arg(long, default_value = splitter::plan::listener::DEFAULT_GATEWAY_CLASS)]
        gateway_class: String,
    },
    /// Load the XDP program, attach it to each --iface and keep counting until interrupted.
    Attach {
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Doctor { iface, pin_dir } => {
            let checks = doctor::run(iface.as_deref(), &pin_dir);
            for c in &checks {
                println!("{c}");
            }
            if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Inspect { pin_dir } => match inspect::render(&pin_dir) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("splitter inspect: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            manifests,
            output,
            gateway_class,
        } => {
            let format = if output == "json" {
                check::Output::Json
            } else {
                check::Output::Text
            };
            let config = splitter::plan::PlanConfig {
                gateway_class,
                ..Default::default()
            };
            let outcome = check::run(&manifests, format, &config);
            print!("{}", outcome.output);
            if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Attach { ifaces, pin_dir } => match attach(&ifaces, &pin_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("splitter attach: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn attach(ifaces: &[String], pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut obj = ebpf::load_object(Some(pin_dir))?;
    for iface in ifaces {
        let (_, mode) = ebpf::attach_xdp(&mut obj, iface)?;
        tracing::info!(%iface, ?mode, "XDP attached");
    }
    tracing::info!(pin_dir = %pin_dir.display(), "counting; maps pinned; Ctrl-C to stop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    // Dropping the object detaches the programs; the pinned maps keep their counts.
    drop(obj);
    Ok(())
}
