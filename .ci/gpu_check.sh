#!/usr/bin/env bash
# On the GPU machine (DESIGN §6: one H100/H200, a CUDA torch, nvcc, no network): build tita_ext
# with its CUDA kernels, run the GPU tests of the fused ops, then the op benchmark.
#
#   bash .ci/gpu_check.sh            # build + tests + benchmark --quick (a few minutes)
#   BENCH=full bash .ci/gpu_check.sh # + the full benchmark grid, in pieces, into benchmarks/results/
#   BENCH=none bash .ci/gpu_check.sh # build + tests only
#
# Each step prints its wall time; no step needs the network (--no-deps: the environment already
# holds torch, transformers, pytest, scipy, matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
BENCH="${BENCH:-quick}"
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

step "build with the CUDA kernels (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-the visible GPU})"
TITA_EXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}" python3 -m pip install -q --no-deps --no-build-isolation -e .
python3 -c "import tita_ext; print(tita_ext._C.build_info()); assert tita_ext.compiled_available('cuda'), 'built without CUDA'"

step "GPU tests of the fused ops (and the CPU emulation of the same kernels)"
python3 -m pytest tests/test_cuda_ops.py tests/test_decode_advance.py tests/test_cuda_emulated.py -q -x
python3 -m pytest tests/test_triton_twin.py tests/test_op_registration.py -q -x

case "$BENCH" in
  none) ;;
  quick)
    step "op benchmark, quick"
    python3 benchmarks/run_ops_gpu.py --quick --reps 20
    ;;
  full)
    step "op benchmark, full grid in pieces (each under 10 minutes)"
    python3 benchmarks/run_ops_gpu.py --batches 1,8 --dtypes bf16
    python3 benchmarks/run_ops_gpu.py --batches 1,8 --dtypes fp32 --append
    python3 benchmarks/run_ops_gpu.py --batches 64 --append
    python3 benchmarks/run_ops_gpu.py --batches 256 --append
    ;;
  *) echo "BENCH must be quick, full or none, got $BENCH" >&2; exit 2 ;;
esac

step "done"
