#!/usr/bin/env bash
# Installs nats-server (>= 2.10), restic, kustomize, kubectl and kubernetes-validate into .tools/
# when they are missing.
# Debian 12's own packages are too old (nats-server 2.9 breaks async-nats' KV), so the
# Debian 13 packages are fetched with apt from the mirror this machine's sources already
# name, into a private apt state so the system's sources are never changed.
# It also fetches Debian 12's restic 0.14 into .tools/restic-0.14/ (linked as
# .tools/bin/restic-0.14) so the job binary can be tested against the oldest restic JSON it
# supports; failing to get that one only warns.
# kustomize and kubectl (Debian 13) render and apply deploy/; kubernetes-validate (PyPI, pinned,
# into a venv) validates the rendered objects offline against Kubernetes' own OpenAPI schemas,
# strict (unknown fields rejected), for every version it bundles from 1.33 on.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
bin="$tools/bin"
mkdir -p "$tools"

have() { [ -x "$bin/$1" ] || return 1; }
nats_ok() { have nats-server && "$bin/nats-server" --version | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])'; }
restic_ok() { have restic && "$bin/restic" version | grep -Eq 'restic 0\.(1[5-9]|[2-9][0-9])'; }
restic14_ok() { have restic-0.14 && "$bin/restic-0.14" version | grep -Eq 'restic 0\.14\.'; }
kustomize_ok() { have kustomize && "$bin/kustomize" version >/dev/null 2>&1; }
kubectl_ok() { have kubectl && "$bin/kubectl" version --client >/dev/null 2>&1; }
# The version the deploy tests were written against; it bundles the schemas of Kubernetes 1.33 to 1.37.
kv_version=1.37.0
kv_ok() { have kubernetes-validate && [ "$("$bin/kubernetes-validate" --version 2>/dev/null)" = "$kv_version" ]; }

if nats_ok && restic_ok && restic14_ok && kustomize_ok && kubectl_ok && kv_ok; then exit 0; fi

# The mirror: the first deb URI in the machine's own sources.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -i '/debian' | grep -v -- '-security' | head -n1 \
  | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//' || true)
[ -n "$mirror" ] || { echo "install-tools: no Debian mirror found in apt sources" >&2; exit 1; }

# apt options for a private apt state in $1 reading only suite $2 of the mirror; sets `opts`.
apt_state() {
  local state=$1 suite=$2
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$state/etc/sources.list"
  : >"$state/etc/status"
  opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$state/lists" -o "Dir::State::Status=$state/etc/status"
        -o "Dir::Cache=$state/cache" -o "APT::Architecture=$(dpkg --print-architecture)"
        -o "Acquire::Languages=none" -o "Debug::NoLocking=1")
}

if ! (nats_ok && restic_ok && kustomize_ok && kubectl_ok); then
  mkdir -p "$tools/debs"
  apt_state "$tools/apt" trixie
  apt-get "${opts[@]}" -qq update
  (cd "$tools/debs" && apt-get "${opts[@]}" -qq download nats-server restic kustomize kubectl)
  for deb in "$tools"/debs/*.deb; do dpkg -x "$deb" "$tools/root"; done
  mkdir -p "$bin"
  ln -sf ../root/usr/sbin/nats-server "$bin/nats-server"
  ln -sf ../root/usr/bin/restic "$bin/restic"
  ln -sf ../root/usr/bin/kustomize "$bin/kustomize"
  ln -sf ../root/usr/bin/kubectl "$bin/kubectl"
  nats_ok || { echo "install-tools: nats-server >= 2.10 not installed" >&2; exit 1; }
  restic_ok || { echo "install-tools: restic >= 0.15 not installed" >&2; exit 1; }
  kustomize_ok || { echo "install-tools: kustomize not installed" >&2; exit 1; }
  kubectl_ok || { echo "install-tools: kubectl not installed" >&2; exit 1; }
fi

# kubernetes-validate in its own venv (pip, the PyPI client) so the system's Python is untouched.
# Optional like restic 0.14: without python3 (and its venv module) the manifest schema checks are
# skipped with a message. Every step is checked explicitly (see install_restic14 below).
install_kv() {
  command -v python3 >/dev/null 2>&1 || return 1
  rm -rf "$tools/kubernetes-validate"
  python3 -m venv "$tools/kubernetes-validate" || return 1
  "$tools/kubernetes-validate/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version" || return 1
  mkdir -p "$bin" && ln -sf ../kubernetes-validate/bin/kubernetes-validate "$bin/kubernetes-validate" || return 1
  kv_ok
}
if ! kv_ok && ! install_kv; then
  echo "install-tools: warning: kubernetes-validate not installed (needs python3 with venv); manifest schema checks will be skipped" >&2
fi

# restic 0.14 from bookworm, optional. Every step is checked explicitly because `set -e` does
# not apply inside a function whose status is tested.
install_restic14() {
  local dir="$tools/restic-0.14"
  mkdir -p "$dir/debs" "$dir/root" "$bin" || return 1
  apt_state "$dir/apt" bookworm || return 1
  apt-get "${opts[@]}" -qq update || return 1
  (cd "$dir/debs" && rm -f restic_*.deb && apt-get "${opts[@]}" -qq download restic) || return 1
  local deb
  for deb in "$dir"/debs/restic_*.deb; do dpkg -x "$deb" "$dir/root" || return 1; done
  ln -sf ../restic-0.14/root/usr/bin/restic "$bin/restic-0.14" || return 1
  restic14_ok
}
if ! restic14_ok && ! install_restic14; then
  echo "install-tools: warning: restic 0.14 (Debian 12) not installed; tests against it will be skipped" >&2
fi

msg="install-tools: $("$bin/nats-server" --version), $("$bin/restic" version | cut -d' ' -f1-2)"
if restic14_ok; then msg="$msg, $("$bin/restic-0.14" version | cut -d' ' -f1-2)"; fi
msg="$msg, kustomize $("$bin/kustomize" version), kubectl $("$bin/kubectl" version --client | sed -n 's/^Client Version: //p')"
if kv_ok; then msg="$msg, kubernetes-validate $kv_version"; fi
echo "$msg"
