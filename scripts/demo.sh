#!/usr/bin/env bash
# The demo, on a fresh Debian 12 machine as root: install, boot a 3-node lab cluster,
# bootstrap it (packages, MTU, NCCL env, Ray venv, llama.cpp RPC, Ray head + workers),
# prove the network with netcheck, serve a tiny model across the nodes with llama.cpp
# RPC and get a real completion. The lab stays up; `.venv/bin/clusterctl lab down
# --name demo` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec < /dev/null

bash scripts/install-deps.sh
cc=.venv/bin/clusterctl
name=${CLUSTERCTL_DEMO_LAB:-demo}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab: 3 systemd-nspawn nodes on a private bridge, offline mirror"
$cc lab up --nodes 3 --name "$name"
inv=$($cc lab inventory "$name")

step "bootstrap --check (plan only; exit 3 = changes pending)"
$cc bootstrap "$inv" --check >/dev/null 2>&1 || [ $? -eq 3 ]

step "bootstrap"
$cc bootstrap "$inv"

step "bootstrap again: nothing to change"
$cc bootstrap "$inv"

step "verify (pytest-testinfra on every node)"
$cc verify "$inv" -- -q

step "netcheck"
$cc netcheck -i "$inv"
