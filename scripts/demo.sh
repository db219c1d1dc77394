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

step "a tiny GGUF model (random weights, llama.cpp's llama vocabulary)"
model_dir=$(mktemp -d /tmp/clusterctl-demo-model.XXXXXX)
.venv/bin/python - "$model_dir/tiny-llama.gguf" <<'PY'
import sys
from clusterctl.deploy.tinymodels import find_vocab_gguf, write_tiny_gguf
vocab = find_vocab_gguf()
if vocab is None:
    sys.exit("no llama.cpp source tarball in the cache: run bootstrap first")
write_tiny_gguf(sys.argv[1], vocab)
print(sys.argv[1])
PY

step "plan-model"
$cc plan-model "$model_dir/tiny-llama.gguf" -i "$inv"

step "deploy-model: llama.cpp RPC across the 3 nodes; ready = a real chat completion"
$cc deploy-model "$model_dir/tiny-llama.gguf" -i "$inv" --name tiny

step "status"
$cc status -i "$inv"
