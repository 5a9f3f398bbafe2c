#!/usr/bin/env bash
# Build the transformers 5 environment: the newest transformers 5.x (what users load the
# `hf` export with now) over a CPU torch, and nothing of xtuner or of this package (xtuner
# 0.2.0 does not import on transformers 5). The export tests load the `hf` folder here with
# plain transformers, as a user would, and compare the greedy tokens with the trained
# model's (they skip, with the reason, where it is absent).
# Usage: tests/export/make_tf5_venv.sh [VENV_DIR]   (default: .venv-tf5 in the repository)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-tf5}"
python="${PYTHON:-python3.11}"
export PIP_CONSTRAINT="$repo/requirements/constraints-cpu.txt"  # torch==2.13.0 (CPU)
"$python" -m venv --clear "$venv"   # a rebuild starts empty
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    torch==2.13.0 "transformers==5.25.0" accelerate "safetensors>=0.4.3" pillow jinja2 "numpy<2.3"
"$venv/bin/python" -c "
import torch, transformers
print('transformers', transformers.__version__, 'torch', torch.__version__)"
