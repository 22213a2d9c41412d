#!/usr/bin/env bash
# The main job (README): Coracle end to end on an embedded default — a local NATS JetStream,
# a simulated two-node Kubernetes cluster with a sample application, and real restic.
# Installs what is missing, builds, runs, cleans up. Extra arguments go to coracle-demo
# (e.g. --keep to keep the repositories).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
bash scripts/install-tools.sh
export PATH="$root/.tools/bin:$PATH"
cargo build --workspace --bins --quiet
exec "$root/target/debug/coracle-demo" "$@"
