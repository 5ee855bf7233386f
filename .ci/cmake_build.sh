#!/usr/bin/env bash
# Configures and builds the C++-side CMake build (CMakeLists.txt) into build-cmake/ against the
# installed torch, from a clean checkout. Extra arguments go to the configure step, e.g.
#   .ci/cmake_build.sh -DTITA_SANITIZE=ON
# BUILD_DIR (default build-cmake) and JOBS (default 2) can be set in the environment.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build-cmake}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

run() {
  echo "+ $*"
  "$@"
}

PREFIX="$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)")"
PYTHON_EXE="$("$PYTHON" -c "import sys; print(sys.executable)")"
echo "torch cmake prefix: $PREFIX"
echo "python: $PYTHON_EXE"

start=$(date +%s)
run cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX" -DPython3_EXECUTABLE="$PYTHON_EXE" "$@"
configured=$(date +%s)
run cmake --build "$BUILD_DIR" -j"$JOBS"
built=$(date +%s)

echo "configure: $((configured - start)) s, build: $((built - configured)) s"
echo "compile database: $BUILD_DIR/compile_commands.json"
ls -l "$BUILD_DIR"/_C*.so
