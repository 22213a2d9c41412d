#!/usr/bin/env bash
# Installs nats-server (>= 2.10) and restic into .tools/ when they are missing.
# Debian 12's own packages are too old (nats-server 2.9 breaks async-nats' KV), so the
# Debian 13 packages are fetched with apt from the mirror this machine's sources already
# name, into a private apt state so the system's sources are never changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
bin="$tools/bin"
mkdir -p "$tools"

have() { [ -x "$bin/$1" ] || return 1; }
nats_ok() { have nats-server && "$bin/nats-server" --version | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])'; }
restic_ok() { have restic && "$bin/restic" version | grep -Eq 'restic 0\.(1[5-9]|[2-9][0-9])'; }

if nats_ok && restic_ok; then exit 0; fi

# The mirror: the first deb URI in the machine's own sources.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -i '/debian' | grep -v -- '-security' | head -n1 \
  | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//' || true)
[ -n "$mirror" ] || { echo "install-tools: no Debian mirror found in apt sources" >&2; exit 1; }

state="$tools/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc" "$tools/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$state/etc/sources.list"
: >"$state/etc/status"
opts=(-o "APT::Sandbox::User=root" -o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$state/lists" -o "Dir::State::Status=$state/etc/status"
      -o "Dir::Cache=$state/cache" -o "APT::Architecture=$(dpkg --print-architecture)"
      -o "Acquire::Languages=none" -o "Debug::NoLocking=1")
apt-get "${opts[@]}" -qq update
(cd "$tools/debs" && apt-get "${opts[@]}" -qq download nats-server restic)
for deb in "$tools"/debs/*.deb; do dpkg -x "$deb" "$tools/root"; done
mkdir -p "$bin"
ln -sf ../root/usr/sbin/nats-server "$bin/nats-server"
ln -sf ../root/usr/bin/restic "$bin/restic"
nats_ok || { echo "install-tools: nats-server >= 2.10 not installed" >&2; exit 1; }
restic_ok || { echo "install-tools: restic >= 0.15 not installed" >&2; exit 1; }
echo "install-tools: $("$bin/nats-server" --version), $("$bin/restic" version | cut -d' ' -f1-2)"
