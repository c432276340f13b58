# syntax=docker/dockerfile:1
# The splitter node agent. Two stages: a build image with stable (the agent) and nightly plus
# bpf-linker (the kernel object that splitter/build.rs embeds), and a slim runtime image with
# the one binary. Build from the repository root: docker build -t splitter .

FROM rust:1.95-bookworm AS build
# The eBPF object needs the nightly that DESIGN section 8 names (rustc 1.97.0-nightly
# e50aa6fba 2026-05-19, published as nightly-2026-05-20): bpf-linker is built for its LLVM 22,
# and a later nightly may ship another LLVM. splitter/build.rs asks for `+nightly`, so the
# dated toolchain is installed and made the one `nightly` resolves to.
ARG NIGHTLY=nightly-2026-05-20
RUN rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && ln -s "$RUSTUP_HOME/toolchains/$NIGHTLY-x86_64-unknown-linux-gnu" \
          "$RUSTUP_HOME/toolchains/nightly-x86_64-unknown-linux-gnu"
# `cargo xtask setup` builds bpf-linker against that nightly's libLLVM (idempotent).
WORKDIR /src
COPY . .
RUN cargo xtask setup
RUN cargo build --release --locked -p splitter --bin splitter

FROM debian:bookworm-slim
# ca-certificates: the API server's certificate is checked against the ServiceAccount CA, but
# a kubeconfig may name a public endpoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/splitter /usr/local/bin/splitter
ENTRYPOINT ["/usr/local/bin/splitter"]
