#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs
# formatting, lints, docs and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# protoc and the well-known protobuf types build Hedera's protobufs (the `hedera` feature);
# nftables is the NAT of the home routers in the NAT test's network namespaces.
if ! command -v protoc >/dev/null 2>&1 || [ ! -f /usr/include/google/protobuf/wrappers.proto ] \
    || ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl \
    || ! command -v nft >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    $sudo_ apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev libssl-dev pkg-config nftables
fi

# ffmpeg and ffprobe for the playback test (HLS read through the gateway).
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    $sudo_ apt-get install -y -qq --no-install-recommends ffmpeg
fi

# Debian's Chromium for the dashboard test (headless, driven by playwright-core).
if ! command -v chromium >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    $sudo_ apt-get install -y -qq --no-install-recommends chromium
fi

# JS reference implementation and kubo's RPC client for the interop tests, playwright-core for
# the browser test (versions pinned by package-lock.json).
if [ ! -d interop/js/node_modules ] || ! (cd interop/js && npm ls --silent >/dev/null 2>&1); then
    npm ci --prefix interop/js --no-audit --no-fund --loglevel=error
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-off build: incremental state would only take disk (tens of GB across the test binaries).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked
cargo test --workspace --all-features --locked
cargo test -p streamspace-shard --no-default-features --locked --lib
# The update crate's device-side verifier is no_std + alloc: build it so, and for a
# Cortex-M4F target when rustup can fetch that target's standard library.
cargo build -p streamspace-update --no-default-features --locked
if rustup target add thumbv7em-none-eabihf >/dev/null 2>&1; then
    cargo build -p streamspace-update --no-default-features --locked --target thumbv7em-none-eabihf
else
    echo "thumbv7em-none-eabihf not available from rustup here; built no_std for the host only"
fi
