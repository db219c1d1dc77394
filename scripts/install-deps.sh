#!/usr/bin/env bash
# Install what clusterctl and its tests need on a Debian 12 controller (as root):
# apt packages for the lab (nspawn, debootstrap, sshd, iperf3, mirror tools) and a
# Python venv at .venv with clusterctl installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  debootstrap systemd-container openssh-server openssh-client iperf3 dpkg-dev
  iproute2 rsync nftables python3-venv python3-pip git curl ca-certificates
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Each lab node's systemd takes inotify instances; the kernel default (128 per user)
# runs out at a few labs. Runtime only, not persisted.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 1024 ]; then
  sysctl -q -w fs.inotify.max_user_instances=1024
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "clusterctl installed: $(.venv/bin/clusterctl --version)"
