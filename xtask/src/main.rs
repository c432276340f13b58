//! `cargo xtask`: splitter's developer tasks.

mod bench;
mod build_ebpf;
mod demo;
mod demo_cluster;
mod setup;
mod test;
mod topology;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "splitter developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs on a fresh machine (idempotent).
    Setup,
    /// The reference journey in network namespaces: 100/100, then 133/67, then an L4 split,
    /// then a two-node cluster.
    Demo,
    /// Install what is missing, then fmt, clippy (userspace and kernel) and every test.
    Test,
    /// Benchmarks against peers measured in the same run (they print; they assert nothing).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Build the kernel object and print its path.
    BuildEbpf {
        /// Take the object from the release build of the agent.
        #[arg(long)]
        release: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench(b) => bench::run(b),
        Command::BuildEbpf { release } => {
            let object = build_ebpf::run(release)?;
            println!("{}", object.display());
            Ok(())
        }
    }
}
