#!/usr/bin/env bash
# The test command (README): installs what is missing, then runs every test of the workspace
# against a real nats-server and a real restic.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v cargo >/dev/null 2>&1; then
  echo "test: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
bash scripts/install-tools.sh
export PATH="$root/.tools/bin:$PATH"
# A one-off build gains nothing from incremental state, which would double the target directory on disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --workspace --bins --quiet
if cargo nextest --version >/dev/null 2>&1; then
  # The crates have no doctests, so nextest (which skips them) runs every test there is.
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
bash scripts/fuzz.sh smoke # each fuzz target ~25 s (RELIABILITY.md)
