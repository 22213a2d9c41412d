#!/usr/bin/env bash
# Coracle end to end on a real cluster: install from deploy/ (the manifests users apply), back up
# the sample app, lose its data, restore it through the webhook and the restore-wait helper, and
# compare checksums. Uses the cluster of the current KUBECONFIG context and changes it (namespaces
# coracle-system, coracle-test, nats, shop; cluster-scoped Coracle RBAC and webhooks), so it runs
# only when CORACLE_REAL_CLUSTER=1. See tests/real-cluster/README.md for kind.
#
# Environment:
#   CORACLE_REAL_CLUSTER=1   required, so a stray KUBECONFIG never gets used by accident
#   CORACLE_IMAGE_REGISTRY   where the three images were pushed/loaded (default ghcr.io/coracle-dev)
#   CORACLE_IMAGE_TAG        their tag (default 0.1.0)
#   CORACLE_KEEP=1           leave everything installed afterwards (default: remove it)
set -euo pipefail
if [ "${CORACLE_REAL_CLUSTER:-}" != 1 ]; then
  echo "real-cluster: skipped: set CORACLE_REAL_CLUSTER=1 (and KUBECONFIG) to run against a real cluster"
  exit 0
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/real-cluster"
PATH="$root/.tools/bin:$PATH"
registry=${CORACLE_IMAGE_REGISTRY:-ghcr.io/coracle-dev}
tag=${CORACLE_IMAGE_TAG:-0.1.0}
nats_url=nats://nats.nats.svc.cluster.local:4222
repos=rest:http://rest-server.coracle-test.svc.cluster.local:8000
k() { kubectl --request-timeout=60s "$@"; }
say() { printf '\n== %s\n' "$*"; }
fail() { echo "real-cluster: FAILED: $*" >&2; exit 1; }
k version >/dev/null || fail "no cluster reachable with the current KUBECONFIG"

work=$(mktemp -d "$here/work.XXXXXX")
cleanup() {
  rm -rf "$work"
  if [ "${CORACLE_KEEP:-}" != 1 ]; then
    k delete namespace shop --ignore-not-found --wait=false || true
    k delete -k "$root/deploy" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    k delete -f "$here/support.yaml" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# `coracle` run once in the cluster (the CLI talks to NATS only).
coracle() {
  k -n coracle-system run "coracle-cli-$RANDOM" --rm -i --quiet --restart=Never \
    --image="$registry/coracle:$tag" --env="CORACLE_NATS_URL=$nats_url" -- "$@"
}

say "NATS and a restic REST server"
k apply -f "$here/support.yaml"
k -n nats rollout status deploy/nats --timeout=180s
k -n coracle-test rollout status deploy/rest-server --timeout=180s

say "Coracle from deploy/ with this installation's settings"
# The operator's kustomization: deploy/ plus the repository and image settings.
cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../../deploy
images:
- name: ghcr.io/coracle-dev/coracle
  newName: $registry/coracle
  newTag: "$tag"
patches:
- target: {kind: ConfigMap, name: coracle-config}
  patch: |-
    - {op: replace, path: /data/natsUrl, value: "$nats_url"}
    - {op: replace, path: /data/repositoryPrefix, value: "$repos"}
    - {op: replace, path: /data/jobImage, value: "$registry/coracle-volume-job:$tag"}
    - {op: replace, path: /data/helperImage, value: "$registry/coracle-restore-wait:$tag"}
    - {op: replace, path: /data/imagePullPolicy, value: IfNotPresent}
YAML
k apply -k "$work"
for job in coracle-setup-master-key coracle-setup-nats coracle-certgen; do
  k -n coracle-system wait --for=condition=complete "job/$job" --timeout=300s
done
k -n coracle-system rollout status deploy/coracle-serve --timeout=300s
ca=$(k get mutatingwebhookconfiguration coracle-restore -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
[ -n "$ca" ] || fail "certgen wrote no caBundle"
k -n coracle-system get secret coracle-master-key >/dev/null || fail "no master key Secret"

say "The sample app, with data"
# Its claim on the test's StorageClass (see support.yaml).
sed 's/^  accessModes: \[ReadWriteOnce\]$/  storageClassName: coracle-test-local\n  accessModes: [ReadWriteOnce]/' \
  "$root/deploy/examples/sample-app.yaml" >"$work/sample-app.yaml"
grep -q 'storageClassName: coracle-test-local' "$work/sample-app.yaml" || fail "could not set the sample app's StorageClass"
k apply -f "$work/sample-app.yaml"
k -n shop rollout status deploy/web --timeout=300s
k -n shop exec deploy/web -c web -- sh -c 'seq 1 200000 > /data/seq.txt; echo "coracle $(date)" > /data/marker.txt; echo warm > /cache/state'
before=$(k -n shop exec deploy/web -c web -- md5sum /data/seq.txt /data/marker.txt /cache/state)
echo "$before"

say "Backup (through NATS, planned by the plan-backup CronJob within a minute)"
coracle backup create real-1 --namespace shop --wait --timeout 15m | tee "$work/backup.txt"
grep -q Completed "$work/backup.txt" || fail "backup did not complete"

say "Losing the data: app scaled to zero, its claim deleted"
k -n shop scale deploy/web --replicas=0
k -n shop wait --for=delete pod -l app=web --timeout=180s || true
k -n shop delete pvc orders --wait=true

say "Restore: planned first, then the app comes back and waits for its data"
coracle restore create real-1-restore --from-backup real-1 --namespace shop
for _ in $(seq 1 60); do
  [ "$(k get namespace shop -o jsonpath='{.metadata.labels.coracle\.dev/restore}')" = enabled ] && break
  sleep 5
done
[ "$(k get namespace shop -o jsonpath='{.metadata.labels.coracle\.dev/restore}')" = enabled ] \
  || fail "plan-restore never labelled namespace shop"
k apply -f "$work/sample-app.yaml"
pod=""
for _ in $(seq 1 60); do
  pod=$(k -n shop get pod -l app=web -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
  [ -n "$pod" ] && break
  sleep 2
done
[ -n "$pod" ] || fail "the app's pod was not re-created"
init=$(k -n shop get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}')
[ "$init" = coracle-restore-wait ] || fail "the webhook did not inject the restore helper (first init container: '$init')"
coracle restore create real-1-restore --from-backup real-1 --namespace shop --wait --timeout 15m | tee "$work/restore.txt"
grep -q Completed "$work/restore.txt" || fail "restore did not complete"
k -n shop rollout status deploy/web --timeout=300s
after=$(k -n shop exec deploy/web -c web -- md5sum /data/seq.txt /data/marker.txt /cache/state)
echo "$after"
[ "$before" = "$after" ] || fail "restored data differs"
say "real-cluster: PASSED (backup and restore end to end)"
