#!/usr/bin/env bash
# Install what compiling for an NVIDIA GPU on a machine without one needs, into the venv of $1
# (`make test-gpu-compile`): the CUDA PJRT plugin pinned to the installed jax version, ptxas
# (nvidia-cuda-nvcc-cu12) and nvJitLink. About 1.3 GB. Exit 0 when installed (or already there);
# otherwise exit 1 with the reason as the last line of stdout (the tests skip with it).
set -u
PY="${1:?usage: install_gpu_compile.sh PYTHON}"
JAXV=$("$PY" -c "import jax; print(jax.__version__)" 2>/dev/null) || { echo "jax does not import in $PY"; exit 1; }
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64) ;;
  *) echo "the CUDA plugin has wheels for Linux x86_64/aarch64 only, not $(uname -s)-$(uname -m)"; exit 1 ;;
esac
PKGS=("jax-cuda12-plugin==$JAXV" "jax-cuda12-pjrt==$JAXV" "nvidia-cuda-nvcc-cu12" "nvidia-nvjitlink-cu12")
if "$PY" - "$JAXV" <<'PYEOF' 2>/dev/null; then exit 0; fi
import importlib.metadata as md, sys
v = sys.argv[1]
assert md.version("jax-cuda12-plugin") == v and md.version("jax-cuda12-pjrt") == v
md.version("nvidia-cuda-nvcc-cu12"); md.version("nvidia-nvjitlink-cu12")
PYEOF
echo "installing ${PKGS[*]} (about 1.3 GB)"
LOG=$(mktemp)
if ! "$PY" -m pip install -q "${PKGS[@]}" >"$LOG" 2>&1; then
  why=$(grep -v -i "warning" "$LOG" | grep -E "ERROR|error" | tail -1)
  rm -f "$LOG"
  echo "pip could not install ${PKGS[*]}: ${why:-pip printed no error line}"
  exit 1
fi
rm -f "$LOG"
