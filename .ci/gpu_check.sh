#!/usr/bin/env bash
# The device check, one call on a fresh GPU machine (DESIGN §6: one H100/H200, torch 2.11 + CUDA
# 13.0, transformers 5.17, triton 3.6, nvcc, pybind11, ninja, pytest, pytest-benchmark; no network):
#
#   bash .ci/gpu_check.sh OUTDIR        # everything below, results and logs under OUTDIR
#
# Steps (each logged to OUTDIR/<step>.log, wall times to OUTDIR/timings.json), and the expected
# time of each on an H200 (estimates: the builds and tests are timed on the 2-core CI machine where
# they can run; GPU steps from their call counts, see the step comments). Total expected ~6-7 min,
# inside one 10-minute call. Nothing from the CPU emulation runs here (CI runs it).
#   1 device      nvidia-smi, torch sees the GPU                                       ~5 s
#   2 build       pip install -e . with the CUDA kernels for the visible GPU only      ~150-200 s
#                 (16 cores: guided_sample.cu ~75 s of nvcc for one arch + the C++ TUs in parallel;
#                 the same sources take 75 s per .cu and 40 s per .cpp on 1 CI core per arch)
#   3 op_tests    tests/test_cuda_ops.py + tests/test_decode_advance.py               ~40-60 s
#                 (16 tests with ~200 op calls on small shapes; first-call CUDA context ~5 s)
#   4 graph_tests tests/test_graphs_cuda.py (tiny models, graphs captured per family)   ~60-90 s
#   5 ops_bench   benchmarks/run_ops_gpu.py --quick: 6 points x 6 implementations,     ~60-120 s
#                 15 reps (graph replays) + eager samples; torch.compile warm-up ~30 s per mode
#   6 e2e_bench   benchmarks/run_e2e_gpu.py --quick --budget-s 150                     <= 150 s
# A failing step is recorded and the next ones still run; the exit status is that of the first
# failure. OUTDIR/summary.json: per step status and seconds; ops-*.json and e2e-*.json beside it.
set -uo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: bash .ci/gpu_check.sh OUTDIR" >&2
  exit 2
fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Only the visible GPU's architecture (e.g. 9.0 on H100/H200): one nvcc pass per .cu instead of four.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null || true)"
  export TORCH_CUDA_ARCH_LIST
fi

FIRST_FAIL=0
STEPS=()
step() {  # step NAME COMMAND...: run, log, time, record
  local name="$1"
  shift
  echo "=== $name ($(date -u +%H:%M:%S)): $*"
  local start end rc
  start=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  tail -n 5 "$OUT/$name.log"
  echo "    -> rc $rc in $secs s"
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs}")
  if [[ $rc -ne 0 && $FIRST_FAIL -eq 0 ]]; then FIRST_FAIL=$rc; fi
  return 0
}

write_summary() {
  local tmp="$OUT/summary.json.tmp"
  {
    echo "{\"steps\": ["
    local i
    for i in "${!STEPS[@]}"; do
      [[ $i -gt 0 ]] && echo ","
      echo "  ${STEPS[$i]}"
    done
    echo "], \"exit\": $FIRST_FAIL}"
  } > "$tmp"
  mv "$tmp" "$OUT/summary.json"  # atomic: a reader never sees half a file
  cp "$OUT/summary.json" "$OUT/timings.json"
}
trap write_summary EXIT

step device bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python3 -c "import torch; assert torch.cuda.is_available(), \"no CUDA device\";
print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(0))"'
step build bash -c "TITA_EXT_CUDA=1 MAX_JOBS=\${MAX_JOBS:-16} python3 -m pip install -q --no-deps --no-build-isolation -e . &&
  python3 -c \"import tita_ext; print(tita_ext._C.build_info()); assert tita_ext.compiled_available('cuda'), 'built without CUDA'\""
step op_tests python3 -m pytest tests/test_cuda_ops.py tests/test_decode_advance.py -q -x -p no:cacheprovider
step graph_tests python3 -m pytest tests/test_graphs_cuda.py -q -x -p no:cacheprovider
step ops_bench python3 benchmarks/run_ops_gpu.py --quick --no-plot --out "$OUT/ops-quick.json"
step e2e_bench python3 benchmarks/run_e2e_gpu.py --quick --budget-s 150 --out "$OUT/e2e-quick.json"
echo "=== done: exit $FIRST_FAIL; results and logs in $OUT"
exit "$FIRST_FAIL"
