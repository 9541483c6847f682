#!/usr/bin/env bash
# Installs adallava (editable) with its dev tools into the current Python environment.
# PyTorch is installed first, pinned, unless one is already importable, so pip never pulls the
# multi-GB CUDA build by accident. Override the pin with ADALLAVA_TORCH (e.g. "torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install -q "${ADALLAVA_TORCH:-torch==2.13.0}"
fi
"$PYTHON" -m pip install -q -e ".[dev]"
