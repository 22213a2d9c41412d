#!/usr/bin/env bash
# Issue 8's benchmarks, B1-B8, in one command: builds the release binaries, runs every bench
# side by side on this machine, writes bench/results.json (SPEC §11) and prints a table.
#
#   bash scripts/bench.sh              # the full run (about 9 minutes on 2 cores, after a ~15 minute first build)
#   BENCH_QUICK=1 bash scripts/bench.sh  # smaller data and fewer samples (about 4 minutes)
#   BENCH_ONLY="volume_job" bash scripts/bench.sh  # rerun some benches, keeping the others' last output
#       (plan_backup, plan_backup_process, admission, marker_latency, volume_job, record_result;
#       "none" rebuilds only the report); results.json says when each ran
#
# Scale knobs (the defaults are the issue's sizes): CORACLE_BENCH_DATA_MB (B5-B7 data, 1024),
# CORACLE_BENCH_REPS (B5-B7 repetitions, 3), CORACLE_BENCH_B1_SIZES (pods, "1000,10000,50000"),
# CORACLE_BENCH_B8_BACKUPS x CORACLE_BENCH_B8_VOLUMES (100 x 100). Generated data goes to
# bench/tmp (gitignored) and is removed at the end unless BENCH_KEEP=1.
# Needs cargo, jq, and the tools scripts/install-tools.sh fetches (nats-server, restic).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in cargo jq; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is required" >&2; exit 1; }
done
bash scripts/install-tools.sh
export PATH="$root/.tools/bin:$PATH"

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  export CORACLE_BENCH_DATA_MB=${CORACLE_BENCH_DATA_MB:-128}
  export CORACLE_BENCH_REPS=${CORACLE_BENCH_REPS:-1}
  export CORACLE_BENCH_B1_SIZES=${CORACLE_BENCH_B1_SIZES:-1000,10000}
  export CORACLE_BENCH_B8_BACKUPS=${CORACLE_BENCH_B8_BACKUPS:-20}
fi
export CORACLE_BENCH_TMP="$root/bench/tmp"
mkdir -p bench "$CORACLE_BENCH_TMP"
started=$(date +%s)

echo "== building the release binaries and the bench harnesses"
# One cargo invocation builds everything. The benches' dev-dependencies (criterion, proptest) switch on
# a few extra features of shared crates, so a second invocation with another selection would compile
# kube, async-nats and the workspace crates again; the harnesses are then run directly.
built=target/bench-build.json
mkdir -p target
cargo build --release --workspace --bin coracle --bin coracle-volume-job --bin coracle-restore-wait \
  --bench plan_backup --bench marker_latency --bench end_to_end \
  --message-format=json-render-diagnostics --quiet >"$built"
harness() {
  jq -r --arg name "$1" 'select(.reason == "compiler-artifact" and .target.name == $name
    and (.target.kind | index("bench"))) | .executable' "$built" | tail -n 1
}
[ -n "${BENCH_ONLY:-}" ] || rm -rf target/bench target/criterion/b1

# run TITLE HARNESS PACKAGE-DIR [NAME]: runs a bench harness as `cargo bench` would (from its package's
# directory, with --bench), unless BENCH_ONLY leaves NAME (default: HARNESS) out.
run() {
  local title=$1 name=${4:-$2} exe
  if [ -n "${BENCH_ONLY:-}" ] && [[ " ${BENCH_ONLY//,/ } " != *" $name "* ]]; then
    echo "== $title: kept from the last run"
    return
  fi
  echo "== $title"
  exe=$(harness "$2")
  [ -x "$exe" ] || { echo "bench: cargo built no harness named $2" >&2; exit 1; }
  (cd "$3" && CRITERION_HOME="$root/target/criterion" "$exe" --bench ${4:+"$4"})
}
run "B1 plan-backup vs deserialising the pod list (criterion)" plan_backup functions
run "B2 coracle fn plan-backup as a process" end_to_end tests plan_backup_process
run "B3 admission review" end_to_end tests admission
run "B4 restore-wait marker to exit" marker_latency helper
run "B5 B6 B7 coracle-volume-job vs restic" end_to_end tests volume_job
run "B8 record-result with NATS" end_to_end tests record_result

# criterion's median estimate in seconds for b1/<series>/<pods>.
crit() { jq '.median.point_estimate / 1e9' "target/criterion/b1/$1/$2/new/estimates.json"; }
sizes=${CORACLE_BENCH_B1_SIZES:-1000,10000,50000}
b1=$(for n in ${sizes//,/ }; do
  jq -n --argjson n "$n" --argjson floor "$(crit deserialize_pods "$n")" \
    --argjson with_plan "$(crit deserialize_pods_and_plan "$n")" \
    --argjson all "$(crit deserialize_all_and_plan "$n")" --argjson plan "$(crit plan "$n")" \
    '{pods: $n, floor_s: $floor, pods_and_plan_s: $with_plan, all_and_plan_s: $all, plan_s: $plan}'
done | jq -s '.')

# When each bench last wrote its output (BENCH_ONLY keeps the others' earlier figures).
measured=$(for f in target/bench/*.json target/criterion/b1/plan/*/new/estimates.json; do
  jq -n --arg f "$f" --arg t "$(date -u -r "$f" +%Y-%m-%dT%H:%M:%SZ)" '{($f): $t}'
done | jq -s 'add')
memory_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)
jq -n \
  --argjson b1 "$b1" \
  --slurpfile b2 target/bench/plan_backup_process.json \
  --slurpfile b3 target/bench/admission.json \
  --slurpfile b4 target/bench/restore_wait.json \
  --slurpfile vj target/bench/volume_job.json \
  --slurpfile b8 target/bench/record_result.json \
  --argjson cores "$(nproc)" --argjson memory_mb "$memory_mb" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg quick "${BENCH_QUICK:-0}" --arg only "${BENCH_ONLY:-}" --argjson measured "$measured" \
  -f bench/results.jq >bench/results.json
[ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$CORACLE_BENCH_TMP"

echo
echo "bench/results.json ($(jq -r '.date' bench/results.json), $(nproc) cores, ${memory_mb} MB, $(( $(date +%s) - started )) s)"
jq -r '
  ["id", "value", "unit", "target", "met", "compared with"],
  (to_entries[] | select(.key | test("^B[0-9]$")) | .value as $f
    | [.key, ($f.value | tostring), $f.unit, (if $f.better == "lower" then "<= " else ">= " end) + ($f.target | tostring),
       (if $f.met then "yes" else "NO" end), $f.compared_with])
  | @tsv' bench/results.json | column -t -s $'\t'
echo
jq -r 'to_entries[] | select(.key | test("^B[0-9]$")) | "\(.key): \(.value.notes)"' bench/results.json
