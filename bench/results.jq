# Builds bench/results.json (SPEC §11) from the benches' own reports; run by scripts/bench.sh.
# Inputs: $b1 (criterion medians per size), $b2 $b3 $b4 $vj $b8 (target/bench/*.json, slurped),
# $cores, $memory_mb, $date, $quick, $only (the benches rerun for this report; empty: all of them),
# $measured (each bench output file and when it was written).
def r3: (. * 1000 | round) / 1000;
def r1: (. * 10 | round) / 10;
def figure($value; $unit; $target; $better; $compared; $notes):
  {value: ($value | r3), unit: $unit, target: $target, better: $better,
   met: (if $better == "lower" then $value <= $target else $value >= $target end),
   compared_with: $compared, notes: $notes};

($b2[0]) as $b2 | ($b3[0]) as $b3 | ($b4[0]) as $b4 | ($vj[0]) as $vj | ($b8[0]) as $b8
| ($b1 | map(select(.pods == 10000)) | .[0] // ($b1 | last)) as $mid
| ($b1 | first) as $small | ($b1 | last) as $large
| ((($large.pods_and_plan_s / $small.pods_and_plan_s) | log) / (($large.pods / $small.pods) | log)) as $exp_total
| ((($large.plan_s / $small.plan_s) | log) / (($large.pods / $small.pods) | log)) as $exp_plan
| ($mid.pods_and_plan_s / $mid.floor_s) as $b1_ratio
| ([$vj.B5.ratio_first, $vj.B5.ratio_incremental] | max) as $b5_ratio
| {
  B1: figure($b1_ratio; "ratio"; 1.5; "lower";
    "deserialising the same pod list alone (serde_json into Vec<Pod>), the floor";
    "\($mid.pods) pods, \($mid.pods * 5 / 2) volumes, 100 nodes: floor \($mid.floor_s * 1e3 | r1) ms, pod list + plan \($mid.pods_and_plan_s * 1e3 | r1) ms, plan alone \($mid.plan_s * 1e3 | r1) ms (\($mid.plan_s / $mid.floor_s | r3)x the floor); every list (pods, PVCs, PVs, ReplicaSets) + plan \($mid.all_and_plan_s / $mid.floor_s | r3)x the floor. Ratio by size: " + ([$b1[] | "\(.pods): \(.pods_and_plan_s / .floor_s | r3)x"] | join(", ")) + ". Growth exponent from \($small.pods) to \($large.pods) pods: \($exp_total | r3) (pod list + plan), \($exp_plan | r3) (plan alone); 1.0 is linear. criterion medians, 10 samples each."),
  B2: (figure($b2.wall_ms.median; "ms"; 20; "lower"; "- (target: median wall <= 20 ms, peak memory <= 20 MB)";
    "coracle fn plan-backup --event FILE, \($b2.runs) runs against the simulated API server over HTTP (KUBECONFIG; lists namespaces, PVs, pods, PVCs, ReplicaSets, creates the Jobs): wall median \($b2.wall_ms.median | r1) ms (min \($b2.wall_ms.min | r1), max \($b2.wall_ms.max | r1)); peak RSS max \($b2.peak_rss_mb.max | r1) MB (median \($b2.peak_rss_mb.median | r1)), target <= 20 MB")
    | .met = (.met and $b2.peak_rss_mb.max <= 20)),
  B3: figure($b3.https_kv.p99_ms; "ms"; 3; "lower"; "- (target: p99 <= 1 ms in process, <= 3 ms over HTTPS)";
    "value: p99 over HTTPS on loopback, one keep-alive connection, pending restores from the KV-watched copy `coracle serve` keeps (production path), \($b3.iterations) reviews (p50 \($b3.https_kv.p50_ms | r3) ms; reading KV on every review instead: p99 \($b3.https_kv_direct.p99_ms | r3) ms). In process: watched copy p50 \($b3.in_process_cache.p50_ms | r3) / p99 \($b3.in_process_cache.p99_ms | r3) ms (target <= 1 ms: \(if $b3.in_process_cache.p99_ms <= 1 then "met" else "MISSED" end)); entries in memory (floor) p99 \($b3.in_process_memory.p99_ms | r3) ms; a miss that reads KV p99 \($b3.in_process_cache_miss.p99_ms | r3) ms; KV on every review p99 \($b3.in_process_kv.p99_ms | r3) ms"),
  B4: figure($b4.helper.volumes_1.p99_ms; "ms"; 20; "lower"; "a one-second polling loop (Velero's restore helper, as a shell loop)";
    "marker rename -> coracle-restore-wait exited, 1 volume: p50 \($b4.helper.volumes_1.p50_ms | r3) / p99 \($b4.helper.volumes_1.p99_ms | r3) ms (n=\($b4.helper.volumes_1.n)); 8 volumes p99 \($b4.helper.volumes_8.p99_ms | r3) ms; marker seen after p50 \($b4.helper_detect.volumes_1.p50_ms | r3) ms; poller p50 \($b4.poll_1s.p50_ms | r1) / p99 \($b4.poll_1s.p99_ms | r1) ms; ratio poller/helper p50 \($b4.ratio_p50 | r1)x, p99 \($b4.ratio_p99 | r1)x. inotify close floor p50 \($b4.inotify_close_floor.p50_ms | r3) / p99 \($b4.inotify_close_floor.p99_ms | r3) ms"),
  B5: (figure($b5_ratio; "ratio"; 1.03; "lower"; "restic backup run directly on the same data (restic init + backup for the first)";
    "\($vj.B5.data_mib) MiB, \($vj.B5.files) files, \($vj.B5.restic), \($vj.B5.repetitions) repetitions, medians: first backup job \($vj.B5.job_first_s.median | r3) s vs restic \($vj.B5.restic_first_s.median | r3) s (ratio \($vj.B5.ratio_first | r3)); incremental (1% of files changed) job \($vj.B5.job_incremental_s.median | r3) s vs restic \($vj.B5.restic_incremental_s.median | r3) s (ratio \($vj.B5.ratio_incremental | r3)); value is the larger ratio. Job binary's own peak RSS \($vj.B5.job_own_peak_rss_mb | r1) MB (target <= 15 MB)")
    | .met = (.met and $vj.B5.job_own_peak_rss_mb <= 15)),
  B6: figure($vj.B6.speedup_2; "ratio"; 1.0; "higher"; "per-node concurrency 1 (Velero's default)";
    "speed-up (wall at concurrency 1 / wall at c), 8 volumes x \($vj.B6.mib_per_volume) MiB, \($vj.B6.cores) cores: c=2 \($vj.B6.speedup_2 | r3)x, c=4 \($vj.B6.speedup_4 | r3)x; walls c=1 \($vj.B6.runs.parallelism_1_s.median | r3) s, c=2 \($vj.B6.runs.parallelism_2_s.median | r3) s, c=4 \($vj.B6.runs.parallelism_4_s.median | r3) s. The issue sets no bound (target 1.0 = not slower); the ceiling is the core count"),
  B7: figure($vj.B7.ratio; "ratio"; 0.2; "lower"; "restic's default parent choice (same host and paths: none after the pod uid changed)";
    "second backup of the unchanged \($vj.B7.data_mib) MiB volume after the pod was re-created with a new uid, medians of \($vj.B7.repetitions): job binary (parent by identity tag) \($vj.B7.job_identity_parent_s.median | r3) s vs restic backup with no parent found \($vj.B7.restic_path_parent_s.median | r3) s; floor: restic told the right parent by hand \($vj.B7.restic_given_parent_s.median | r3) s (ratio \($vj.B7.floor_ratio | r3)), so restic's own fixed cost (key, index, lstat of every file) bounds what any parent choice can reach here"),
  B8: figure($b8.results_per_s; "per_s"; 2000; "higher"; "-";
    "\($b8.results) volume results (\($b8.backups) backups x \($b8.volumes_per_backup) volumes) + \($b8.republished_new_ids) re-publications under new ids + \($b8.republished_same_ids) same-id duplicates, one coracle fn record-result --drain process, real nats-server: last backup completed after \($b8.seconds_to_last_completion | r3) s; checked: \($b8.volumes_completed) volumes Completed with their snapshot ids, \($b8.completion_events) coracle.backup.completed events (one per backup), \($b8.dead_letters) dead letters"),
  machine: {cores: $cores, memory_mb: $memory_mb,
    note: "2-core machine, nothing else running during the full run; ratios measured side by side are what count"},
  date: $date,
  quick: ($quick == "1"),
  rerun_only: (if $only == "" then null else ($only | split(",")) end),
  measured: $measured
}
