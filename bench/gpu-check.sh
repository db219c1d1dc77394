#!/usr/bin/env bash
# gpu-check: the GPU path of clusterctl on ONE real NVIDIA GPU, offline, in <= 10 minutes.
#
#   bash bench/gpu-check.sh [options] [SOURCE]
#
# SOURCE: the llama.cpp source the llamacpp role builds from: the llama-cpp-python sdist
# (llama_cpp_python-0.3.36.tar.gz, the role's default `llama-cpp-python==0.3.36`, which
# vendors llama.cpp), another source tarball, or an unpacked llama.cpp folder. Without
# it, the script looks in shared/ at the repository root and in the controller's cache
# (~/.cache/clusterctl/llamacpp/src-*.tar.gz, staged there by `clusterctl bootstrap`).
#
# Steps, each timed (figures printed at the end, side by side with a CPU-only baseline):
#   1 facts      the gpu_health fact script (clusterctl.facts + clusterctl.gpu_health)
#                run on this machine and parsed; GPUs, CUDA version, findings printed
#   2 source     find and unpack the llama.cpp source
#   3 configure  cmake with the role's flags (engine/build.py build_flags) for this GPU
#   4 build      ggml-rpc-server + llama-server (CUDA, this GPU's architecture only)
#   5 model      the tiny random GGUF of deploy/tinymodels.py (gguf-py from the source
#                when the gguf package is not installed)
#   6 rpc        ggml-rpc-server on the GPU (argv from deploy/commands.py)
#   7 serve      llama-server --rpc against it, the local GPU hidden so every layer goes
#                over RPC (argv from deploy/commands.py)
#   8 chat       a chat completion with curl; the GPU memory the RPC server holds
#   9 baseline   the same llama-server without RPC on the CPU, the same request
#
# Options:
#   --work DIR     build/work folder (default: build/gpu-check in the repository; kept
#                  between runs: an unchanged source + flags reuses the build)
#   --gpu N        which GPU (default 0)
#   --jobs N       build jobs (default: CPUs)
#   --until STEP   stop after STEP (facts, source, configure, build, model, rpc, serve, chat)
#   --bin DIR      use ggml-rpc-server (or rpc-server) and llama-server from DIR (e.g.
#                  the role's /opt/clusterctl/llama.cpp/bin) instead of building
#   --save DIR     copy the raw fact output, the logs and the figures there (default:
#                  $OUT when set)
#
# Needs: nvidia-smi, nvcc, cmake, a C++ compiler, curl, python3 with numpy; no network.
# Exit: 0 all steps passed, 1 a step failed (its log tail is shown), 2 something needed
# is missing (said what).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK="${GPU_CHECK_WORK:-$REPO/build/gpu-check}"
GPU=0
JOBS=""
UNTIL=""
SAVE="${OUT:-}"
SOURCE=""
BIN_DIR=""
BUDGET="${GPU_CHECK_BUDGET:-600}"   # seconds for everything
RPC_PORT=50152
HTTP_PORT=18080
BASE_PORT=18081
PY="${PYTHON:-python3}"

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK="$2"; shift 2;;
    --gpu) GPU="$2"; shift 2;;
    --jobs) JOBS="$2"; shift 2;;
    --until) UNTIL="$2"; shift 2;;
    --save) SAVE="$2"; shift 2;;
    --bin) BIN_DIR="$2"; shift 2;;
    -h|--help) usage; exit 0;;
    -*) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2;;
    *) SOURCE="$1"; shift;;
  esac
done
case "$GPU" in ''|*[!0-9]*) echo "gpu-check: --gpu takes a number, got '$GPU'" >&2; exit 2;; esac
case "$UNTIL" in ''|facts|source|configure|build|model|rpc|serve|chat) ;;
  *) echo "gpu-check: --until: unknown step '$UNTIL'" >&2; exit 2;; esac

START=$(date +%s)
DEADLINE=$((START + BUDGET))
LOGS="$WORK/logs"
mkdir -p "$WORK" "$LOGS"

STEP_NAMES=()
STEP_SECS=()
STEP_NOTES=()
CURRENT=""
STEP_T0=""
PIDS=()
FIGURES=()

now() { date +%s.%N; }
left() { echo $((DEADLINE - $(date +%s))); }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

begin() {
  CURRENT="$1"
  STEP_T0=$(now)
  echo
  echo "== $1: $2  ($(left)s left of ${BUDGET}s)"
}

end() {
  local secs
  secs=$(elapsed "$STEP_T0")
  STEP_NAMES+=("$CURRENT"); STEP_SECS+=("$secs"); STEP_NOTES+=("${1:-ok}")
  echo "   $CURRENT: ${1:-ok} in ${secs}s"
  if [ "$UNTIL" = "$CURRENT" ]; then
    echo "gpu-check: stopping after $CURRENT (--until)"
    exit 0
  fi
}

fail() {
  echo "gpu-check: step $CURRENT FAILED: $*" >&2
  STEP_NAMES+=("$CURRENT"); STEP_SECS+=("$(elapsed "$STEP_T0")"); STEP_NOTES+=("FAILED")
  exit 1
}

need() {  # exit 2 with what is missing
  echo "gpu-check: cannot run: $*" >&2
  exit 2
}

limit() {  # seconds a step may take: what is left minus a reserve for the later steps
  local l=$(( $(left) - $1 ))
  [ "$l" -ge 10 ] || return 1
  echo "$l"
}
out_of_time() { fail "out of time (${BUDGET}s budget, $(left)s left; a rerun reuses what was built)"; }

tail_log() { echo "   --- last lines of $1:"; tail -n "${2:-25}" "$1" 2>/dev/null | sed 's/^/   | /' || true; }

stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

summary() {
  local i
  echo
  echo "== gpu-check summary ($(elapsed "$START")s in all)"
  printf '   %-10s %9s  %s\n' step seconds result
  for i in "${!STEP_NAMES[@]}"; do
    printf '   %-10s %9s  %s\n' "${STEP_NAMES[$i]}" "${STEP_SECS[$i]}" "${STEP_NOTES[$i]}"
  done
  for i in "${!FIGURES[@]}"; do echo "   ${FIGURES[$i]}"; done
}

save() {
  [ -n "$SAVE" ] || return 0
  mkdir -p "$SAVE" 2>/dev/null || return 0
  cp -f "$WORK"/gpu_health.out "$WORK"/facts.txt "$SAVE"/ 2>/dev/null || true
  mkdir -p "$SAVE/logs" && cp -f "$LOGS"/*.log "$SAVE/logs/" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  summary | tee "$WORK/summary.txt"
  save
  if [ -n "$SAVE" ]; then cp -f "$WORK/summary.txt" "$SAVE/" 2>/dev/null || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "gpu-check: interrupted" >&2; exit 130' INT TERM

wait_tcp() {  # wait_tcp PORT PID SECONDS LOG
  local port=$1 pid=$2 secs=$3 log=$4 t
  t=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$t" ]; do
    kill -0 "$pid" 2>/dev/null || { tail_log "$log"; return 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  tail_log "$log"
  return 1
}

wait_http() {  # wait_http URL PID SECONDS LOG
  local url=$1 pid=$2 secs=$3 log=$4 t code
  t=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$t" ]; do
    kill -0 "$pid" 2>/dev/null || { tail_log "$log" 40; return 1; }
    code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)
    [ "$code" = 200 ] && return 0
    sleep 0.5
  done
  tail_log "$log" 40
  return 1
}

chat() {  # chat PORT OUTFILE -> prints the reply and tokens/s; fails without choices
  local port=$1 out=$2
  curl -sS -m 120 -H 'Content-Type: application/json' -o "$out" \
    --data '{"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "temperature": 0}' \
    "http://127.0.0.1:$port/v1/chat/completions" || return 1
  "$PY" - "$out" <<'EOF'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
    reply = data["choices"][0]["message"]["content"]
except (ValueError, KeyError, IndexError, TypeError) as exc:
    print(f"   no chat completion in the answer ({exc!r}): {open(sys.argv[1]).read()[:300]}")
    sys.exit(1)
t = data.get("timings") or {}
print(f"   reply: {reply[:80]!r}")
print(f"   tokens: {t.get('predicted_n', '?')} generated at {t.get('predicted_per_second', 0):.1f} tok/s, "
      f"prompt {t.get('prompt_n', '?')} at {t.get('prompt_per_second', 0):.1f} tok/s")
print(f"TOKS={t.get('predicted_per_second', 0):.1f}")
EOF
}

# ---------------------------------------------------------------- 0 prerequisites
missing=()
for tool in nvidia-smi cmake curl tar timeout awk "$PY"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# nvcc: on PATH, else where NVIDIA's packages put it (as the llamacpp role looks for it)
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$NVCC" ] || missing+=("nvcc (not on PATH nor in /usr/local/cuda/bin)")
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then missing+=("a C++ compiler (g++)"); fi
if command -v "$PY" >/dev/null 2>&1 && ! "$PY" -c 'import numpy' 2>/dev/null; then
  missing+=("numpy for $PY (the tiny GGUF is written with it)")
fi
[ ${#missing[@]} -eq 0 ] || need "missing: ${missing[*]}"
[ -f "$REPO/src/clusterctl/gpu_health.py" ] || need "$REPO is not a clusterctl checkout"
echo "gpu-check: repository $REPO, work folder $WORK, GPU $GPU, budget ${BUDGET}s"
echo "   $("$NVCC" --version | grep -m1 release || true); $(cmake --version | head -n 1); $("$PY" --version 2>&1)"

# ---------------------------------------------------------------- 1 facts
begin facts "the gpu_health fact script, parsed by clusterctl.facts / clusterctl.gpu_health"
lim=$(limit 300) || out_of_time
PYTHONPATH="$REPO/src" timeout --kill-after=5 "$lim" "$PY" - "$WORK" "$GPU" > "$WORK/facts.txt" 2>"$LOGS/facts.log" <<'EOF' || { cat "$WORK/facts.txt" 2>/dev/null; tail_log "$LOGS/facts.log"; fail "the fact script or its parser failed"; }
import subprocess, sys
from pathlib import Path
from clusterctl.facts import FactRequest, build_script, parse_output
from clusterctl.gpu_health import HostGpuInput, assess, render_findings

work, gpu = Path(sys.argv[1]), int(sys.argv[2])
reqs = [FactRequest("gpus"), FactRequest("nvcc"), FactRequest("gpu_health")]
res = subprocess.run(["bash", "-c", build_script(reqs)], capture_output=True, text=True,
                     timeout=280)
(work / "gpu_health.out").write_text(res.stdout)       # raw output: a real fixture to keep
facts = parse_output(res.stdout, reqs)
h = facts.gpu_health
print(f"   nvidia-smi: {'yes' if h.present else 'NO'}; driver {h.driver_version}, "
      f"CUDA (driver) {h.cuda_version}, nvcc {facts.nvcc}; query fields: "
      f"{'full' if len(h.query_fields) > 7 else 'fallback'} ({len(h.query_fields)})")
for g in h.gpus:
    print(f"   GPU {g.index}: {g.name}, {g.memory_total_mib} MiB ({g.memory_used_mib} used), cc "
          f"{g.compute_cap}, PCIe gen {g.pcie_gen_current}/{g.pcie_gen_max} "
          f"x{g.pcie_width_current}/{g.pcie_width_max}, persistence {g.persistence_mode}, "
          f"{g.temperature_c} C, ECC uncorrected {g.ecc_uncorrected_volatile}/"
          f"{g.ecc_uncorrected_aggregate}, throttle {g.throttle_reasons}, bus {g.bus_id}")
print(f"   XIDs this boot: {len(h.xids)} (kernel log: {h.xid_source}); DCGM: "
      + ("not installed" if h.dcgm is None else
         f"ran, {len(h.dcgm.failures)} failed" if h.dcgm.ran else f"not run ({h.dcgm.runtime_error})"))
findings, passing, failing = assess({"this-machine": HostGpuInput(h, toolkit_cuda=facts.nvcc)})
print("   findings:" if findings else "   findings: none")
for line in render_findings(findings).splitlines():
    print("     " + line)
mine = [g for g in h.gpus if g.index == gpu]
if not mine:
    print(f"   GPU {gpu} is not among the GPUs nvidia-smi lists", file=sys.stderr)
    sys.exit(3)
cc = (mine[0].compute_cap or "").replace(".", "")
try:       # the llamacpp role's flags, computed as the role computes them
    from clusterctl.engine.build import build_flags
    flags, _ = build_flags(facts, True)
    flags = [f for f in flags if not f.startswith("-DCMAKE_CUDA_ARCHITECTURES=")]
    origin = "clusterctl.engine.build.build_flags"
except Exception as exc:                                # its imports need the full install
    flags = ["-DGGML_RPC=ON", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_CUDA=ON"]
    origin = f"the role's flags as written in this script ({type(exc).__name__}: {exc})"
if cc:
    flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={cc}")
(work / "flags").write_text("\n".join(flags) + "\n")
print(f"   build flags from {origin}: {' '.join(flags)}")
EOF
cat "$WORK/facts.txt"
end "parsed"

# ---------------------------------------------------------------- 2 source
begin source "the llama.cpp source of the llamacpp role"
if [ -z "$SOURCE" ]; then
  shopt -s nullglob
  for cand in "$REPO"/shared/llama_cpp_python-*.tar.gz "$REPO"/shared/*/llama_cpp_python-*.tar.gz \
              "$REPO"/shared/llama.cpp "${XDG_CACHE_HOME:-$HOME/.cache}"/clusterctl/llamacpp/src-*.tar.gz; do
    if [ -e "$cand" ]; then SOURCE="$cand"; break; fi
  done
  shopt -u nullglob
fi
if [ -z "$SOURCE" ] || [ ! -e "$SOURCE" ]; then
  need "no llama.cpp source${SOURCE:+ at $SOURCE} (looked in $REPO/shared and the controller's cache). Pass the llama-cpp-python sdist the role builds
  from (llama_cpp_python-0.3.36.tar.gz) as an argument, or put it in $REPO/shared/.
  Get it where there is network: python3 -m pip download --no-deps --no-binary=:all: llama-cpp-python==0.3.36 -d shared/"
fi
echo "   source: $SOURCE"
if [ -d "$SOURCE" ]; then
  SRC_TREE="$SOURCE"
else
  stamp="$(basename "$SOURCE") $(stat -c %s "$SOURCE")"
  if [ "$(cat "$WORK/src.stamp" 2>/dev/null || true)" != "$stamp" ]; then
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    lim=$(limit 240) || out_of_time
    timeout --kill-after=5 "$lim" tar -xzf "$SOURCE" -C "$WORK/src" || fail "cannot unpack $SOURCE"
    echo "$stamp" > "$WORK/src.stamp"
  else
    echo "   already unpacked in $WORK/src"
  fi
  SRC_TREE="$WORK/src"
fi
ggml=$(find "$SRC_TREE" -maxdepth 6 -path '*/ggml/CMakeLists.txt' | awk '{ print length($0), $0 }' | sort -n | head -n 1 | cut -d' ' -f2- || true)
[ -n "$ggml" ] || need "$SOURCE holds no llama.cpp tree (no ggml/CMakeLists.txt)"
ROOT=$(dirname "$(dirname "$ggml")")
[ -f "$ROOT/CMakeLists.txt" ] || need "$ROOT has no CMakeLists.txt"
echo "   llama.cpp tree: $ROOT"
end "found"

# ---------------------------------------------------------------- 3 configure
begin configure "cmake with the role's flags"
mapfile -t FLAGS < "$WORK/flags"
# The toolkit nvcc really runs from (nvcc on PATH may be a wrapper script or a link, from
# which CMake would take the wrong root), as the llamacpp role's build script finds it
here=$({ "$NVCC" -dryrun -c -x cu /dev/null -o /dev/null 2>&1 || true; } | sed -n 's/^#\$ _HERE_=//p' | head -n 1 || true)
[ -n "$here" ] && [ -x "$here/nvcc" ] || here=$(dirname "$NVCC")
here=$(dirname "$(readlink -f "$here/nvcc")")
export CUDACXX="$here/nvcc"
FLAGS+=("-DCUDAToolkit_ROOT=$(dirname "$here")")
echo "   CUDA toolkit: $(dirname "$here")"
BUILD="$WORK/build"
want_stamp="$ROOT ${FLAGS[*]}"
if [ -n "$BIN_DIR" ]; then
  end "skipped (--bin $BIN_DIR)"
elif [ "$(cat "$BUILD/.gpu-check-stamp" 2>/dev/null || true)" = "$want_stamp" ] && [ -f "$BUILD/CMakeCache.txt" ]; then
  echo "   configured before with the same source and flags: reused"
  end "reused"
else
  rm -rf "$BUILD"
  lim=$(limit 200) || out_of_time
  timeout --kill-after=10 "$lim" cmake -S "$ROOT" -B "$BUILD" "${FLAGS[@]}" > "$LOGS/configure.log" 2>&1 \
    || { tail_log "$LOGS/configure.log"; fail "cmake configure failed"; }
  echo "$want_stamp" > "$BUILD/.gpu-check-stamp"
  end "configured"
fi

# ---------------------------------------------------------------- 4 build
begin build "ggml-rpc-server + llama-server with CUDA"
if [ -n "$BIN_DIR" ]; then
  if [ -x "$BIN_DIR/ggml-rpc-server" ]; then RPC_BIN="$BIN_DIR/ggml-rpc-server"; else RPC_BIN="$BIN_DIR/rpc-server"; fi
  SERVER_BIN="$BIN_DIR/llama-server"
  [ -x "$RPC_BIN" ] && [ -x "$SERVER_BIN" ] || need "$BIN_DIR has no ggml-rpc-server/rpc-server and llama-server"
  end "skipped (--bin $BIN_DIR)"
else
  targets=$(cmake --build "$BUILD" --target help 2>/dev/null || true)
  if printf '%s\n' "$targets" | grep -Eq '(^|[[:space:]])ggml-rpc-server(:|[[:space:]]|$)'; then RPC_T=ggml-rpc-server; else RPC_T=rpc-server; fi
  lim=$(limit 120) || out_of_time
  timeout --kill-after=10 "$lim" cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target "$RPC_T" llama-server > "$LOGS/build.log" 2>&1 \
    || { tail_log "$LOGS/build.log" 30; fail "the build failed or ran out of time (log: $LOGS/build.log; a rerun continues it)"; }
  RPC_BIN="$BUILD/bin/$RPC_T"
  SERVER_BIN="$BUILD/bin/llama-server"
  [ -x "$RPC_BIN" ] && [ -x "$SERVER_BIN" ] || fail "the build did not produce $RPC_BIN and $SERVER_BIN"
  grep -q 'GGML_CUDA:BOOL=ON' "$BUILD/CMakeCache.txt" || fail "the build is not a CUDA build"
  end "built $(basename "$RPC_BIN"), llama-server"
fi

# ---------------------------------------------------------------- 5 model
begin model "the tiny random GGUF (deploy/tinymodels.py)"
MODEL="$WORK/tiny.gguf"
lim=$(limit 90) || out_of_time
timeout --kill-after=5 "$lim" "$PY" - "$REPO/src/clusterctl/deploy/tinymodels.py" "$ROOT" "$MODEL" > "$LOGS/model.log" 2>&1 <<'EOF' || { tail_log "$LOGS/model.log"; fail "could not write the tiny GGUF"; }
import importlib.util, sys, types
from pathlib import Path
tiny_py, root, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
try:
    import gguf  # noqa: F401
    where = "the installed gguf package"
except ImportError:
    sys.path.insert(0, str(root / "gguf-py"))        # llama.cpp's own gguf-py
    try:
        import yaml  # noqa: F401                     # gguf-py imports it for model cards only
    except ImportError:
        sys.modules["yaml"] = types.ModuleType("yaml")
    import gguf  # noqa: F401
    where = f"gguf-py of the source ({root / 'gguf-py'})"
spec = importlib.util.spec_from_file_location("tinymodels", tiny_py)
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
vocab = root / "models" / "ggml-vocab-llama-spm.gguf"
if not vocab.is_file():
    sys.exit(f"the source has no {vocab}")
tiny.write_tiny_gguf(out, vocab)
print(f"wrote {out} ({Path(out).stat().st_size} bytes) with {where}")
EOF
cat "$LOGS/model.log" | sed 's/^/   /'
end "written"

# argv of the servers: the same functions deploy-model uses
argv_of() {  # argv_of rpc BINARY PORT | argv_of server BINARY MODEL PORT RPC_ENDPOINT|"" LAYERS
  PYTHONPATH="$REPO/src" "$PY" -c 'import sys
from clusterctl.deploy.commands import llama_server_argv, rpc_server_argv
a = sys.argv[1:]
if a[0] == "rpc":
    argv = rpc_server_argv(a[1], "127.0.0.1", int(a[2]))
else:
    argv = llama_server_argv(a[1], a[2], "127.0.0.1", int(a[3]), rpc=[a[4]] if a[4] else None,
                             n_gpu_layers=int(a[5]), alias="tiny", ctx_size=2048)
print("\n".join(argv))' "$@"
}

# ---------------------------------------------------------------- 6 rpc
begin rpc "ggml-rpc-server on GPU $GPU"
mapfile -t RPC_ARGV < <(argv_of rpc "$RPC_BIN" "$RPC_PORT")
[ ${#RPC_ARGV[@]} -gt 0 ] || fail "no argv for the RPC server"
echo "   ${RPC_ARGV[*]}"
mkdir -p "$WORK/rpc-cache"
CUDA_VISIBLE_DEVICES="$GPU" LLAMA_CACHE="$WORK/rpc-cache" "${RPC_ARGV[@]}" > "$LOGS/rpc-server.log" 2>&1 < /dev/null &
RPC_PID=$!
PIDS+=("$RPC_PID")
wait_tcp "$RPC_PORT" "$RPC_PID" 60 "$LOGS/rpc-server.log" || fail "the RPC server did not listen on $RPC_PORT"
grep -iE 'cuda|device|backend' "$LOGS/rpc-server.log" | head -n 6 | sed 's/^/   | /' || true
grep -qi 'cuda' "$LOGS/rpc-server.log" || echo "   WARNING: the RPC server's log does not mention CUDA"
end "listening (pid $RPC_PID)"

# ---------------------------------------------------------------- 7 serve
begin serve "llama-server --rpc (local GPU hidden: every layer over RPC)"
mapfile -t SRV_ARGV < <(argv_of server "$SERVER_BIN" "$MODEL" "$HTTP_PORT" "127.0.0.1:$RPC_PORT" 999)
[ ${#SRV_ARGV[@]} -gt 0 ] || fail "no argv for llama-server"
echo "   ${SRV_ARGV[*]}"
CUDA_VISIBLE_DEVICES="" "${SRV_ARGV[@]}" > "$LOGS/llama-server.log" 2>&1 < /dev/null &
SRV_PID=$!
PIDS+=("$SRV_PID")
lim=$(limit 45) || out_of_time
[ "$lim" -le 120 ] || lim=120
wait_http "http://127.0.0.1:$HTTP_PORT/health" "$SRV_PID" "$lim" "$LOGS/llama-server.log" \
  || fail "llama-server did not become healthy"
grep -E 'RPC|offload|model buffer size' "$LOGS/llama-server.log" | head -n 8 | sed 's/^/   | /' || true
grep -q 'RPC' "$LOGS/llama-server.log" || echo "   WARNING: llama-server's log does not mention the RPC device"
end "healthy (pid $SRV_PID)"

# ---------------------------------------------------------------- 8 chat
begin chat "a chat completion through llama-server -> RPC -> GPU"
out=$(chat "$HTTP_PORT" "$WORK/chat.json") || { echo "$out"; tail_log "$LOGS/llama-server.log"; fail "no chat completion"; }
echo "$out" | grep -v '^TOKS=' || true
GPU_TOKS=$(echo "$out" | sed -n 's/^TOKS=//p')
apps=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true)
echo "   GPU processes: ${apps:-none listed}" | head -n 5
if printf '%s\n' "$apps" | grep -q "^$RPC_PID,"; then
  echo "   the RPC server (pid $RPC_PID) holds GPU memory: the layers ran on the GPU"
else
  echo "   WARNING: pid $RPC_PID not among nvidia-smi's compute processes (a container may hide them)"
fi
FIGURES+=("generation via RPC on the GPU: ${GPU_TOKS:-?} tok/s")
end "answered"

# ---------------------------------------------------------------- 9 baseline
begin baseline "the same llama-server on the CPU, no RPC (figure for comparison)"
if [ "$(left)" -lt 60 ]; then
  end "skipped (under 60 s left)"
else
  mapfile -t BASE_ARGV < <(argv_of server "$SERVER_BIN" "$MODEL" "$BASE_PORT" "" 0)
  CUDA_VISIBLE_DEVICES="" "${BASE_ARGV[@]}" > "$LOGS/llama-server-cpu.log" 2>&1 < /dev/null &
  BASE_PID=$!
  PIDS+=("$BASE_PID")
  if wait_http "http://127.0.0.1:$BASE_PORT/health" "$BASE_PID" 45 "$LOGS/llama-server-cpu.log" \
      && out=$(chat "$BASE_PORT" "$WORK/chat-cpu.json"); then
    echo "$out" | grep -v '^TOKS=' || true
    CPU_TOKS=$(echo "$out" | sed -n 's/^TOKS=//p')
    FIGURES+=("generation on the CPU only:   ${CPU_TOKS:-?} tok/s   (baseline; the tiny model is too small for the GPU to win)")
    end "answered"
  else
    end "no answer (see $LOGS/llama-server-cpu.log)"
  fi
  stop_pid "$BASE_PID"
fi
echo
echo "gpu-check: PASSED"
