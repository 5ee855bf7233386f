#!/usr/bin/env bash
# Compile check of the CUDA sources on a machine without a GPU (DESIGN §6):
#   * every csrc/cuda/*.cu with nvcc -c for sm_80 and sm_90 (C++17; again as C++20, the standard
#     torch.utils.cpp_extension builds with, unless CUDA_STDS says otherwise);
#   * every csrc/cuda/*.cpp (host launchers) with the host compiler -c against the installed (CPU)
#     torch's headers, -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE and the CUDA include directory;
#   * every tita::cuda symbol the host objects call is defined by the .cu objects (nothing can be
#     linked here: the CPU torch has no CUDA libraries).
# Objects go to a temporary directory. Exits non-zero on the first failure, and when nvcc is missing.
#
# Environment: CUDA_HOME (default /usr/local/cuda), PYTHON (python3), CXX (g++),
#              CUDA_STDS (default "c++17 c++20"), NVCC_EXTRA / CXX_EXTRA (more flags).
set -euo pipefail

cd "$(dirname "$0")/.."
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
PYTHON="${PYTHON:-python3}"
CXX="${CXX:-g++}"
CUDA_STDS="${CUDA_STDS:-c++17 c++20}"

NVCC="$CUDA_HOME/bin/nvcc"
if [[ ! -x "$NVCC" ]]; then
  NVCC="$(command -v nvcc || true)"
fi
if [[ -z "$NVCC" ]]; then
  echo "ERROR: nvcc not found (looked in CUDA_HOME=$CUDA_HOME/bin and on PATH)." >&2
  echo "       CI machines have nvcc; install the CUDA toolkit or set CUDA_HOME." >&2
  exit 1
fi
if [[ ! -f "$CUDA_HOME/include/cuda_runtime_api.h" ]]; then
  CUDA_HOME="$(cd "$(dirname "$(readlink -f "$NVCC")")/.." && pwd)"
fi
echo "nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*'))"
echo "CUDA_HOME: $CUDA_HOME"

OUT="$(mktemp -d "${TMPDIR:-/tmp}/tita-compile-cuda.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT
echo "objects: $OUT"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
run() {
  echo "+ $*"
  "$@"
}

shopt -s nullglob
CU_FILES=(csrc/cuda/*.cu)
CPP_FILES=(csrc/cuda/*.cpp)
if (( ${#CU_FILES[@]} + ${#CPP_FILES[@]} == 0 )); then
  echo "ERROR: no sources in csrc/cuda" >&2
  exit 1
fi

total_start=$(now)
declare -a TIMINGS=()

# nvcc flags: setup.py's, torch's CUDAExtension defaults (no implicit half / bfloat16 conversions
# or operators), plus the architectures and ptxas spill warnings.
NVCC_FLAGS=(-O3 -lineinfo --expt-relaxed-constexpr -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
            -D__CUDA_NO_HALF2_OPERATORS__
            -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
            -Xptxas -warn-spills -Xcompiler -Wall)
read -r -a NVCC_EXTRA_ARR <<< "${NVCC_EXTRA:-}"
CU_OBJS=()
for std in $CUDA_STDS; do
  for src in "${CU_FILES[@]}"; do
    obj="$OUT/$(basename "$src" .cu).$std.cu.o"
    start=$(now)
    run "$NVCC" -c -std="$std" "${NVCC_FLAGS[@]}" "${NVCC_EXTRA_ARR[@]}" "$src" -o "$obj"
    TIMINGS+=("$(elapsed "$start") s  nvcc -std=$std $src")
    if [[ "$std" == "${CUDA_STDS%% *}" ]]; then CU_OBJS+=("$obj"); fi
  done
done

# Host launchers: the cxx flags and macros of setup.py's CUDA build, against the installed torch.
mapfile -t TORCH_INC < <("$PYTHON" -c \
  "import torch.utils.cpp_extension as c; print('\n'.join('-I' + p for p in c.include_paths()))")
TORCH_VERSION="$("$PYTHON" -c "import torch; print(torch.__version__)")"
CXX_FLAGS=(-std=c++20 -fPIC -O3 -fopenmp -ffp-contract=off -Wno-psabi -fvisibility=hidden -Wall
           -DTITA_WITH_CUDA "-DTITA_TORCH_VERSION=\"$TORCH_VERSION\"" -DTORCH_API_INCLUDE_EXTENSION_H
           -DTORCH_EXTENSION_NAME=_C -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE "-I$CUDA_HOME/include")
read -r -a CXX_EXTRA_ARR <<< "${CXX_EXTRA:-}"
CPP_OBJS=()
for src in "${CPP_FILES[@]}"; do
  obj="$OUT/$(basename "$src" .cpp).cpp.o"
  start=$(now)
  run "$CXX" -c "${CXX_FLAGS[@]}" "${TORCH_INC[@]}" "${CXX_EXTRA_ARR[@]}" "$src" -o "$obj"
  TIMINGS+=("$(elapsed "$start") s  $CXX $src")
  CPP_OBJS+=("$obj")
done

# Link-level check: every tita::cuda function the host objects call is defined by a .cu object.
if (( ${#CPP_OBJS[@]} > 0 )); then
  echo "+ checking tita::cuda symbols between host and .cu objects"
  defined="$OUT/defined.txt"
  : > "$defined"
  if (( ${#CU_OBJS[@]} > 0 )); then
    nm --defined-only "${CU_OBJS[@]}" | awk 'NF >= 3 { print $3 }' | sort -u > "$defined"
  fi
  missing=0
  while read -r sym; do
    if ! grep -qxF "$sym" "$defined"; then
      echo "ERROR: $(echo "$sym" | c++filt) is called by the host launchers but no .cu file defines it" >&2
      missing=1
    fi
  done < <(nm --undefined-only "${CPP_OBJS[@]}" | awk 'NF >= 2 { print $2 }' | grep '4tita4cuda' | sort -u)
  (( missing == 0 )) || exit 1
  echo "  ok: $(nm --undefined-only "${CPP_OBJS[@]}" | grep -c '4tita4cuda' || true) tita::cuda symbol(s) resolved"
fi

echo
echo "timings:"
printf '  %s\n' "${TIMINGS[@]}"
echo "  $(elapsed "$total_start") s  total"
echo "compile_cuda: OK (${#CU_FILES[@]} .cu x [$CUDA_STDS], ${#CPP_FILES[@]} .cpp)"
