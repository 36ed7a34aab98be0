#!/usr/bin/env bash
# Install what compiling for an accelerator on a machine without one needs (`make test-gpu-compile`),
# for the python $1:
#  - GPU, into its venv: the CUDA PJRT plugin pinned to the installed jax version, ptxas
#    (nvidia-cuda-nvcc-cu12) and nvJitLink (about 1.3 GB);
#  - TPU: libtpu as jax[tpu] pins it (about 0.6 GB), with `pip install --target <venv>/libtpu-target`:
#    off the venv's path, so that other JAX programs do not try to start a TPU
#    (snnkern.kernels.platform.compile_only_tpu adds it).
# Already-installed parts are kept. A part that cannot be installed prints
# "cannot install gpu: <reason>" / "cannot install tpu: <reason>" (the tests skip with it); exit 0.
set -u
PY="${1:?usage: install_gpu_compile.sh PYTHON}"
JAXV=$("$PY" -c "import jax; print(jax.__version__)" 2>/dev/null) || {
  echo "cannot install gpu: jax does not import in $PY"; echo "cannot install tpu: jax does not import in $PY"; exit 0; }
PREFIX=$("$PY" -c "import sys; print(sys.prefix)")

pip_install() {   # pip_install PART ARGS...: quiet; on failure print the reason
  local part=$1; shift
  local log; log=$(mktemp)
  if ! "$PY" -m pip install -q "$@" >"$log" 2>&1; then
    local why; why=$(grep -E "ERROR|rror:" "$log" | tail -1)
    echo "cannot install $part: pip install $* failed: ${why:-pip printed no error line}"
  fi
  rm -f "$log"
}

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64) ;;
  *) echo "cannot install gpu: the CUDA plugin has wheels for Linux x86_64/aarch64 only, not $(uname -s)-$(uname -m)"
     echo "cannot install tpu: libtpu has wheels for Linux only"; exit 0 ;;
esac

GPU_PKGS=("jax-cuda12-plugin==$JAXV" "jax-cuda12-pjrt==$JAXV" "nvidia-cuda-nvcc-cu12" "nvidia-nvjitlink-cu12")
if ! "$PY" - "$JAXV" <<'PYEOF' 2>/dev/null; then
import importlib.metadata as md, sys
v = sys.argv[1]
assert md.version("jax-cuda12-plugin") == v and md.version("jax-cuda12-pjrt") == v
md.version("nvidia-cuda-nvcc-cu12"); md.version("nvidia-nvjitlink-cu12")
PYEOF
  echo "installing ${GPU_PKGS[*]} (about 1.3 GB)"
  pip_install gpu "${GPU_PKGS[@]}"
fi

LIBTPU=$("$PY" -c "
import importlib.metadata as md
print(next((r.split(';')[0].replace(' ', '') for r in md.requires('jax') or [] if r.startswith('libtpu') and 'tpu' in r), ''))")
if [ -z "$LIBTPU" ]; then
  echo "cannot install tpu: jax $JAXV names no libtpu version (its tpu extra)"
elif [ ! -d "$PREFIX/libtpu-target/libtpu" ]; then
  echo "installing $LIBTPU into $PREFIX/libtpu-target (about 0.6 GB)"
  pip_install tpu --no-deps --target "$PREFIX/libtpu-target" "$LIBTPU"
fi
exit 0
