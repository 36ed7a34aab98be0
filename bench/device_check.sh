#!/usr/bin/env bash
# One prepared GPU run (BENCH.md "GPU runs"): the GPU tests, then the gpu-* tiers, the fresh-process
# peak memory, the PyTorch peers and the kernels' compile-time resource figures, all under $OUT
# (default bench/results), in under 9 minutes.
# Installs nothing from the network: snnkern goes in with `pip install -e . --no-deps` (or, if that
# fails, a PYTHONPATH shim); the machine's own jax / equinox / matplotlib / tqdm / pytest are used.
#
#   bash bench/device_check.sh                  # from the repository root, on the GPU machine
#   OUT=/some/dir PY=python3 bash bench/device_check.sh
#   TIERS=tiny PEER_TIERS=tiny bash bench/device_check.sh     # dry run of the flow on a CPU machine
#
# At most 8 files land in $OUT (the device tool returns no more): the results CSV and .md, two PNG
# plots, torch_peers.csv, gpu_resources.md/.json (the kernels' registers, spills, shared memory and
# occupancy compiled for this GPU, beside the measured times) and device_check.log (every step's
# output, pytest's included).
# Time budget (timeout per step): setup ~15 s, pytest -m gpu 120 s (neuron-loop and recurrent
# kernels vs the XLA loops), gpu tiers 210 s (gpu-rec: the recurrent kernel, "fwd+bwd us/step" in
# the table), peak memory 40 s, torch peers 35 s, resource figures 120 s: <= 540 s.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PY="${PY:-python3}"
TIERS="${TIERS:-gpu-small,gpu-rec,gpu-on}"
PEER_TIERS="${PEER_TIERS:-gpu-small,gpu-on}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false     # the peak-memory children need the memory too
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

step "machine"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
$PY --version

step "make snnkern importable (no network)"
if ! $PY -c "import snnkern.kernels" 2>/dev/null; then
  if ! timeout 60 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . ; then
    echo "pip install -e . failed; using a PYTHONPATH shim"
    SHIM=$(mktemp -d)
    cp -r snnkern "$SHIM/snnkern"
    rm -rf "$SHIM/snnkern/kernels"
    ln -s "$PWD/kernels" "$SHIM/snnkern/kernels"
    export PYTHONPATH="$SHIM:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
$PY -c "import jax, equinox, snnkern; print('jax', jax.__version__, jax.devices(), '| equinox', equinox.__version__, '| snnkern', snnkern.__version__, snnkern.__file__)" \
  || { echo "snnkern does not import; stopping"; exit 1; }

step "pytest -m gpu"
timeout 120 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/test_pallas.py tests/test_pallas_recurrent.py
rc=$?
case $rc in
  0) echo "pytest -m gpu: passed" ;;
  5) echo "pytest -m gpu: no test carries the gpu marker yet" ;;
  124) echo "pytest -m gpu: TIMED OUT after 120 s" ;;
  *) echo "pytest -m gpu: FAILED (rc $rc)" ;;
esac

step "tiers $TIERS"
timeout 210 $PY -m bench.run --tiers "$TIERS" --out "$OUT" --no-docs --no-plots --quiet
rc=$?
[ $rc -eq 124 ] && echo "gpu tiers: TIMED OUT after 210 s (the CSV holds every configuration finished)"
CSV=$(ls -t "$OUT"/*.csv 2>/dev/null | grep -v torch_peers | head -1)

if [ -n "$CSV" ]; then
  step "peak memory, one fresh process per row ($CSV)"
  timeout 40 $PY -m bench.peak_mem --csv "$CSV" --budget 30
  step "tables and plots"
  timeout 30 $PY -m bench.report "$CSV"
fi

step "PyTorch peers (snnTorch / SpikingJelly, where installed)"
timeout 35 $PY bench/torch_peers.py --tiers "$PEER_TIERS" --out "$OUT" --repeats 5 --min-time 0.5 \
  ${CSV:+--compare "$CSV"}
[ $? -eq 124 ] && echo "torch peers: TIMED OUT after 35 s"

step "compile-time resource figures of the kernels on this GPU (ptxas -v; docs/kernels.md, GPU resources)"
# each case compiled in its own process for the local GPU: registers, spills, shared memory, occupancy
timeout 120 $PY -m bench.gpu_compile --target local --cases docs --jobs "${RES_JOBS:-12}" --timeout 90 \
  --out "$OUT/gpu_resources.md" > /dev/null
rc=$?
case $rc in
  0) echo "gpu resources: $OUT/gpu_resources.md (+ .json)" ;;
  124) echo "gpu resources: TIMED OUT after 120 s" ;;
  *) echo "gpu resources: rc $rc (a case did not compile, or lacks its kernels: see $OUT/gpu_resources.md)" ;;
esac

step "done"
ls -la "$OUT"
