#!/usr/bin/env bash
# Fuzzes Coracle's parsers of untrusted input with cargo-fuzz (libFuzzer); targets in tests/fuzz.
#   bash scripts/fuzz.sh smoke [SECONDS] [TARGET...]   each target SECONDS (default 25): the test command's run
#   bash scripts/fuzz.sh long [MINUTES] [TARGET...]    each target MINUTES (default 10), one after the other
#   bash scripts/fuzz.sh list
# Prints one line per target with its executions; exits non-zero on the first crash, leaving the
# input in tests/fuzz/artifacts/<target>/ (replay: cd tests/fuzz && cargo fuzz run -s none -O <target> <file>).
#
# Sanitizer: none by default (FUZZ_SANITIZER=address to change it). Every target is safe Rust, so
# what we hunt is panics, overflows (debug assertions stay on) and broken invariants, and the
# build without a sanitizer runs several times more inputs per second. It also needs only stable
# rustc flags (SanitizerCoverage through -Cpasses/-Cllvm-args, --cfg fuzzing). A sanitizer needs
# `-Zsanitizer=...`, which a stable toolchain refuses: then RUSTC_BOOTSTRAP=1 lets this stable
# rustc accept it, for the fuzz crate only (its own target directory; nothing in the workspace is
# ever built that way). It is not set otherwise, since cargo rebuilds everything when it changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-smoke}
shift || true
export PATH="$root/.tools/bin:$PATH"
sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi
fuzz="$root/tests/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into .tools" >&2
  cargo install --root "$root/.tools" cargo-fuzz --locked --quiet
fi

targets() { (cd "$fuzz" && cargo fuzz list); }

case "$mode" in
  list) targets; exit 0 ;;
  smoke) seconds=${1:-25}; shift || true ;;
  long) minutes=${1:-10}; shift || true; seconds=$((minutes * 60)) ;;
  *) echo "usage: fuzz.sh smoke [SECONDS] [TARGET...] | long [MINUTES] [TARGET...] | list" >&2; exit 2 ;;
esac
if [ $# -gt 0 ]; then chosen=("$@"); else mapfile -t chosen < <(targets); fi

cd "$fuzz"
started=$(date +%s)
cargo fuzz build -s "$sanitizer" -O >/dev/null
bin_dir="$fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
echo "fuzz: built ${#chosen[@]} targets in $(($(date +%s) - started))s"
mkdir -p logs
for target in "${chosen[@]}"; do
  corpus="corpus/$target"
  mkdir -p "$corpus" "seeds/$target"
  log="logs/$target.log"
  # The working corpus grows across runs (ignored by git); the seeds are read, never written.
  mkdir -p "artifacts/$target"
  # The binary cargo fuzz built above, run directly: `cargo fuzz run` would rebuild first whenever
  # a workspace source changed during a long run.
  if ! "$bin_dir/$target" "$corpus" "seeds/$target" -artifact_prefix="artifacts/$target/" \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    echo "fuzz: $target FAILED; its log ($fuzz/$log) ends:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  units=$(find "$corpus" -type f | wc -l)
  echo "fuzz: $target ran ${seconds}s: ${execs:-?} executions (${rate:-?}/s), corpus $units inputs, no crash"
done
echo "fuzz: done in $(($(date +%s) - started))s"
