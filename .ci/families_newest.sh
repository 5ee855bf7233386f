#!/usr/bin/env bash
# CI: the model-family grid and the GuidedGenerator tests under the newest transformers the
# package registry serves, so that a transformers release that renames or moves something the
# engine relies on fails CI instead of users (the main run tests the pinned transformers).
#
# A small venv on top of the system site-packages (torch, the built tita_ext._C, pytest, ...):
# only transformers and what it drags are installed into it; the package is imported from the
# repository (PYTHONPATH), so the compiled module built by the main CI step is used as it is.
#   bash .ci/families_newest.sh      (the venv: $TITA_NEWEST_VENV, default /tmp/tita-families-newest)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
venv="${TITA_NEWEST_VENV:-${TMPDIR:-/tmp}/tita-families-newest}"

python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --upgrade transformers
"$venv/bin/python" - <<'PY'
import torch, transformers
print("newest transformers:", transformers.__version__, "from", transformers.__file__)
print("torch:", torch.__version__)  # still the system's: transformers does not depend on torch
PY
PYTHONPATH="$PWD" "$venv/bin/python" -m pytest tests/test_families.py tests/test_guided_generator.py -q -p no:cacheprovider
